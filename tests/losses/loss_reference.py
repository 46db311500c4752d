"""Plain, loop-by-loop reference losses for the tests (slow, obviously right)."""
import math

import torch
import torch.nn.functional as F


def valid_rows(n, mask):
    return [i for i in range(n) if mask is None or bool(mask[i])]


def ref_clip(a, b, s, mask=None):
    """1/(2n) sum over valid i of [-log softmax_j(s a_i.b_j)[i] - log softmax_j(s b_i.a_j)[i]]."""
    idx = valid_rows(a.shape[0], mask)
    total = a.sum() * 0
    for q, c in ((a, b), (b, a)):
        for i in idx:
            logits = torch.stack([s * torch.dot(q[i], c[j]) for j in idx])
            total = total - (logits[idx.index(i)] - torch.logsumexp(logits, 0))
    return total / (2 * len(idx)) if idx else total


def ref_siglip(a, b, s, t, mask=None):
    """-1/n sum over valid i, j of log sigmoid(y_ij (s a_i.b_j + t)), y = +1 on i == j else -1."""
    idx = valid_rows(a.shape[0], mask)
    total = a.sum() * 0
    for i in idx:
        for j in idx:
            y = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(y * (s * torch.dot(a[i], b[j]) + t))
    return total / len(idx) if idx else total


def embeddings(n, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    return a, b


def ref_hard_negative_clip(a, b, neg, neg_mask, s, mask=None):
    """ref_clip, plus in row i of the a -> b direction the valid negatives neg[i, k] (neg_mask[i, k])."""
    idx = valid_rows(a.shape[0], mask)
    total = a.sum() * 0
    for i in idx:
        row = [s * torch.dot(a[i], b[j]) for j in idx]
        row += [s * torch.dot(a[i], neg[i, k]) for k in range(neg.shape[1]) if bool(neg_mask[i, k])]
        logits = torch.stack(row)
        total = total - (logits[idx.index(i)] - torch.logsumexp(logits, 0))
        col = torch.stack([s * torch.dot(b[i], a[j]) for j in idx])
        total = total - (col[idx.index(i)] - torch.logsumexp(col, 0))
    return total / (2 * len(idx)) if idx else total


def ref_distill(a, b, ta, tb, s, T, weight, mask=None):
    """Loops over rows: CLIP's two cross-entropies plus weight * sum_j p_j (log p_j - log q_j), both ways."""
    keep = [i for i in range(a.shape[0]) if mask is None or bool(mask[i])]
    a, b, ta, tb = a[keep], b[keep], ta[keep], tb[keep]
    n, total = len(keep), 0.0
    for q, k, tq, tk in ((a, b, ta, tb), (b, a, tb, ta)):
        for i in range(n):
            logits = [s * (q[i] @ k[j]) for j in range(n)]
            lse = torch.logsumexp(torch.stack(logits), 0)
            total = total + (lse - logits[i])                                  # InfoNCE row
            tl = [float(tq[i] @ tk[j]) / T for j in range(n)]
            tz = math.log(sum(math.exp(x) for x in tl))
            for j in range(n):
                p = math.exp(tl[j] - tz)
                total = total + weight * p * ((tl[j] - tz) - (logits[j] - lse))
    return total / (2 * n)
