"""Files written whole or not at all, and a full or failing disk as one line naming the file.

    write_whole(path, write, kept=...)   write(f) into a temporary file beside `path`, renamed into place when
                                         whole; a full disk removes it and raises StorageError (one line: the
                                         path, the space free, what is still intact)
    atomic_write(path, write)            the same without the one line (the error goes on unchanged)
    guard_write(path, need, intact, kept, partial)   any other write: a storage failure -> StorageError,
                                         `partial` (a half-made file or folder) removed first
    save_figure(fig, path, kept=...)     a matplotlib figure (PNG) the same way
    is_storage_error(exn)                ENOSPC/EIO/EDQUOT/EROFS, also wrapped by a library (safetensors,
                                         torch, pyarrow, faiss, SQLite) as its own error

StorageError carries exit_code STORAGE_EXIT (74, sysexits.h EX_IOERR), which the CLI returns. Every command's
writers use these (shard tars and their records, result JSONs, reports, plots, embeddings, indexes), so a rerun
after space is freed never takes a half-written file for a finished one. align.train.storage adds the
checkpoint-specific parts (the intact checkpoint named, the metrics log cut back to whole lines).
"""

from __future__ import annotations

import contextvars
import errno
import os
import shutil
from contextlib import contextmanager, suppress
from typing import Optional

from align.errors import AlignError

STORAGE_EXIT = 74          # sysexits.h EX_IOERR: a write failed (full disk, I/O error); free space and rerun

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS})
STORAGE_WORDS = ("No space left on device", "Input/output error", "Disk quota exceeded", "Read-only file system",
                 "database or disk is full")        # SQLite's SQLITE_FULL (an Optuna study.db)


# What a training run's stop lines tell the user to run next (a full disk, a preemption, a source that stayed
# down): set for the run from its recipe's `resume` (align.train.setup.resume_words); "the same command" resumes
# only under resume=auto, the default (under none, or a path, it would refuse or start from that path again).
SAME_COMMAND_RESUMES = "run the same command to resume"
RESUME_WORDS = contextvars.ContextVar("align_resume_words", default=SAME_COMMAND_RESUMES)


class StorageError(AlignError):
    """A write failed for lack of space or an I/O error (a checkpoint, a shard, a result, a report)."""

    exit_code = STORAGE_EXIT


def _storage_words(exn: Optional[BaseException]) -> Optional[str]:
    """The OS's words for a storage failure (ENOSPC/EIO/EDQUOT/EROFS) anywhere in exn's chain (a library such as
    safetensors or torch re-raises it as its own error: the innermost OSError's, or the words in its message), or
    None when the chain holds none."""
    while exn is not None:
        if isinstance(exn, OSError) and exn.errno in STORAGE_ERRNOS:
            return os.strerror(exn.errno)
        word = next((w for w in STORAGE_WORDS if w in str(exn)), None)
        if word:
            return word
        exn = exn.__cause__ or exn.__context__
    return None


def is_storage_error(exn: BaseException) -> bool:
    """ENOSPC/EIO/EDQUOT/EROFS, also when a library (safetensors, torch) re-raised it as its own error."""
    return _storage_words(exn) is not None


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: str) -> Optional[int]:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def storage_reason(exn: BaseException) -> str:
    """The OS's words for the failure, also when a library wrapped it (the innermost OSError's)."""
    return _storage_words(exn) or type(exn).__name__


def storage_line(exn: BaseException, path: str, need: Optional[int], intact: Optional[str],
                 kept: Optional[str] = None) -> str:
    """The one line: what failed, where, space needed and free, and which checkpoint is intact (or `kept`:
    what else is unharmed, e.g. an export's source)."""
    keep = kept or (f"the intact checkpoint is {intact}" if intact else "no intact checkpoint exists yet")
    again = "run the same command again" if kept else RESUME_WORDS.get()
    needs = f"needs about {human_bytes(need)}, " if need is not None else ""     # (unknown before the write)
    return (f"{path}: {storage_reason(exn)} ({needs}{human_bytes(free_bytes(path))} free); partial files "
            f"removed; {keep}; free space and {again}")


@contextmanager
def guard_write(path: str, need: Optional[int], intact: Optional[str], kept: Optional[str] = None,
                partial: Optional[str] = None):
    """Around a write to `path`: a storage failure becomes StorageError (one line); `partial` (a file or
    folder the write leaves half-made) is removed first. Other errors pass unchanged."""
    try:
        yield
    except Exception as exn:
        if not is_storage_error(exn):
            raise
        if partial and os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif partial and os.path.exists(partial):
            os.remove(partial)
        raise StorageError(storage_line(exn, path, need, intact, kept)) from None


def atomic_write(path: str, write) -> None:
    """write(f) into a temporary file beside `path` (binary), renamed to `path` when whole: a reader never sees
    half a file, and the temporary file never outlives a failure (a kill aside): a full disk, a ^C or an error of
    `write` removes it before the error goes on."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_whole(path, write, kept: str = "nothing else was changed", need: Optional[int] = None,
                intact: Optional[str] = None) -> None:
    """atomic_write(path, write) under guard_write: whole or not at all, and a full disk is StorageError, one line
    naming `path` and `kept` (what is intact: "the finished shards are kept", ...), or with `intact` (a run's
    file) the checkpoint a resume starts from."""
    with guard_write(str(path), need, intact, kept=None if intact else kept):
        atomic_write(str(path), write)


def write_text_whole(path, text: str, kept: str = "nothing else was changed", intact: Optional[str] = None) -> None:
    """write_whole for a text file (UTF-8)."""
    write_whole(path, lambda f: f.write(text.encode("utf-8")), kept, intact=intact)


def save_figure(fig, path, kept: str = "nothing else was changed", intact: Optional[str] = None, **savefig) -> None:
    """A pyplot figure as a PNG at `path` (write_whole: a full disk left half a PNG under its name), then closed,
    written or not (pyplot holds every figure it made until it is closed)."""
    try:
        write_whole(path, lambda f: fig.savefig(f, format="png", **savefig), kept, intact=intact)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
