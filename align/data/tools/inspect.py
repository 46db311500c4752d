"""`align data inspect PATTERN`: check local webdataset shards before training, as training reads them.

`inspect_shards` expands a brace pattern / glob / directory and reads every
shard through training's own path (`align.data.stream.sources.shard_samples`: the
same tar reader, key split, grouping and duplicate rule) and decodes each
sample with training's own decoder (`align.data.stream.decode.decode_raw`: the same
extension table and checks).  So its `skipped` counts, by reason, are the
counts a training epoch over these shards with the same modalities would give
(`loader.skipped`); only transform failures, which need a recipe, are not
checked.  It prints the first `n` samples and a summary and returns all of it
as a dict.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from align.data.stream.faults import (CORRUPT_TAR, MISSING_SHARD, SHARD_REASONS, UNREADABLE_SHARD, FaultCounter,
                                      SkipSample, format_counts, skipped_samples)
from align.data.stream.sources import expand_urls, local_path, shard_samples
from align.errors import DataError, printable
from align.limits import as_limits
from align.data.stream.decode import decode_raw
from align.wds.format import MODALITIES, MODALITY_EXTS

_MAX_FAILURES_LISTED = 20  # per shard; the counts are always exact


def expand_pattern(pattern: str) -> Tuple[List[str], List[str]]:
    """pattern -> (existing shard paths, named shards that do not exist), expanded by training's own
    `expand_urls` (`::`, braces, globs, a folder's *.tar), so the same shards in the same order, a shard
    named twice read twice, as training reads them."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", pattern) and not pattern.startswith("file:") and not os.path.exists(pattern):
        raise DataError(f"{pattern}: inspect reads local shards only (no URLs or pipe:)")
    urls = expand_urls(pattern)
    remote = [u for u in urls if local_path(u) is None]
    if remote:
        raise DataError(f"{remote[0]}: inspect reads local shards only (no URLs or pipe:)")
    paths = [local_path(u) for u in urls]
    found = [p for p in paths if os.path.isfile(p)]
    if not found:
        raise DataError(f"no shards match {pattern!r}")
    return found, [p for p in paths if not os.path.isfile(p)]


def _shown(decoded: Dict[str, Any]) -> Dict[str, Any]:
    """What to print of a decoded sample."""
    out: Dict[str, Any] = {}
    if "image" in decoded:
        out["image"] = f"{decoded['image'].size[0]}x{decoded['image'].size[1]}"
    if "audio" in decoded:
        wave, sr = decoded["audio"]
        out["audio"] = {"duration": round(len(wave) / sr, 3), "sample_rate": int(sr)}
    if "text" in decoded:
        out["caption"] = decoded["text"][0]
    if decoded.get("cls", -1) != -1:
        out["label"] = decoded["cls"]
    return out


def inspect_shard(path: str, decode: Optional[int] = None, first: Optional[List[dict]] = None,
                  n_first: int = 0, modalities: Sequence[str] = MODALITIES, min_modalities: int = 2,
                  limits=None, pairs=None) -> Dict[str, Any]:
    """Read one shard. decode: how many samples to decode (None = all). Appends up to
    n_first sample summaries to `first`. limits: data.limits (DataLimits or a mapping; None: defaults).
    pairs: the loss's modality pairs, as training skips a sample in none of them (decode_raw)."""
    info: Dict[str, Any] = {"path": path, "bytes": os.path.getsize(path), "samples": 0, "seen": 0,
                            "skipped": Counter(), "modalities": Counter(), "layouts": Counter(), "failures": [],
                            "duplicate_keys": 0, "error": None}
    faults = FaultCounter(warn=False, keep=_MAX_FAILURES_LISTED)
    seen_keys = set()
    min_modalities = min(min_modalities, len(modalities))
    for raw in shard_samples(path, faults, limits=limits):
        info["samples"] += 1
        key = raw["__key__"]
        if key in seen_keys:  # not a fault for training (two samples), but usually a writer's mistake
            info["duplicate_keys"] += 1
        seen_keys.add(key)
        exts = sorted(k for k in raw if not k.startswith("__"))
        info["modalities"].update(exts)
        info["layouts"]["+".join(exts)] += 1
        if decode is not None and info["samples"] > decode:
            continue
        shown: Dict[str, Any] = {"key": key, "shard": os.path.basename(path)}
        try:
            shown.update(_shown(decode_raw(raw, modalities, min_modalities, limits=limits, pairs=pairs)))
        except SkipSample as s:
            info["skipped"][s.reason] += 1
            if len(info["failures"]) < _MAX_FAILURES_LISTED:
                info["failures"].append({"key": key, "reason": s.reason, "error": s.detail})
            shown["failed"] = s.reason
        if first is not None and len(first) < n_first:
            first.append(shown)
    info["skipped"].update(faults.total)
    info["seen"] = info["samples"] + faults.take_delta()[1]
    for reason, where, detail in faults.examples:
        if reason in SHARD_REASONS:
            info["error"] = f"{reason}: {detail}"
        elif len(info["failures"]) < _MAX_FAILURES_LISTED:
            info["failures"].append({"key": where, "reason": reason, "error": detail})
    info["skipped"] = dict(sorted(info["skipped"].items()))
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
        parts.append(repr(cap))
    if sample.get("failed"):
        parts.append(f"SKIPPED: {sample['failed']}")
    return "  ".join(parts)


