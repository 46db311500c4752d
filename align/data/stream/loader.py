"""Streaming training/eval loader over webdataset tar shards, with exact resume.

Per reader, the stream is a pure function of (seed, epoch, rank, logical worker):

    shards of each source, ordered by (seed, epoch), split by rank then by worker
      -> tar samples (missing/corrupt shards counted and skipped)
      -> weighted interleave of the sources        (seeded: mix)
      -> shuffle buffer                            (seeded: shuffle)
      -> [resume: drop the first N raw samples, undecoded, faults muted]
      -> decode + augment + transforms (broken samples counted and skipped;
         augmentations seeded per sample: align.data.stream.augment)
      -> batches of `batch_size` built inside the worker

Each batch carries bookkeeping: `__worker__` (logical worker), `__raw__`
(raw samples that worker has consumed so far), `__seen__` / `__skipped__`
(deltas).  `StreamLoader` consumes them in the main process, so its totals
(`loader.seen`, `loader.skipped`) and `state_dict()` are exact: they describe
the batches actually handed out, not what workers prefetched.

Resume: torch's DataLoader hands out batches round-robin over workers,
starting at worker 0, dropping exhausted workers.  After a restart, physical
worker w plays logical worker (w + next_worker) % num_workers, where
next_worker follows the last logical worker whose output was consumed, so
the round-robin continues in exactly the same order.  At the end of its
stream each worker sends a "flush" item (not yielded) with its last fault
counts; a consumed flush marks the worker done.

Elastic resume: a checkpoint written at another world size, per-rank batch
size or number of workers is re-partitioned (see align/data/stream/resume.py): the
rest of that epoch runs as "segments" of the original streams, every sample
of the epoch trained once; the next epoch is planned for the new run.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from align.data.stream.decode import SampleDecoder
from align.data.stream.faults import FaultCounter, SkipSample, skip_rate_error
from align.data.stream.remote import DEFAULT_RETRY_BUDGET_S
from align.data.stream.sources import (
    ResolvedSource, SourceSpec, epoch_shards, mix_streams, resampled_shards, resolve_sources, rng_for,
    samples_from_shards, split_shards,
)
from align.errors import DataError

__all__ = ["SourceSpec", "StreamLoader", "build_train_loader", "build_eval_loader"]

log = logging.getLogger("align.data")

# A worker that has read this many raw samples without a single usable one stops with DataError
# (otherwise a wrong modality list or a broken transform would spin through the data silently).
MAX_ALL_SKIPPED = 1000
STATE_VERSION = 1


@dataclass
class _Plan:
    """Where each logical worker starts: copied into the dataset before workers fork."""

    epoch: int
    next_worker: int
    raw: list[int]
    batches: list[int]
    done: list[bool] = field(default_factory=list)
    # Elastic resume: per logical worker its segments (align.data.stream.resume), the stream geometry
    # (world_size, num_workers) they refer to, and per worker the batches still due (None: to the end).
    segments: list | None = None
    streams: tuple | None = None
    quota: list | None = None


class _StreamDataset(IterableDataset):
    """The per-worker stream (see module docstring); yields batch dicts and control items."""

    def __init__(self, sources: list[ResolvedSource], decoder: SampleDecoder, *, batch_size: int, rank: int,
                 world_size: int, seed: int, resampled: bool, shuffle_buffer: int, allow_pipe: bool,
                 train: bool, drop_last: bool, batches_per_rank: int | None, retry_budget_s: float):
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
        self.train = train
        self.drop_last = drop_last
        self.batches_per_rank = batches_per_rank
        self.plan: _Plan | None = None

    def quota(self, lw: int, n: int) -> int | None:
        """Batches logical worker `lw` of `n` yields per epoch (None: until the data ends)."""
        if self.batches_per_rank is None:
            return None
        per, extra = divmod(self.batches_per_rank, n)
        return per + (1 if lw < extra else 0)

    def raw_stream(self, lw: int, n: int, epoch: int, faults: FaultCounter, rank: int | None = None,
                   world_size: int | None = None):
        """Undecoded samples of logical worker `lw` of `n` of `rank` (default: this rank), in their final
        (shuffled) order."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        streams = []
        for si, src in enumerate(self.sources):
            if self.resampled:
                urls = resampled_shards(src.urls, rng_for("resample", self.seed, epoch, rank, lw, si))
            else:
                order = epoch_shards(src.urls, seed=self.seed, epoch=epoch, source_index=si, shuffle=self.train)
                urls = split_shards(order, rank=rank, world_size=world_size, worker=lw, num_workers=n)
            streams.append(samples_from_shards(urls, faults, allow_pipe=self.allow_pipe,
                                               infinite=self.resampled, name=src.name,
                                               retry_budget_s=self.retry_budget_s))
        if len(streams) == 1:
            stream = streams[0]
        else:
            stream = mix_streams(streams, [s.weight for s in self.sources],
                                 rng_for("mix", self.seed, epoch, rank, lw))
        if self.train and self.shuffle_buffer > 1:
            import webdataset as wds

            rng = rng_for("shuffle", self.seed, epoch, rank, lw)
            stream = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(iter(stream))
        return iter(stream)

    def __iter__(self):
        info = get_worker_info()
        worker, n = (0, 1) if info is None else (info.id, info.num_workers)
        plan = self.plan
        if plan is None or len(plan.raw) != n:
            raise RuntimeError("iterate the dataset through StreamLoader, which sets its plan")
        lw = (worker + plan.next_worker) % n
        if info is not None:
            # Random transforms (crops, flips) draw from global RNGs: make them a function of the
            # stream too.  Only inside worker processes: never reseed the training process.
            s = rng_for("transforms", self.seed, plan.epoch, self.rank, lw).getrandbits(62)
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
        try:
            yield from (self._stream(lw, n, plan) if plan.segments is None else self._segment_stream(lw, plan))
        except DataError as exn:
            # Shipped as an item so the main process raises one clean line, not a worker traceback.
            yield {"__error__": str(exn), "__worker__": lw}

    def _stream(self, lw: int, n: int, plan: _Plan):
        if plan.done[lw]:
            return
        epoch, faults = plan.epoch, FaultCounter()
        it = self.raw_stream(lw, n, epoch, faults)
        consumed, done_batches, quota = plan.raw[lw], plan.batches[lw], self.quota(lw, n)
        # Fast-forward over samples already consumed before the checkpoint: undecoded, and with
        # faults muted because they were reported with batches that were already consumed.
        faults.muted = True
        out = 0
        for _ in range(consumed):
            if next(it, None) is None:
                raise DataError(
                    f"resume: logical worker {lw} found only {out} samples but the checkpoint says {consumed} "
                    f"were read; the shards changed since the checkpoint")
            out += 1
        faults.muted = False
        pending, seen, read_here, good_here = [], 0, 0, 0
        in_worker = get_worker_info() is not None
        while quota is None or done_batches < quota:
            raw = next(it, None)
            if raw is None:
                break
            out += 1
            seen += 1
            read_here += 1
            try:
                if in_worker:
                    # Random transforms draw from a seed of the sample's place in the stream, not from
                    # where the worker started: a resumed stream skips samples undecoded, and without
                    # this would crop every later sample differently from the uninterrupted run.
                    s = rng_for("transforms", self.seed, epoch, self.rank, lw, out).getrandbits(62)
                    torch.default_generator.manual_seed(s)   # CPU only: torch.manual_seed costs ~0.5 ms
                    random.seed(s)
                    np.random.seed(s % 2**32)
                pending.append(self.decoder(raw, epoch))
                good_here += 1
            except SkipSample as exn:
                faults.record(exn.reason, f"sample {raw['__key__']} in {raw['__url__']}", exn.detail)
                if good_here == 0 and read_here >= MAX_ALL_SKIPPED:
                    top = ", ".join(f"{r} ({c})" for r, c in faults.total.most_common(3))
                    raise DataError(f"the first {read_here} samples read from {self.sources[0].name} were all "
                                    f"skipped ({top}); check data.modalities and the transforms") from None
            if len(pending) == self.batch_size:
                yield self._emit(pending, lw, out, seen, faults)
                pending, seen = [], 0
                done_batches += 1
        if pending and not self.drop_last:
            yield self._emit(pending, lw, out, seen, faults)
            seen = 0
        delta, extra = faults.take_delta()
        yield {"__flush__": True, "__worker__": lw, "__raw__": out, "__seen__": seen + extra, "__skipped__": delta}

    def _segment_stream(self, lw: int, plan: _Plan):
        from align.data.stream.resume import segment_stream
        return segment_stream(self, lw, plan)

    def _emit(self, pending: list[dict], lw: int, out: int, seen: int, faults: FaultCounter) -> dict:
        batch = self.decoder.collate(pending)
        if get_worker_info() is not None:
            batch = pack_tensors(batch)
        delta, extra = faults.take_delta()
        batch.update(__worker__=lw, __raw__=out, __seen__=seen + extra, __skipped__=delta)
        return batch


