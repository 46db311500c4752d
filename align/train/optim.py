"""Optimizer and learning-rate schedule: AdamW parameter groups (no decay on norms, biases,
temperature, embeddings) and linear warmup + cosine decay.

Fine-tuning controls (all in `train.*`):
  tower_lr: {image: 1e-5}     a tower's own base learning rate (the others, and the temperature, use train.lr)
  layer_decay: 0.75           layer-wise lr decay (BEiT/ELECTRA): in a tower with L layers, a parameter at
                              depth d (0 = embeddings, i + 1 = layer i, L + 1 = final norm and projection head)
                              gets base_lr * layer_decay ** (L + 1 - d)
  unlock_at_step: {image: 500}  a tower locked in its section trains from that step on (its parameters are
                              in the optimizer from the start; AdamW skips them while they have no gradient)
"""
import math
from typing import Dict, List, Optional

import torch
from torch import nn

# Parameter names (last component) that get no weight decay, besides every parameter with ndim < 2
# (biases, norm scales, temperature): embeddings and positional tables.
NO_DECAY_NAMES = ("token_embedding", "positional_embedding", "class_embedding", "pos_embed", "cls_token",
                  "logit_scale", "logit_bias", "embeddings", "pos_embedding")


def no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or any(part in NO_DECAY_NAMES for part in name.split("."))


# Parameter-name components of the input side of a tower (depth 0 for layer-wise lr decay): embeddings,
# patch/conv stems, pre-norms. Module attribute names of the encoders, not model names.
EMBED_NAMES = ("token_embedding", "positional_embedding", "class_embedding", "conv1", "conv2", "ln_pre",
               "patch_embed", "patch_embedding", "pos_embed", "cls_token", "embeddings", "embed_tokens",
               "embed_positions", "feature_extractor", "feature_projection", "masked_spec_embed", "pre_layrnorm")


def layer_list(tower: nn.Module):
    """(prefix, n) of the tower's block list: its longest nn.ModuleList of same-type modules; None if none."""
    best = None
    for name, m in tower.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1:
            if best is None or len(m) > best[1]:
                best = (name, len(m))
    return best


def layer_depths(tower: nn.Module) -> Dict[str, int]:
    """{parameter name in the tower: depth}: 0 embeddings, i + 1 block i, L + 1 everything after (see module doc)."""
    found = layer_list(tower)
    out = {}
    for n, _ in tower.named_parameters():
        if found and n.startswith(found[0] + "."):
            out[n] = int(n[len(found[0]) + 1:].split(".")[0]) + 1
        elif found and any(part in EMBED_NAMES for part in n.split(".")):
            out[n] = 0
        else:
            out[n] = (found[1] + 1) if found else 0
    return out


def param_lrs(model: nn.Module, tc) -> Dict[str, float]:
    """{parameter name: base lr} from train.lr, train.tower_lr and train.layer_decay."""
    tower_lr = dict(getattr(tc, "tower_lr", None) or {})
    decay = getattr(tc, "layer_decay", None)
    lrs = {n: tc.lr for n, _ in model.named_parameters()}
    towers = getattr(model, "towers", {})
    for m, tower in towers.items():
        base = float(tower_lr.get(m, tc.lr))
        depths = layer_depths(tower) if decay is not None else {}
        top = max(depths.values(), default=0)
        for n, _ in tower.named_parameters():
            lrs[f"towers.{m}.{n}"] = base * (decay ** (top - depths[n]) if decay is not None else 1.0)
    return lrs


