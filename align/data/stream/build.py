"""Building the streaming loader from the data.* settings: the arguments checked (one DataError line each), the
sources resolved, the launch's warnings (rank 0 only), the decoder and the per-worker stream made
(align.data.stream.worker), wrapped in a StreamLoader (align.data.stream.loader) and put at a resume state.

build_train_loader: training (and any seeded, shuffled stream); build_eval_loader: evaluation (listed order, no
shuffle, every sample once).
"""

from __future__ import annotations

import logging
from typing import Callable

from align.data.stream.decode import SampleDecoder
from align.data.stream.loader import StreamLoader
from align.data.stream.remote import DEFAULT_RETRY_BUDGET_S
from align.data.stream.sources import SourceSpec, resolve_sources
from align.data.stream.worker import StreamDataset
from align.errors import DataError

__all__ = ["SourceSpec", "build_train_loader", "build_eval_loader"]

log = logging.getLogger("align.data")


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
        shards give no sample in worker.MAX_EMPTY_PASSES passes in a row).  None: until the shards end.
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
