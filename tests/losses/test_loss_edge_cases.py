"""Every loss against its plain loop reference on the edge cases of a batch: one pair, duplicated pairs (tied
logits), every pair the same, a mask that leaves one pair, and batches a chunk does not divide. Values and
gradients (embeddings, scale, bias, negatives), float64, random inputs."""
import pytest
import torch
import torch.nn.functional as F

from align.losses import ChunkedClipLoss, ChunkedSigLipLoss, ClipLoss, DistillClipLoss, SigLipLoss
from align.losses.hard_negatives import HardNegativeClipLoss
from tests.losses.loss_reference import embeddings, ref_clip, ref_distill, ref_hard_negative_clip, ref_siglip


def _batch(case, seed):
    """(a, b, mask) for an edge case; a, b leaf tensors [n, 4]."""
    n = {"one": 1, "duplicates": 7, "all_same": 5, "mask_leaves_one": 6, "uneven_chunks": 11}[case]
    a, b = (t.detach().clone() for t in embeddings(n, 4, seed=seed))
    mask = None
    if case == "duplicates":                 # rows 4..6 repeat rows 0..2: equal logits in a row and in a column
        a[4:], b[4:] = a[:3], b[:3]
        a[3] = a[0]                          # a query repeated with another caption
    elif case == "all_same":
        a[:], b[:] = a[0], b[0]
    elif case == "mask_leaves_one":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[4] = True
    return a.requires_grad_(), b.requires_grad_(), mask


CASES = ["one", "duplicates", "all_same", "mask_leaves_one", "uneven_chunks"]


def _close(got, want, inputs):
    assert torch.isfinite(got) and abs(got.item() - want.item()) < 1e-11, (got.item(), want.item())
    for g, w in zip(torch.autograd.grad(got, inputs, allow_unused=True),
                    torch.autograd.grad(want, inputs, allow_unused=True)):
        g = torch.zeros_like(w) if g is None and w is not None else g
        w = torch.zeros_like(g) if w is None else w
        assert torch.allclose(g, w, atol=1e-11), (g, w)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["clip", "chunked_clip_1", "chunked_clip_3"])
def test_clip_losses_on_edge_batches_match_the_loop_reference(name, case):
    a, b, mask = _batch(case, seed=len(case))
    s = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    loss = {"clip": ClipLoss(), "chunked_clip_1": ChunkedClipLoss(1), "chunked_clip_3": ChunkedClipLoss(3)}[name]
    _close(loss(a, b, s, mask), ref_clip(a, b, s, mask), (a, b, s))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["siglip", "chunked_siglip_1", "chunked_siglip_4"])
def test_siglip_losses_on_edge_batches_match_the_loop_reference(name, case):
    """One pair is no zero for SigLIP: softplus(-(s a.b + t)) with its gradients (the positive alone)."""
    a, b, mask = _batch(case, seed=len(case) + 1)
    s = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(-2.5, dtype=torch.float64, requires_grad=True)
    loss = {"siglip": SigLipLoss(), "chunked_siglip_1": ChunkedSigLipLoss(1),
            "chunked_siglip_4": ChunkedSigLipLoss(4)}[name]
    got, want = loss(a, b, s, t, mask), ref_siglip(a, b, s, t, mask)
    if case in ("one", "mask_leaves_one"):
        assert got.item() > 1e-3
    _close(got, want, (a, b, s, t))


@pytest.mark.parametrize("case", CASES)
def test_hard_negative_clip_on_edge_batches_matches_the_loop_reference(case):
    """Also a negative that duplicates the row's own caption (a tie with the positive) and K = 1."""
    a, b, mask = _batch(case, seed=len(case) + 2)
    g = torch.Generator().manual_seed(3)
    neg = F.normalize(torch.randn(a.shape[0], 2, 4, generator=g, dtype=torch.float64), dim=-1)
    neg[0, 1] = b[0].detach()                                          # the caption itself, as a negative
    neg.requires_grad_()
    neg_mask = torch.ones(a.shape[0], 2, dtype=torch.bool)
    neg_mask[-1, 0] = False
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    _close(HardNegativeClipLoss()(a, b, s, mask, neg, neg_mask),
           ref_hard_negative_clip(a, b, neg, neg_mask, s, mask), (a, b, neg, s))
    one = neg[:, :1]
    _close(HardNegativeClipLoss()(a, b, s, mask, one), ref_hard_negative_clip(a, b, one, neg_mask[:, :1] | True, s,
                                                                               mask), (a, b, neg, s))


@pytest.mark.parametrize("case", CASES)
def test_distill_clip_on_edge_batches_matches_the_loop_reference(case):
    a, b, mask = _batch(case, seed=len(case) + 3)
    ta, tb = (t.detach() for t in embeddings(a.shape[0], 3, seed=9))
    if case == "duplicates":                                           # the teacher ties where the student does
        ta[4:], tb[4:] = ta[:3].clone(), tb[:3].clone()
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    _close(DistillClipLoss(weight=0.8, temperature=0.3)(a, b, s, mask, ta, tb),
           ref_distill(a, b, ta, tb, s, 0.3, 0.8, mask), (a, b, s))