def unused_lr_settings(model: nn.Module, tc) -> List[str]:
    """One line per fine-tuning setting this model gives nothing to act on, said before step 1 (as
    align.train.unused does for recipe keys): a tower_lr for a tower locked for the whole run, a layer_decay
    for a tower without a block list (all its parameters then take the tower's base lr)."""
    later = set((getattr(tc, "unlock_at_step", None) or {}).keys())
    towers = getattr(model, "towers", {})
    lines = []
    for m, lr in sorted((getattr(tc, "tower_lr", None) or {}).items()):
        tower = towers[m] if m in towers else None
        if tower is not None and m not in later and not any(p.requires_grad for p in tower.parameters()):
            lines.append(f"train.tower_lr.{m}={lr:g}: not used (the {m} tower is locked for the whole run: "
                         f"none of its parameters trains)")
    decay = getattr(tc, "layer_decay", None)
    if decay is not None:
        flat = [m for m, t in sorted(towers.items()) if layer_list(t) is None
                and (m in later or any(p.requires_grad for p in t.parameters()))]
        if flat:
            lines.append(f"train.layer_decay={decay:g}: not used (the {', '.join(flat)} tower"
                         f"{'s have' if len(flat) > 1 else ' has'} no list of layers to decay over: every parameter "
                         f"there takes the tower's base lr)")
    return lines


def build_optimizer(model: nn.Module, tc, device_type: str = "cpu") -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, temperature and embeddings; fused kernels where torch has them.

    The fused AdamW runs on CUDA and (torch >= 2.4) on CPU, where it is ~5x faster than the
    default foreach path for a 49408x128 token embedding (measured in benchmarks/RESULTS.md).
    Without per-tower lr / layer decay there are two groups: [decay, no decay]. With them, one group
    per (learning rate, decay) pair, each with its own "lr" (the schedule scales each group's own lr).
    Towers named in train.unlock_at_step join with their frozen parameters.
    """
    later = set((getattr(tc, "unlock_at_step", None) or {}).keys())
    lrs = param_lrs(model, tc)
    groups: Dict[tuple, dict] = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        if not (p.requires_grad or (parts[0] == "towers" and len(parts) > 1 and parts[1] in later)):
            continue
        skip = no_decay(n, p)
        key = (lrs[n], skip)
        g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if skip else tc.weight_decay, "lr": lrs[n]})
        g["params"].append(p)
    if not any(getattr(tc, k, None) for k in ("tower_lr", "layer_decay")):
        # the plain layout: [decay, no decay] (checkpoints of earlier runs have it)
        ordered = [groups.get((tc.lr, False), {"params": [], "weight_decay": tc.weight_decay, "lr": tc.lr}),
                   groups.get((tc.lr, True), {"params": [], "weight_decay": 0.0, "lr": tc.lr})]
    else:
        ordered = [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1]))]
    kwargs = dict(lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(ordered, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):   # an older torch without a fused kernel here
            pass
    return torch.optim.AdamW(ordered, **kwargs)


def unlock_tower(tower: nn.Module) -> None:
    """Undo a tower's lock: every parameter trains again, frozen eval-mode parts return to train mode."""
    for p in tower.parameters():
        p.requires_grad_(True)
    if hasattr(tower, "trunk_locked"):
        tower.trunk_locked = False
    tower.train(tower.training)
    if tower.training:
        for m in tower.modules():
            m.train(True)


def unlock_due(model: nn.Module, schedule: Optional[Dict[str, int]], step: int) -> List[str]:
    """Unlocks every tower whose unlock step is <= `step` and that still has frozen parameters; returns them."""
    done = []
    for m, at in (schedule or {}).items():
        tower = model.towers[m]
        if step >= at and not all(p.requires_grad for p in tower.parameters()):
            unlock_tower(tower)
            done.append(m)
    return done


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
    # The samples-seen anchor of align.train.elastic's schedule (the global batch the run was trained with, where
    # it changed) is the run's history, not the recipe's: it comes from the checkpoint too.
    for fn, saved in zip(scheduler.lr_lambdas, state.get("lr_lambdas") or []):
        for key in ("unit", "offset_step", "offset_samples", "global_batch"):
            if isinstance(saved, dict) and key in saved and hasattr(fn, key):
                setattr(fn, key, saved[key])
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)      # what LambdaLR.step computes, bit for bit
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
