"""Elastic data resume: the rest of a checkpoint's epochs re-partitioned over another world size, batch or
worker count, also when the checkpoint's ranks are in different epochs.

The position in an epoch is world-size independent when it is written as the *remaining
segments* of the epoch's streams. A stream is what one reader (rank r0 of world0 ranks, logical
worker w0 of workers0) of the run that started the epoch reads: its shards, mixed and
shuffle-buffered, in a fixed order (seeded by seed, epoch, r0, w0). A segment is

    [r0, w0, raw, skip, take, world0, workers0]
        read stream (r0, w0) of layout (world0, workers0), pass its first `raw` samples undecoded,
        decode and drop `skip` good samples, then train on `take` good samples (None: to its end)
    [..., pass]  (an optional 8th entry, data.samples_per_epoch) the pass of the stream it starts in, where
        epochs go on through the shards (align.data.stream.worker); without it, the segment's epoch

The remaining work of a checkpoint is described per epoch. Old rank r (its state in epoch E_r) owes:
epoch E_r: what is left of it (from its raw counts and batches still due, or, for a rank that is itself
finishing an elastic rest, its remaining segments); a later epoch it had planned work for (`later`):
that work; any other epoch e > E_r up to the last epoch any rank has reached: its whole epoch e (one
segment per worker from raw 0). The loader then finishes these epochs in order, oldest first, each
planned as below, and plans the epochs after them for the new run as usual. So ranks that crossed an
epoch boundary at different steps (uneven shards, no samples_per_epoch) resume at any world size with
no sample lost or repeated.

To plan one epoch's segments for M ranks of W workers and batch b: with take counts (samples_per_epoch)
they are laid end to end (T good samples) and cut into M equal ranges of B = T // (M*b) batches (per
worker: whole batches, the remainder of B spread over the first workers), so every rank runs the same
number of steps; the last T - M*B*b samples (less than one global batch) are dropped and said so.
Cutting a stream in the middle costs the second reader a decode of the first part (`skip`), bounded by
one stream's share. Without take counts whole segments are dealt round-robin (ranks may then see
different batch counts, as without elasticity). Without a layout change the exact per-worker resume is
kept (align.data.stream.loader). (The same idea as MosaicML streaming's canonical nodes and HF datasets'
split by node.)
"""
from __future__ import annotations

import logging

from align.errors import DataError

log = logging.getLogger("align.data")

Segment = list  # [r0, w0, raw, skip, take, world0, workers0]


def segments_of(state: dict) -> list[Segment]:
    """The remaining segments of one rank's StreamLoader state in its current epoch."""
    if "segments" in state:                       # a rank finishing an elastic rest
        return [list(s) for w in state["segments"] for s in w]
    if "segments_left" in state:                  # the same, written before segments carried their layout
        return [list(s) + list(state["streams"]) for s in state["segments_left"]]
    segs, bs = [], state["batch_size"]
    quotas, passes = state.get("worker_quota"), state.get("worker_pass")
    for lw in range(state["num_workers"]):
        if state["worker_done"][lw]:
            continue
        take = None if quotas is None or quotas[lw] is None else (quotas[lw] - state["worker_batches"][lw]) * bs
        if take is None or take > 0:
            segs.append([state["rank"], lw, state["worker_raw"][lw], 0, take, state["world_size"],
                         state["num_workers"]] + ([passes[lw]] if passes is not None else []))
    return segs


def epoch_work(state: dict, epoch: int) -> list[Segment]:
    """What old rank `state` still owes epoch `epoch` (see the module docstring)."""
    if epoch < state["epoch"]:
        return []
    if epoch == state["epoch"]:
        return segments_of(state)
    for w in state.get("later", []):
        if w["epoch"] == epoch:
            return [list(s) for ws in w["segments"] for s in ws]
    quotas, bs, n = state.get("worker_quota"), state["batch_size"], state["num_workers"]
    return [[state["rank"], lw, 0, 0, None if quotas is None or quotas[lw] is None else quotas[lw] * bs,
             state["world_size"], n] for lw in range(n)]


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
    for seg in segments:
        r0, w0, raw, skip, take, world0, workers0 = seg[:7]
        lo, hi = max(start, pos), min(start + count, pos + take)
        if lo < hi:
            out.append([r0, w0, raw, skip + (lo - pos), hi - lo, world0, workers0] + list(seg[7:]))
        pos += take
    return out


def load_elastic(loader, states: list) -> None:
    """(StreamLoader.load_state_dict) Re-partition the rest of the epochs that `states` (every rank's, saved
    at another world size, batch or worker count, possibly in different epochs) describe, for this loader:
    its current epoch becomes the oldest one still open, then the others, in order."""
    ds = loader.dataset
    first = min(st["epoch"] for st in states)
    last = max([st["epoch"] for st in states] + [w["epoch"] for st in states for w in st.get("later", [])])
    work = []
    for epoch in range(first, last + 1):
        segs = [s for st in states for s in epoch_work(st, epoch)]
        if any(len(s) not in (7, 8) for s in segs):
            raise DataError(f"data resume_state: a segment of epoch {epoch} is not "
                            f"[rank, worker, raw, skip, take, world_size, num_workers(, pass)]")
        mine, quota, dropped = plan(segs, rank=ds.rank, world_size=ds.world_size, num_workers=loader.num_workers,
                                    batch_size=ds.batch_size)
        work.append({"epoch": epoch, "segments": mine, "quota": quota})
        if dropped and ds.rank == 0:
            log.warning("data resume: %d samples left in epoch %d do not fill a global batch of %d and are "
                        "skipped", dropped, epoch, ds.world_size * ds.batch_size)
    loader.start_elastic(first, work)
    # Totals: rank r keeps old rank r's; old ranks beyond this world size add theirs to rank 0.
    olds = [states[ds.rank]] if ds.rank < len(states) else []
    if ds.rank == 0:
        olds += states[ds.world_size:]
    for st in olds:
        loader.skipped.update(st.get("skipped", {}))
        loader.noted.update(st.get("noted", {}))
        loader.seen += int(st.get("seen", 0))
