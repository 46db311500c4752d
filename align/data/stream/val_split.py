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
CLIP_benchmark-layout eval set (RUN/val_split/) that the periodic evaluation reads as `data.val`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Optional

from align.errors import ConfigError, DataError

_FIELD_SEP = re.compile(r"[/\\_-]")
SPEC_FILE = "val_split.json"


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


def write_val_set(split: ValSplit, urls: list, out_dir: str, *, classnames: Optional[list] = None,
                  allow_pipe: bool = False, limits=None, per_shard: int = 2000) -> dict:
    """Copy the held-out samples of `urls` (undecoded) into `out_dir` in CLIP_benchmark's layout
    (test/0.tar.., test/nshards.txt, classnames.txt when given); reused as it is when its val_split.json
    records the same split and shards. Returns {"held_out", "trained", "no_group", "groups"}."""
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    from align.wds.reader import Oversize
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
    counts = {"held_out": 0, "trained": 0, "no_group": 0}
    groups = {True: set(), False: set()}
    faults = FaultCounter()
    out = NumberedShards(test, lambda i: f"{i}.tar", per_shard)
    for url in urls:
        for raw in shard_samples(url, faults, allow_pipe=allow_pipe, limits=limits):
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
    out.close()
    _check(split, counts, groups)
    with open(os.path.join(test, "nshards.txt"), "w") as f:
        f.write(f"{len(out.paths)}\n")
    if classnames:
        with open(os.path.join(out_dir, "classnames.txt"), "w") as f:
            f.write("".join(f"{c}\n" for c in classnames))
    counts["groups"] = {"held_out": len(groups[True]), "trained": len(groups[False])}
    if split.groups_from is not None:    # named in RUN/val_split/val_split.json, as the run's print names them
        counts["held_out_groups"] = sorted(groups[True])
        counts["lookalike_groups"] = lookalike_groups(groups)
    counts["skipped"] = dict(faults.total)   # held-out samples not copied and shards not read, by reason
    tmp = spec_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(record, counts=counts), f)
    os.replace(tmp, spec_path)
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
