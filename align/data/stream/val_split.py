"""`data.val_split`: unseen groups carved out of the training shards, so that every run has a held-out signal.

    data:
      train: shards/{000000..000099}.tar
      val_split: {groups_from: speaker, frac: 0.1}        # whole speakers held out, chosen by a seeded hash
      # or {groups_from: speaker, groups: [s07, s12]}      # these speakers held out
      # or {frac: 0.05}                                     # no groups: a random 5% of samples (said in one line)

A sample's group is read from its `.json` (what `align data shards` writes): `COL` is the field `COL` of the
JSON's `extra` (the input's other columns) or of the JSON itself; `COL:N` is field N (0-based, negative from the
end) of the file name the sample came from (`source.COL`, e.g. `audio:0` for `s07_take3.wav`) or of that field's
value, split at '/', '_' and '-' with the extension dropped (as `align data shards --val-groups-from`); `key:N`
is field N of the sample key. A sample without a group is kept out of both sides and counted. Group ids are
compared as written (stripped of surrounding whitespace): ids that differ only by case, Unicode form or the
spelling of a number ("Alice"/"alice", NFC/NFD "José", "7"/"07"/"7.0") are different groups, so each such set
is listed (`lookalike_groups`) for the caller to warn about: one speaker may be on both sides.

Training drops the held-out samples before decoding (`held_out`, applied in the worker's raw stream, so the
data position of a checkpoint and resume are unchanged by it); `write_val_set` copies them, undecoded, into a
CLIP_benchmark-layout eval set (RUN/val_split/) that the periodic evaluation reads as `data.val`, less the held-out
samples whose image or audio bytes a trained sample also has (a file copied, one recording filed under two
speakers: `TrainedCopies`), which are counted.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import unicodedata
from array import array
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Optional

from align.errors import ConfigError, DataError
from align.wds.format import MODALITY_EXTS

_FIELD_SEP = re.compile(r"[/\\_-]")
SPEC_FILE = "val_split.json"
COPY_OF_TRAINED = "image/audio bytes also in a trained sample"
_MEDIA_EXTS = frozenset(MODALITY_EXTS["image"] + MODALITY_EXTS["audio"])


def name_field(text: str, index: Optional[int]) -> Optional[str]:
    """Field `index` of a file name or key split at '/', '\\', '_' and '-' (extension dropped); the whole
    stripped text when index is None; None when there is no such field."""
    text = str(text).strip()
    if index is None:
        return text or None
    stem = re.sub(r"\.[^./\\]*$", "", text)
    parts = [p for p in _FIELD_SEP.split(stem) if p]
    try:
        return parts[index]
    except IndexError:
        return None


def _fraction(text: str, seed: int) -> float:
    """A stable number in [0, 1) for `text` (sha1, not Python's salted hash: the same in every process)."""
    h = hashlib.sha1(f"align:val_split:{seed}:{text}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def _loose(group: str) -> str:
    """A group id as a person reads it: NFKC, case-folded, a number by its value ("07", "7.0" -> "7")."""
    text = unicodedata.normalize("NFKC", group).casefold().strip()
    if re.fullmatch(r"[+-]?\d+(\.\d*)?", text):
        text = format(Decimal(text).normalize(), "f")
    return text


def lookalike_groups(sides: dict) -> list:
    """Sets of group ids (of {side: set of ids}) that differ only by case, Unicode form or the spelling of a
    number: [[id, ...], ...], each with the ids sorted and "(held out)" after those on the held-out side."""
    by_loose: dict = {}
    for side, ids in sides.items():
        for g in ids:
            if g is not None:
                by_loose.setdefault(_loose(g), {})[g] = side
    return sorted([f"{g} (held out)" if seen[g] is True else g for g in sorted(seen)]
                  for seen in by_loose.values() if len(seen) > 1)


@dataclass(frozen=True)
class ValSplit:
    """Which samples are held out (see module docstring). frac applies to groups when groups_from is set."""

    groups_from: Optional[str] = None
    groups: frozenset = field(default_factory=frozenset)
    frac: Optional[float] = None
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict, seed: int) -> "ValSplit":
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"groups_from", "groups", "frac"})
        if unknown:
            raise ConfigError(f"data.val_split: unknown key(s) {', '.join(unknown)}; valid: groups_from, groups, frac")
        gf, groups, frac = cfg.get("groups_from"), cfg.get("groups"), cfg.get("frac")
        if gf is not None and (not isinstance(gf, str) or not gf.strip()):
            raise ConfigError(f"data.val_split.groups_from: a field name (e.g. speaker, audio:0), got {gf!r}")
        if groups is not None:
            if gf is None:
                raise ConfigError("data.val_split.groups needs groups_from (the field the groups are values of)")
            if isinstance(groups, (str, bytes)) or not groups or not all(str(g).strip() for g in groups):
                raise ConfigError(f"data.val_split.groups: a non-empty list of group names, got {groups!r}")
            if frac is not None:
                raise ConfigError("data.val_split: give groups or frac, not both")
        elif frac is None:
            frac = 0.1
        if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1):
            raise ConfigError(f"data.val_split.frac: a fraction in (0, 1), got {frac!r}")
        return cls(gf, frozenset(str(g).strip() for g in groups or ()), None if frac is None else float(frac), seed)

    def describe(self) -> str:
        if self.groups:
            return f"groups {', '.join(sorted(self.groups))} of {self.groups_from!r}"
        if self.groups_from:
            return f"a seeded {self.frac:.0%} of the groups of {self.groups_from!r}"
        return (f"a random {self.frac:.0%} of samples (no groups_from: the held-out figures then measure groups "
                f"the model also trained on; name the speaker/writer field for a test on unseen ones)")

    @functools.cached_property
    def _field(self) -> tuple:
        """groups_from as (name, field index or None), parsed once: `audio:0` -> ("audio", 0)."""
        m = re.fullmatch(r"(.+):(-?\d+)", self.groups_from)
        return (m.group(1), int(m.group(2))) if m else (self.groups_from, None)

    def group_of(self, raw: dict) -> Optional[str]:
        """The group of one raw sample (members by extension, `__key__`), or None when it has none."""
        name, index = self._field
        if name == "key":
            return name_field(raw.get("__key__", ""), index)
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        extra, source = meta.get("extra") or {}, meta.get("source") or {}
        for where in ((source,) if index is not None else ()) + (extra, meta):
            value = where.get(name) if isinstance(where, dict) else None
            if value is not None and not isinstance(value, (dict, list)):
                return name_field(value, index)
        return None

    def side(self, raw: dict) -> Optional[bool]:
        """True: held out; False: trained on; None: no group (neither)."""
        if self.groups_from is None:
            return _fraction(str(raw.get("__key__", "")), self.seed) < self.frac
        g = self.group_of(raw)
        if g is None:
            return None
        return g in self.groups if self.groups else _fraction(g, self.seed) < self.frac

    def train_filter(self, stream: Iterable[dict]) -> Iterable[dict]:
        """The samples training may use (neither held out nor without a group)."""
        return (s for s in stream if self.side(s) is False)

    def to_json(self) -> dict:
        return {"groups_from": self.groups_from, "groups": sorted(self.groups), "frac": self.frac, "seed": self.seed}


