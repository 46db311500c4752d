"""Tables and folders of pairs given where shards go: `data.train=pairs.csv`, `data.train=voices/`, `data.val=val.csv`.

A user's CSV / TSV / JSONL / Parquet file, folder of pairs (`x.wav` + `x.txt`, `x.jpg` + `x.txt`) or Hugging
Face `save_to_disk` folder, named in data.train, is written once as shards by `write_shards` (columns
auto-detected; the other columns, e.g. a speaker or writer, kept in each sample's json for data.val_split's
`groups_from`) into a cache folder named by the input's content, and training reads the shards from there:

    CACHE/shards/{input stem}-{hash of (absolute input path, content fingerprint, write settings)}/shard-*.tar

data.val takes the same inputs, written in CLIP_benchmark's layout (`layout="clip_benchmark"`: test/*.tar,
classnames.txt and zero-shot templates from a label column, else a retrieval set of the captions), as
`align data shards --layout clip_benchmark` writes them; the layout is part of the hash.

CACHE is data.shards_cache, else $ALIGN_CACHE, else $XDG_CACHE_HOME/align, else ~/.cache/align. A second run
on the same input (a resume, a sweep's next trial) finds the shards written and reads them at once; an edited
input (another fingerprint: the table file's bytes; the folder's file names, sizes and modification times)
gets a new folder. The files a table names are not part of its fingerprint (stating a million paths at every
start would cost more than it saves): after replacing them in place, edit or touch the table. A build cut
short (SIGKILL, a full disk) resumes where it stopped, as `align data shards` does (.done records). Two runs
building the same folder at once: the second waits for the first's lock (align.runlock), then reads.

    entry_input(entry)  -> the input path when `entry` (one data.train entry) is a table / folder of pairs, else None
    val_input(val)      -> the same for data.val (a folder already in CLIP_benchmark's layout is not one)
    cached_shards(path, cache=None, ...) -> the folder of shards (written first when not complete)
    cache_folder(path, cache=None, ...)  -> the folder cached_shards would read or write, nothing written
    check_cached(folder)                 -> folder, or one line when it is not complete (the other ranks' check)
    cached_folders(cache) / prune_cached(rows) -> the cache's folders and whether a run still reads each; the
                           removal of those none does (`align data cache [--prune]`: old folders are never
                           removed by a run)
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Callable, List, Optional

from align.data.write.inputs import TABLE_SUFFIXES, open_input
from align.data.write.jobdir import JOB_FILE, write_json_atomic
from align.errors import AlignError, DataError
from align.limits import DEFAULT_LIMITS, as_limits
from align.runlock import DirectoryBusy, live_holder

CACHE_VERSION = 1
CACHE_FILE = "cache.json"   # which input the folder holds (for people); written last, when it is complete
# Written as `align data shards --image-format source` writes (FLAC audio at 16 kHz, or at the audio tower's
# `sample_rate` when the recipe sets one; images as the user's own bytes where nothing must change, else
# lossless PNG -- JPEG q95 only for a JPEG that must be rotated --, their size kept: the pixels trained on are
# the input's), as TARGET_SHARDS shards (at most MAX_SHARD_SIZE samples each: more for a big input), so that up
# to that many readers (ranks x data workers) each get some.
SETTINGS = {"sample_rate": 16000, "image_format": "source", "image_quality": 95}
TARGET_SHARDS, MAX_SHARD_SIZE = 16, 1000
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9_.-]+-[0-9a-f]{16}$")    # NAME-HASH, as _key_and_folder names them


def entry_input(entry: str) -> Optional[Path]:
    """The local path of a data.train entry that names a table file, a folder of pairs or a `save_to_disk`
    folder (no `.tar` in it), else None (shards, a pattern, a URL, `synthetic`: read as before)."""
    if not isinstance(entry, str) or _URL.match(entry) or "::" in entry or set("*?[{") & set(entry):
        return None
    path = Path(entry).expanduser()
    if path.is_file():
        return path if path.suffix.lower() in TABLE_SUFFIXES else None
    if path.is_dir() and not glob.glob(os.path.join(glob.escape(str(path)), "*.tar")):
        return path
    return None


def val_input(val) -> Optional[Path]:
    """The local path of a data.val naming a table file or folder of pairs, else None (a CLIP_benchmark folder,
    which has test/nshards.txt, is read as it is)."""
    path = entry_input(val)
    return None if path is None or (path / "test" / "nshards.txt").is_file() else path


def cache_root(given: Optional[str] = None) -> Path:
    """The cache folder (module docstring)."""
    if given:
        return Path(given).expanduser()
    if os.environ.get("ALIGN_CACHE"):
        return Path(os.environ["ALIGN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "align"


def shard_size_for(n_rows: int) -> int:
    """Samples per shard: TARGET_SHARDS shards, none above MAX_SHARD_SIZE samples."""
    return max(1, min(MAX_SHARD_SIZE, math.ceil(n_rows / TARGET_SHARDS)))


def cached_shards(path, cache: Optional[str] = None, *, limits=None, progress: bool = True,
                  printer: Callable[[str], None] = print, wait_s: float = 2.0, layout: str = "shards",
                  sample_rate: Optional[int] = None) -> str:
    """The folder holding `path`'s shards, written first (or finished) when it is not complete. Raises DataError
    in one line for an unreadable input (write_shards' messages). layout: "shards" (data.train) or
    "clip_benchmark" (an eval set, data.val). sample_rate: the audio's rate in the shards (default 16 kHz; the
    audio tower's, so that a 48 kHz tower keeps its band), part of the folder's key."""
    what = "data.val" if layout == "clip_benchmark" else "data.train"     # the key named in the lines printed
    path, inp, limits, key, out = _locate(path, cache, limits, layout, sample_rate)
    if (out / CACHE_FILE).is_file():     # written last: the folder is complete
        printer(f"{what}: {path} -> its shards in {out} (written earlier)")
        return str(out)
    from align.data.write.shards import write_shards
    printer(f"{what}: {path} is a {inp.kind} input, not shards: writing {len(inp)} rows as shards to {out} "
            f"(once; later runs on the same input read them)")
    said = False
    while True:
        try:
            stats = write_shards(path, out, shard_size=key["shard_size"], progress=progress, limits=limits,
                                 workers=1 if len(inp) < 2000 else max(1, min(8, os.cpu_count() or 1)),
                                 layout=layout, **_settings(sample_rate))
            break
        except DirectoryBusy:   # another run writes the same folder: wait, then resume (= read) it
            if not said:
                printer(f"{what}: another process is writing {out} ({live_holder(str(out)) or 'its lock'}); "
                        "waiting for it to finish")
                said = True
            time.sleep(wait_s)
    write_json_atomic(out / CACHE_FILE, dict(key, written=stats["written"], skipped=stats["skipped"]))
    skipped = f", {stats['skipped']} rows skipped (see {out / 'skipped.jsonl'})" if stats["skipped"] else ""
    printer(f"{what}: {stats['written']} samples in {stats['shards']} shards{skipped}")
    return str(out)


def cache_folder(path, cache: Optional[str] = None, *, limits=None, layout: str = "shards",
                 sample_rate: Optional[int] = None) -> str:
    """The folder cached_shards reads or writes for `path` as it is now (written or not)."""
    return str(_locate(path, cache, limits, layout, sample_rate)[-1])


def _locate(path, cache, limits, layout: str, sample_rate: Optional[int]):
    """(absolute path, its opened input, limits, cache key, folder) for `path` as it is now."""
    path = Path(path).expanduser().absolute()
    # exclude: a cache placed inside an input folder is not part of its own input
    inp = open_input(path, exclude=cache_root(cache).resolve())
    limits = as_limits(limits)
    return (path, inp, limits) + _key_and_folder(path, inp, cache, limits, layout, _settings(sample_rate))


def _settings(sample_rate: Optional[int]) -> dict:
    """SETTINGS with the audio rate the run's tower reads (a 48 kHz tower must not get 16 kHz audio)."""
    return dict(SETTINGS, sample_rate=int(sample_rate or SETTINGS["sample_rate"]))


def _key_and_folder(path: Path, inp, cache, limits, layout: str, settings: dict):
    """(the cache key of `path` as `inp` holds it now, the folder it names)."""
    key = {"version": CACHE_VERSION, "input": str(path), "fingerprint": inp.fingerprint(), "rows": len(inp),
           "shard_size": shard_size_for(len(inp)), **settings}
    if layout != "shards":           # an eval set of the same input is another folder
        key["layout"] = layout
    if limits != DEFAULT_LIMITS:     # data.limits decides which rows are skipped: other limits, other shards
        key["limits"] = dataclasses.asdict(limits)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name or "input")[:40]
    return key, cache_root(cache) / "shards" / f"{stem}-{digest}"


