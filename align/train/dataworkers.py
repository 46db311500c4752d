"""A data worker that dies mid-run (the OOM killer's SIGKILL, a segfault in a decoder) as one line and a checkpoint.

torch's DataLoader learns of a dead worker in two ways:
  - its SIGCHLD handler raises RuntimeError("DataLoader worker (pid N) is killed by signal: Killed.") in the
    main thread, wherever that thread is at the moment: mid-optimizer-step, mid-checkpoint-write;
  - the iterator raises RuntimeError("DataLoader worker (pid(s) N) exited unexpectedly") when it waits for a
    batch from that worker.
`deferred_worker_errors()` (held for the whole run by align.train.setup.process_settings) wraps torch's
handler and keeps its error instead of raising it; `raise_if_died()` raises it where the loop asks for data
(align.train.feed.Batches), i.e. at a step boundary: the model and optimizer are whole, and the loader's
position counts only the batches it handed out (align.data.stream.loader), not what the dead iterator had
prefetched. The signal may reach the process later than the death (a busy machine), so `raise_if_died`
also runs torch's check itself (waitid without reaping: the worker stays a zombie for torch). A fetch that
fails on a dead worker's half-sent batch (ConnectionResetError from its fd sharer) or torch's "exited
unexpectedly" becomes the same one-line `DataWorkerDied` (`as_worker_death`).

The run then writes a checkpoint at the step reached and the CLI exits with DATA_WORKER_EXIT (71, sysexits.h
EX_OSERR); the same command (resume=auto) continues without losing or repeating a sample.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from typing import Optional

from align.errors import AlignError

DATA_WORKER_EXIT = 71          # sysexits.h EX_OSERR: the OS ended a data worker; checkpoint written

_WORKER_ERROR = re.compile(r"DataLoader worker \(pid")
_SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}

# The likely cause, by the signal that ended the worker (the rest: "unknown").
_OOM = ("most likely the kernel's out-of-memory killer (see `dmesg`); lower data.num_workers or "
        "data.shuffle_buffer, or give the job more memory")
_CRASH = ("a crash in native code, most likely an image or audio decoder on a malformed sample; "
          "data.num_workers=0 runs the decoders in this process and shows where")
_CAUSES = {"SIGKILL": _OOM, "SIGSEGV": _CRASH, "SIGABRT": _CRASH, "SIGILL": _CRASH, "SIGFPE": _CRASH,
           "SIGBUS": "out of shared memory for the batches (/dev/shm); raise its size (e.g. docker --shm-size) "
                     "or lower data.num_workers"}

_pending: list = []            # torch's SIGCHLD errors, oldest first, until the loop reads them


class DataWorkerDied(AlignError):
    """A DataLoader worker process was killed or crashed; the run stopped at a step boundary."""

    exit_code = DATA_WORKER_EXIT


def is_worker_death(exn: BaseException) -> bool:
    return isinstance(exn, RuntimeError) and bool(_WORKER_ERROR.search(str(exn)))


def death_line(text: str) -> str:
    """torch's message -> "data worker (pid N) was killed by SIGKILL (Killed): <likely cause>"."""
    pid = re.search(r"pid(?:\(s\))? ([\d, ]+)\)", text)
    who = f"data worker (pid {pid.group(1)})" if pid else "a data worker"
    sig = re.search(r"killed by signal: ([^.]+)", text)
    code = re.search(r"exit code (-?\d+)", text)
    if sig:
        desc = sig.group(1).strip()
        name = _SIGNAL_NAMES.get(desc, desc)
        return f"{who} was killed by {name} ({desc}): {_CAUSES.get(name, 'cause unknown')}"
    if code:
        return f"{who} exited with code {code.group(1)}; data.num_workers=0 runs the decoders here and shows why"
    return (f"{who} exited unexpectedly, likely killed (a SIGKILL from the out-of-memory killer leaves no "
            f"message; see `dmesg`); lower data.num_workers or data.shuffle_buffer, or give the job more memory")


def _dead_worker(wait_s: float = 0.0) -> Optional[str]:
    """torch's message for a dead worker of any live DataLoader iterator of this process, or None: the one its
    SIGCHLD handler kept, else torch's own check run now (waitid(WNOWAIT): nothing is reaped), repeated for
    up to `wait_s` (a killed worker with threads is waitable only once its last thread has exited)."""
    from torch.utils.data._utils import signal_handling
    deadline = time.monotonic() + wait_s
    while True:
        if _pending:
            return _pending[0]
        try:
            signal_handling._error_if_any_worker_fails()
        except RuntimeError as exn:
            if is_worker_death(exn):
                return str(exn)
            raise
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def as_worker_death(exn: BaseException) -> Optional[DataWorkerDied]:
    """A failed fetch as DataWorkerDied when a data worker is dead: torch's own error, or any other error
    (e.g. ConnectionResetError: the dead worker's batch was in the queue, its shared memory fd was not) while
    a worker is dead; else None (the error is not a worker's death)."""
    if isinstance(exn, AlignError):
        return None                  # the loader's own errors (a bad source, too many skipped samples)
    text = _dead_worker(0.0 if is_worker_death(exn) else 5.0) or (str(exn) if is_worker_death(exn) else None)
    return DataWorkerDied(death_line(text)) if text else None


def raise_if_died() -> None:
    """At a step boundary: a dead data worker (torch's SIGCHLD handler saw it, or its check sees it now)."""
    text = _dead_worker()
    if text:
        raise DataWorkerDied(death_line(text))


@contextlib.contextmanager
def deferred_worker_errors():
    """For the run: torch's SIGCHLD check runs as before, but its error waits for `raise_if_died`."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        yield                  # no signal handlers off the main thread; torch sets none there either
        return
    from torch.utils.data._utils import signal_handling
    signal_handling._set_SIGCHLD_handler()     # torch's own, once per process: installed now, so it can be wrapped
    torch_handler = signal.getsignal(signal.SIGCHLD)

    def handler(signum, frame):
        try:
            if callable(torch_handler):
                torch_handler(signum, frame)
        except RuntimeError as exn:            # a worker died: keep it for the next step boundary
            if is_worker_death(exn) and len(_pending) < 8:
                _pending.append(str(exn))
            elif not is_worker_death(exn):
                raise

    _pending.clear()
    signal.signal(signal.SIGCHLD, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)
        _pending.clear()