def _media_digests(raw: dict) -> list:
    """64-bit blake2b digests (ints) of a raw sample's image and audio members."""
    return [int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "big")
            for ext, v in raw.items() if ext.lower() in _MEDIA_EXTS and isinstance(v, (bytes, bytearray))]


class TrainedCopies:
    """Held-out samples with an image or audio member byte-identical to a trained sample's (a file copied, one
    recording filed under two speakers): the held-out figure would include an item trained on. They are left out
    of the val set and counted (`dropped`, `example`), as `align data shards --val-groups` leaves out such rows.

    The one pass that finds the held-out samples holds every sample's bytes in memory anyway, so each media member
    is hashed there: CPU only, no second read of the shards. Grouping by size first, as align.data.write does for
    files on disk, would save nothing here: a trained member arrives before the held-out sizes are all known, so
    only a second read of the shards could hash the ones that turn out to matter. A trained member is kept as 8
    bytes of digest and 8 of position (no names: ten million fit in 160 MB); a false match of 64-bit digests
    (odds about n_trained * n_held_out / 2**64) would only leave one held-out sample out, counted."""

    def __init__(self):
        self.train, self.train_at = array("Q"), array("Q")   # digest; shard index << 32 | sample index in it
        self.urls: dict = {}            # shard url -> its index
        self.held: dict = {}            # digest -> positions (in write order) of the held-out samples that have it
        self.names: list = []           # "url:key" of each written held-out sample
        self.dropped: set = set()       # positions left out
        self.example: Optional[list] = None   # [held-out sample, trained sample] of the first copy

    def held_out(self, raw: dict, name: str) -> None:
        for d in _media_digests(raw):
            self.held.setdefault(d, []).append(len(self.names))
        self.names.append(name)

    def trained(self, raw: dict, url: str, index: int) -> None:
        for d in _media_digests(raw):
            self.train.append(d)
            self.train_at.append(self.urls.setdefault(url, len(self.urls)) << 32 | index)

    def leave_out(self, out, split: ValSplit, *, allow_pipe: bool, limits) -> list:
        """The copies dropped from `out` (an align.wds.writer.NumberedShards, closed), whose shards are rewritten
        without them when there are any; -> the val set's shard paths. DataError when no held-out sample is left."""
        first = None
        if self.held:
            for j, d in enumerate(self.train):
                if d in self.held:
                    self.dropped.update(self.held[d])
                    first = j if first is None else first
        if first is None:
            return out.paths
        at = self.train_at[first]
        url = next(u for u, i in self.urls.items() if i == at >> 32)
        self.example = [self.names[min(self.held[self.train[first]])],
                        _sample_name(url, at & 0xFFFFFFFF, allow_pipe=allow_pipe, limits=limits)]
        if len(self.dropped) == len(self.names):
            raise DataError(f"data.val_split ({split.describe()}): each of its {len(self.names)} held-out samples "
                            f"has an image or audio member byte-identical to a trained sample's (e.g. "
                            f"{' and '.join(self.example)}): the val set would score only items trained on")
        return _without(out, self.dropped, limits)


