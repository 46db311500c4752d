"""InfoNCE without the [N, N] logits: chunked logsumexp with recomputation.

`ChunkedClipLoss` returns the same value and gradients as `ClipLoss` but its
peak memory is O(chunk*N + N*D) instead of O(N^2): the forward walks over
row chunks of the logits, keeping per-row logsumexps and an online
(running max, running sum) per column; the backward recomputes each chunk
of logits and turns it into the softmax gradient on the fly.

Gradient of S = sum_i [lse_j(s x_i.y_j) - s x_i.y_i] (+ the column terms):
    G_ij = softmax_row_i(j) [+ softmax_col_j(i)] - (1 or 2) * [j == i]
    dS/dx_i = s * sum_j G_ij y_j,  dS/dy_j = s * sum_i G_ij x_i,
    dS/ds   = sum_ij G_ij x_i.y_j = sum_i x_i . (G y)_i
"""
import torch

from align.errors import ConfigError
from align.losses.clip import ClipLoss


class _ChunkedInfoNCESum(torch.autograd.Function):
    """Rows lo..hi of x (queries) against all rows of y; positives on the diagonal
    (row i <-> column i). both=True (needs lo=0, hi=N): also the column terms,
    computed from the same chunks, i.e. the full symmetric CLIP sum."""

    @staticmethod
    def forward(ctx, x, y, s, lo: int, hi: int, chunk: int, both: bool):
        acc = torch.promote_types(x.dtype, torch.float32)  # logsumexp in >= fp32
        m = y.shape[0]
        sv = s.to(acc)
        row_lse = torch.empty(hi - lo, dtype=acc, device=x.device)           # [n_rows]
        col_max = torch.full((m,), float("-inf"), dtype=acc, device=x.device)  # [M]
        col_sum = torch.zeros(m, dtype=acc, device=x.device)                   # [M]
        pos = torch.zeros((), dtype=acc, device=x.device)
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            logits = (x[i:j] @ y.T).to(acc).mul_(sv)                           # [c, M]
            row_lse[i - lo:j - lo] = torch.logsumexp(logits, 1)
            pos += (x[i:j] * y[i:j]).sum(dtype=acc)                            # [c, D] temp
            if both:
                new_max = torch.maximum(col_max, logits.amax(0))
                col_sum.mul_(torch.exp(col_max - new_max)).add_(logits.sub_(new_max).exp_().sum(0))
                col_max = new_max
            del logits
        total = row_lse.sum() - sv * pos
        col_lse = None
        if both:
            col_lse = col_max + col_sum.log()
            total = total + col_lse.sum() - sv * pos
        ctx.save_for_backward(x, y, s, row_lse, col_lse if both else row_lse.new_empty(0))
        ctx.lo, ctx.hi, ctx.chunk, ctx.both = lo, hi, chunk, both
        return total  # in >= fp32, as ClipLoss's cross-entropy under autocast: a bf16 sum of N terms loses ~0.5 %

    @staticmethod
    def backward(ctx, grad):
        x, y, s, row_lse, col_lse = ctx.saved_tensors
        lo, hi, chunk, both = ctx.lo, ctx.hi, ctx.chunk, ctx.both
        acc = row_lse.dtype
        sv = s.to(acc)
        s_f = float(sv)  # one host sync per backward
        dx = torch.zeros_like(x)
        dy = torch.zeros_like(y)
        ds = torch.zeros((), dtype=acc, device=x.device)
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            xi = x[i:j]
            logits = (xi @ y.T).to(acc).mul_(sv)                               # [c, M]
            G = (logits - row_lse[i - lo:j - lo, None]).exp_()                 # row softmax [c, M]
            if both:
                G.add_(logits.sub_(col_lse[None, :]).exp_())                   # + column softmax
            del logits
            G.diagonal(offset=i).sub_(2.0 if both else 1.0)                   # positives (r, i+r)
            G = G.to(x.dtype)
            gy = G @ y                                                         # [c, D]
            dx[i:j] = gy * s_f
            ds += (xi * gy).sum(dtype=acc)
            dy.addmm_(G.T, xi, alpha=s_f)
            del G, gy
        g = grad.to(acc)
        dx.mul_(grad)
        dy.mul_(grad)
        ds = (ds * g).to(s.dtype).reshape(s.shape)
        return dx, dy, ds, None, None, None, None


def chunked_infonce_sum(x, y, s, lo: int, hi: int, chunk: int, both: bool):
    """Functional entry point (see _ChunkedInfoNCESum); s is a 0-dim tensor."""
    return _ChunkedInfoNCESum.apply(x, y, s, lo, hi, chunk, both)


class ChunkedClipLoss(ClipLoss):
    """Same loss and gradients as ClipLoss (same arguments and distributed
    semantics) with peak memory O(chunk_size*N + N*D) instead of O(N^2).

    chunk_size: rows of logits materialised at a time ([chunk_size, N] floats,
    two such buffers at the peak). Compute is ~4 [N,N,D] matmuls, like dense.
    """

    def __init__(self, chunk_size: int = 1024, rank: int = 0, world_size: int = 1,
                 gather_with_grad: bool = True, local_loss: bool = False):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError(f"loss: chunk_size must be a positive integer, got {chunk_size!r}")
        super().__init__(rank=rank, world_size=world_size, gather_with_grad=gather_with_grad,
                         local_loss=local_loss)
        self.chunk_size = chunk_size

    def _global(self, A, B, s):
        return chunked_infonce_sum(A, B, s, 0, A.shape[0], self.chunk_size, True)

    def _local(self, A, B, s, start, stop):
        return (chunked_infonce_sum(A, B, s, start, stop, self.chunk_size, False)
                + chunked_infonce_sum(B, A, s, start, stop, self.chunk_size, False))
