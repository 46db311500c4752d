"""HardNegativeClipLoss against the plain loop reference, in one process and in 2 gloo processes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError
from align.losses import ClipLoss
from align.losses.hard_negatives import HardNegativeClipLoss
from tests.losses.loss_reference import embeddings, ref_hard_negative_clip
from tests.losses.gloo import run_cases

N, K = 10, 3


def _negatives(n=N, k=K, d=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    neg = F.normalize(torch.randn(n, k, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    neg_mask = torch.rand(n, k, generator=g) > 0.3
    neg_mask[0] = False                      # a row without negatives
    return neg, neg_mask


@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_the_reference_loss_and_gradients(use_mask):
    a, b = embeddings(N, 8)
    neg, neg_mask = _negatives()
    mask = torch.tensor([i not in (2, 7) for i in range(N)]) if use_mask else None
    got = HardNegativeClipLoss()(a, b, 3.0, mask, neg, neg_mask)
    g_got = torch.autograd.grad(got, (a, b, neg))
    want = ref_hard_negative_clip(a, b, neg, neg_mask, 3.0, mask)
    g_want = torch.autograd.grad(want, (a, b, neg), allow_unused=True)
    assert abs(got.item() - want.item()) < 1e-12
    for x, y in zip(g_got, g_want):
        assert torch.allclose(x, torch.zeros_like(x) if y is None else y, atol=1e-12)
    assert g_got[2][~neg_mask].abs().max() == 0           # masked negatives get no gradient
    assert got > ClipLoss()(a, b, 3.0, mask)                # negatives only add terms to the softmax


def test_without_negatives_it_is_clip():
    a, b = embeddings(N, 8)
    want = ClipLoss()(a, b, 2.0)
    assert torch.allclose(HardNegativeClipLoss()(a, b, 2.0), want, atol=1e-12)
    neg, _ = _negatives()
    none = torch.zeros(N, K, dtype=torch.bool)
    assert torch.allclose(HardNegativeClipLoss()(a, b, 2.0, None, neg, none), want, atol=1e-12)


def test_bad_shapes_are_one_line_errors():
    a, b = embeddings(4, 8)
    with pytest.raises(AlignError, match=r"negatives must be \[B, K, D\]"):
        HardNegativeClipLoss()(a, b, 1.0, None, torch.zeros(4, 8))
    with pytest.raises(AlignError, match="neg_mask must be a bool"):
        HardNegativeClipLoss()(a, b, 1.0, None, torch.zeros(4, 2, 8), torch.ones(4, 2))


# -- 2 processes x their slice == 1 process x the whole batch ----------------------------------------
# name: (options, local sizes per rank, row mask used, K on rank 1 (rank 0 has K))
CASES = {
    "global": ({}, [5, 5], False, K),
    "gather_no_grad": ({"gather_with_grad": False}, [5, 5], False, K),
    "local": ({"local_loss": True}, [5, 5], False, K),
    "uneven_masks_fewer_negatives": ({}, [7, 3], True, 1),
    "local_uneven_masks": ({"local_loss": True}, [4, 6], True, 2),
}


class Tiny(nn.Module):
    """Image and text towers; the negative captions go through the text tower like the positives."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.double()

    def forward(self, img, txt, neg):                     # neg: [B, K, 5]
        return (F.normalize(self.image(img), dim=-1), F.normalize(self.text(txt), dim=-1),
                F.normalize(self.text(neg), dim=-1))


def full_batch():
    g = torch.Generator().manual_seed(7)
    img, txt = torch.randn(N, 6, generator=g).double(), torch.randn(N, 5, generator=g).double()
    neg = torch.randn(N, K, 5, generator=g).double()
    neg_mask = torch.rand(N, K, generator=g) > 0.25
    mask = torch.ones(N, dtype=torch.bool)
    mask[1] = mask[8] = False
    return img, txt, neg, neg_mask, mask


def run_case(case, rank, world):
    opts, sizes, use_mask, k1 = CASES[case]
    img, txt, neg, neg_mask, mask = full_batch()
    lo, hi = (0, N) if world == 1 else (sum(sizes[:rank]), sum(sizes[:rank + 1]))
    if world == 1:
        neg_mask = neg_mask.clone()
        neg_mask[sizes[0]:, k1:] = False                  # what rank 1 does not have
        opts = {}
    k = K if rank == 0 else k1
    model = Tiny()
    a, b, n = model(img[lo:hi], txt[lo:hi], neg[lo:hi, :k])
    loss = HardNegativeClipLoss(rank=rank, world_size=world, **opts)(
        a, b, 2.5, mask[lo:hi] if use_mask else None, n, neg_mask[lo:hi, :k])
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    return run_cases(CASES, run_case, tmp_path_factory.mktemp("dist_hn"))


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process(distributed_results, case):
    got = distributed_results[case]
    want_loss, want_grads = run_case(case, 0, 1)
    # and the single process itself equals the plain reference
    img, txt, neg, neg_mask, mask = full_batch()
    opts, sizes, use_mask, k1 = CASES[case]
    neg_mask[sizes[0]:, k1:] = False
    with torch.no_grad():
        a, b, n = Tiny()(img, txt, neg)
        ref = ref_hard_negative_clip(a, b, n, neg_mask, 2.5, mask if use_mask else None)
    assert abs(want_loss.item() - ref.item()) < 1e-10
    assert abs(got["losses"].mean().item() - want_loss.item()) < 1e-10
    if not CASES[case][0].get("local_loss"):                # global mode: every rank holds the global loss
        assert torch.allclose(got["losses"], want_loss.expand(2), atol=1e-10)
    for k, w in want_grads.items():
        err = (got["grads"][k] - w).abs().max().item()
        assert err <= 1e-10 + 1e-8 * w.abs().max().item(), f"{case} {k}: max abs error {err}"