def _sample_name(url: str, index: int, *, allow_pipe: bool, limits) -> str:
    """"url:key" of the index-th sample of a shard (read again up to it: only to name one example)."""
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples

    for i, raw in enumerate(shard_samples(url, FaultCounter(), allow_pipe=allow_pipe, limits=limits)):
        if i == index:
            return f"{raw.get('__url__', url)}:{raw['__key__']}"
    return f"{url} (sample {index + 1})"


def _without(out, dropped: set, limits) -> list:
    """`out`'s shards written again without the samples at positions `dropped` (beside them, then moved in)."""
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    from align.wds.writer import NumberedShards

    tmp = out.directory.parent / (out.directory.name + ".kept")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    kept = NumberedShards(tmp, out.name_fn, out.per_shard)
    position = 0
    for path in out.paths:
        for raw in shard_samples(path, FaultCounter(), limits=limits):
            if position not in dropped:
                kept.write(raw["__key__"], {k: v for k, v in raw.items() if not k.startswith("__")})
            position += 1
    kept.close()
    for path in out.paths:
        os.remove(path)
    for name in kept.names:
        os.replace(tmp / name, out.directory / name)
    tmp.rmdir()
    return [str(out.directory / name) for name in kept.names]


def write_val_set(split: ValSplit, urls: list, out_dir: str, *, classnames: Optional[list] = None,
                  allow_pipe: bool = False, limits=None, per_shard: int = 2000) -> dict:
    """Copy the held-out samples of `urls` (undecoded) into `out_dir` in CLIP_benchmark's layout
    (test/0.tar.., test/nshards.txt, classnames.txt when given); reused as it is when its val_split.json
    records the same split and shards. Held-out samples with an image or audio member byte-identical to a trained
    sample's are left out (`TrainedCopies`). Returns {"held_out", "trained", "no_group", "groups", ...}."""
    from align.data.stream.faults import FaultCounter
    from align.wds.writer import NumberedShards

    record = {"split": split.to_json(), "urls": list(urls)}
    spec_path = os.path.join(out_dir, SPEC_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            done = json.load(f)
        if done.get("split") == record["split"] and done.get("urls") == record["urls"]:
            return done["counts"]
    test = os.path.join(out_dir, "test")
    os.makedirs(test, exist_ok=True)
    for name in os.listdir(test):            # a split with other settings: its shards are not ours to keep
        os.remove(os.path.join(test, name))
    groups = {True: set(), False: set()}
    faults = FaultCounter()
    copies = TrainedCopies()
    out = NumberedShards(test, lambda i: f"{i}.tar", per_shard)
    counts = _copy_held_out(split, urls, out, faults, groups, copies, allow_pipe=allow_pipe, limits=limits)
    out.close()
    _check(split, counts, groups)
    paths = copies.leave_out(out, split, allow_pipe=allow_pipe, limits=limits)
    with open(os.path.join(test, "nshards.txt"), "w") as f:
        f.write(f"{len(paths)}\n")
    if classnames:
        with open(os.path.join(out_dir, "classnames.txt"), "w") as f:
            f.write("".join(f"{c}\n" for c in classnames))
    counts["groups"] = {"held_out": len(groups[True]), "trained": len(groups[False])}
    if split.groups_from is not None:    # named in RUN/val_split/val_split.json, as the run's print names them
        counts["held_out_groups"] = sorted(groups[True])
        counts["lookalike_groups"] = lookalike_groups(groups)
    counts["skipped"] = dict(faults.total)   # held-out samples not copied and shards not read, by reason
    if copies.dropped:
        counts["skipped"][COPY_OF_TRAINED] = len(copies.dropped)
        counts["copies_of_trained"] = {"count": len(copies.dropped), "example": copies.example}
    tmp = spec_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(record, counts=counts), f)
    os.replace(tmp, spec_path)
    return counts


