"""The per-worker half of the streaming loader: ONE decode loop for every stream (align.data.stream.loader).

A worker reads its plan's segments in order (an ordinary epoch: one segment per worker, its own stream; the
rest of an elastically resumed epoch: pieces of the checkpoint's streams, align.data.stream.resume):

    stream (r0, w0) of the epoch: shards split by rank then worker, mixed, data.val_split's held-out samples
      dropped (align.data.stream.val_split), and shuffle-buffered (seeded)
      -> pass the first `raw` samples undecoded (read before the checkpoint; faults muted)
      -> decode and drop `skip` good samples (another reader trains on them; faults muted)
      -> decode + augment + transforms `take` good samples (broken ones counted and skipped), seeded per
         sample by (seed, epoch, shard file name, key) only (align.data.stream.decode), never by the layout
      -> batches of `batch_size`, each with its bookkeeping (align.data.stream.keys)

then one flush item with its last counts.  A worker whose first MAX_ALL_SKIPPED samples were all skipped
stops with one DataError line, in both cases.

Passes (data.samples_per_epoch): an epoch is a number of batches, not a reading of the shards,
so each reader's stream goes on through its shards from epoch to epoch: epoch e starts where e - 1 stopped,
and when the reader's shards end (a "pass" over them) it goes on with the next pass (its shards in the
order of pass p + 1, seeded like an epoch), also inside an epoch. So every sample is trained once per pass
whatever the epoch size; an epoch larger than a reader's shards repeats some. A segment's 8th entry is the
pass it starts in (none: its epoch). A pass that gives a reader no sample (its shards of that pass all
unreadable, found only at run time) is passed over, so its share of the epoch is read from its next passes
(which deal the shards anew) rather than lost; after MAX_EMPTY_PASSES empty passes in a row it stops. With
data.resampled a pass is as many shard draws as a source has shards (the first source to end ends it), so a
draw is read on from where the last epoch stopped too. Without samples_per_epoch a pass is an epoch, as
before (resampled: endless). Each pass deals the shards to the readers anew, so uneven shards even out over
the passes: a reader dealt fewer samples goes round them faster, but only until the next deal.

Quota: the rank's batches of an epoch are split over its workers that have shards (a worker without one,
when a rank has fewer shards than workers, gets none), so num_workers does not change how much an epoch
trains.

A training loader's workers then go on with the next epoch from its start (the plan's gate is set): the same
processes read every epoch, so no worker is started per epoch and the next epoch's first batches are made
while the training process still takes the last ones of this one.  The gate, shared with the training
process, holds a worker back (it answers IDLE) while that process already has enough of the next epoch.
Every item carries its EPOCH.
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils.data import IterableDataset, get_worker_info

from align.data.stream.decode import SampleDecoder, rng_preserving
from align.data.stream.faults import FaultCounter, SaidShards, SkipSample
from align.data.stream.keys import (
    EPOCH, ERROR, FLUSH, IDLE, KEY, NOTED, PASS, RAW, SEEN, SEG, SKIPPED, UNAVAILABLE, URL, WORKER,
)
from align.data.stream.pack import pack_tensors
from align.data.stream.sources import (
    ResolvedSource, epoch_shards, mix_streams, resampled_shards, rng_for, samples_from_shards, split_shards,
)
from align.errors import DataError, SourceUnavailable

# A worker that has read this many raw samples without a single usable one stops with DataError
# (otherwise a wrong modality list or a broken transform would spin through the data silently).
MAX_ALL_SKIPPED = 1000

# With passes (data.samples_per_epoch), a reader whose shards gave no sample in this many passes in a row stops
# (its part of the epoch ends short, warned); fewer empty passes are skipped (StreamDataset._next_raw).
MAX_EMPTY_PASSES = 8


@dataclass
class Plan:
    """What each logical worker reads: copied into the dataset before workers fork."""

    epoch: int
    next_worker: int
    done: list[bool]
    # Per logical worker: its segments (align.data.stream.resume: [r0, w0, raw, skip, take, world0, workers0]),
    # read in order, and the batches still due from it (None: to the end of its segments).
    segments: list[list[list]]
    quota: list[int | None]
    # Elastic work planned for later epochs ([{"epoch", "segments", "quota"}], oldest first), which the
    # workers read when they go on into those epochs.
    later: list[dict] = field(default_factory=list)
    # Shared int64 [2] (None: the workers stop after this epoch): the epoch the training process is taking
    # batches of, and 1 while it may receive more of the next one (see `may_send`).
    gate: torch.Tensor | None = None
    # True: the segments are elastic work (align.data.stream.resume); the next epoch then starts its own
    # streams at their start rather than going on where this one stopped.
    elastic: bool = False


def seg_pass(seg: list, epoch: int) -> int:
    """The pass a segment starts in: its 8th entry, or (written without one) its epoch."""
    return int(seg[7]) if len(seg) > 7 else epoch


def may_send(gate: torch.Tensor, epoch: int) -> bool:
    """Whether an item of `epoch` may go to the training process now: one of its current epoch (or an older
    one), or of the next while it holds few enough of those (a worker whose shards end early would otherwise
    fill it with a whole epoch ahead)."""
    current, more = gate.tolist()
    return epoch <= current or (epoch == current + 1 and more == 1)


@dataclass
class Run:
    """One worker's counters while it reads its segments."""

    faults: FaultCounter = field(default_factory=FaultCounter)
    pending: list = field(default_factory=list)   # decoded samples of the next batch
    seen: int = 0            # raw samples read since the last item sent
    read: int = 0            # raw samples decoded by this worker (for the all-skipped guard)
    good: int = 0            # ... of which usable
    out: int = 0             # raw samples read from the current segment's stream (in its pass)
    pas: int = 0             # ... its pass
    key: tuple = ()          # ... (r0, w0, world0, workers0)
    it: object = None        # ... its iterator
    taken: int = 0           # good samples batched from the current segment
    k: int = -1              # the current segment's index
    batches: int = 0         # batches sent
    reasons: Counter = field(default_factory=Counter)


