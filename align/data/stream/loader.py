"""Streaming training/eval loader over webdataset tar shards, with exact resume.

Per reader, the stream is a pure function of (seed, epoch, rank, logical worker):

    shards of each source, ordered by (seed, epoch), split by rank then by worker
      -> tar samples (missing/corrupt shards counted and skipped)
      -> weighted interleave of the sources        (seeded: mix)
      -> shuffle buffer                            (seeded: shuffle)
      -> [resume: drop the first N raw samples, undecoded, faults muted]
      -> decode + augment + transforms (broken samples counted and skipped; every random
         transform seeded per sample by (seed, epoch, shard file name, key): align.data.stream.decode)
      -> batches of `batch_size` built inside the worker (align.data.stream.worker: one decode
         loop for ordinary epochs and elastic segments alike)

Each batch carries bookkeeping (align.data.stream.keys): WORKER (logical worker), RAW
(raw samples that worker has consumed so far), SEEN / SKIPPED (deltas), SEG (elastic
position).  `StreamLoader` consumes them in the main process, so its totals
(`loader.seen`, `loader.skipped`) and `state_dict()` are exact: they describe
the batches actually handed out, not what workers prefetched.

Order: batches are handed out round-robin over the logical workers, starting
at worker 0, skipping workers that are done (torch's DataLoader order; the
loader takes each worker's items in that order itself, holding any that come
early).  After a restart, physical worker w plays logical worker
(w + next_worker) % num_workers, where next_worker follows the last logical
worker whose output was consumed, so the round-robin continues in exactly the
same order.  At the end of its stream each worker sends a "flush" item (not
yielded) with its last fault counts; a consumed flush marks the worker done.

Epochs: a training loader's workers are started once and go on from epoch to
epoch (align.data.stream.worker): each worker's items of the next epoch are
made while this one is still being taken, and held until it ends.  With
samples_per_epoch an epoch is that many batches, split over the workers that
have shards, and it starts where the last one stopped in each worker's stream
(passes over the shards: align.data.stream.worker), so every sample is read.

Elastic resume: a checkpoint written at another world size, per-rank batch
size or number of workers, or whose ranks are in different epochs, is
re-partitioned (align.data.stream.resume): the rest of each epoch still
open runs as "segments" of the original streams, epoch by epoch, every
sample of each epoch trained once; later epochs are planned for the new run.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Callable

import torch
from torch.utils.data import DataLoader

from align.data.stream.decode import SampleDecoder
from align.data.stream.faults import skip_rate_error
from align.data.stream.keys import ERROR, FLUSH, NOTED, PASS, RAW, SEEN, SEG, SKIPPED, UNAVAILABLE, WORKER
from align.data.stream.pack import unpack_tensors
from align.data.stream.receive import Items
from align.data.stream.remote import DEFAULT_RETRY_BUDGET_S, SourceUnavailable
from align.data.stream.sources import SourceSpec, resolve_sources
from align.data.stream.worker import Plan, StreamDataset
from align.errors import DataError

__all__ = ["SourceSpec", "StreamLoader", "build_train_loader", "build_eval_loader"]

log = logging.getLogger("align.data")

STATE_VERSION = 1

# How long close() waits for the workers to stop.
CLOSE_WAIT_S = 30.0


class StreamLoader:
    """Iterable over batch dicts for one epoch at a time, with exact totals and resume.

    - `for batch in loader`: one epoch (or the rest of it, after a resume or a
      `break`); at its natural end the loader moves to the next epoch.
    - `set_epoch(e)`: start epoch e from its beginning (no-op if already in e,
      so a resumed position survives the usual `set_epoch` at the top of a loop;
      with samples_per_epoch, a jump to another epoch starts at pass e's start).
    - `skipped` (reason -> count) and `seen` (raw samples read + unreadable
      shards) are exact totals over the batches handed out, kept across resume.
    - `state_dict()` / `load_state_dict()`: the data position after the last
      batch handed out.

    With workers and `keep_workers` (training), the worker processes are started
    once and read every epoch: when a worker's part of this epoch ends it goes on
    with the next from its start (epoch + 1, or the elastic work planned for it),
    so the training loop neither waits for new workers nor for the shuffle buffer
    to fill at an epoch's start.  Items of the next epoch are held until this one
    ends, at most ~2 per worker beyond the prefetch (the workers' gate).  The
    stream is the same either way: a worker's output is a function of its plan
    only.  Without `keep_workers`, each epoch starts its own workers.
    """

    def __init__(self, dataset: StreamDataset, *, num_workers: int, epoch: int = 0,
                 max_skip_frac: float | None = None, pin_memory: bool = False, prefetch_factor: int | None = None,
                 keep_workers: bool = True):
        self.dataset = dataset
        self.num_workers = num_workers
        self.n_logical = max(1, num_workers)
        self.max_skip_frac = max_skip_frac
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.skipped: Counter = Counter()
        self.noted: Counter = Counter()       # events noted, not skipped (captions cut, ...), whole run
        self.seen = 0
        # The workers' items (align.data.stream.receive.Items) from the position on; across epochs with keep_workers.
        self._items: Items | None = None
        self.keep_workers = keep_workers and num_workers > 0 and dataset.train
        self._drain: threading.Thread | None = None
        # Elastic resume: per later epoch still holding work of the checkpoint's layout, this rank's share:
        # [{"epoch", "segments": per lw, "quota": per lw}] (align.data.stream.resume).
        self._later: list[dict] = []
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

    def step_features(self, device):
        """The callable that finishes this loader's batches on `device` (align.data.stream.features.StepFeatures),
        or None when collate finishes them itself."""
        dec = self.dataset.decoder
        if not dec.features_in_step:
            return None
        from align.data.stream.features import StepFeatures
        return StepFeatures(dec.transforms, dec.modalities, dec.augment, device)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this StreamLoader has no length: pass samples_per_epoch to declare the epoch size")
        return self.num_batches

    def _reset(self, epoch: int) -> None:
        n = self.n_logical
        self.epoch = int(epoch)
        self.batches = 0  # batches handed out in this epoch
        self._next_worker = 0
        self._raw, self._wbatches, self._done = [0] * n, [0] * n, [False] * n
        self._pass = [self.epoch] * n   # per lw the pass its stream is in (with samples_per_epoch: align...worker)
        # Elastic resume (this epoch only): {"segs": per lw its segments as of the last start, "prog": per lw
        # (segment index, raw, taken) of its last consumed batch, "quota0": per lw its batches of this rest of
        # the epoch, "quota": per lw those still due}.  None: an ordinary epoch.
        self._seg: dict | None = None

    def _take_later(self) -> None:
        """Make the elastic work planned for this epoch (if any) the current epoch's."""
        while self._later and self._later[0]["epoch"] < self.epoch:
            self._later.pop(0)
        if self._later and self._later[0]["epoch"] == self.epoch:
            self._set_segments(self._later.pop(0))

    def _set_segments(self, work: dict) -> None:
        """work: {"segments": per lw its segments, "quota": per lw its batches (None: to the end)}."""
        self._seg = {"segs": [[list(x) for x in w] for w in work["segments"]], "prog": [None] * self.n_logical,
                     "quota0": list(work["quota"]), "quota": list(work["quota"])}

    def start_elastic(self, epoch: int, work: list[dict]) -> None:
        """Continue at the start of `epoch` with the elastic work planned per epoch (align.data.stream.resume):
        [{"epoch", "segments": per lw, "quota": per lw}], oldest first."""
        self._stop_workers()
        self._reset(epoch)
        self._later = [dict(w) for w in work]
        self._take_later()

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._stop_workers()
            self._reset(epoch)
            self._take_later()

    def state_dict(self) -> dict:
        ds = self.dataset
        n = self.n_logical
        out = {
            "version": STATE_VERSION, "epoch": self.epoch, "batches": self.batches,
            "next_worker": self._next_worker, "worker_raw": list(self._raw), "worker_pass": list(self._pass),
            "worker_batches": list(self._wbatches), "worker_done": list(self._done),
            "num_workers": n, "rank": ds.rank, "world_size": ds.world_size, "seed": ds.seed,
            "batch_size": ds.batch_size, "resampled": ds.resampled, "skipped": dict(self.skipped), "seen": self.seen,
            "noted": dict(self.noted),
            "worker_quota": [ds.quota(lw, n) for lw in range(n)],
            # elastic resume: what is left of later epochs for this rank (align.data.stream.resume)
            "later": [{"epoch": w["epoch"], "segments": w["segments"], "quota": w["quota"]} for w in self._later],
        }
        if self._seg is not None:
            out.update(segments=[self._left(lw) for lw in range(n)], segment_quota=list(self._seg["quota"]),
                       segment_quota0=list(self._seg["quota0"]))
        return out

    def _left(self, lw: int) -> list:
        """Elastic mode: the segments logical worker `lw` has not trained yet."""
        if self._done[lw]:
            return []
        segs, prog = self._seg["segs"][lw], self._seg["prog"][lw]
        if prog is None:
            return [list(x) for x in segs]
        k, pas, raw, taken = prog
        r0, w0, _, _, take, world0, workers0 = segs[k][:7]
        left = None if take is None else take - taken
        rest = [] if left is not None and left <= 0 else [[r0, w0, raw, 0, left, world0, workers0, pas]]
        return rest + [list(x) for x in segs[k + 1:]]

    def load_state_dict(self, state) -> None:
        """`state`: this loader's own state, or the list of every rank's (index = rank) from a checkpoint,
        which may come from another world size, batch size or number of workers (elastic resume), and
        whose ranks may be in different epochs."""
        if isinstance(state, list):
            ds = self.dataset
            own = state[ds.rank] if len(state) == ds.world_size else None
            for st in state:
                self._check_state(st, elastic=True)
            if (own is not None and "segments_left" not in own and own["num_workers"] == self.n_logical
                    and own["batch_size"] == ds.batch_size):
                state = own                      # same layout: the exact per-worker resume below
            else:
                from align.data.stream.resume import load_elastic
                load_elastic(self, state)
                return
        self._check_state(state, elastic=False)
        self._stop_workers()
        self._reset(state["epoch"])
        self.batches = int(state["batches"])
        self._next_worker = int(state["next_worker"])
        self._raw = [int(x) for x in state["worker_raw"]]
        self._pass = [int(x) for x in state.get("worker_pass", self._pass)]   # (written before passes: its epoch)
        self._wbatches = [int(x) for x in state["worker_batches"]]
        self._done = [bool(x) for x in state["worker_done"]]
        self.skipped = Counter(state.get("skipped", {}))
        self.noted = Counter(state.get("noted", {}))
        self.seen = int(state.get("seen", 0))
        self._later = [dict(w) for w in state.get("later", [])]
        if "segments" in state:
            self._set_segments({"segments": state["segments"], "quota": state["segment_quota0"]})
            self._seg["quota"] = list(state["segment_quota"])

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

    def _plan(self) -> Plan:
        """The workers' plan from the current position: an ordinary epoch is one segment per worker (its own
        stream from the raw samples it has read); an elastic rest re-bases each worker's segments."""
        ds, n = self.dataset, self.n_logical
        if self._seg is not None:
            sg = self._seg
            sg["segs"], sg["prog"] = [self._left(lw) for lw in range(n)], [None] * n
            return Plan(self.epoch, self._next_worker, list(self._done), [list(x) for x in sg["segs"]],
                        list(sg["quota"]), elastic=True)
        segments = [[[ds.rank, lw, self._raw[lw], 0, None, ds.world_size, n, self._pass[lw]]] for lw in range(n)]
        quota = [None if ds.quota(lw, n) is None else ds.quota(lw, n) - self._wbatches[lw] for lw in range(n)]
        return Plan(self.epoch, self._next_worker, list(self._done), segments, quota)

    def _start(self, plan: Plan) -> Items:
        """The workers' items over `plan` (workers fork here and copy the plan; with keep_workers they go on
        into the later epochs, through the shared gate)."""
        gate = None
        if self.keep_workers:
            plan.later = [dict(w) for w in self._later]
            gate = plan.gate = torch.tensor([plan.epoch, 1], dtype=torch.int64).share_memory_()
        self.dataset.plan = plan
        kwargs = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 and self.prefetch_factor else {}
        # Its own generator: DataLoader draws a base seed when the iteration starts, which with the
        # global RNG would be one draw after a resume's RNG restore, shifting every later random
        # transform (num_workers=0) and dropout mask. The workers' RNGs are seeded by the stream anyway.
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, persistent_workers=False,
                            generator=torch.Generator().manual_seed(plan.epoch), **kwargs)
        # held items of the next epoch: 2 per worker, beyond the prefetch queue's own
        return Items(iter(loader), gate, ahead_cap=2 * self.n_logical, threaded=self.num_workers > 0)

    def _stop_workers(self) -> None:
        """The position moves elsewhere: the workers' stream no longer fits it (they exit with its receiver)."""
        if self._items is not None:
            self._items.close()
            if self._items.receiver is not None:
                self._join_drain()
                self._drain = self._items.receiver
            self._items = None

    def close(self) -> None:
        """Stop the workers and wait until they have exited (at most CLOSE_WAIT_S: a worker stuck in a read or a
        decoder must not hang the end of a run; it is left to end with this process)."""
        self._stop_workers()
        self._join_drain(CLOSE_WAIT_S)

    def _join_drain(self, timeout: float | None = None) -> None:
        if self._drain is not None:
            self._drain.join(timeout)
            if self._drain.is_alive():
                log.warning("data loader: its workers did not stop within %.0f s (one stuck in a read or a decoder?); "
                            "they are left to end with this process", timeout)
            self._drain = None

    def start_reading(self) -> None:
        """Start reading from the current position now (with workers: fork them, so their first batches are
        being made while the caller finishes its own set-up); iterating does it otherwise."""
        if self._items is None:
            self._join_drain()  # never fork while the last epoch's workers are being joined
            self._items = self._start(self._plan())

    def __iter__(self):
        self.start_reading()
        items, n = self._items, self.n_logical
        items.open_gate(self.epoch)
        lw = self._next_worker
        while not all(self._done):
            if self._done[lw]:
                lw = (lw + 1) % n
                continue
            item = items.take(self.epoch, lw)
            if ERROR in item:
                raise (SourceUnavailable if item.get(UNAVAILABLE) else DataError)(item[ERROR])
            if self._consume(item):
                # no reference to a batch handed out stays here: the training loop frees it after its step
                item = [item]
                yield unpack_tensors(item.pop())
            lw = self._next_worker
        if not self.keep_workers:
            # Every worker has sent its last item: torch's own end-of-data handling would now join the
            # worker processes (~50 ms); the receiver thread runs it, off this thread. With 0 workers the
            # rest of the stream runs here: its RNG save/restore (decode.rng_preserving) on another thread
            # would race the next epoch's per-sample seeding (same samples, other weights).
            self._items = None
            self._join_drain()
            self._drain = items.finish()
        self._end_epoch()
        items.open_gate(self.epoch)

    def _consume(self, item: dict) -> bool:
        """Book one worker item into the position and totals; -> whether it is a batch to hand out."""
        lw = item[WORKER]
        self._raw[lw], self._pass[lw] = item[RAW], item[PASS]
        self.seen += item[SEEN]
        self.skipped.update(item[SKIPPED])
        self.noted.update(item.get(NOTED, {}))
        self._next_worker = (lw + 1) % self.n_logical
        flush = item.get(FLUSH, False)
        if flush:
            self._done[lw] = True
        else:
            self._wbatches[lw] += 1
            self.batches += 1
            if self._seg is not None:
                self._seg["prog"][lw] = item[SEG]
                if self._seg["quota"][lw] is not None:
                    self._seg["quota"][lw] -= 1
        err = skip_rate_error(dict(self.skipped), self.seen, self.max_skip_frac, self.dataset.rank,
                              self.dataset.world_size)
        if err is not None:
            raise err
        return not flush

    def _end_epoch(self) -> None:
        total = sum(self.skipped.values())
        top = ", ".join(f"{r} {c}" for r, c in self.skipped.most_common(3))
        log.info("data epoch %d: %d batches on rank %d; totals: %d samples read, %d skipped%s", self.epoch,
                 self.batches, self.dataset.rank, self.seen, total, f" ({top})" if top else "")
        if self.num_batches is not None and self.batches < self.num_batches:
            log.warning("data epoch %d ended after %d batches on rank %d, fewer than the %d declared by "
                        "samples_per_epoch: the shards ran out (or a worker's gave no sample)", self.epoch,
                        self.batches, self.dataset.rank, self.num_batches)
        # with passes (samples_per_epoch), the next epoch goes on where this one stopped (align.data.stream.worker)
        carry = (list(self._pass), list(self._raw)) if self.dataset.carry and self._seg is None else None
        self._reset(self.epoch + 1)
        if carry is not None:
            self._pass, self._raw = carry
        self._take_later()


def _batches_per_rank(batch_size, rank, world_size, num_workers, max_skip_frac, resampled, train,
                      samples_per_epoch) -> int | None:
    """The loader's arguments checked (one DataError line each); -> batches per rank per epoch (None: until the
    shards end)."""
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
    return batches_per_rank


def build_train_loader(sources: list[SourceSpec] | str, *, transforms: dict[str, Callable], batch_size: int,
                       modalities: list[str], rank: int = 0, world_size: int = 1, num_workers: int = 2,
                       seed: int = 0, epoch: int = 0, samples_per_epoch: int | None = None, resampled: bool = False,
                       shuffle_buffer: int = 1000, allow_pipe: bool = False, max_skip_frac: float | None = None,
                       resume_state: dict | None = None, train: bool = True, drop_last: bool | None = None,
                       min_modalities: int = 2, pin_memory: bool = False,
                       prefetch_factor: int | None = None, keep_workers: bool = True,
                       augment=None, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S, limits=None,
                       hard_negatives: int = 0, val_split=None, text_keys=None, teacher: tuple = (),
                       features_in_step: bool = False, pairs=None) -> StreamLoader:
    """Build the streaming loader.  Raises DataError (one line) on unusable input.

    sources: pattern string, SourceSpec, {"urls", "weight"} dict, or a list of them.
    transforms: modality -> callable, run per sample inside the workers:
        "image" PIL RGB -> Tensor[3,H,W]; "audio" (np.float32 wave [T], sr) -> Tensor (fixed shape);
        "text" list[str] -> LongTensor[1,L], called with [caption] and squeezed to [L].
    modalities: subset of ["image", "text", "audio"]; batch[m] is Tensor[B,...], batch[mask_key(m)]
        BoolTensor[B] (False: zeros filled in), plus batch["cls"] LongTensor[B] (-1: none),
        batch["__key__"] list[str] and bookkeeping (align.data.stream.keys: WORKER, RAW, SEEN, SKIPPED, SEG).
    samples_per_epoch: GLOBAL samples per epoch (over all ranks); each rank
        yields samples_per_epoch // (world_size * batch_size) batches at any num_workers, each epoch going on
        where the last stopped (non-resampled: through the shards, pass after pass; fewer only when a worker's
        shards give no sample at all).  None: until the shards end.
    resampled: draw shards with replacement, seeded; infinite unless samples_per_epoch.
    drop_last: drop each worker's final partial batch (default: = train).
    min_modalities: a sample needs this many of `modalities` (capped at len(modalities)).
    keep_workers: (training, with workers) the same worker processes read every epoch, going on into the next
        while this one is taken (see StreamLoader); False: each epoch starts its own.
    augment: an align.data.stream.augment.Augmenter, or its config {modality: [stages]} (training only).
    retry_budget_s: how long an http(s) source may stay unreachable (retried with backoff) before
        the stream stops with SourceUnavailable (align.data.stream.remote).
    limits: data.limits (align.limits.DataLimits or a mapping; None: the defaults), given to the tar reader
        and the decoders.
    hard_negatives: K > 0 adds batch["neg_text"] [B, K, L] and batch["neg_text_mask"] [B, K] from each
        sample's neg.txt (see align.data.stream.decode).
    val_split: an align.data.stream.val_split.ValSplit: its held-out samples (and those without a group) are
        never read for training.
    text_keys: {key: weight} (data.text_keys): a sample's caption is drawn from one of these sources by weight,
        seeded per sample and epoch (align.data.stream.decode.keyed_captions).
    teacher: modalities whose stored teacher embeddings (teacher_<m>.npy members) become batch["teacher_<m>"]
        float [B, Et] (align.data.stream.stored_teacher); a sample without them is skipped and counted.
    features_in_step: (training) the batches carry the clips of two-stage transforms (audio [B, C, samples])
        marked pending, and the consumer computes their features on its device with `loader.step_features(device)`
        (align.data.stream.features; what `align train` does).
    pairs: the loss's modality pairs [(a, b), ...] (loss.pairs): a sample that has no pair's two modalities is
        skipped and counted (`no pair of loss.pairs`: it would train nothing); None: no such check.
    """
    batches_per_rank = _batches_per_rank(batch_size, rank, world_size, num_workers, max_skip_frac, resampled,
                                         train, samples_per_epoch)
    resolved = resolve_sources(sources, allow_pipe=allow_pipe, warn=rank == 0)   # rank 0 warns for the launch
    if isinstance(augment, dict):
        from align.data.stream.augment import build_augmenter
        augment = build_augmenter(augment)
    decoder = SampleDecoder(modalities, transforms, train=train, seed=seed, min_modalities=min_modalities,
                            augment=augment, limits=limits, hard_negatives=hard_negatives, text_keys=text_keys,
                            teacher=teacher, features_in_step=features_in_step, pairs=pairs)
    readers = world_size * max(1, num_workers)
    if not resampled:
        for src in resolved:
            if len(src.urls) < readers and rank == 0:
                log.warning("data source %s has %d shards for %d readers (world_size x num_workers): some readers "
                            "get none of it; use more, smaller shards for an even split", src.name, len(src.urls),
                            readers)
        if world_size > 1 and samples_per_epoch is None and train:
            # align's step-based loop keeps such ranks in step: each starts its next epoch by itself
            # (align.train.feed.Batches). Only a loop that ends every rank's epoch together would wait.
            log.info("data: %d ranks without samples_per_epoch read different shards, so their epochs may differ "
                     "in length and drift apart (each rank's epoch counter is its own); set "
                     "data.samples_per_epoch for equal epochs", world_size)
    dataset = StreamDataset(
        resolved, decoder, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, resampled=resampled,
        shuffle_buffer=shuffle_buffer if train else 0, allow_pipe=allow_pipe, train=train,
        drop_last=train if drop_last is None else drop_last, batches_per_rank=batches_per_rank,
        retry_budget_s=retry_budget_s, val_split=val_split)
    loader = StreamLoader(dataset, num_workers=num_workers, epoch=epoch, max_skip_frac=max_skip_frac,
                          pin_memory=pin_memory, prefetch_factor=prefetch_factor,
                          keep_workers=keep_workers)
    if resume_state is not None:
        loader.load_state_dict(resume_state)
    return loader


def build_eval_loader(sources: list[SourceSpec] | str, *, transforms: dict[str, Callable], batch_size: int,
                      modalities: list[str], rank: int = 0, world_size: int = 1, num_workers: int = 0,
                      allow_pipe: bool = False, max_skip_frac: float | None = None,
                      min_modalities: int = 2, limits=None) -> StreamLoader:
    """Deterministic loader for evaluation (limits: as build_train_loader): shards in listed order, no shuffle,
    first caption, keeps the last partial batch.  Pass eval transforms (open_clip's `image_transform(224, False)`)."""
    return build_train_loader(
        sources, transforms=transforms, batch_size=batch_size, modalities=modalities, rank=rank,
        world_size=world_size, num_workers=num_workers, seed=0, epoch=0, samples_per_epoch=None, resampled=False,
        shuffle_buffer=0, allow_pipe=allow_pipe, max_skip_frac=max_skip_frac, train=False, drop_last=False,
        min_modalities=min_modalities, limits=limits)
