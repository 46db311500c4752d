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
(align.train.rundir.weights_path). Single process and DDP: every rank keeps the same average; rank 0 writes
it. train.sharding=fsdp: the weights are DTensors sharded across the ranks, and so is the average -- each rank
averages its own shards (no communication, 1/world of the memory), the checkpoint's DCP store holds it under
"ema." beside "model." and "optim.", and align.load, export and init_from read the "ema." tensors
(align.train.checkpoint.load_dcp_weights); evaluation swaps every rank's shards in before the collective
that gathers a plain copy.
"""
import contextlib
from typing import Dict

import torch

from align.errors import AlignError
from align.train.checkpoint import check_state_fits


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (train.sharding=fsdp: its storage is the parameter's); a plain tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


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
        """After optimizer step n: avg <- d_n * avg + (1 - d_n) * w for every floating tensor (shard by shard)."""
        w = 1.0 - self.decay_at(n)
        for k, v in model.state_dict().items():
            a, v = _local(self.avg[k]), _local(v.detach())
            if a.is_floating_point():
                a.lerp_(v.to(a.dtype), w)
            else:
                a.copy_(v)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The average (float32 for floating tensors; DTensors under fsdp): what a checkpoint's ema.safetensors
        (or its DCP store's "ema.") holds."""
        return dict(self.avg)

    def load_state_dict(self, saved: Dict[str, torch.Tensor], what: str) -> None:
        check_state_fits(self.avg, saved, f"{what}: the weight average does not fit the model",
                         "train into another output_dir")
        with torch.no_grad():
            for k, a in self.avg.items():
                a.copy_(saved[k].to(a.device, a.dtype))

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self, model: torch.nn.Module):
        """The average in `model` for the block (an evaluation), the trained weights back after it. Sharded
        (fsdp): copied shard by shard into the tensors the state dict shares with the parameters (every rank
        calls it; nothing is communicated); otherwise through load_state_dict."""
        sd = model.state_dict()
        if not any(hasattr(v, "to_local") for v in sd.values()):
            own = {k: v.detach().clone() for k, v in sd.items()}
            model.load_state_dict(self.avg)
            try:
                yield model
            finally:
                model.load_state_dict(own)
            return
        live = {k: _local(v) for k, v in sd.items()}
        own = {k: v.clone() for k, v in live.items()}
        for k, v in live.items():
            v.copy_(_local(self.avg[k]).to(v.dtype))
        try:
            yield model
        finally:
            for k, v in live.items():
                v.copy_(own[k])


def _own_copy(v: torch.Tensor) -> torch.Tensor:
    v = v.detach()
    return v.clone().float() if v.is_floating_point() else v.clone()
