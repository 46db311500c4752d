"""CLIP (InfoNCE) loss with per-sample hard negatives, exact under multi-process gathering.

A sample may name extra negative captions (a `neg.txt` member, one caption per line; see
align.data.stream.decode). They join the batch's negatives in *that sample's row* of the query -> caption
direction only. On the valid global batch of N pairs (a_i, b_i) with negatives n_ik (valid where
neg_mask[i, k]), s = logit_scale (exp'ed):

    L = 1/(2N) * sum_i [ CE_i( [s a_i . B^T, s a_i . n_i1, ..., s a_i . n_iK], i ) + CE_i( s b_i . A^T, i ) ]

The caption -> query direction is CLIP's: a negative caption is not a query. With no negatives (neg=None,
or every neg_mask False) L is exactly ClipLoss's.

Across processes (the convention of align.losses.distributed): a, b, the negatives [B_r, K, D] and their
mask are gathered in rank order (uneven B_r padded and masked; K padded to the largest K of any rank), so
every rank sees each row with its own negatives. Global mode: every rank computes the identical L; with
gather_with_grad the gathers' backward sums every rank's gradient, without it the local gradients are
multiplied by world_size (ClipLoss's trick). local_loss: each rank computes its rows only, times
world_size / (2N). Either way the mean of the ranks' losses is L, and DDP's gradient average is dL/dtheta.
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from align.errors import AlignError
from align.losses.clip import ClipLoss
from align.losses.distributed import as_scale, check_dist, check_pair, compact, gather_batch, scale_grad, zero_loss


def check_negatives(a: torch.Tensor, neg: torch.Tensor, neg_mask: Optional[torch.Tensor], who: str) -> None:
    """One-line errors: neg [B, K, D] beside a [B, D]; neg_mask bool [B, K]."""
    if neg.dim() != 3 or neg.shape[0] != a.shape[0] or neg.shape[2] != a.shape[1]:
        raise AlignError(f"{who}: negatives must be [B, K, D] = [{a.shape[0]}, K, {a.shape[1]}], "
                         f"got {tuple(neg.shape)}")
    if neg_mask is not None and (neg_mask.dtype != torch.bool or neg_mask.shape != neg.shape[:2]):
        raise AlignError(f"{who}: neg_mask must be a bool tensor of shape {list(neg.shape[:2])}, got "
                         f"{neg_mask.dtype} {tuple(neg_mask.shape)}")


class HardNegativeClipLoss(ClipLoss):
    """Dense InfoNCE whose query rows also score their own hard-negative captions; see the module docstring.

    rank, world_size, gather_with_grad, local_loss: as ClipLoss (its constructor and checks, inherited).
    """

    takes_negatives = True

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale, mask: Optional[torch.Tensor] = None,
                neg: Optional[torch.Tensor] = None, neg_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a: [B, D] queries, b: [B, D] their captions (normalised); logit_scale: exp'ed scalar; mask: bool [B];
        neg: [B, K, D] normalised negative captions of each row (K may be 0); neg_mask: bool [B, K]
        (default: all valid). Returns a 0-dim loss."""
        name = type(self).__name__
        check_pair(a, b, mask, name)
        check_dist(self.rank, self.world_size, name)
        if neg is None:
            neg = a.new_zeros(a.shape[0], 0, a.shape[1])
        check_negatives(a, neg, neg_mask, name)
        if neg_mask is None:
            neg_mask = torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device)
        neg, neg_mask = self._pad_k(neg, neg_mask)
        s = as_scale(logit_scale, a)
        if self.world_size > 1 and not self.gather_with_grad:
            a, b, neg = (scale_grad(t, self.world_size) for t in (a, b, neg))
        # the mask travels as a float tensor beside the features (padding rows arrive as 0 = invalid)
        g = gather_batch([a, b, neg, neg_mask.to(a.dtype)], mask, self.rank, self.world_size, self.gather_with_grad)
        (A, B, NEG, NM), start, stop = compact(g)       # [N, D], [N, D], [N, K, D], [N, K]
        n = A.shape[0]
        if n == 0:
            return zero_loss(*g.tensors, s)
        NM = NM.detach() > 0.5
        if self.local_loss and self.world_size > 1:
            return self._sum(A, B, NEG, NM, s, start, stop) * (self.world_size / (2 * n))
        return self._sum(A, B, NEG, NM, s, 0, n) / (2 * n)

    def _pad_k(self, neg: torch.Tensor, neg_mask: torch.Tensor):
        """Pad K to the largest K of any rank (a tiny all_gather), so the features can be gathered."""
        if self.world_size == 1:
            return neg, neg_mask
        k = torch.tensor([neg.shape[1]], dtype=torch.long, device=neg.device)
        ks = [torch.zeros_like(k) for _ in range(self.world_size)]
        dist.all_gather(ks, k)
        pad = int(max(int(x) for x in ks)) - neg.shape[1]
        if pad:
            neg = torch.cat([neg, neg.new_zeros(neg.shape[0], pad, neg.shape[2])], 1)
            neg_mask = torch.cat([neg_mask, neg_mask.new_zeros(neg_mask.shape[0], pad)], 1)
        return neg, neg_mask

    @staticmethod
    def _sum(A, B, NEG, NM, s, start: int, stop: int) -> torch.Tensor:
        """Sum over rows [start, stop) of both directions' cross-entropies (forward() normalises)."""
        labels = torch.arange(start, stop, device=A.device)
        q = A[start:stop]
        batch = s * (q @ B.T)                                               # [n_r, N]
        hard = (s * torch.einsum("nd,nkd->nk", q, NEG[start:stop]))         # [n_r, K]
        hard = hard.masked_fill(~NM[start:stop], float("-inf"))
        lt = s * (B[start:stop] @ A.T)                                      # [n_r, N] captions vs all queries
        return (F.cross_entropy(torch.cat([batch, hard], 1), labels, reduction="sum")
                + F.cross_entropy(lt, labels, reduction="sum"))
