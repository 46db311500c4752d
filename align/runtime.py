"""Pieces the training loop uses: optimizer groups, LR schedule, synthetic data, FLOPs/MFU, loss plot.

Kept out of train.py so the loop itself stays readable top to bottom.
"""
import json
import math
import os
import time
from typing import Optional

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


class SyntheticLoader:
    """Synthetic inputs at the towers' sizes (open_clip's --dataset-type synthetic), deterministic per step.

    Images and audio are random; text is `caption` through the text tower's tokenizer, as open_clip's
    synthetic set tokenizes "Dummy caption" (so both train on the same text, padding included).
    Batch b of epoch e on rank r is drawn from a generator seeded with (seed, rank, e, b), so the
    stream is exactly resumable from `state_dict()`.
    """

    def __init__(self, model, batch_size: int, seed: int = 0, rank: int = 0, samples_per_epoch: int = 10000,
                 resume_state: Optional[dict] = None, caption: Optional[str] = "Dummy caption"):
        self.model, self.batch_size, self.seed, self.rank = model, batch_size, seed, rank
        self.batches_per_epoch = max(1, samples_per_epoch // batch_size)
        self.epoch = (resume_state or {}).get("epoch", 0)
        self.start = (resume_state or {}).get("batches", 0)
        self.yielded = self.start
        self.skipped, self.seen = {}, 0
        # One fixed input per tower, permuted per batch: cheap to produce, like open_clip's synthetic set.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.pool = {m: t.dummy_input(batch_size * 4) for m, t in model.towers.items()}
        if caption is not None and "text" in model.towers:
            self.pool["text"] = model.towers["text"].tokenize([caption]).expand(batch_size * 4, -1).clone()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.yielded}

    def __iter__(self):
        self.yielded = self.start
        for b in range(self.start, self.batches_per_epoch):
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.epoch, b)) & 0x7FFFFFFF)
            idx = torch.randperm(self.batch_size * 4, generator=g)[: self.batch_size]
            batch = {m: x[idx] for m, x in self.pool.items()}
            batch.update({f"{m}_mask": torch.ones(self.batch_size, dtype=torch.bool) for m in self.pool})
            self.yielded = b + 1
            self.seen += self.batch_size
            yield batch
        self.start = 0


def enable_grad_checkpointing(model) -> list:
    """Turn on activation checkpointing in every tower that supports it; returns their names.

    A tower without it (e.g. `audio_cnn`) is named in a warning rather than silently left as it was.
    """
    done, missing = [], []
    for name, tower in model.towers.items():
        (done if tower.set_grad_checkpointing(True) else missing).append(name)
    if missing:
        import logging
        logging.getLogger("align.train").warning(
            "train.grad_checkpointing: tower(s) %s have no gradient checkpointing; they run as before", missing)
    return done


def estimate_flops_per_sample(model) -> Optional[float]:
    """Training FLOPs per sample: 3x the forward FLOPs (forward + backward) counted by torch."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        batch = {m: t.dummy_input(2).to(next(model.parameters()).device) for m, t in model.towers.items()}
        was = model.training
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(batch)
        model.train(was)
        return 3.0 * fc.get_total_flops() / 2
    except Exception:
        return None


# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, by CUDA device name.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
             "RTX 4090": 165e12}


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The device's peak: a table for GPUs; on CPU, a measured fp32 matmul rate (an honest stand-in)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, v in GPU_PEAKS.items():
            if key in name:
                return v if precision != "fp32" else v / 2
        return None
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def write_loss_plot(metrics_path: str, out_png: str) -> Optional[str]:
    """Loss (and lr) against step from metrics.jsonl, as a PNG."""
    if not os.path.isfile(metrics_path):
        return None
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.5, label="lr")
    ax2.set_ylabel("lr")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