def shard_modalities(exts: Dict[str, int]) -> List[str]:
    """The modalities whose members the shards hold (member extension -> count, as inspect_shard counts them)."""
    return [m for m in MODALITIES if any(exts.get(e) for e in MODALITY_EXTS[m])]


def inspect_shards(pattern: str, n: int = 3, check_all: bool = True, quiet: bool = False, progress: bool = True,
                   modalities: Optional[Sequence[str]] = None, min_modalities: int = 2,
                   limits=None, pairs=None) -> Dict[str, Any]:
    """Inspect the shards matching `pattern`; print the first n samples and a summary (unless quiet);
    return per-shard and total counts. `skipped` (by reason) and `seen` are what training with these
    `modalities` (None: every modality, as training's default; the summary then names the modalities the
    shards hold, `result["checked"]`) and loss `pairs` [(a, b), ...] (a sample in none of them is skipped) counts.
    check_all=False decodes only the first n samples (all tars are still read).
    limits: data.limits, as training's (align.limits.DataLimits or a mapping of some of its fields)."""
    limits = as_limits(limits)
    asked = modalities is not None
    modalities = list(modalities) if asked else list(MODALITIES)
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise DataError(f"modalities {list(modalities)}: each must be one of {', '.join(MODALITIES)}")
    bad = [f"{a}-{b}" for a, b in pairs or () if a not in modalities or b not in modalities]
    if bad:
        raise DataError(f"pairs {', '.join(bad)}: each modality must be one of {'+'.join(modalities)}")
    paths, missing = expand_pattern(pattern)
    from align.progress import progress as tqdm   # plain lines off a terminal
    first: List[dict] = []
    shards = []
    for path in tqdm(paths, unit="shard", desc="inspect", disable=not progress or len(paths) < 2):
        budget = None if check_all else max(0, n - len(first))
        shards.append(inspect_shard(path, decode=budget, first=first, n_first=n, modalities=modalities,
                                    min_modalities=min_modalities, limits=limits, pairs=pairs))
    mods: Counter = Counter()
    skipped: Counter = Counter({MISSING_SHARD: len(missing)} if missing else {})
    for s in shards:
        mods.update(s["modalities"])
        skipped.update(s["skipped"])
    samples = sum(s["samples"] for s in shards)
    per_sample = skipped_samples(skipped)
    result = {"pattern": pattern, "shards": shards, "missing": missing, "samples": samples,
              "seen": sum(s["seen"] for s in shards) + len(missing), "skipped": dict(sorted(skipped.items())),
              "usable": samples - per_sample if check_all else None, "modalities": dict(sorted(mods.items())),
              "corrupt": [s["path"] for s in shards
                          if s["skipped"].get(CORRUPT_TAR) or s["skipped"].get(UNREADABLE_SHARD)],
              "first": first}
    result["checked"] = modalities if asked else shard_modalities(result["modalities"])
    if not quiet:
        for sample in first:
            print(printable(_show(sample)))
        for s in shards:
            if s["error"] or s["skipped"] or len(s["layouts"]) > 1 or s["duplicate_keys"]:
                fails = "; ".join(f"{f['key']}: {f['reason']}" + (f" ({f['error'][:80]})" if f["error"] else "")
                                  for f in s["failures"][:3])
                print(printable(f"{s['path']}: {s['samples']} samples {s['layouts']}"
                      + (f", skipped {format_counts(s['skipped'])} ({fails})" if s["skipped"] else "")
                      + (f", {s['duplicate_keys']} repeated keys" if s["duplicate_keys"] else "")
                      + (f", {s['error']}" if s["error"] else "")))
        for m in missing:
            print(f"{m}: missing")
        exts = ", ".join(f"{k} {v}" for k, v in result["modalities"].items()) or "none"
        print(f"{len(shards)} shards, {samples} samples ({exts}); skipped "
              + (f"{sum(skipped.values())} ({format_counts(skipped)})" if skipped else "0")
              + ("" if check_all else f" in the first {n} samples")
              + f" for modalities {'+'.join(result['checked']) or 'none'}"
              + ("" if asked else " (found in the shards)")
              + (f" and pairs {', '.join(f'{a}-{b}' for a, b in pairs)}" if pairs else "")
              + f"; {len(result['corrupt'])} corrupt/truncated shards; "
              f"{len(missing)} missing")
    return result
