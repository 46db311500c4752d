"""train.ema: an exponential moving average of the weights (Polyak averaging), kept beside the trained ones.

After every optimizer step n = 1, 2, ... (TrainState.step, so a resumed run continues the same sequence):

    avg <- d_n * avg + (1 - d_n) * w,    d_n = min(train.ema, (1 + n) / (10 + n))

the warm-up of TensorFlow's ExponentialMovingAverage(num_updates=) and timm's ModelEma: early steps, whose
weights are far from where training ends, are forgotten quickly. Every floating tensor of the model's state
dict is averaged (parameters and float buffers such as BatchNorm's running statistics), in float32 on the
weights' device (one more float32 copy of the model in memory); other buffers (BatchNorm's step counter)
are copied.

The average is the model a run gives: evaluations during and after training score it (and `best` is chosen
by it), and a checkpoint stores it as ema.safetensors beside the trained weights (model.safetensors), which
resume continues from; align.load, `align export`, `align bench` and init_from read the average
(align.train.rundir.weights_path). Single process and DDP (every rank keeps the same average; rank 0 writes
it); train.sharding=fsdp is refused (its weights are DTensor shards, saved through DCP).
"""
import contextlib
from typing import Dict

import torch

from align.errors import AlignError
from align.train.checkpoint import check_state_fits


def check_ema(decay: float, sharding: str) -> None:
    if decay and sharding == "fsdp":
        raise AlignError("train.ema: not available with train.sharding=fsdp (its weights are DTensor shards "
                         "written through DCP); use train.sharding=ddp or train.ema=0")


class WeightEMA:
    """The average of `model`'s state dict; `model` is the unwrapped AlignModel (Engine.core)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise AlignError(f"train.ema={decay}: the decay must be in (0, 1), e.g. 0.999; 0 turns it off")
        self.decay = decay
        self.avg: Dict[str, torch.Tensor] = {k: _own_copy(v) for k, v in model.state_dict().items()}

    def decay_at(self, n: int) -> float:
        """d_n for the n-th optimizer step (n >= 1)."""
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, n: int) -> None:
        """After optimizer step n: avg <- d_n * avg + (1 - d_n) * w for every floating tensor."""
        w = 1.0 - self.decay_at(n)
        for k, v in model.state_dict().items():
            a = self.avg[k]
            if a.is_floating_point():
                a.lerp_(v.detach().to(a.dtype), w)
            else:
                a.copy_(v)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The average (float32 for floating tensors): what a checkpoint's ema.safetensors holds."""
        return dict(self.avg)

    def load_state_dict(self, saved: Dict[str, torch.Tensor], what: str) -> None:
        check_state_fits(self.avg, saved, f"{what}: the weight average does not fit the model",
                         "train into another output_dir")
        with torch.no_grad():
            for k, a in self.avg.items():
                a.copy_(saved[k].to(a.device, a.dtype))

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """The average in `model` for the block (an evaluation), the trained weights back after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.avg)
        try:
            yield model
        finally:
            model.load_state_dict(own)


def _own_copy(v: torch.Tensor) -> torch.Tensor:
    v = v.detach()
    return v.clone().float() if v.is_floating_point() else v.clone()
