"""A full or failing disk as one clear line, and a metrics log that never holds a step twice.

    with checkpoint_write(ckpt_dir, name, is_main, fallback_need):   # align.train.setup.save
        save_checkpoint(...)
      - before: warn_if_tight with the newest checkpoint's size (one warning when the next will not fit);
      - on ENOSPC/EIO/EDQUOT/EROFS (also wrapped by safetensors or torch): the .tmp dir removed, and
        StorageError(storage_line(...)): the path, the space needed and free, the intact checkpoint.
    guard_write(path, need, intact) does the same for any other write (an export);
    atomic_write(path, write) writes a file whole or not at all (a temporary file renamed into place);
    append_line(f, path, line, ckpt_dir) appends a metrics line, cut back to the last whole line on failure.

StorageError carries exit_code STORAGE_EXIT (74, sysexits.h EX_IOERR), which the CLI returns.

`truncate_metrics(path, step)` drops the metrics rows past the checkpoint a resume starts from, so a
run that failed after its last checkpoint and was resumed does not log those steps twice; `resume_metrics`
does the same and returns the loss logged at that step, from the same read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from contextlib import contextmanager, suppress
from typing import Optional

from align.errors import AlignError
from align.train.rundir import checkpoints_dir, list_checkpoints, tmp_name

log = logging.getLogger("align.train")

STORAGE_EXIT = 74          # sysexits.h EX_IOERR: a write failed (full disk, I/O error); free space and rerun

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}
_STORAGE_WORDS = ("No space left on device", "Input/output error", "Disk quota exceeded", "Read-only file system",
                  "database or disk is full")        # SQLite's SQLITE_FULL (an Optuna study.db)


class StorageError(AlignError):
    """Writing a checkpoint, a metrics line or an export failed for lack of space or an I/O error."""

    exit_code = STORAGE_EXIT


def is_storage_error(exn: BaseException) -> bool:
    """ENOSPC/EIO/EDQUOT/EROFS, also when a library (safetensors, torch) re-raised it as its own error."""
    while exn is not None:
        if isinstance(exn, OSError) and exn.errno in _STORAGE_ERRNOS:
            return True
        if any(w in str(exn) for w in _STORAGE_WORDS):
            return True
        exn = exn.__cause__ or exn.__context__
    return False


def _human(n: Optional[float]) -> str:
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


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _reason(exn: BaseException) -> str:
    """The OS's words for the failure, also when a library wrapped it (the innermost OSError's)."""
    e = exn
    while e is not None:
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return os.strerror(e.errno)
        word = next((w for w in _STORAGE_WORDS if w in str(e)), None)
        if word:
            return word
        e = e.__cause__ or e.__context__
    return type(exn).__name__


def storage_line(exn: BaseException, path: str, need: Optional[int], intact: Optional[str],
                 kept: Optional[str] = None) -> str:
    """The one line: what failed, where, space needed and free, and which checkpoint is intact (or `kept`:
    what else is unharmed, e.g. an export's source)."""
    keep = kept or (f"the intact checkpoint is {intact}" if intact else "no intact checkpoint exists yet")
    again = "run the same command again" if kept else "run the same command to resume"
    needs = f"needs about {_human(need)}, " if need is not None else ""          # (unknown before the write)
    return (f"{path}: {_reason(exn)} ({needs}{_human(free_bytes(path))} free); partial files "
            f"removed; {keep}; free space and {again}")


def newest_step_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The newest complete step checkpoint (renamed into place: whole when written), or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def estimate_checkpoint_bytes(ckpt_dir: str) -> Optional[int]:
    """The next checkpoint's size, guessed as the newest one's; None before the first."""
    newest = newest_step_checkpoint(ckpt_dir)
    return dir_bytes(newest) if newest else None


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


@contextmanager
def checkpoint_write(ckpt_dir: str, name: str, is_main: bool, fallback_need: Optional[int] = None):
    """Around writing checkpoint `name`: warn ahead when it will not fit, and on a full disk remove its
    .tmp dir and stop with one line naming the checkpoint that is still intact."""
    need = estimate_checkpoint_bytes(ckpt_dir) or fallback_need
    if is_main:
        warn_if_tight(ckpt_dir, need)
    with guard_write(os.path.join(ckpt_dir, name), need, newest_step_checkpoint(ckpt_dir),
                     partial=os.path.join(ckpt_dir, tmp_name(name))):
        yield


def append_line(f, path: str, line: str, ckpt_dir: str) -> None:
    """Append `line` to `f`, the unbuffered binary file at `path` (so that nothing is left in a buffer to be
    written later). A full disk cuts the file back to its last whole line and raises StorageError naming the
    checkpoint a resume starts from (its rows past it are dropped then: truncate_metrics)."""
    data = memoryview(line.encode())
    end = os.fstat(f.fileno()).st_size
    try:
        while data:
            data = data[f.write(data):]
    except Exception as exn:
        if not is_storage_error(exn):
            raise
        with suppress(OSError):
            f.truncate(end)
        raise StorageError(storage_line(exn, path, len(line.encode()), newest_step_checkpoint(ckpt_dir))) from None


def warn_if_tight(directory: str, need: Optional[int], margin: float = 1.1) -> bool:
    """One warning when the next write of `need` bytes will not fit; True when it was said."""
    free = free_bytes(directory)
    if need is None or free is None or free >= need * margin:
        return False
    log.warning("%s: %s free, the next checkpoint needs about %s: it will not fit", directory,
                _human(free), _human(need))
    return True


def resume_metrics(path: str, step: int) -> float:
    """truncate_metrics(path, step), and the loss the rows kept logged at `step` (the last such row; NaN when none
    holds it): the final loss of a run resumed at its last step. Read line by line for both (see _truncate)."""
    return _truncate(path, step)[1]


def truncate_metrics(path: str, step: int) -> int:
    """Drop rows with "step" > step from a metrics.jsonl (atomic rewrite); returns how many were dropped."""
    return _truncate(path, step)[0]


def _truncate(path: str, step: int) -> tuple:
    """truncate_metrics: (rows dropped, the loss the kept rows logged at `step`, NaN when none). One read, one row at
    a time: the kept lines go to a temporary file as they are read, which replaces the file when a row was dropped
    (and is removed otherwise). It held every line and every parsed row (~1.7 KB a row: 1.6 GB at each resume of a
    run of a million logged steps)."""
    dropped, loss = 0, float("nan")
    if not os.path.isfile(path):
        return dropped, loss
    tmp = path + ".tmp"
    intact = newest_step_checkpoint(checkpoints_dir(os.path.dirname(path)))
    # a full disk: one line (StorageError) naming the checkpoint the resume starts from, the temporary file removed
    with guard_write(path, os.path.getsize(path), intact, partial=tmp):
        # bytes a damaged disk left that are not UTF-8 make their line unreadable JSON (dropped), not the resume fail
        with open(path, encoding="utf-8", errors="replace") as f, open(tmp, "w", encoding="utf-8") as out:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:                  # a line cut by the crash itself
                    row = None
                row_step = row.get("step") if isinstance(row, dict) else None
                # a cut line, JSON that is no row (`3`, `[1]`) or a row past `step`: dropped alike
                if not isinstance(row, dict) or (isinstance(row_step, (int, float)) and row_step > step):
                    dropped += 1
                    continue
                out.write(line if line.endswith("\n") else line + "\n")
                if step > 0 and row_step == step and isinstance(row.get("loss"), (int, float)):
                    loss = float(row["loss"])
    if dropped:
        os.replace(tmp, path)
    else:
        os.remove(tmp)
    return dropped, loss
