"""Optimizer and learning-rate schedule: AdamW parameter groups (no decay on norms, biases,
temperature, embeddings) and linear warmup + cosine decay."""
import math

import torch
from torch import nn

# Parameter names (last component) that get no weight decay, besides every parameter with ndim < 2
# (biases, norm scales, temperature): embeddings and positional tables.
NO_DECAY_NAMES = ("token_embedding", "positional_embedding", "class_embedding", "pos_embed", "cls_token",
                  "logit_scale", "logit_bias", "embeddings", "pos_embedding")


def no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or any(part in NO_DECAY_NAMES for part in name.split("."))


def build_optimizer(model: nn.Module, tc, device_type: str = "cpu") -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, temperature and embeddings; fused kernels where torch has them.

    The fused AdamW runs on CUDA and (torch >= 2.4) on CPU, where it is ~5x faster than the
    default foreach path for a 49408x128 token embedding (measured in benchmarks/RESULTS.md).
    """
    decay, skip = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (skip if no_decay(n, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": skip, "weight_decay": 0.0}]
    kwargs = dict(lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):   # an older torch without a fused kernel here
            pass
    return torch.optim.AdamW(groups, **kwargs)


class WarmupCosine:
    """lr multiplier: linear warmup, then cosine to min_lr_ratio. A class, so LambdaLR state stays JSON-able."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def build_scheduler(optimizer, tc, total_steps: int):
    fn = WarmupCosine(tc.warmup_steps, total_steps, tc.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, [fn] * len(optimizer.param_groups))
    return sched


def restore_scheduler(scheduler, state: dict) -> None:
    """Resume a schedule at the saved step. Only the step count comes from the checkpoint: the schedule
    (lr, warmup, total steps) is the recipe's, so a run resumed with a larger train.max_steps follows
    the new schedule instead of the saved one, which had already decayed to min_lr_ratio."""
    scheduler.last_epoch, scheduler._step_count = state["last_epoch"], state["_step_count"]
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)      # what LambdaLR.step computes, bit for bit
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
