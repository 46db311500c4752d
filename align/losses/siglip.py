"""Sigmoid (SigLIP) loss with a learnable bias, exact across processes.

On the valid global batch of N pairs, z_ij = s * a_i.b_j + t,
    L = -1/N * sum_ij log sigmoid(y_ij * z_ij),  y_ij = +1 if i == j else -1
      = 1/N * [ sum_ij softplus(z_ij) - sum_i z_ii ]      (what we compute).

Distributed: each rank scores its own valid a rows against the gathered
(with gradient) valid b rows and returns L_r = world_size * (its share of L),
so mean_r L_r = L and DDP's gradient average gives the single-process
gradient exactly (see align/losses/distributed.py). N counts valid pairs
over all ranks.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import ConfigError
from align.losses.distributed import as_scale, check_dist, check_pair, compact, gather_batch, zero_loss


def _siglip_rows_sum(x, y, s, t, offset: int):
    """x: [n, D] queries, y: [M, D]; the positive of row r is column offset + r. Returns a sum, in >= fp32
    (a bf16 sum of n*M softplus terms under autocast is ~0.5 % off)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    z = (x @ y.T).to(acc) * s.to(acc) + t.to(acc)           # [n, M]
    return F.softplus(z).sum() - z.diagonal(offset=offset).sum()


class SigLipLoss(nn.Module):
    """Dense sigmoid loss: [B_r, N] logits per rank ([N, N] on one process)."""

    uses_logit_bias = True

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale, logit_bias,
                mask: Optional[torch.Tensor] = None):
        """a, b: [B, D]; logit_scale (exp'ed) and logit_bias: scalars; mask: bool [B]."""
        name = type(self).__name__
        check_pair(a, b, mask, name)
        check_dist(self.rank, self.world_size, name)
        if logit_bias is None:
            raise ConfigError(f"{name}: needs logit_bias (the model must have a learnable logit bias)")
        s, t = as_scale(logit_scale, a), as_scale(logit_bias, a)
        g = gather_batch([b], mask, self.rank, self.world_size, with_grad=True)
        (B,), start, stop = compact(g)                      # B: [N, D] valid b, all ranks
        n = B.shape[0]
        if n == 0:
            return zero_loss(a, *g.tensors, s, t)
        x = a if mask is None or bool(mask.all()) else a[mask]  # this rank's valid a: [stop-start, D]
        return self._rows_sum(x, B, s, t, start) * (self.world_size / n)

    def _rows_sum(self, x, y, s, t, offset):
        return _siglip_rows_sum(x, y, s, t, offset)


class _ChunkedSigLipSum(torch.autograd.Function):
    """sum_ij softplus(z_ij) - sum_r z_{r, offset+r}, z = s x y^T + t, built [chunk, M] rows at a time;
    backward recomputes each chunk: dS/dz = sigmoid(z) - [positive]."""

    @staticmethod
    def forward(ctx, x, y, s, t, offset: int, chunk: int):
        acc = torch.promote_types(x.dtype, torch.float32)
        total = torch.zeros((), dtype=acc, device=x.device)
        for i in range(0, x.shape[0], chunk):
            z = (x[i:i + chunk] @ y.T).to(acc).mul_(s.to(acc)).add_(t.to(acc))      # [c, M]
            total += F.softplus(z).sum() - z.diagonal(offset=offset + i).sum()
            del z
        ctx.save_for_backward(x, y, s, t)
        ctx.offset, ctx.chunk = offset, chunk
        return total  # in >= fp32 (see _siglip_rows_sum)

    @staticmethod
    def backward(ctx, grad):
        x, y, s, t = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)
        s_f = float(s)
        dx, dy = torch.zeros_like(x), torch.zeros_like(y)
        ds = torch.zeros((), dtype=acc, device=x.device)
        dt = torch.zeros((), dtype=acc, device=x.device)
        for i in range(0, x.shape[0], ctx.chunk):
            xi = x[i:i + ctx.chunk]
            G = (xi @ y.T).to(acc).mul_(s.to(acc)).add_(t.to(acc)).sigmoid_()  # dS/dz [c, M]
            G.diagonal(offset=ctx.offset + i).sub_(1.0)
            dt += G.sum()
            G = G.to(x.dtype)
            gy = G @ y                                                           # [c, D]
            dx[i:i + ctx.chunk] = gy * s_f
            ds += (xi * gy).sum(dtype=acc)
            dy.addmm_(G.T, xi, alpha=s_f)
            del G, gy
        dx.mul_(grad)
        dy.mul_(grad)
        g = grad.to(acc)
        return (dx, dy, (ds * g).to(s.dtype).reshape(s.shape), (dt * g).to(t.dtype).reshape(t.shape),
                None, None)


class ChunkedSigLipLoss(SigLipLoss):
    """SigLipLoss with O(chunk_size*N) logit memory: row chunks of the logits are
    summed in forward and recomputed in backward (never kept)."""

    def __init__(self, chunk_size: int = 1024, rank: int = 0, world_size: int = 1):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError(f"loss: chunk_size must be a positive integer, got {chunk_size!r}")
        super().__init__(rank=rank, world_size=world_size)
        self.chunk_size = chunk_size

    def _rows_sum(self, x, y, s, t, offset):
        return _ChunkedSigLipSum.apply(x, y, s, t, offset, self.chunk_size)
