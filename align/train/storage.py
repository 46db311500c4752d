"""A full or failing disk as one clear line, and a metrics log that never holds a step twice.

    with checkpoint_write(ckpt_dir, name, is_main, fallback_need):   # align.train.setup.save
        save_checkpoint(...)
      - before: warn_if_tight with the newest checkpoint's size (one warning when the next will not fit);
      - on ENOSPC/EIO/EDQUOT/EROFS (also wrapped by safetensors or torch): the .tmp dir removed, and
        StorageError(storage_line(...)): the path, the space needed and free, the intact checkpoint.
    (guard_write(path, need, intact) does the same for any other write, and atomic_write(path, write) writes a
    file whole or not at all: both are align.writes', which every command imports from there);
    append_line(f, path, line, ckpt_dir) appends a metrics line, cut back to the last whole line on failure.

StorageError (align.writes) carries exit_code STORAGE_EXIT (74, sysexits.h EX_IOERR), which the CLI returns.

`truncate_metrics(path, step)` drops the metrics rows past the checkpoint a resume starts from, so a
run that failed after its last checkpoint and was resumed does not log those steps twice; `resume_metrics`
does the same and returns the loss logged at that step, from the same read.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager, suppress
from typing import Optional

from align.train.rundir import checkpoints_dir, list_checkpoints, tmp_name
# the writers every command shares (a file whole or not at all, a full disk as one line), in the base layer
from align.writes import StorageError, free_bytes, guard_write, human_bytes, is_storage_error, storage_line

log = logging.getLogger("align.train")


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def newest_step_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The newest complete step checkpoint (renamed into place: whole when written), or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def estimate_checkpoint_bytes(ckpt_dir: str) -> Optional[int]:
    """The next checkpoint's size, guessed as the newest one's; None before the first."""
    newest = newest_step_checkpoint(ckpt_dir)
    return dir_bytes(newest) if newest else None


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
                human_bytes(free), human_bytes(need))
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
