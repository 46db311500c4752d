"""`align data inspect PATTERN`: check local webdataset shards before training.

`inspect_shards` expands a brace pattern / glob / directory, reads every tar
member, groups members into samples by key (as webdataset does), counts
samples and the modalities (file extensions) seen, tries to decode images
(PIL), audio (soundfile), captions and labels (UTF-8) and json, reports
corrupt or truncated tars, prints the first `n` samples and a summary, and
returns all of it as a dict.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from align.errors import DataError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"}
AUDIO_EXTS = {"flac", "wav", "ogg", "mp3", "opus"}
TEXT_EXTS = {"txt", "text", "caption"}
LABEL_EXTS = {"cls", "cls2", "label"}
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key/extension split
_MAX_FAILURES_LISTED = 20  # per shard; the count is always exact


def expand_pattern(pattern: str) -> Tuple[List[str], List[str]]:
    """pattern -> (existing shard paths in order, brace-expanded names that do not exist)."""
    import braceexpand
    if re.match(r"^[a-z][a-z0-9+.-]*:", pattern) and not os.path.exists(pattern):
        raise DataError(f"{pattern}: inspect reads local shards only (no URLs or pipe:)")
    if os.path.isdir(pattern):
        found = sorted(str(p) for p in Path(pattern).iterdir() if p.is_file() and re.search(r"\.tar(\.gz)?$", p.name))
        if not found:
            raise DataError(f"no shards (*.tar) in directory {pattern}")
        return found, []
    found, missing = [], []
    for piece in braceexpand.braceexpand(pattern):
        if any(c in piece for c in "*?["):
            found += sorted(glob.glob(piece))
        elif os.path.isfile(piece):
            found.append(piece)
        else:
            missing.append(piece)
    found = list(dict.fromkeys(found))
    if not found:
        raise DataError(f"no shards match {pattern!r}")
    return found, missing


def _decode(ext: str, data: bytes) -> Dict[str, Any]:
    """Decode one member; returns what to show, raises on failure."""
    if ext in IMAGE_EXTS:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return {"image": f"{img.size[0]}x{img.size[1]}"}
    if ext in AUDIO_EXTS:
        import soundfile as sf
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # [T, C]
        return {"audio": {"duration": round(wave.shape[0] / sr, 3), "sample_rate": int(sr)}}
    if ext in TEXT_EXTS:
        caps = [c.strip() for c in data.decode("utf-8").splitlines() if c.strip()]
        if not caps:
            raise ValueError("empty caption")
        return {"caption": caps[0], "captions": len(caps)}
    if ext in LABEL_EXTS:
        label = data.decode("utf-8").strip()
        if not label:
            raise ValueError("empty label")
        return {"label": label}
    if ext == "json":
        json.loads(data.decode("utf-8"))
    return {}


def _end_marker_ok(path: str, offset: int) -> bool:
    """An uncompressed tar ends with two zero 512-byte blocks after the last member;
    a tar cut exactly at a member boundary reads fine but lacks them."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(1024)
    return len(tail) == 1024 and not any(tail)


