"""TrainState: the run's counters, the part of a checkpoint that is not weights, optimizer or RNG.

"step" means one thing: the number of optimizer steps taken. A step whose loss is NaN/Inf changes no
weight and advances neither `step` nor the learning-rate schedule (so scheduler.last_epoch == step
always); it is counted in `bad_steps_total` and its batches are consumed (the data position moves on).

On disk (state.json, see align.train.checkpoint) the fields keep the names of the dict the loop used
before this class, so every older checkpoint resumes: unknown keys are ignored, missing ones default.
"""
from dataclasses import asdict, dataclass
from typing import Optional

from align.errors import AlignError


@dataclass
class TrainState:
    step: int = 0                     # optimizer steps taken (NaN/Inf steps excluded)
    epoch: int = 0                    # the data epoch being read
    samples: int = 0                  # samples trained on: global batch x step (summed across a world-size change)
    bad_steps_total: int = 0          # NaN/Inf steps skipped, over the whole run
    elapsed_s: float = 0.0            # training wall time before this process (resumes add to it)
    data_wait_s: float = 0.0          # of which waiting for batches
    best: Optional[float] = None      # best value of eval.best_metric so far (the `best` checkpoint's)
    bad_in_row: int = 0               # consecutive NaN/Inf steps (this process only; not saved)

    # saved in state.json; bad_in_row starts again at 0 after a resume, as it always did
    SAVED = ("step", "epoch", "samples", "bad_steps_total", "elapsed_s", "data_wait_s", "best")

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainState":
        """From a checkpoint's state dict (load_checkpoint's return): the keys above, the rest ignored."""
        return cls(**{k: saved[k] for k in cls.SAVED if k in saved})

    def to_checkpoint(self, **extra) -> dict:
        """The state.json payload: the saved counters plus `extra` (data position, scheduler, world size, ...)."""
        d = asdict(self)
        return dict({k: d[k] for k in self.SAVED}, **extra)

    def record_step(self, stepped: bool, global_batch: int, max_bad_steps: int, last_good: Optional[str]) -> bool:
        """Counts one attempted step; True when the optimizer stepped. Raises AlignError after
        `max_bad_steps` NaN/Inf steps in a row, naming the last good checkpoint."""
        if stepped:
            self.step += 1
            self.samples += global_batch
            self.bad_in_row = 0
            return True
        self.bad_in_row += 1
        self.bad_steps_total += 1
        if self.bad_in_row >= max_bad_steps:
            raise AlignError(f"loss was NaN/Inf for {self.bad_in_row} steps in a row (last after step {self.step}); "
                             f"last good checkpoint: {last_good or 'none'}")
        return False

    def improves(self, metric: Optional[float]) -> bool:
        """Whether an eval `metric` is a new best (and records it). None or NaN (a metric with nothing to
        average, or a diverged model's; other ranks receive NaN as None, align.train.guard StepWatch.share) is
        never a best: NaN compares False with everything, so it would replace a real best (checkpoints/best
        overwritten by the model that scored NaN) and the next evaluation would count as better whatever its
        value."""
        if metric is None or metric != metric or (self.best is not None and metric <= self.best):
            return False
        self.best = metric
        return True