def pack_tensors(batch: dict) -> dict:
    """Move a batch's tensors into one uint8 tensor: {"__packed__": (buf, [(key, dtype, shape, offset)])}.

    A worker hands each tensor to the training process through its own shared-memory
    file descriptor and socket handshake (~0.6 ms of the training process's time per
    tensor); one buffer per batch makes that one handshake.  `unpack_tensors` undoes it.
    """
    keys = [k for k, v in batch.items() if torch.is_tensor(v)]
    layout, size = [], 0
    for k in keys:
        t = batch[k]
        layout.append((k, t.dtype, tuple(t.shape), size))
        size += -(-t.numel() * t.element_size() // 64) * 64  # 64-byte aligned, so every dtype view is legal
    buf = torch.empty(size, dtype=torch.uint8)
    for k, dtype, shape, off in layout:
        t = batch[k]
        buf[off:off + t.numel() * t.element_size()].view(dtype).view(shape).copy_(t)
    out = {k: v for k, v in batch.items() if k not in keys}
    out["__packed__"] = (buf, layout)
    return out


def unpack_tensors(item: dict) -> dict:
    """The inverse of `pack_tensors` (views into the one buffer; no copy)."""
    if "__packed__" not in item:
        return item
    buf, layout = item.pop("__packed__")
    for k, dtype, shape, off in layout:
        n = torch.Size(shape).numel() * dtype.itemsize
        item[k] = buf[off:off + n].view(dtype).view(shape)
    return item


def _drain(items) -> None:
    """Run an exhausted DataLoader iterator to its end (which shuts its workers down)."""
    for _ in items:
        pass


class StreamLoader:
    """Iterable over batch dicts for one epoch at a time, with exact totals and resume.

    - `for batch in loader`: one epoch (or the rest of it, after a resume or a
      `break`); at its natural end the loader moves to the next epoch.
    - `set_epoch(e)`: start epoch e from its beginning (no-op if already in e,
      so a resumed position survives the usual `set_epoch` at the top of a loop).
    - `skipped` (reason -> count) and `seen` (raw samples read + unreadable
      shards) are exact totals over the batches handed out, kept across resume.
    - `state_dict()` / `load_state_dict()`: the data position after the last
      batch handed out.

    With workers, the next epoch's workers are started as soon as the first
    batch of this epoch is handed out (their plan is fixed: epoch + 1 from its
    start), so they have batches queued when this epoch ends instead of the
    training loop stalling on worker start-up and the shuffle-buffer fill.
    They fill at most `prefetch_factor` batches each, then wait.  The stream
    is the same either way: a worker's output is a function of its plan only.
    """

    def __init__(self, dataset: _StreamDataset, *, num_workers: int, epoch: int = 0,
                 max_skip_frac: float | None = None, pin_memory: bool = False, prefetch_factor: int | None = None,
                 start_next_epoch_early: bool = True):
        self.dataset = dataset
        self.num_workers = num_workers
        self.n_logical = max(1, num_workers)
        self.max_skip_frac = max_skip_frac
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.skipped: Counter = Counter()
        self.seen = 0
        self._ahead: tuple[int, object] | None = None  # (epoch, DataLoader iterator) started early
        self.start_next_epoch_early = start_next_epoch_early
        self._drain: threading.Thread | None = None
        self._reset(epoch)

    @property
    def batch_size(self) -> int:
        return self.dataset.batch_size

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch on this rank when samples_per_epoch was given, else None."""
        if self._seg is not None:            # the rest of an elastically resumed epoch
            q = self._seg["quota0"]
            return None if None in q else sum(q)
        return self.dataset.batches_per_rank

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this StreamLoader has no length: pass samples_per_epoch to declare the epoch size")
        return self.num_batches

    def _reset(self, epoch: int) -> None:
        if self._ahead is not None and self._ahead[0] != int(epoch):
            self._ahead = None  # its workers shut down when the iterator is collected
        n = self.n_logical
        self.epoch = int(epoch)
        self.batches = 0  # batches handed out in this epoch
        self._next_worker = 0
        self._raw, self._wbatches, self._done = [0] * n, [0] * n, [False] * n
        # Elastic resume (this epoch only): {"streams", "segs": per lw its segments as of the last start,
        # "prog": per lw (segment index, raw, taken) of its last consumed batch, "quota0", "quota"}.
        self._seg: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._reset(epoch)

    def state_dict(self) -> dict:
        ds = self.dataset
        n = self.n_logical
        out = {
            "version": STATE_VERSION, "epoch": self.epoch, "batches": self.batches,
            "next_worker": self._next_worker, "worker_raw": list(self._raw),
            "worker_batches": list(self._wbatches), "worker_done": list(self._done),
            "num_workers": n, "rank": ds.rank, "world_size": ds.world_size, "seed": ds.seed,
            "batch_size": ds.batch_size, "resampled": ds.resampled, "skipped": dict(self.skipped), "seen": self.seen,
            "worker_quota": [ds.quota(lw, n) for lw in range(n)],
        }
        if self._seg is not None:
            out.update(streams=list(self._seg["streams"]), segments_left=[s for lw in range(n) for s in self._left(lw)])
        return out

    def _left(self, lw: int) -> list:
        """Elastic mode: the segments logical worker `lw` has not trained yet."""
        if self._done[lw]:
            return []
        segs, prog = self._seg["segs"][lw], self._seg["prog"][lw]
        if prog is None:
            return [list(x) for x in segs]
        k, raw, taken = prog
        r0, w0, _, _, take = segs[k]
        left = None if take is None else take - taken
        rest = [] if left is not None and left <= 0 else [[r0, w0, raw, 0, left]]
        return rest + [list(x) for x in segs[k + 1:]]

    def _load_elastic(self, states: list) -> None:
        from align.data.stream.resume import load_elastic
        load_elastic(self, states)

    def load_state_dict(self, state) -> None:
        """`state`: this loader's own state, or the list of every rank's (index = rank) from a checkpoint,
        which may come from another world size, batch size or number of workers (elastic resume)."""
        if isinstance(state, list):
            ds = self.dataset
            own = state[ds.rank] if len(state) == ds.world_size else None
            for st in state:
                self._check_state(st, elastic=True)
            if (own is not None and "segments_left" not in own and own["num_workers"] == self.n_logical
                    and own["batch_size"] == ds.batch_size):
                state = own                      # same layout: the exact per-worker resume below
            else:
                self._load_elastic(state)
                return
        self._check_state(state, elastic=False)
        self._reset(state["epoch"])
        self.batches = int(state["batches"])
        self._next_worker = int(state["next_worker"])
        self._raw = [int(x) for x in state["worker_raw"]]
        self._wbatches = [int(x) for x in state["worker_batches"]]
        self._done = [bool(x) for x in state["worker_done"]]
        self.skipped = Counter(state.get("skipped", {}))
        self.seen = int(state.get("seen", 0))

    def _check_state(self, state, elastic: bool) -> None:
        need = {"version", "epoch", "batches", "next_worker", "worker_raw", "worker_batches", "worker_done",
                "num_workers", "rank", "world_size", "seed", "batch_size", "resampled"}
        if not isinstance(state, dict) or not need <= set(state):
            missing = sorted(need - set(state)) if isinstance(state, dict) else "all"
            raise DataError(f"data resume_state: not a StreamLoader state (missing {missing})")
        if state["version"] != STATE_VERSION:
            raise DataError(f"data resume_state: version {state['version']} is not supported (expected {STATE_VERSION})")
        ds = self.dataset
        mine = {"seed": ds.seed, "resampled": ds.resampled}
        if not elastic:
            mine.update({"num_workers": self.n_logical, "rank": ds.rank, "world_size": ds.world_size,
                         "batch_size": ds.batch_size})
        for key, value in mine.items():
            if state[key] != value:
                name = "max(1, num_workers)" if key == "num_workers" else key
                raise DataError(f"data resume_state was saved with {name}={state[key]} but this run has {value}; "
                                f"resuming needs the same {key}" + ("" if elastic else
                                " (pass every rank's state as a list to re-partition it)"))

    def _at_epoch_start(self) -> bool:
        return (self.batches == 0 and self._next_worker == 0 and not any(self._raw) and not any(self._wbatches)
                and not any(self._done))

    def _start(self, plan: _Plan):
        """A DataLoader iterator over `plan` (workers fork here and copy the plan)."""
        self.dataset.plan = plan
        kwargs = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 and self.prefetch_factor else {}
        # Its own generator: DataLoader draws a base seed when the iteration starts, which with the
        # global RNG would be one draw after a resume's RNG restore, shifting every later random
        # transform (num_workers=0) and dropout mask. The workers' RNGs are seeded by the stream anyway.
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, persistent_workers=False,
                            generator=torch.Generator().manual_seed(plan.epoch), **kwargs)
        return iter(loader)

    def close(self) -> None:
        """Stop workers started ahead for the next epoch and wait until the last epoch's have exited."""
        self._ahead = None
        self._join_drain()

    def _join_drain(self) -> None:
        if self._drain is not None:
            self._drain.join()
            self._drain = None

    def __iter__(self):
        n = self.n_logical
        if self._ahead is not None and self._ahead[0] == self.epoch and self._at_epoch_start() and self._seg is None:
            items = self._ahead[1]
        elif self._seg is not None:
            # Elastic: each worker starts from what it has not trained yet (its progress is re-based).
            sg = self._seg
            sg["segs"], sg["prog"] = [self._left(lw) for lw in range(n)], [None] * n
            items = self._start(_Plan(self.epoch, self._next_worker, list(self._raw), list(self._wbatches),
                                      list(self._done), segments=sg["segs"], streams=sg["streams"],
                                      quota=list(sg["quota"])))
        else:
            items = self._start(_Plan(self.epoch, self._next_worker, list(self._raw), list(self._wbatches),
                                      list(self._done)))
        self._ahead = None
        for item in items:
            if self._ahead is None and self.start_next_epoch_early and self.num_workers > 0 and self.batches > 0:
                self._join_drain()  # never fork while the last epoch's workers are being joined
                self._ahead = (self.epoch + 1, self._start(_Plan(self.epoch + 1, 0, [0] * n, [0] * n, [False] * n)))
            if "__error__" in item:
                raise DataError(item["__error__"])
            lw = item["__worker__"]
            self._raw[lw] = item["__raw__"]
            self.seen += item["__seen__"]
            self.skipped.update(item["__skipped__"])
            self._next_worker = (lw + 1) % self.n_logical
            flush = item.get("__flush__", False)
            if flush:
                self._done[lw] = True
            else:
                self._wbatches[lw] += 1
                self.batches += 1
                if self._seg is not None:
                    self._seg["prog"][lw] = item["__seg__"]
                    if self._seg["quota"][lw] is not None:
                        self._seg["quota"][lw] -= 1
            err = skip_rate_error(dict(self.skipped), self.seen, self.max_skip_frac)
            if err is not None:
                raise err
            if not flush:
                yield unpack_tensors(item)
            elif all(self._done):
                # Every worker has sent its last item: torch's own end-of-data handling would now join
                # the worker processes on this thread (~50 ms); let a background thread run it instead.
                self._drain = threading.Thread(target=_drain, args=(items,), daemon=True)
                self._drain.start()
                break
        self._end_epoch()

    def _end_epoch(self) -> None:
        total = sum(self.skipped.values())
        top = ", ".join(f"{r} {c}" for r, c in self.skipped.most_common(3))
        log.info("data epoch %d: %d batches on rank %d; totals: %d samples read, %d skipped%s", self.epoch,
                 self.batches, self.dataset.rank, self.seen, total, f" ({top})" if top else "")
        if self.num_batches is not None and self.batches < self.num_batches:
            log.warning("data epoch %d ended after %d batches on rank %d, fewer than the %d declared by "
                        "samples_per_epoch: the shards ran out", self.epoch, self.batches, self.dataset.rank,
                        self.num_batches)
        self._reset(self.epoch + 1)


def build_train_loader(sources: list[SourceSpec] | str, *, transforms: dict[str, Callable], batch_size: int,
                       modalities: list[str], rank: int = 0, world_size: int = 1, num_workers: int = 2,
                       seed: int = 0, epoch: int = 0, samples_per_epoch: int | None = None, resampled: bool = False,
                       shuffle_buffer: int = 1000, allow_pipe: bool = False, max_skip_frac: float | None = None,
                       resume_state: dict | None = None, train: bool = True, drop_last: bool | None = None,
                       min_modalities: int = 2, pin_memory: bool = False,
                       prefetch_factor: int | None = None, start_next_epoch_early: bool = True,
                       augment=None, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
                       hard_negatives: int = 0) -> StreamLoader:
    """Build the streaming loader.  Raises DataError (one line) on unusable input.

    sources: pattern string, SourceSpec, {"urls", "weight"} dict, or a list of them.
    transforms: modality -> callable, run per sample inside the workers:
        "image" PIL RGB -> Tensor[3,H,W]; "audio" (np.float32 wave [T], sr) -> Tensor (fixed shape);
        "text" list[str] -> LongTensor[1,L], called with [caption] and squeezed to [L].
    modalities: subset of ["image", "text", "audio"]; batch[m] is Tensor[B,...], batch[m + "_mask"]
        BoolTensor[B] (False: zeros filled in), plus batch["cls"] LongTensor[B] (-1: none),
        batch["__key__"] list[str] and bookkeeping (`__worker__`, `__raw__`, `__seen__`, `__skipped__`).
    samples_per_epoch: GLOBAL samples per epoch (over all ranks); each rank
        yields samples_per_epoch // (world_size * batch_size) batches, or fewer
        if the shards run out first (non-resampled).  None: until the shards end.
    resampled: draw shards with replacement, seeded; infinite unless samples_per_epoch.
    drop_last: drop each worker's final partial batch (default: = train).
    min_modalities: a sample needs this many of `modalities` (capped at len(modalities)).
    start_next_epoch_early: with workers, start the next epoch's workers during this one (see StreamLoader).
    augment: an align.data.stream.augment.Augmenter, or its config {modality: [stages]} (training only).
    retry_budget_s: how long an http(s) source may stay unreachable (retried with backoff) before
        the stream stops with SourceUnavailable (align.data.stream.remote).
    hard_negatives: K > 0 adds batch["neg_text"] [B, K, L] and batch["neg_text_mask"] [B, K] from each
        sample's neg.txt (see align.data.stream.decode).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise DataError(f"data loader: rank {rank!r} is not in [0, world_size={world_size!r})")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
    if max_skip_frac is not None and not (0 <= max_skip_frac <= 1):
        raise DataError(f"data.max_skip_frac must be in [0, 1], got {max_skip_frac!r}")
    if resampled and not train:
        raise DataError("data.resampled is for training only; eval reads every shard once")
    batches_per_rank = None
    if samples_per_epoch is not None:
        if not isinstance(samples_per_epoch, int) or samples_per_epoch < 1:
            raise DataError(f"data.samples_per_epoch must be a positive integer, got {samples_per_epoch!r}")
        batches_per_rank = samples_per_epoch // (world_size * batch_size)
        if batches_per_rank == 0:
            raise DataError(f"data.samples_per_epoch={samples_per_epoch} is smaller than one global batch "
                            f"(world_size {world_size} x batch_size {batch_size})")
    resolved = resolve_sources(sources, allow_pipe=allow_pipe)
    if isinstance(augment, dict):
        from align.data.stream.augment import build_augmenter
        augment = build_augmenter(augment)
    decoder = SampleDecoder(modalities, transforms, train=train, seed=seed, min_modalities=min_modalities,
                            augment=augment, hard_negatives=hard_negatives)
    readers = world_size * max(1, num_workers)
    if not resampled:
        for src in resolved:
            if len(src.urls) < readers:
                log.warning("data source %s has %d shards for %d readers (world_size x num_workers): some readers "
                            "get none of it; use more, smaller shards for an even split", src.name, len(src.urls),
                            readers)
        if world_size > 1 and samples_per_epoch is None and train:
            log.warning("data: %d ranks without samples_per_epoch may yield different numbers of batches per "
                        "epoch (distributed training then hangs); set data.samples_per_epoch", world_size)
    dataset = _StreamDataset(
        resolved, decoder, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, resampled=resampled,
        shuffle_buffer=shuffle_buffer if train else 0, allow_pipe=allow_pipe, train=train,
        drop_last=train if drop_last is None else drop_last, batches_per_rank=batches_per_rank,
        retry_budget_s=retry_budget_s)
    loader = StreamLoader(dataset, num_workers=num_workers, epoch=epoch, max_skip_frac=max_skip_frac,
                          pin_memory=pin_memory, prefetch_factor=prefetch_factor,
                          start_next_epoch_early=start_next_epoch_early)
    if resume_state is not None:
        loader.load_state_dict(resume_state)
    return loader


def build_eval_loader(sources: list[SourceSpec] | str, *, transforms: dict[str, Callable], batch_size: int,
                      modalities: list[str], rank: int = 0, world_size: int = 1, num_workers: int = 0,
                      allow_pipe: bool = False, max_skip_frac: float | None = None,
                      min_modalities: int = 2) -> StreamLoader:
    """Deterministic loader for evaluation: shards in listed order, no shuffle, first caption, keeps the last
    partial batch.  Pass eval transforms (e.g. open_clip's `image_transform(224, is_train=False)`)."""
    return build_train_loader(
        sources, transforms=transforms, batch_size=batch_size, modalities=modalities, rank=rank,
        world_size=world_size, num_workers=num_workers, seed=0, epoch=0, samples_per_epoch=None, resampled=False,
        shuffle_buffer=0, allow_pipe=allow_pipe, max_skip_frac=max_skip_frac, train=False, drop_last=False,
        min_modalities=min_modalities)
