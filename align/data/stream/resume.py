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

import logging

from align.data.stream.faults import FaultCounter, SkipSample
from align.errors import DataError

log = logging.getLogger("align.data")

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


def segment_stream(ds, lw: int, plan):
    """In a worker of StreamLoader's dataset `ds`: logical worker `lw`'s segments, in order, as batches.

    Each batch carries `__seg__` = (segment index, raw samples read from its stream, good samples taken
    from it), from which the loader's state_dict derives what is left."""
    if plan.done[lw]:
        return
    faults, quota, done_batches = FaultCounter(), plan.quota[lw], 0
    pending, seen, out, k, taken = [], 0, 0, -1, 0
    for k, (r0, w0, raw, skip, take) in enumerate(plan.segments[lw]):
        if quota is not None and done_batches >= quota:
            break
        it = ds.raw_stream(w0, plan.streams[1], plan.epoch, faults, rank=r0, world_size=plan.streams[0])
        faults.muted = True   # faults before the checkpoint, or in the part another reader trains on
        for out in range(1, raw + 1):
            if next(it, None) is None:
                raise DataError(f"resume: stream {r0}/{w0} ended after {out - 1} of the {raw} samples the "
                                f"checkpoint says were read; the shards changed since the checkpoint")
        out, got = raw, 0
        while got < skip:
            sample = next(it, None)
            if sample is None:
                break
            out += 1
            try:
                ds.decoder(sample, plan.epoch)
                got += 1
            except SkipSample:
                pass
        faults.muted, taken = False, 0
        while take is None or taken < take:
            if quota is not None and done_batches >= quota:
                break
            sample = next(it, None)
            if sample is None:
                break
            out += 1
            seen += 1
            try:
                pending.append(ds.decoder(sample, plan.epoch))
                taken += 1
            except SkipSample as exn:
                faults.record(exn.reason, f"sample {sample['__key__']} in {sample['__url__']}", exn.detail)
            if len(pending) == ds.batch_size:
                batch = ds._emit(pending, lw, out, seen, faults)
                batch["__seg__"] = (k, out, taken)
                yield batch
                pending, seen = [], 0
                done_batches += 1
    if pending and not ds.drop_last:
        batch = ds._emit(pending, lw, out, seen, faults)
        batch["__seg__"] = (k, out, taken)
        yield batch
        seen = 0
    delta, extra = faults.take_delta()
    yield {"__flush__": True, "__worker__": lw, "__raw__": out, "__seen__": seen + extra, "__skipped__": delta}


def load_elastic(loader, states: list) -> None:
    """(StreamLoader.load_state_dict) Re-partition the rest of the epoch that `states` (every rank's, saved
    at another world size, batch or worker count) describe, for this loader."""
    ds = loader.dataset
    epochs = {st["epoch"] for st in states}
    if len(epochs) != 1:
        raise DataError(f"data resume_state: the ranks of the checkpoint are in different epochs {sorted(epochs)}")
    segs, geometry = [], None
    for st in states:
        sg, geo = segments_of(st)
        if geometry not in (None, geo):
            raise DataError("data resume_state: the ranks' positions refer to different stream layouts")
        segs, geometry = segs + sg, geo
    mine, quota, dropped = plan(segs, rank=ds.rank, world_size=ds.world_size, num_workers=loader.num_workers,
                                batch_size=ds.batch_size)
    loader._reset(states[0]["epoch"])
    n = loader.n_logical
    loader._seg = {"streams": tuple(geometry), "segs": mine, "prog": [None] * n, "quota0": list(quota),
                   "quota": list(quota)}
    # Totals: rank r keeps old rank r's; old ranks beyond this world size add theirs to rank 0.
    olds = [states[ds.rank]] if ds.rank < len(states) else []
    if ds.rank == 0:
        olds += states[ds.world_size:]
    for st in olds:
        loader.skipped.update(st.get("skipped", {}))
        loader.seen += int(st.get("seen", 0))
    if dropped and ds.rank == 0:
        log.warning("data resume: %d samples left in epoch %d do not fill a global batch of %d and are "
                    "skipped", dropped, loader.epoch, ds.world_size * ds.batch_size)
