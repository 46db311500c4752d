"""Symmetric InfoNCE (CLIP) loss with masks and exact multi-process gathering.

Loss on the valid global batch of N pairs (a_i, b_i), s = logit_scale (already exp'ed):
    L = 1/(2N) * sum_i [ CE_i( s * a_i . B^T, i ) + CE_i( s * b_i . A^T, i ) ]
Only rows whose mask is True take part, as queries and as candidates.

Distributed reduction the caller must do: nothing but what DDP/Accelerate
already do. Each rank's loss L_r satisfies mean_r L_r = L (global mode: L_r = L
on every rank; local_loss: L_r = world_size * (this rank's rows' share of L)),
so averaging gradients over ranks (DDP) gives exactly dL/dθ of one process on
the whole batch. Do NOT additionally divide the loss by world_size.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import ConfigError
from align.losses.distributed import (as_scale, check_dist, check_pair, compact, gather_batch,
                                      scale_grad, zero_loss)


class ClipLoss(nn.Module):
    """Dense InfoNCE: materialises the [N, N] logits (local_loss: [B_r, N] twice).

    rank, world_size: this process in torch.distributed (world_size=1: no gathers).
    gather_with_grad: gather with a gradient path to every rank's features. With
        False and local_loss=False we instead multiply the local features'
        gradient by world_size: every rank computes the identical global loss, so
        that is exactly what the gather's backward would have summed (no
        backward collective, same result).
    local_loss: each rank computes only its own rows (and columns) against the
        global batch: O(B_r*N) logits instead of O(N^2). Requires gather_with_grad.
    """

    uses_logit_bias = False

    def __init__(self, rank: int = 0, world_size: int = 1, gather_with_grad: bool = True,
                 local_loss: bool = False):
        super().__init__()
        if local_loss and not gather_with_grad and world_size > 1:
            raise ConfigError("loss: local_loss=True needs gather_with_grad=True (otherwise gradients "
                              "from the other ranks' rows are dropped)")
        self.rank, self.world_size = rank, world_size
        self.gather_with_grad, self.local_loss = gather_with_grad, local_loss

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale, mask: Optional[torch.Tensor] = None):
        """a, b: [B, D] paired embeddings (normalised by the model); logit_scale: exp'ed scalar;
        mask: bool [B], True where both modalities are present. Returns a 0-dim loss."""
        name = type(self).__name__
        check_pair(a, b, mask, name)
        check_dist(self.rank, self.world_size, name)
        s = as_scale(logit_scale, a)
        if self.world_size > 1 and not self.gather_with_grad:
            a, b = scale_grad(a, self.world_size), scale_grad(b, self.world_size)
        g = gather_batch([a, b], mask, self.rank, self.world_size, self.gather_with_grad)
        (A, B), start, stop = compact(g)  # A, B: [N, D] valid rows only
        n = A.shape[0]
        if n == 0:
            return zero_loss(*g.tensors, s)
        if self.local_loss and self.world_size > 1:
            return self._local(A, B, s, start, stop) * (self.world_size / (2 * n))
        return self._global(A, B, s) / (2 * n)

    # The two kernels below return *sums* over rows; forward() normalises.
    def _global(self, A, B, s):
        logits = s * (A @ B.T)                              # [N, N]
        labels = torch.arange(A.shape[0], device=A.device)
        return (F.cross_entropy(logits, labels, reduction="sum")
                + F.cross_entropy(logits.T, labels, reduction="sum"))

    def _local(self, A, B, s, start, stop):
        labels = torch.arange(start, stop, device=A.device)
        li = s * (A[start:stop] @ B.T)                      # [n_r, N] this rank's a vs all b
        lt = s * (B[start:stop] @ A.T)                      # [n_r, N] this rank's b vs all a
        return (F.cross_entropy(li, labels, reduction="sum")
                + F.cross_entropy(lt, labels, reduction="sum"))
