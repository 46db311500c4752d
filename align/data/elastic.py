"""Elastic data resume: the rest of an epoch re-partitioned over another world size, batch or worker count.

The position in an epoch is world-size independent when it is written as the *remaining
segments* of the epoch's streams. A stream is what one reader (rank r0, logical worker w0)
of the run that started the epoch reads: its shards, mixed and shuffle-buffered, in a fixed
order (seeded by seed, epoch, r0, w0). A segment is

    [r0, w0, raw, skip, take]   read stream (r0, w0), pass its first `raw` samples undecoded,
                                decode and drop `skip` good samples, then train on `take` good
                                samples (None: up to the stream's end)

A checkpoint of an ordinary epoch converts to segments from each reader's raw count and
batches still due; a resumed epoch keeps its segments and progress. To continue with M
ranks of W workers and batch b, the segments are laid end to end (T good samples) and
cut into M equal ranges of B = T // (M*b) batches (per worker: whole batches), so every
rank runs the same number of steps and each sample of the epoch is trained exactly once;
the last T - M*B*b samples (less than one global batch) are dropped and said so.
Cutting a stream in the middle costs the second reader a decode of the first part
(`skip`), bounded by one stream's share; without samples_per_epoch (take None) whole
segments are dealt round-robin instead (ranks may then see different batch counts, as
without elasticity). Without a world-size change the old exact per-worker resume is kept.
(The same idea as MosaicML streaming's canonical nodes and HF datasets' split by node.)
"""
from __future__ import annotations

Segment = list  # [r0, w0, raw, skip, take]


def segments_of(state: dict) -> tuple[list[Segment], tuple[int, int]]:
    """(remaining segments, stream geometry (world_size, num_workers)) of one rank's StreamLoader state."""
    if "segments_left" in state:
        return [list(s) for s in state["segments_left"]], tuple(state["streams"])
    segs, bs = [], state["batch_size"]
    quotas = state.get("worker_quota")
    for lw in range(state["num_workers"]):
        if state["worker_done"][lw]:
            continue
        take = None if quotas is None or quotas[lw] is None else (quotas[lw] - state["worker_batches"][lw]) * bs
        if take is None or take > 0:
            segs.append([state["rank"], lw, state["worker_raw"][lw], 0, take])
    return segs, (state["world_size"], state["num_workers"])


def plan(segments: list[Segment], *, rank: int, world_size: int, num_workers: int, batch_size: int):
    """-> (per logical worker of `rank`: its segments, per worker: its batch quota or None, samples dropped)."""
    n = max(1, num_workers)
    if any(s[4] is None for s in segments):       # no samples_per_epoch: whole segments, round-robin
        readers = world_size * n
        mine = [[list(s) for i, s in enumerate(segments) if i % readers == rank * n + w] for w in range(n)]
        return mine, [None] * n, 0
    total = sum(s[4] for s in segments)
    per_rank = total // (world_size * batch_size)          # batches every rank runs
    per, extra = divmod(per_rank, n)
    quotas = [per + (1 if w < extra else 0) for w in range(n)]
    start = rank * per_rank * batch_size
    out = []
    for w in range(n):
        out.append(_cut(segments, start, quotas[w] * batch_size))
        start += quotas[w] * batch_size
    return out, quotas, total - world_size * per_rank * batch_size


def _cut(segments: list[Segment], start: int, count: int) -> list[Segment]:
    """The pieces of the end-to-end segments covering good samples [start, start + count)."""
    out, pos = [], 0
    for r0, w0, raw, skip, take in segments:
        lo, hi = max(start, pos), min(start + count, pos + take)
        if lo < hi:
            out.append([r0, w0, raw, skip + (lo - pos), hi - lo])
        pos += take
    return out