def _compressed(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def inspect_shard(path: str, decode: Optional[int] = None, first: Optional[List[dict]] = None,
                  n_first: int = 0) -> Dict[str, Any]:
    """Read one shard. decode: how many samples to decode (None = all). Appends up to
    n_first sample summaries to `first`."""
    info: Dict[str, Any] = {"path": path, "bytes": os.path.getsize(path), "samples": 0, "modalities": Counter(),
                            "layouts": Counter(), "decode_failures": 0, "failures": [], "duplicate_keys": 0,
                            "error": None}
    seen = set()

    def flush(key: Optional[str], members: Dict[str, bytes]) -> None:
        if key is None:
            return
        info["samples"] += 1
        if key in seen:
            info["duplicate_keys"] += 1
        seen.add(key)
        info["modalities"].update(members.keys())
        info["layouts"]["+".join(sorted(members))] += 1
        if decode is not None and info["samples"] > decode:
            return
        shown: Dict[str, Any] = {"key": key, "shard": os.path.basename(path)}
        for ext, data in sorted(members.items()):
            try:
                shown.update(_decode(ext, data))
            except Exception as e:  # any decoder error is a decode failure of this member
                info["decode_failures"] += 1
                if len(info["failures"]) < _MAX_FAILURES_LISTED:
                    info["failures"].append({"key": key, "ext": ext, "error": f"{type(e).__name__}: {e}"})
                shown.setdefault("failed", []).append(ext)
        if first is not None and len(first) < n_first:
            first.append(shown)

    key, members = None, {}
    compressed = _compressed(path)
    try:
        with tarfile.open(path, "r:*" if compressed else "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                match = _KEY_EXT.match(m.name)
                k, ext = (match.group(1), match.group(2).lower()) if match else (m.name, "")
                if k != key or ext in members:
                    flush(key, members)
                    key, members = k, {}
                members[ext] = tf.extractfile(m).read()
            flush(key, members)
            key = None
            if not compressed and not _end_marker_ok(path, tf.offset):
                info["error"] = "truncated tar: no end-of-archive marker after the last member"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        # The sample being read when the tar broke is not counted: it may lack members.
        info["error"] = f"corrupt or truncated tar: {e}"
    info["modalities"] = dict(sorted(info["modalities"].items()))
    info["layouts"] = dict(sorted(info["layouts"].items()))
    return info


def _show(sample: Dict[str, Any]) -> str:
    parts = [sample["key"]]
    if "image" in sample:
        parts.append(f"image {sample['image']}")
    if "audio" in sample:
        a = sample["audio"]
        parts.append(f"audio {a['duration']:.2f}s@{a['sample_rate']}Hz")
    if "label" in sample:
        parts.append(f"label {sample['label']}")
    if "caption" in sample:
        cap = sample["caption"] if len(sample["caption"]) <= 70 else sample["caption"][:67] + "..."
        more = f" (+{sample['captions'] - 1})" if sample.get("captions", 1) > 1 else ""
        parts.append(f"{cap!r}{more}")
    if sample.get("failed"):
        parts.append(f"FAILED: {', '.join(sample['failed'])}")
    return "  ".join(parts)


def inspect_shards(pattern: str, n: int = 3, check_all: bool = True, quiet: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """Inspect the shards matching `pattern`; print the first n samples and a
    summary (unless quiet); return per-shard and total counts. check_all=False
    decodes only the first n samples (all tars are still read end to end)."""
    paths, missing = expand_pattern(pattern)
    from tqdm.auto import tqdm
    first: List[dict] = []
    shards = []
    for path in tqdm(paths, unit="shard", desc="inspect", disable=not progress or len(paths) < 2):
        budget = None if check_all else max(0, n - len(first))
        shards.append(inspect_shard(path, decode=budget, first=first, n_first=n))
    modalities: Counter = Counter()
    for s in shards:
        modalities.update(s["modalities"])
    result = {"pattern": pattern, "shards": shards, "missing": missing,
              "samples": sum(s["samples"] for s in shards), "modalities": dict(sorted(modalities.items())),
              "decode_failures": sum(s["decode_failures"] for s in shards),
              "corrupt": [s["path"] for s in shards if s["error"]], "first": first}
    if not quiet:
        for sample in first:
            print(_show(sample))
        for s in shards:
            if s["error"] or s["decode_failures"] or len(s["layouts"]) > 1 or s["duplicate_keys"]:
                fails = "; ".join(f"{f['key']}.{f['ext']}: {f['error']}" for f in s["failures"][:3])
                print(f"{s['path']}: {s['samples']} samples {s['layouts']}"
                      + (f", {s['decode_failures']} decode failures ({fails})" if s["decode_failures"] else "")
                      + (f", {s['duplicate_keys']} duplicate keys" if s["duplicate_keys"] else "")
                      + (f", {s['error']}" if s["error"] else ""))
        for m in missing:
            print(f"{m}: missing")
        mods = ", ".join(f"{k} {v}" for k, v in result["modalities"].items()) or "none"
        print(f"{len(shards)} shards, {result['samples']} samples ({mods}); "
              f"{result['decode_failures']} decode failures"
              + ("" if check_all else f" in the first {n} samples")
              + f"; {len(result['corrupt'])} corrupt/truncated shards; {len(missing)} missing")
    return result
