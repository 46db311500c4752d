"""The output folder of a shard job (`align data shards --out`): taken as a resume of the same job, refused
when it holds anything else, or cleared of this job's own files only (overwrite); the job's JSON files
written atomically. The job's lock files (align.runlock) never count as the user's.

    prepare_dir(out, settings, overwrite)     # .done/job.json records the settings a resume must match
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict

from align.errors import DataError
from align.runlock import is_lock_file
from align.text import json_utf8
from align.writes import write_whole

CB_SPLIT = "test"          # the split CLIP_benchmark's CLI and `align bench` read by default
JOB_FILE = Path(".done") / "job.json"   # a job's settings, written first in its folder (what a resume must match)
CB_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")
KEPT = "the finished shards are kept (a rerun writes only the others)"     # a full disk's line says it


def write_json_atomic(path: Path, obj: Any, lines: bool = False) -> None:
    """`obj` as JSON (or one JSON line per item) at `path`, written to a temporary file, fsynced, then renamed; a
    full disk is one line naming `path` (StorageError), the temporary file removed."""
    def write(f):
        if lines:
            for item in obj:
                f.write((json_utf8(json.dumps(item, ensure_ascii=False, sort_keys=True)) + "\n").encode("utf-8"))
        else:
            f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    write_whole(path, write, KEPT)


def _user_files(out: Path) -> list:
    """What is in `out` besides this job's own lock files."""
    return [p for p in out.iterdir() if not is_lock_file(p.name)]


def prepare_dir(out: Path, settings: Dict[str, Any], overwrite: bool) -> None:
    """Create `out`, or accept it as a previous run of this job, or refuse it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / JOB_FILE
    previous = None
    if job_path.is_file():
        try:
            previous = json.loads(job_path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    if previous == settings and not overwrite:
        return  # resume
    if _user_files(out) and not overwrite:
        if previous is None:
            raise DataError(f"output {out} is not empty and holds no previous run of this job (no .done/job.json); "
                            "choose an empty directory or pass --overwrite (overwrite=True from Python)")
        diff = [k for k in sorted(set(settings) | set(previous)) if settings.get(k) != previous.get(k)]
        raise DataError(f"output {out} holds a run with other settings ({', '.join(diff)} differ: "
                        + "; ".join(f"{k}: was {previous.get(k)!r}, now {settings.get(k)!r}" for k in diff[:3])
                        + "); choose another directory or pass --overwrite (overwrite=True from Python)")
    if _user_files(out):
        # overwrite=True: remove only what a shard job writes, never the user's other files.
        prefixes = {settings["prefix"], (previous or {}).get("prefix") or settings["prefix"]}
        for p in out.iterdir():
            if p.name in ("stats.json", "skipped.jsonl", "classes.json") + CB_FILES or any(
                    re.fullmatch(re.escape(px) + r"-\d+\.tar(\.tmp)?", p.name) for px in prefixes):
                p.unlink()
        if (out / CB_SPLIT).is_dir():  # a clip_benchmark layout's shards
            for p in (out / CB_SPLIT).iterdir():
                if p.name == "nshards.txt" or re.fullmatch(r"\d+\.tar(\.tmp)?", p.name):
                    p.unlink()
        shutil.rmtree(out / ".done", ignore_errors=True)
    (out / ".done").mkdir(exist_ok=True)
    write_json_atomic(job_path, settings)
