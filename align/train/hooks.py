"""Fault injection and recording for the tests, driven by environment variables; inert when they are unset.

    ALIGN_TEST_SIGKILL_AT_STEP=N    SIGKILL this process right after step N (its checkpoint, if due, written)
    ALIGN_TEST_SIGKILL_RANK=R       ... only on rank R (default: every rank); also for the two hooks below
    ALIGN_TEST_SIGTERM_AT_STEP=N    SIGTERM this process during step N (a scheduler's preemption)
    ALIGN_TEST_SIGSTOP_AT_STEP=N    SIGSTOP this process right after step N, as a stuck NFS read would stop it,
                                    after writing "PID TIME" to ALIGN_TEST_STOPPED_PID (the test's cleanup)
    ALIGN_TEST_KILL_STAMP=FILE      ... after writing the time of death to FILE (the bounded-exit tests)
    ALIGN_TEST_SIGKILL_IN_SAVE=NAME a rank > 0 dies while writing checkpoint NAME, its part written
    ALIGN_TEST_ENOSPC_IN_SAVE=NAME  rank ALIGN_TEST_SIGKILL_RANK (default 1) alone gets ENOSPC for its part of
                                    checkpoint NAME (a full disk only one rank sees)
    ALIGN_TEST_SIGSTOP_IN_SAVE=NAME rank ALIGN_TEST_SIGKILL_RANK (default 1) stops (SIGSTOP) there instead, after
                                    writing "PID TIME" to ALIGN_TEST_STOPPED_PID (a node frozen mid-write)
    ALIGN_TEST_SIGTERM_IN_SAVE=NAME rank ALIGN_TEST_SIGKILL_RANK (default: every rank) gets SIGTERM while writing
                                    checkpoint NAME, its part written (a scheduler's preemption mid-save),
                                    appending "RANK NAME" to ALIGN_TEST_KILL_STAMP if set (a write counted)
    ALIGN_TEST_KILL_DATA_WORKER_AT_STEP=N  SIGKILL one of this process's data workers right after step N (as
                                    the OOM killer does) and wait until it is dead
    ALIGN_TEST_STEP_SLEEP_S=S       sleep S seconds after every step (a slow run to signal or inspect mid-way)
    ALIGN_TEST_RECORD_KEYS=PREFIX   each rank appends the sample keys of every step to PREFIX.rankR.jsonl
                                    (the no-sample-lost-or-repeated tests)

The training loop calls them at fixed points; nothing here changes a run that does not set them.
"""
import json
import os
import signal
import time

from align.data.stream.keys import KEY

SIGKILL_AT_STEP = "ALIGN_TEST_SIGKILL_AT_STEP"
SIGKILL_RANK = "ALIGN_TEST_SIGKILL_RANK"
KILL_STAMP = "ALIGN_TEST_KILL_STAMP"
SIGKILL_IN_SAVE = "ALIGN_TEST_SIGKILL_IN_SAVE"
SIGSTOP_IN_SAVE = "ALIGN_TEST_SIGSTOP_IN_SAVE"
ENOSPC_IN_SAVE = "ALIGN_TEST_ENOSPC_IN_SAVE"
SIGTERM_IN_SAVE = "ALIGN_TEST_SIGTERM_IN_SAVE"
RECORD_KEYS = "ALIGN_TEST_RECORD_KEYS"
SIGTERM_AT_STEP = "ALIGN_TEST_SIGTERM_AT_STEP"     # a scheduler's SIGTERM, arriving during that step
KILL_DATA_WORKER_AT_STEP = "ALIGN_TEST_KILL_DATA_WORKER_AT_STEP"
SIGSTOP_AT_STEP = "ALIGN_TEST_SIGSTOP_AT_STEP"     # a hung rank (the watchdog tests)
STOPPED_PID = "ALIGN_TEST_STOPPED_PID"
STEP_SLEEP_S = "ALIGN_TEST_STEP_SLEEP_S"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_save(name: str, rank: int) -> None:
    """Called by save_checkpoint between writing a rank's part and the barrier."""
    if os.environ.get(SIGKILL_IN_SAVE) == name and rank > 0:
        _die()
    if os.environ.get(SIGSTOP_IN_SAVE) == name and os.environ.get(SIGKILL_RANK, "1") == str(rank):
        _stop()
    if os.environ.get(SIGTERM_IN_SAVE) == name and os.environ.get(SIGKILL_RANK, str(rank)) == str(rank):
        if os.environ.get(KILL_STAMP):
            with open(os.environ[KILL_STAMP], "a") as f:
                f.write(f"{rank} {name}\n")
        os.kill(os.getpid(), signal.SIGTERM)


