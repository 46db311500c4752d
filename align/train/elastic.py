"""Resuming at another scale: the learning-rate schedule by samples seen when the global batch changes.

A run checkpointed at world size N with per-rank batch b resumes at M processes with batch b'.
When M*b' == N*b nothing changes and nothing is said. Otherwise the schedule, defined in steps
of the global batch it was started with (its `unit` in samples), continues from the samples
already trained: at step s after the change, it is at (samples_then + (s - step_then) * G') / unit
of its own steps, and the run ends once the planned number of samples has been trained.
"""
import math

from align.train.optim import WarmupCosine


class SamplesWarmupCosine(WarmupCosine):
    """WarmupCosine evaluated at samples seen / unit. Plain attributes: LambdaLR's state stays JSON-able."""

    def __init__(self, warmup: int, total: int, min_ratio: float, unit: int, offset_step: int = 0,
                 offset_samples: int = 0, global_batch: int = 0):
        super().__init__(warmup, total, min_ratio)
        self.unit, self.offset_step, self.offset_samples = unit, offset_step, offset_samples
        self.global_batch = global_batch or unit

    def __call__(self, step: int) -> float:
        return super().__call__((self.offset_samples + (step - self.offset_step) * self.global_batch) / self.unit)


def schedule_by_samples(scheduler, global_batch: int) -> None:
    """Make each of `scheduler`'s WarmupCosine lambdas a SamplesWarmupCosine (same values while G is kept)."""
    scheduler.lr_lambdas = [f if isinstance(f, SamplesWarmupCosine) else
                            SamplesWarmupCosine(f.warmup, f.total, f.min_ratio, unit=global_batch)
                            for f in scheduler.lr_lambdas]


def continue_by_samples(scheduler, step: int, samples: int, global_batch: int, total_steps: int):
    """After `scheduler.load_state_dict`: re-anchor the schedule at this step when the global batch changed.

    Returns (total_steps, message): the steps this run now ends at and one line for the user (None when
    the global batch is the one the checkpoint was trained with).
    """
    fns = scheduler.lr_lambdas
    was = fns[0].global_batch
    if was == global_batch:
        return total_steps, None
    for f in fns:
        f.offset_step, f.offset_samples, f.global_batch = step, samples, global_batch
    planned = fns[0].total * fns[0].unit
    total = step + max(0, math.ceil((planned - samples) / global_batch))
    return total, (f"global batch changed from {was} to {global_batch}: the learning-rate schedule continues by "
                   f"samples seen ({samples} of {planned}); the run ends at step {total}")