def _copy_held_out(split: ValSplit, urls: list, out, faults, groups: dict, copies: "TrainedCopies", *,
                   allow_pipe: bool, limits) -> dict:
    """The one pass over `urls`: held-out samples written to `out`, each side's groups collected into `groups`,
    every sample's media shown to `copies`; -> {"held_out", "trained", "no_group"}."""
    from align.data.stream.sources import shard_samples
    from align.wds.reader import Oversize

    counts = {"held_out": 0, "trained": 0, "no_group": 0}
    for url in urls:
        for index, raw in enumerate(shard_samples(url, faults, allow_pipe=allow_pipe, limits=limits)):
            side = split.side(raw)
            counts[{True: "held_out", False: "trained", None: "no_group"}[side]] += 1
            if side is not None and split.groups_from is not None:
                groups[side].add(split.group_of(raw))
            big = [(ext, v) for ext, v in raw.items() if isinstance(v, Oversize)]
            if side and big:      # a member over its limit was never read: skipped and counted, as training does
                faults.record(big[0][1].reason, f"{raw.get('__url__', url)}:{raw['__key__']}",
                              big[0][1].describe(big[0][0]))
            elif side:
                out.write(raw["__key__"], {k: v for k, v in raw.items() if not k.startswith("__")})
                copies.held_out(raw, f"{raw.get('__url__', url)}:{raw['__key__']}")
            elif side is False:
                copies.trained(raw, url, index)
    return counts


def _check(split: ValSplit, counts: dict, groups: dict) -> None:
    """One line when the split leaves a side empty or names groups the shards do not have."""
    if split.groups:
        absent = sorted(split.groups - groups[True])
        if absent:
            seen = sorted(g for g in groups[True] | groups[False] if g is not None)
            some = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
            raise DataError(f"data.val_split.groups {', '.join(absent)} not found in {split.groups_from!r} "
                            f"({len(seen)} groups: {some or 'none'})")
    if counts["held_out"] == 0:
        none = f"; {counts['no_group']} samples have no {split.groups_from!r}" if counts["no_group"] else ""
        raise DataError(f"data.val_split ({split.describe()}) holds out no sample{none}" + _draw_hint(split, groups))
    if counts["trained"] == 0:
        raise DataError(f"data.val_split ({split.describe()}) holds out every sample: nothing is left to train on"
                        + _draw_hint(split, groups))


def _draw_hint(split: ValSplit, groups: dict) -> str:
    """With frac over few groups the seeded draw (each group held out with probability frac) can take none or
    all of them: say how many groups there are and how to name the held-out ones instead."""
    seen = sorted(g for g in groups[True] | groups[False] if g is not None)
    if split.groups or split.groups_from is None or len(seen) < 2:
        return ""
    some = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
    return (f"; the seeded draw over its {len(seen)} groups ({some}) took {len(groups[True])}: name the held-out "
            f"ones, e.g. data.val_split={{groups_from: {split.groups_from}, groups: [{seen[0]}]}}")
