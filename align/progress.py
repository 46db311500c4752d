"""Progress that reads well on a terminal and in a log file.

On a terminal: tqdm's bar, as before. When stderr is not a terminal (a scheduler's log, `> run.log`,
`| tee`): one plain line every `every_s` seconds (and at the end), never a `\\r`, so `tail` and `grep`
work — open_clip's and Accelerate's habit. The same call serves training, shard writing, embedding
and the benchmarks:

    with progress(total=1200, desc="train", unit="step", initial=0) as bar:
        bar.update(1); bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
    # log file:  train: 240/1200 step (20%), 4.1 step/s, ETA 3m54s, loss=1.234, lr=4.8e-04

`ALIGN_PROGRESS=plain|bar` forces either form (tests, CI logs viewed in a browser).

`setup_console()` (the CLI calls it first): a stdout/stderr whose encoding is not UTF-8 (LANG=C with
PYTHONUTF8=0, an ISO-8859-1 locale, PYTHONIOENCODING=ascii) writes what it cannot encode as escapes (\\u4e00)
instead of ending the command with UnicodeEncodeError at the first caption or path; stdout redirected to a file
is line-buffered, so a job log shows each line when it is said ("resumed from ...") and in order with stderr's
progress lines, not in 8 KB blocks at the end; and align's warnings go to stderr one line each, starting on a
clean line when a bar is drawn there (a data worker's warning would otherwise follow the bar's text on its line).

`launch_line(prefix, message)` (the CLI's fatal lines): under `accelerate launch` / torchrun every process meets a
launch-wide error (a bad recipe key, a missing data.val) and printed it, the same line once per process. The
first process of the launch on this machine to say a line says it (rank 0 first: the others wait LAUNCH_GRACE_S);
the others, with the same line, say nothing; a line only one process has (a rank's own shards) is said with its
rank. Each machine of a multi-machine launch says it once, on its own console.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Iterable, Optional

PLAIN_EVERY_S = 30.0
LAUNCH_GRACE_S = 0.5    # a rank other than 0 waits this long before its fatal line: rank 0 says a shared one


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class PlainProgress:
    """tqdm's update/set_postfix/close/iteration API, printing one line per interval."""

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every_s: float = PLAIN_EVERY_S, file=None,
                 clock=time.monotonic, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.every_s = every_s
        self.file = file or sys.stderr
        self._clock = clock
        self._t0 = self._last = clock()
        self._postfix = ""
        self._printed_n = None

    def line(self) -> str:
        elapsed = self._clock() - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_fmt_time((self.total - self.n) / rate)}")
        else:
            parts.append(f"elapsed {_fmt_time(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _emit(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self._last = self._clock()
        self._printed_n = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.every_s:
            self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    @staticmethod
    def write(s: str, file=None, end: str = "\n", nolock: bool = False) -> None:
        """tqdm.write's: a message line (stdout by default), printed also when the bar is disabled."""
        print(s, file=file or sys.stdout, end=end, flush=True)

    def close(self) -> None:
        if self._printed_n != self.n:
            self._emit()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off(PlainProgress):
    """disable=True: counts, prints nothing."""

    def _emit(self) -> None:
        self._printed_n = self.n


def _plain_wanted(file) -> bool:
    mode = os.environ.get("ALIGN_PROGRESS", "").lower()
    if mode in ("plain", "bar"):
        return mode == "plain"
    try:
        return not (file or sys.stderr).isatty()
    except (AttributeError, ValueError):
        return True


def progress(iterable: Optional[Iterable] = None, *, disable: bool = False, every_s: float = PLAIN_EVERY_S,
             file=None, **kwargs):
    """A tqdm bar on a terminal, PlainProgress elsewhere (see module docstring); kwargs as tqdm's."""
    if disable:
        return _Off(iterable, file=file, **kwargs)
    if _plain_wanted(file):
        return PlainProgress(iterable, every_s=every_s, file=file, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, file=file, **kwargs)


class WarningLines(logging.Handler):
    """align's log records as `message` lines on the current sys.stderr; on a terminal where bars are drawn, the
    bar's line is blanked first (spaces, then \\r: no escape codes, so TERM=dumb shows it alike). Inherited
    by forked data workers, whose warnings then land on their own line too."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            head = ""
            if not _plain_wanted(stream):
                try:
                    cols = os.get_terminal_size(stream.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    cols = 80
                head = "\r" + " " * max(cols - 1, 0) + "\r"
            stream.write(head + self.format(record) + "\n")
            stream.flush()
        except Exception:          # as logging.StreamHandler: a broken stream never ends the run
            self.handleError(record)


def setup_console() -> None:
    """Console streams that cannot crash on text, and align's warnings as lines (module docstring). Idempotent."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        change = {} if enc in ("utf8", "utf8sig") else {"errors": "backslashreplace"}
        if not getattr(stream, "line_buffering", True):
            change["line_buffering"] = True   # a log file: each line as it is said, in order with stderr's
        if change and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(**change)
            except (ValueError, OSError):     # a stream already written in a way that cannot change
                pass
    logger = logging.getLogger("align")
    if not any(isinstance(h, WarningLines) for h in logger.handlers):
        handler = WarningLines(level=logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def main_process() -> bool:
    """False in the processes of a launch other than rank 0: where every process builds the same model, a line about
    it (a tower's warning) is said by rank 0 alone, not once per process."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def _launch_folder() -> str:
    """A folder shared by this launch's processes on this machine: named by their launcher (the parent process
    torchrun's agent is), its port and restart count; launches' folders older than a day are removed."""
    import shutil
    import tempfile
    top, uid = tempfile.gettempdir(), getattr(os, "getuid", lambda: 0)()
    name = (f"align-launch-{uid}-{os.getppid()}-{os.environ.get('MASTER_PORT', '')}-"
            f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    try:
        for old in os.listdir(top):
            path = os.path.join(top, old)
            if old.startswith(f"align-launch-{uid}-") and old != name and time.time() - os.path.getmtime(path) > 86400:
                shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass
    return os.path.join(top, name)


def launch_line(prefix: str, message: str) -> Optional[str]:
    """`prefix + message` to print for a fatal error, or None where another process of this launch has said the
    same message (module docstring). Outside a launch (WORLD_SIZE unset or 1): the line as it is."""
    import hashlib
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return prefix + message
    if world <= 1:
        return prefix + message
    named = rank == 0 or re.search(rf"\brank {rank}\b", message)      # feed.py's lines name their rank already
    own = prefix + (message if named else f"rank {rank} of {world}: {message}")
    if rank != 0:
        time.sleep(LAUNCH_GRACE_S)
    key = hashlib.sha256(message.encode("utf-8", "backslashreplace")).hexdigest()[:24]
    try:
        folder = _launch_folder()
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(os.path.join(folder, key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return None                  # another process of the launch said this line
    except OSError:
        return own                   # no shared folder: better twice than never
    return own
