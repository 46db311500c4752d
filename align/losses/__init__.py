"""Contrastive objectives for align: CLIP (InfoNCE), SigLIP, their chunked
low-memory versions, and a weighted multi-pair wrapper.

Each loss is a standalone nn.Module in the style of open_clip's ClipLoss,
with the distributed set-up (rank, world_size, ...) as constructor
arguments. All of them are exact across processes: with gradients averaged
over ranks (what DDP / Accelerate do), N processes x batch b give the loss
and gradients of one process with batch N*b. See distributed.py.

Recipes name a loss by its registered type: "clip", "siglip",
"chunked_clip", "chunked_siglip", "hard_negative_clip" (loss.hard_negatives: K), "distill_clip" (loss.distill).
Modules:
  clip          ClipLoss: symmetric InfoNCE with masks, exact across processes
  siglip        SigLipLoss (and its chunked form): sigmoid loss with a learnable bias
  chunked       InfoNCE without the [N, N] logits (chunked logsumexp with recomputation)
  multipair     MultiPairLoss: a weighted sum over several modality pairs
  distributed   the cross-process gathers the losses share
  hard_negatives HardNegativeClipLoss: per-sample hard-negative captions join that sample's row
  distill       DistillClipLoss: InfoNCE + KL towards a frozen teacher's in-batch similarities
"""
import inspect
from typing import Optional, Sequence

from align.errors import ConfigError
from align.losses.chunked import ChunkedClipLoss, chunked_infonce_sum
from align.losses.clip import ClipLoss
from align.losses.distributed import gather_batch, gather_features, gather_masks
from align.losses.distill import DistillClipLoss
from align.losses.hard_negatives import HardNegativeClipLoss
from align.losses.multipair import MultiPairLoss, pair_name
from align.losses.siglip import ChunkedSigLipLoss, SigLipLoss
from align.registry import Registry

LOSSES = Registry("loss")
LOSSES.register("clip")(ClipLoss)
LOSSES.register("siglip")(SigLipLoss)
LOSSES.register("chunked_clip")(ChunkedClipLoss)
LOSSES.register("chunked_siglip")(ChunkedSigLipLoss)
LOSSES.register("hard_negative_clip")(HardNegativeClipLoss)     # takes_negatives: batch neg_text rows
LOSSES.register("distill_clip")(DistillClipLoss)                # takes_teacher: teacher_<modality> embeddings


def loss_options(type: str) -> list:
    """The options a loss type takes (its class's keyword arguments, less rank and world_size)."""
    return [p for p in inspect.signature(LOSSES.get(type).__init__).parameters
            if p not in ("self", "rank", "world_size")]


def build_loss(type: str, pairs: Sequence[Sequence[str]], weights: Optional[Sequence[float]] = None,
               rank: int = 0, world_size: int = 1, **kwargs) -> MultiPairLoss:
    """Recipe -> loss. type: a LOSSES name; pairs/weights: see MultiPairLoss;
    kwargs: options of that loss class (e.g. chunk_size, local_loss, gather_with_grad)."""
    cls = LOSSES.get(type)
    valid = loss_options(type)
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"loss.{key}: not an option of loss type {type!r}; valid: {', '.join(valid)}")
    return MultiPairLoss(pairs, weights, cls(rank=rank, world_size=world_size, **kwargs))


__all__ = ["LOSSES", "build_loss", "loss_options", "ClipLoss", "SigLipLoss", "ChunkedClipLoss", "ChunkedSigLipLoss",
           "MultiPairLoss", "HardNegativeClipLoss", "DistillClipLoss", "gather_features", "gather_masks",
           "gather_batch", "chunked_infonce_sum", "pair_name"]
