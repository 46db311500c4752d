"""A full or failing disk as one clear line, and a metrics log that never holds a step twice.

    need = estimate_checkpoint_bytes(ckpt_dir)           # the newest checkpoint's size, else None
    warn_if_tight(out_dir, need)                          # one warning when the next one will not fit
    try: save(...)
    except Exception as exn:
        if is_storage_error(exn): raise StorageError(storage_line(exn, path, need, intact))

`truncate_metrics(path, step)` drops the metrics rows past the checkpoint a resume starts from, so a
run that failed after its last checkpoint and was resumed does not log those steps twice.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from typing import Optional

from align.errors import AlignError

log = logging.getLogger("align.train")

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}
_STORAGE_WORDS = ("No space left on device", "Input/output error", "Disk quota exceeded", "Read-only file system")


class StorageError(AlignError):
    """Writing a checkpoint, a metrics line or an export failed for lack of space or an I/O error."""


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


def storage_line(exn: BaseException, path: str, need: Optional[int], intact: Optional[str]) -> str:
    """The one line: what failed, where, space needed and free, and which checkpoint is intact."""
    reason = next((w for w in _STORAGE_WORDS if w in str(exn)), None) or (
        os.strerror(exn.errno) if isinstance(exn, OSError) and exn.errno else type(exn).__name__)
    keep = f"the intact checkpoint is {intact}" if intact else "no intact checkpoint exists yet"
    return (f"{path}: {reason} (needs about {_human(need)}, {_human(free_bytes(path))} free); partial files "
            f"removed; {keep}; free space and run the same command to resume")


def warn_if_tight(directory: str, need: Optional[int], margin: float = 1.1) -> bool:
    """One warning when the next write of `need` bytes will not fit; True when it was said."""
    free = free_bytes(directory)
    if need is None or free is None or free >= need * margin:
        return False
    log.warning("%s: %s free, the next checkpoint needs about %s: it will not fit", directory,
                _human(free), _human(need))
    return True


def truncate_metrics(path: str, step: int) -> int:
    """Drop rows with "step" > step from a metrics.jsonl (atomic rewrite); returns how many were dropped."""
    if not os.path.isfile(path):
        return 0
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row_step = json.loads(line).get("step")
            except ValueError:                  # a line cut by the crash itself
                dropped += 1
                continue
            if isinstance(row_step, (int, float)) and row_step > step:
                dropped += 1
            else:
                keep.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return dropped
