"""Cross-process gathers shared by the contrastive losses.

Every loss sees the *global* batch: each of `world_size` processes holds a
local slice of B_r rows, and the gathers below concatenate them in rank
order. Gradient convention (the one DDP / Accelerate expect): each rank
returns a loss L_r such that mean_r L_r equals the single-process loss L on
the whole batch, and gradients flow back through the gather (its backward
sums, over ranks, the gradients every rank's loss sends to a slice). Then
DDP's gradient *average* over ranks reproduces dL/dθ exactly:
    grad_r = sum_s dL_s/dθ via rank r's rows,  mean_r grad_r = dL/dθ.

Uneven local batches (a last, short batch) are handled by padding to the
largest B_r and marking the padding invalid in the mask.

Rule kept throughout: every branch that changes which collectives run is
decided from gathered (global) values, so all ranks issue the same
collectives in the same order, forward and backward.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from align.errors import AlignError


def check_dist(rank: int, world_size: int, who: str = "loss") -> None:
    """Clear one-line errors when rank/world_size disagree with torch.distributed."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise AlignError(f"{who}: rank={rank} is not in [0, world_size={world_size})")
    if world_size == 1:
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise AlignError(f"{who}: world_size={world_size} but torch.distributed is not initialised "
                         "(launch with accelerate/torchrun, or pass world_size=1)")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise AlignError(f"{who}: built for rank {rank} of {world_size} but torch.distributed reports "
                         f"rank {dist.get_rank()} of {dist.get_world_size()}")


def _use_reduce_scatter() -> bool:
    # gloo and others lack reduce_scatter; NCCL-like backends have it and it moves half the bytes.
    return str(dist.get_backend()).lower() in ("nccl", "xccl")


class _AllGatherWithGrad(torch.autograd.Function):
    """[B, ...] per rank -> [world*B, ...]; backward sums every rank's gradient for our slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.world_size, ctx.n = rank, world_size, x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad: [world*B, ...] = d(L_this_rank)/d(gathered)
        n, r = ctx.n, ctx.rank
        if _use_reduce_scatter():
            out = torch.empty_like(grad[:n]).contiguous()
            dist.reduce_scatter(out, [c.contiguous() for c in grad.split(n, 0)], op=dist.ReduceOp.SUM)
        else:
            total = grad.contiguous().clone()  # never modify autograd's buffer in place
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            out = total[r * n:(r + 1) * n]
        return out, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` (see ClipLoss gather_with_grad=False)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, factor)


def gather_features(x: torch.Tensor, rank: int, world_size: int, with_grad: bool = True) -> torch.Tensor:
    """[B, D] on every rank (same B everywhere) -> [world_size*B, D] in rank order.

    with_grad=True: gradients reach every rank's slice (backward sums the
    contributions of all ranks' losses). with_grad=False: the other ranks'
    slices are constants and the local slice is put back with its graph, so
    only this rank's loss reaches it (open_clip's `gather_with_grad=False`).
    """
    if world_size == 1:
        return x
    if with_grad:
        return _AllGatherWithGrad.apply(x, rank, world_size)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, 0)


def gather_masks(mask: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """bool [B] per rank -> bool [world_size*B] (no gradient; uint8 on the wire for gloo)."""
    if world_size == 1:
        return mask
    m = mask.to(torch.uint8).contiguous()
    parts = [torch.empty_like(m) for _ in range(world_size)]
    dist.all_gather(parts, m)
    return torch.cat(parts, 0).bool()


@dataclass
class GatheredBatch:
    """Global view of a local batch. tensors: [N_pad, D] each; mask: bool [N_pad];
    rows [start, stop) of them are this rank's (padding included). all_valid: known on the host that every
    row is valid (one process, no mask given), so compact() need not read the mask back from the device."""
    tensors: List[torch.Tensor]
    mask: torch.Tensor
    start: int
    stop: int
    all_valid: bool = False


def gather_batch(tensors: Sequence[torch.Tensor], mask: Optional[torch.Tensor], rank: int,
                 world_size: int, with_grad: bool = True) -> GatheredBatch:
    """Gather same-length [B_r, D] tensors plus their validity mask across ranks.

    B_r may differ between ranks: sizes are exchanged first (one tiny
    all_gather) and short batches are zero-padded with mask=False.
    """
    n = tensors[0].shape[0]
    device = tensors[0].device
    given = mask is not None
    if mask is None:
        mask = torch.ones(n, dtype=torch.bool, device=device)
    if world_size == 1:
        return GatheredBatch(list(tensors), mask, 0, n, all_valid=not given)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    n_max = int(max(int(s) for s in sizes))
    if n_max != n:
        pad = n_max - n
        tensors = [torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))], 0) for t in tensors]
        mask = torch.cat([mask, mask.new_zeros(pad)], 0)
    out = [gather_features(t, rank, world_size, with_grad) for t in tensors]
    return GatheredBatch(out, gather_masks(mask, rank, world_size), rank * n_max, rank * n_max + n)


def compact(batch: GatheredBatch):
    """Keep only valid rows. Returns (tensors [N, D] each, start, stop) with [start, stop)
    this rank's valid rows in the compacted order. N may be 0."""
    m = batch.mask
    # bool(m.all()) waits for the device (a host sync mid-step, measured in benchmarks/gpu_step_profile.py);
    # all_valid answers it on the host where that is known. Global value: same branch on every rank.
    if batch.all_valid or bool(m.all()):
        return batch.tensors, batch.start, batch.stop
    start = int(m[:batch.start].sum())
    stop = start + int(m[batch.start:batch.stop].sum())
    return [t[m] for t in batch.tensors], start, stop


def check_pair(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor], who: str) -> None:
    """One-line errors for malformed loss inputs."""
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise AlignError(f"{who}: expected two [B, D] embeddings of equal shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (a.shape[0],)):
        raise AlignError(f"{who}: mask must be a bool tensor of shape [{a.shape[0]}], got "
                         f"{mask.dtype} {tuple(mask.shape)}")


def as_scale(x, like: torch.Tensor) -> torch.Tensor:
    """float or 0-dim/[1] tensor -> 0-dim tensor (keeps the graph)."""
    if not torch.is_tensor(x):
        return torch.tensor(float(x), dtype=like.dtype, device=like.device)
    if x.numel() != 1:
        raise AlignError(f"logit scale/bias must be a scalar, got shape {tuple(x.shape)}")
    return x.reshape(())


NO_ROWS = "align_no_rows"     # set on zero_loss's tensor: the pair had no valid row on any rank (had_no_rows)


def zero_loss(*tensors) -> torch.Tensor:
    """A 0 that is still connected to every input, so backward (and the gathers'
    collectives inside it) runs on every rank even when nothing is valid. Marked (NO_ROWS) so that the pair's
    log is left out rather than read as a loss of 0 (align.losses.multipair)."""
    out = None
    for t in tensors:
        if torch.is_tensor(t):
            z = t.sum() * 0.0
            out = z if out is None else out + z
    if out is not None:
        setattr(out, NO_ROWS, True)
    return out


def had_no_rows(loss: torch.Tensor) -> bool:
    """Whether a pair loss is zero_loss's: no valid row in the global batch (the same answer on every rank)."""
    return bool(getattr(loss, NO_ROWS, False))