def cached_folders(cache: Optional[str] = None) -> List[dict]:
    """Every folder under CACHE/shards: {folder, input, samples, bytes, status}. status: "current" (a run on
    its input today reads it), "input changed" / "input gone" / "input unreadable" / "written by another
    version" (no run reads it again), "incomplete" (a build cut short; the next run on the same input finishes
    it), "being written" (a live process holds its lock) or NOT_OURS (a folder align did not write there)."""
    root = cache_root(cache) / "shards"
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        row = {"folder": str(folder), "input": None, "samples": None, "bytes": size}
        complete = (folder / CACHE_FILE).is_file()
        if live_holder(str(folder)):
            row["status"] = "being written"
        elif not _FOLDER_NAME.match(folder.name) or not (complete or (folder / JOB_FILE).is_file()):
            row["status"] = NOT_OURS     # (a --cache pointed at the user's own folder of shards: never removed)
        else:
            row.update(_status(folder, cache) if complete else {"status": "incomplete"})
        out.append(row)
    return out


def _status(folder: Path, cache) -> dict:
    try:
        with open(folder / CACHE_FILE) as f:
            saved = json.load(f)
        path = Path(saved["input"])
    except (OSError, ValueError, KeyError, TypeError):
        return {"status": "incomplete"}
    row = {"input": str(path), "samples": saved.get("written")}
    if saved.get("version") != CACHE_VERSION or any(saved.get(k) != v for k, v in SETTINGS.items()
                                                     if k != "sample_rate"):   # (the rate follows the tower)
        return dict(row, status="written by another version")
    if not path.exists():
        return dict(row, status="input gone")
    try:
        inp = open_input(path, exclude=cache_root(cache).resolve())
        _, want = _key_and_folder(path, inp, cache, as_limits(saved.get("limits")), saved.get("layout", "shards"),
                                  _settings(saved.get("sample_rate")))
    except AlignError:
        return dict(row, status="input unreadable")
    return dict(row, status="current" if want.name == folder.name else "input changed")


NOT_OURS = "not a cache folder, kept"
PRUNED = ("input changed", "input gone", "input unreadable", "written by another version", "incomplete")


def prune_cached(rows: List[dict]) -> List[dict]:
    """Removes the folders of cached_folders' `rows` that no run would read (status in PRUNED: never "current",
    "being written" nor NOT_OURS); returns their rows. A folder whose lock a live process took since is left."""
    import shutil
    gone = []
    for row in rows:
        if row["status"] in PRUNED and not live_holder(row["folder"]):
            shutil.rmtree(row["folder"])
            gone.append(row)
    return gone


def check_cached(folder: str) -> str:
    """`folder` when it holds a complete cache folder: what the other ranks check of the folder the main process
    wrote (they never re-read the input); else one DataError line."""
    if not os.path.isfile(os.path.join(folder, CACHE_FILE)):
        raise DataError(f"{folder}: the main process wrote these shards there and this process does not "
                        "see them; data.shards_cache must be a folder every node shares")
    return folder
