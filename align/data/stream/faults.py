"""Counting and reporting of broken data in the streaming pipeline.

A broken sample or shard is never fatal and never silently lost: it is
skipped, counted under a short human-readable *reason* (the constants
below), and announced with a rate-limited `logging.warning` naming the
sample key or shard URL.  Counts are kept per process (each DataLoader
worker has its own `FaultCounter`); the worker ships the *deltas* with every
batch so that the main process (`StreamLoader`) can keep exact totals.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from typing import Dict, Optional

import numpy as np
import torch

from align.errors import DataError, printable

log = logging.getLogger("align.data")

# Reasons a sample (or a whole shard) is skipped.  They are user-facing: they
# appear in warnings, in `loader.skipped` and in the max_skip_frac error.
UNDECODABLE_IMAGE = "undecodable image"
UNDECODABLE_AUDIO = "undecodable audio"
UNDECODABLE_TEXT = "undecodable text"
EMPTY_CAPTION = "empty caption"
BAD_CLS = "bad cls"
FEW_MODALITIES = "fewer than 2 modalities"
NO_LOSS_PAIR = "no pair of loss.pairs"   # modalities, but none of the pairs the loss trains on
TRANSFORM_FAILED = "{modality} transform failed"
MISSING_SHARD = "missing shard"
UNREADABLE_SHARD = "unreadable shard"
CORRUPT_TAR = "corrupt tar"
DUPLICATE_FILE = "duplicate file in sample"
NOT_A_SAMPLE = "member outside any sample (no extension or a hidden name)"

# A size claimed by the input past its limit (data.limits): the reasons live with the limits, in the base
# layer, because the media decoders and the tar reader below this package raise them.
from align.limits import (AUDIO_BAD_RATE, AUDIO_TOO_LONG, AUDIO_TOO_MANY_CHANNELS, IMAGE_TOO_LARGE,  # noqa: E402,F401
                          JSON_TOO_LARGE, LIMIT_REASONS, MEMBER_TOO_LARGE, TEXT_TOO_LONG)

# Reasons that concern a whole shard rather than one sample.
SHARD_REASONS = (MISSING_SHARD, UNREADABLE_SHARD, CORRUPT_TAR)

# Rate limit for warnings: at most one per reason per this many seconds.
WARN_EVERY_S = 30.0
# The skip-rate check only starts after this many samples were seen, so a
# single bad sample at the start of a run does not trip it.
MIN_SEEN_FOR_SKIP_CHECK = 100


class SkipSample(Exception):
    """Raised while decoding one sample; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class FaultCounter:
    """Per-process fault counts with rate-limited warnings.

    `record()` counts a fault and maybe warns; `take_delta()` returns the
    counts recorded since the previous call (what a worker attaches to the
    next batch).  `muted` is set while a resumed worker fast-forwards over
    samples whose faults were already reported before the checkpoint.
    `said` (SaidShards): the shard faults already named by any worker of the loader: a shard that stays
    unreadable is counted every epoch but named once, not again each epoch.
    """

    def __init__(self, warn_every_s: float = WARN_EVERY_S, warn: bool = True, keep: int = 0,
                 said: Optional["SaidShards"] = None):
        self.warn_every_s = warn_every_s
        self.warn = warn                 # False: count only (`align data inspect` reports itself)
        self.said = said
        self.examples: list[tuple[str, str, str]] = []   # the first `keep` (reason, where, detail)
        self._keep = keep
        self.total: Counter = Counter()
        self._delta: Counter = Counter()
        self._last_warn: dict[str, float] = {}
        self._suppressed: Counter = Counter()
        # Faults not tied to one raw sample (a missing shard, a corrupt tar)
        # count as one unit each in `seen`, so the skip rate stays a fraction.
        self._extra_seen = 0
        self.muted = False

    def record(self, reason: str, where: str, detail: str = "", per_sample: bool = True,
               shard: Optional[str] = None) -> None:
        """Count one fault; warn unless the rate limit holds it back, or (`shard`: the URL of a shard fault) a
        worker of this loader named this shard's fault already."""
        if self.muted:
            return
        self.total[reason] += 1
        self._delta[reason] += 1
        if not per_sample:
            self._extra_seen += 1
        if len(self.examples) < self._keep:
            self.examples.append((reason, where, detail))
        if not self.warn:
            return
        said = self.said if shard is not None and reason in SHARD_REASONS else None
        if said is not None and said.said(reason, shard):
            return                       # named in an earlier epoch (or by another worker); counted above
        now = time.monotonic()
        last = self._last_warn.get(reason)
        if last is not None and now - last < self.warn_every_s:
            self._suppressed[reason] += 1
            return
        self._last_warn[reason] = now
        if said is not None:
            said.mark(reason, shard)
        more = self._suppressed.pop(reason, 0)
        tail = f" ({more} more since the last such warning)" if more else ""
        msg = f"skipping {where}: {reason}"
        if detail:
            msg += f" ({detail[:200]})"
        log.warning(printable(msg) + tail)

    def take_delta(self) -> tuple[dict[str, int], int]:
        """(counts by reason, extra seen units) recorded since the previous call."""
        delta, extra = dict(self._delta), self._extra_seen
        self._delta.clear()
        self._extra_seen = 0
        return delta, extra