class StreamDataset(IterableDataset):
    """The per-worker stream (see module docstring); yields batch dicts and control items."""

    def __init__(self, sources: list[ResolvedSource], decoder: SampleDecoder, *, batch_size: int, rank: int,
                 world_size: int, seed: int, resampled: bool, shuffle_buffer: int, allow_pipe: bool,
                 train: bool, drop_last: bool, batches_per_rank: int | None, retry_budget_s: float,
                 val_split=None):
        super().__init__()
        self.sources = sources
        self.decoder = decoder
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.allow_pipe = allow_pipe
        self.retry_budget_s = retry_budget_s
        self.val_split = val_split        # align.data.stream.val_split.ValSplit: held-out samples never trained on
        self.train = train
        self.drop_last = drop_last
        self.batches_per_rank = batches_per_rank
        # data.samples_per_epoch: epochs go on through the shards, pass after pass (docstring)
        self.carry = batches_per_rank is not None
        self.plan: Plan | None = None
        # (this process) the stream its last epoch ended in, kept open to go on with: a Run, or None
        self._live: Run | None = None
        self._end: tuple[int, int] | None = None        # (pass, raw) where its last epoch ended
        # the shard faults named so far, shared by this loader's workers: a shard unreadable every epoch is named once
        self.said = SaidShards([u for src in sources for u in src.urls])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_live"] = None                              # an open stream stays in its process
        return state

    def readers_with_shards(self, n: int) -> list[int]:
        """The logical workers (of `n`) of this rank that have at least one shard to read."""
        if self.resampled:
            return list(range(n))
        return [lw for lw in range(n) if any(split_shards(src.urls, rank=self.rank, world_size=self.world_size,
                                                          worker=lw, num_workers=n) for src in self.sources)]

    def quota(self, lw: int, n: int) -> int | None:
        """Batches logical worker `lw` of `n` yields per epoch (None: until the data ends): the rank's batches
        split over its workers that have shards (the first ones take the remainder)."""
        if self.batches_per_rank is None:
            return None
        have = self.readers_with_shards(n) or list(range(n))
        if lw not in have:
            return 0
        per, extra = divmod(self.batches_per_rank, len(have))
        return per + (1 if have.index(lw) < extra else 0)

    def epoch_plan(self, epoch: int, n: int, later: list[dict], gate=None, starts=None) -> Plan:
        """Epoch `epoch` for `n` logical workers: the elastic work planned for it in `later`
        (align.data.stream.resume), if any, else one stream per worker, from its start or, per worker, from
        `starts[lw]` = (pass, raw) (where the last epoch stopped, with passes)."""
        work = next((w for w in later if w["epoch"] == epoch), None)
        rest = [w for w in later if w["epoch"] > epoch]
        if work is not None:
            return Plan(epoch, 0, [False] * n, [[list(x) for x in w] for w in work["segments"]],
                        list(work["quota"]), rest, gate, elastic=True)
        starts = [(s if s is not None else (epoch, 0)) for s in (starts or [None] * n)]
        return Plan(epoch, 0, [False] * n,
                    [[[self.rank, lw, starts[lw][1], 0, None, self.world_size, n, starts[lw][0]]] for lw in range(n)],
                    [self.quota(lw, n) for lw in range(n)], rest, gate)

    def raw_stream(self, lw: int, n: int, epoch: int, faults: FaultCounter, rank: int | None = None,
                   world_size: int | None = None):
        """Undecoded samples of logical worker `lw` of `n` of `rank` (default: this rank), in their final
        (shuffled) order."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        streams = []
        # resampled with passes: a pass is as many draws as a source has shards (the first source to end ends it),
        # and a reading's DRAW names its pass (two passes of one epoch draw apart)
        passes = self.resampled and self.carry
        stream_id = f"{rank}.{lw}" + (f"/p{epoch}" if passes else "")
        for si, src in enumerate(self.sources):
            if self.resampled:
                urls = resampled_shards(src.urls, rng_for("resample", self.seed, epoch, rank, lw, si))
                if passes:
                    urls = itertools.islice(urls, len(src.urls))
            else:
                order = epoch_shards(src.urls, seed=self.seed, epoch=epoch, source_index=si, shuffle=self.train)
                urls = split_shards(order, rank=rank, world_size=world_size, worker=lw, num_workers=n)
            # stream_id: two readers may draw one shard at the same draw; their readings must still differ
            streams.append(samples_from_shards(urls, faults, allow_pipe=self.allow_pipe,
                                               infinite=self.resampled, name=src.name,
                                               retry_budget_s=self.retry_budget_s, limits=self.decoder.limits,
                                               stream_id=stream_id))
        if len(streams) == 1:
            stream = streams[0]
        else:
            stream = mix_streams(streams, [s.weight for s in self.sources],
                                 rng_for("mix", self.seed, epoch, rank, lw), stop_at_first_end=passes)
        if self.val_split is not None:     # before the shuffle: a checkpoint's data position counts kept samples
            stream = self.val_split.train_filter(stream)
        if self.train and self.shuffle_buffer > 1:
            import webdataset as wds

            rng = rng_for("shuffle", self.seed, epoch, rank, lw)
            stream = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(iter(stream))
        return iter(stream)

    def __iter__(self):
        info = get_worker_info()
        worker, n = (0, 1) if info is None else (info.id, info.num_workers)
        plan = self.plan
        if plan is None or len(plan.done) != n:
            raise RuntimeError("iterate the dataset through StreamLoader, which sets its plan")
        # in the training process (0 workers) the per-sample reseeds must not touch its own RNG stream
        yield from (self._epochs(worker, n, plan)
                    if info is not None else rng_preserving(self._epochs(worker, n, plan)))

    def _epochs(self, worker: int, n: int, plan: Plan):
        """Physical worker `worker`'s items: its part of the plan's epoch, then, while the plan has a gate,
        its part of each next epoch (it plays the same logical worker throughout: with passes, it goes on in
        the stream it has open)."""
        lw = (worker + plan.next_worker) % n
        while True:
            try:
                for item in self._stream(lw, plan):
                    item[EPOCH] = plan.epoch
                    while plan.gate is not None and not may_send(plan.gate, plan.epoch):
                        yield {IDLE: True}
                    yield item
            except DataError as exn:
                # Shipped as an item so the main process raises one clean line, not a worker traceback.
                yield {ERROR: str(exn), WORKER: lw, EPOCH: plan.epoch, UNAVAILABLE: isinstance(exn, SourceUnavailable)}
                return
            if plan.gate is None:
                return
            starts = [None] * n
            if self.carry and not plan.elastic:
                starts[lw] = self._end
            plan = self.epoch_plan(plan.epoch + 1, n, plan.later, plan.gate, starts)

    def _stream(self, lw: int, plan: Plan):
        """The one decode loop (an ordinary epoch is one segment per worker; an elastic rest several):
        logical worker `lw`'s segments in order, as batches, then a flush item with its last counts."""
        segs = plan.segments[lw]
        self._end = (seg_pass(segs[0], plan.epoch), segs[0][2]) if segs else (plan.epoch, 0)
        live, self._live = self._live, None
        if plan.done[lw]:
            return
        run, quota = Run(faults=FaultCounter(said=self.said)), plan.quota[lw]
        run.pas, run.out = self._end
        for run.k, seg in enumerate(segs):
            if quota is not None and run.batches >= quota:
                break
            yield from self._read_segment(seg, lw, plan.epoch, run, quota, live if run.k == 0 else None)
        if run.pending and not self.drop_last:
            yield self._emit(run, lw)
        delta, extra = run.faults.take_delta()
        self._end, self._live = (run.pas, run.out), run
        yield {FLUSH: True, WORKER: lw, RAW: run.out, PASS: run.pas, SEEN: run.seen + extra, SKIPPED: delta,
               NOTED: self.decoder.take_noted()}

    def _read_segment(self, seg: list, lw: int, epoch: int, run: Run, quota: int | None, live: Run | None):
        """Segment `run.k` = [r0, w0, raw, skip, take, world0, workers0(, pass)] of `lw`: pass `raw` samples of
        stream (r0, w0) undecoded, decode and drop `skip` good ones, then batch `take` good ones (None: all).
        `live`: the stream this process's last epoch ended in, taken up if the segment starts where it stopped."""
        r0, w0, raw, skip, take, world0, workers0 = seg[:7]
        run.key, run.pas = (r0, w0, world0, workers0), seg_pass(seg, epoch)
        reuse = live is not None and (live.key, live.pas, live.out) == (run.key, run.pas, raw)
        if reuse:
            run.it, run.faults = live.it, live.faults     # its faults so far were sent with its last flush
        else:
            run.it = self.raw_stream(w0, workers0, run.pas, run.faults, rank=r0, world_size=world0)
        faults = run.faults
        # Faults before the checkpoint, or in the part another reader trains on, were or are counted there.
        faults.muted = True
        for run.out in range(1, 1 if reuse else raw + 1):
            if next(run.it, None) is None:
                raise DataError(f"resume: stream {r0}/{w0} of epoch {epoch} ended after {run.out - 1} of the {raw} "
                                f"samples the checkpoint says were read; the shards changed since the checkpoint")
        run.out, got = raw, 0
        while got < skip:
            sample = self._next_raw(run)
            if sample is None:
                break
            got += self._decode(sample, epoch, run) is not None
        faults.muted, run.taken = False, 0
        self.decoder.take_noted()              # what the muted part noted is another reader's to count
        while (take is None or run.taken < take) and (quota is None or run.batches < quota):
            sample = self._next_raw(run)
            if sample is None:
                break
            run.seen += 1
            decoded = self._decode(sample, epoch, run)
            if decoded is not None:
                run.pending.append(decoded)
                run.taken += 1
            if len(run.pending) == self.batch_size:
                yield self._emit(run, lw)
                run.batches += 1

    def _next_raw(self, run: Run) -> dict | None:
        """The next raw sample of the run's stream; with passes, its next pass when this one ends, skipping
        passes that give no sample (the reader's shards of that pass all unreadable; each pass deals the shards
        anew) until MAX_EMPTY_PASSES in a row gave none: the reader then has nothing to read."""
        sample, empty = next(run.it, None), 0
        while sample is None and self.carry:
            empty = empty + 1 if run.out == 0 else 0
            if empty >= MAX_EMPTY_PASSES:
                break
            run.pas, run.out = run.pas + 1, 0
            r0, w0, world0, workers0 = run.key
            run.it = self.raw_stream(w0, workers0, run.pas, run.faults, rank=r0, world_size=world0)
            sample = next(run.it, None)
        if sample is not None:
            run.out += 1
        return sample

    def _decode(self, sample: dict, epoch: int, run: Run) -> dict | None:
        """One sample decoded (None: skipped and counted); stops a worker whose every sample is skipped."""
        run.read += 1
        try:
            decoded = self.decoder(sample, epoch)
            run.good += 1
            return decoded
        except SkipSample as exn:
            run.faults.record(exn.reason, f"sample {sample[KEY]} in {sample[URL]}", exn.detail)
            run.reasons[exn.reason] += 1
            if run.good == 0 and run.read >= MAX_ALL_SKIPPED:
                top = ", ".join(f"{r} ({c})" for r, c in run.reasons.most_common(3))
                raise DataError(f"the first {run.read} samples read from {self.sources[0].name} were all "
                                f"skipped ({top}); check data.modalities and the transforms") from None
            return None

    def _emit(self, run: Run, lw: int) -> dict:
        batch = self.decoder.collate(run.pending)
        if get_worker_info() is not None:
            batch = pack_tensors(batch)
        delta, extra = run.faults.take_delta()
        batch.update({WORKER: lw, RAW: run.out, PASS: run.pas, SEEN: run.seen + extra, SKIPPED: delta,
                      NOTED: self.decoder.take_noted(), SEG: (run.k, run.pas, run.out, run.taken)})
        run.pending, run.seen = [], 0
        return batch
