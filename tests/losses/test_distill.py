"""DistillClipLoss against a plain per-row reference (InfoNCE + weight * KL of the in-batch similarity
distributions, both directions), in one process and in 2 gloo processes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError, ConfigError
from align.losses import LOSSES, ClipLoss, DistillClipLoss, build_loss
from tests.losses.gloo import run_cases
from tests.losses.loss_reference import embeddings, ref_distill

N = 10


def _teacher(n=N, d=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1))


@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_the_reference_loss_and_gradients(use_mask):
    a, b = embeddings(N, 8)
    ta, tb = _teacher()                                   # a teacher of another width (6 vs 8)
    mask = torch.tensor([i not in (2, 7) for i in range(N)]) if use_mask else None
    got = DistillClipLoss(weight=0.7, temperature=0.2)(a, b, 3.0, mask, ta, tb)
    want = ref_distill(a, b, ta, tb, 3.0, 0.2, 0.7, mask)
    assert abs(got.item() - want.item()) < 1e-10
    for x, y in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b))):
        assert torch.allclose(x, y, atol=1e-10)


def test_kd_is_zero_when_the_student_is_the_teacher_and_weight_0_is_clip():
    a, b = embeddings(N, 8)
    clip = ClipLoss()(a, b, 5.0)
    assert torch.allclose(DistillClipLoss(weight=1.0, temperature=0.2)(a, b, 5.0, None, a, b), clip, atol=1e-12)
    ta, tb = _teacher()
    assert torch.allclose(DistillClipLoss(weight=0.0)(a, b, 5.0, None, ta, tb), clip, atol=1e-12)
    assert DistillClipLoss(weight=1.0, temperature=0.2)(a, b, 5.0, None, ta, tb) > clip + 1e-3


def test_registered_with_its_options_and_one_line_errors():
    assert LOSSES.get("distill_clip") is DistillClipLoss and DistillClipLoss.takes_teacher
    build_loss("distill_clip", [["image", "text"]], weight=0.5, temperature=0.05)
    with pytest.raises(ConfigError, match="temperature"):
        DistillClipLoss(temperature=0.0)
    a, b = embeddings(4, 8)
    with pytest.raises(AlignError, match="no teacher embeddings"):
        DistillClipLoss()(a, b, 1.0)
    with pytest.raises(AlignError, match="teacher rows"):
        DistillClipLoss()(a, b, 1.0, None, *_teacher(3))


# -- 2 processes x their slice == 1 process x the whole batch ----------------------------------------
CASES = {
    "global": ({}, [5, 5], False),
    "gather_no_grad": ({"gather_with_grad": False}, [5, 5], False),
    "local": ({"local_loss": True}, [5, 5], False),
    "uneven_masks": ({}, [7, 3], True),
    "local_uneven_masks": ({"local_loss": True}, [4, 6], True),
}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.double()

    def forward(self, img, txt):
        return F.normalize(self.image(img), dim=-1), F.normalize(self.text(txt), dim=-1)


def full_batch():
    g = torch.Generator().manual_seed(7)
    img, txt = torch.randn(N, 6, generator=g).double(), torch.randn(N, 5, generator=g).double()
    ta, tb = _teacher()
    mask = torch.ones(N, dtype=torch.bool)
    mask[1] = mask[8] = False
    return img, txt, ta, tb, mask


def run_case(case, rank, world):
    opts, sizes, use_mask = CASES[case]
    img, txt, ta, tb, mask = full_batch()
    lo, hi = (0, N) if world == 1 else (sum(sizes[:rank]), sum(sizes[:rank + 1]))
    model = Tiny()
    a, b = model(img[lo:hi], txt[lo:hi])
    loss = DistillClipLoss(rank=rank, world_size=world, weight=0.6, temperature=0.1, **(opts if world > 1 else {}))(
        a, b, 2.5, mask[lo:hi] if use_mask else None, ta[lo:hi], tb[lo:hi])
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    return run_cases(CASES, run_case, tmp_path_factory.mktemp("dist_kd"))


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process(distributed_results, case):
    got = distributed_results[case]
    want_loss, want_grads = run_case(case, 0, 1)
    img, txt, ta, tb, mask = full_batch()
    with torch.no_grad():
        a, b = Tiny()(img, txt)
    ref = ref_distill(a, b, ta, tb, 2.5, 0.1, 0.6, mask if CASES[case][2] else None)
    assert abs(want_loss.item() - ref.item()) < 1e-10
    assert abs(got["losses"].mean().item() - want_loss.item()) < 1e-10
    if not CASES[case][0].get("local_loss"):                # global mode: every rank holds the global loss
        assert torch.allclose(got["losses"], want_loss.expand(2), atol=1e-10)
    for k, w in want_grads.items():
        err = (got["grads"][k] - w).abs().max().item()
        assert err <= 1e-10 + 1e-8 * w.abs().max().item(), f"{case} {k}: max abs error {err}"