class SaidShards:
    """Which shard faults (SHARD_REASONS) a loader has named: one byte a shard, a bit a reason, in shared memory,
    made before its workers start. Each epoch deals the shards to the readers anew, so a shard that stays
    unreadable is read by one worker, then another: each would name it again, every epoch. A shard is found by
    the rank of its 64-bit hash among the sorted hashes of every URL (made on the first fault in a process, the
    same order in every process: no URL-to-index dict per worker)."""

    def __init__(self, urls: list[str]):
        self._urls = urls
        self._flags = torch.zeros(max(1, len(urls)), dtype=torch.uint8).share_memory_()
        self._sorted: Optional[np.ndarray] = None

    @staticmethod
    def _hash(url: str) -> int:
        return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")

    def _slot(self, url: str) -> Optional[int]:
        if self._sorted is None:
            self._sorted = np.unique(np.array([self._hash(u) for u in self._urls], dtype=np.uint64))
        h = np.uint64(self._hash(url))
        i = int(np.searchsorted(self._sorted, h))
        return i if i < len(self._sorted) and self._sorted[i] == h else None

    def said(self, reason: str, url: str) -> bool:
        i = self._slot(url)
        return i is not None and bool(int(self._flags[i]) & (1 << SHARD_REASONS.index(reason)))

    def mark(self, reason: str, url: str) -> None:
        i = self._slot(url)
        if i is not None:
            self._flags[i] |= 1 << SHARD_REASONS.index(reason)


def skip_rate_error(skipped: dict[str, int], seen: int, max_skip_frac: float | None, rank: int = 0,
                    world_size: int = 1) -> DataError | None:
    """The DataError to raise when the skip rate is over `max_skip_frac`, else None.

    skip rate = sum(skipped) / seen, where `seen` counts every raw sample read
    plus every shard that could not be read (each counts as one). Each rank checks the shards it reads; with
    several, the line names the rank.
    """
    if max_skip_frac is None or seen < MIN_SEEN_FOR_SKIP_CHECK:
        return None
    total = sum(skipped.values())
    rate = total / max(seen, 1)
    if rate <= max_skip_frac:
        return None
    top = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    top_s = ", ".join(f"{reason} ({n})" for reason, n in top)
    where = f" on rank {rank} of {world_size} (in the shards it reads)" if world_size > 1 else ""
    return DataError(
        f"skip rate {100 * rate:.1f}% ({total} of {seen} samples){where} exceeds "
        f"data.max_skip_frac={max_skip_frac}; top reasons: {top_s}"
    )


def not_samples(reason: str) -> bool:
    """A skip reason that counts no sample: a duplicate file drops that file, not its sample, and a shard-level
    fault (missing, unreadable, corrupt) is no sample, nor is a member outside any sample. `align data inspect` and
    training's end line agree on it."""
    return reason in SHARD_REASONS or reason in (DUPLICATE_FILE, NOT_A_SAMPLE)


def skipped_samples(counts: Dict[str, int]) -> int:
    """The samples among skip counts by reason (not_samples left out)."""
    return sum(n for k, n in counts.items() if not not_samples(k))


def format_counts(counts: Dict[str, int], limit: Optional[int] = None) -> str:
    """{"reason": n, ...} -> "reason_a 5, reason_b 2" (most frequent first; the first `limit` only)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in ranked[:limit])
