"""The batched half of a two-stage transform (the audio front end's log-mel, `per_batch`) and the log-mel
augmentation stages after it, run in one of two places:

  in the data workers      SampleDecoder.collate calls `batch_features` (eval streams, and any loader built
                           without `features_in_step`)
  in the training step     a training stream built with `features_in_step=True` hands out the clips
                           [B, C, samples] instead, marked pending (keys.PENDING, with the per-sample seeds), and
                           `StepFeatures` computes the features on the training device after the batch is moved
                           there (align.train.step.train_step)

Why the step: the log-mel of a batch is one STFT and one matmul, microseconds on a GPU, while in a CPU worker it
was the largest cost of the demo's data pipeline (16 % of a worker; 10 s clips: most of it), so the workers fell
behind the step (benchmarks/RESULTS.md, issue 23). Both places run `batch_features` with draws seeded per sample,
so they give the same features (tests/data/stream/test_features.py), and a resumed run is still exact.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable, Dict, List, Optional

import torch

from align.data.stream.keys import AUG, KEY, PENDING, SEED
from align.errors import DataError


def takes_generator(fn) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def is_two_stage(tf) -> bool:
    """A transform with a per-sample and a batched part, `per_sample` / `per_batch`
    (align.towers.audio_features.AudioPreprocess): the one test SampleDecoder and StepFeatures use."""
    return hasattr(tf, "per_batch")


def batch_features(tf, x: torch.Tensor, seeds: List[int], aug_seeds: List[int], augment, train: bool
                   ) -> torch.Tensor:
    """tf.per_batch on x [B, ...] (clips [B, C, samples] -> log-mel [B, n_mels, T]), then the log-mel
    augmentation stages. seeds / aug_seeds: the samples' keys.SEED / keys.AUG seeds, in batch order.

    per_batch's own random draws (SpecAugment) come from one generator per sample, seeded by the sample, so they
    depend neither on which samples share its batch nor on where this runs."""
    if train and takes_generator(tf.per_batch):
        out = tf.per_batch(x, generator=[torch.Generator().manual_seed(s ^ 0x5EC) for s in seeds])
    else:
        out = tf.per_batch(x)
    if train and augment is not None and augment.logmel_stages:
        out = augment.logmel(out, aug_seeds)
    return out


def failed(m: str, n: int, first_key: str, exn: Exception) -> DataError:
    """The one line for a per_batch that raised: it cannot be pinned on one sample, so a transform bug."""
    return DataError(f"transforms['{m}'].per_batch failed on a batch of {n} ({first_key}, ...): {exn!r}")


class StepFeatures:
    """batch -> batch with its pending modalities' features computed on `device` (see the module docstring).

    Holds its own copy of each two-stage transform, moved to the device (`tf.to(device)`), so the loader's copy,
    which the data workers fork from, never holds device tensors."""

    def __init__(self, transforms: Dict[str, Callable], modalities: List[str], augment, device):
        self.device = torch.device(device)
        self.augment = augment
        self.transforms = {}
        for m in modalities:
            tf = transforms.get(m)
            if tf is not None and is_two_stage(tf):
                tf = copy.deepcopy(tf)
                self.transforms[m] = tf.to(self.device) if hasattr(tf, "to") else tf

    def __call__(self, batch: dict) -> dict:
        pending = batch.pop(PENDING, None)
        if not pending:
            return batch
        seeds, aug_seeds = batch.pop(SEED), batch.pop(AUG)
        for m in pending:
            try:
                batch[m] = batch_features(self.transforms[m], batch[m], seeds, aug_seeds, self.augment, True)
            except Exception as exn:
                raise failed(m, len(seeds), (batch.get(KEY) or ["?"])[0], exn) from None
        return batch


def step_features(loader, device) -> Optional[StepFeatures]:
    """The StepFeatures a training loader's batches need (None: they come finished, e.g. synthetic batches)."""
    fn = getattr(loader, "step_features", None)
    return fn(device) if fn is not None else None