def full_disk_in_save(name: str, rank: int) -> None:
    """Called by save_checkpoint once this rank's part is written, as a failed write of it."""
    if os.environ.get(ENOSPC_IN_SAVE) == name and os.environ.get(SIGKILL_RANK, "1") == str(rank):
        import errno
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{ENOSPC_IN_SAVE}={name}")


def _stop() -> None:
    with open(os.environ[STOPPED_PID], "w") as f:
        f.write(f"{os.getpid()} {time.time()}")
    os.kill(os.getpid(), signal.SIGSTOP)


def _children(pid: int) -> list:
    """The child processes of `pid` (its DataLoader workers in a training process), from /proc."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(x) for x in f.read().split()]
    return sorted(kids)


def _dead(pid: int) -> bool:
    """Waitable (every thread exited), not reaped: what torch's worker check and SIGCHLD see."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _started(pid: int) -> int:
    """A process's start time (clock ticks since boot): pids wrap around, start times do not."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def kill_data_worker() -> int:
    """SIGKILL this process's oldest child (the first data worker of the current epoch) and wait until it
    has died (waitable: torch's check sees it at the next step); -> its pid."""
    kids = sorted(_children(os.getpid()), key=_started)
    if not kids:
        raise RuntimeError(f"{KILL_DATA_WORKER_AT_STEP}: this process has no data worker (data.num_workers=0?)")
    os.kill(kids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _dead(kids[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return kids[0]


class TestHooks:
    """The loop's hooks for one rank (read from the environment once, at the start of a run)."""

    __test__ = False          # not a pytest class

    def __init__(self, rank: int):
        self.rank = rank
        self.kill_at = int(os.environ.get(SIGKILL_AT_STEP, "0"))
        self.term_at = int(os.environ.get(SIGTERM_AT_STEP, "0"))
        self.kill_worker_at = int(os.environ.get(KILL_DATA_WORKER_AT_STEP, "0"))
        self.stop_at = int(os.environ.get(SIGSTOP_AT_STEP, "0"))
        self.sleep_s = float(os.environ.get(STEP_SLEEP_S, "0"))
        self.kill_rank = os.environ.get(SIGKILL_RANK, str(rank))
        prefix = os.environ.get(RECORD_KEYS)
        self.keys_f = open(f"{prefix}.rank{rank}.jsonl", "a") if prefix else None

    def record_keys(self, step: int, epoch: int, micro: list) -> None:
        """The sample keys of the micro-batches about to be trained at `step` (0-based) in `epoch`."""
        if self.keys_f is not None:
            keys = [k for b in micro for k in b.get(KEY, [])]
            self.keys_f.write(json.dumps({"step": step, "epoch": epoch, "keys": keys}) + "\n")
            self.keys_f.flush()

    def after_step(self, step: int) -> None:
        """Called once step `step` is complete (logged, evaluated, checkpointed)."""
        if self.kill_worker_at and step == self.kill_worker_at and self.kill_rank == str(self.rank):
            kill_data_worker()
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.term_at and step == self.term_at and self.kill_rank == str(self.rank):
            os.kill(os.getpid(), signal.SIGTERM)
        if self.stop_at and step == self.stop_at and self.kill_rank == str(self.rank):
            _stop()
        if self.kill_at and step == self.kill_at and self.kill_rank == str(self.rank):
            if os.environ.get(KILL_STAMP):
                with open(os.environ[KILL_STAMP], "w") as f:
                    f.write(str(time.time()))
            _die()

    def close(self) -> None:
        if self.keys_f is not None:
            self.keys_f.close()
