"""SigLipLoss / ChunkedSigLipLoss against the loop reference."""
import pytest
import torch

from align.errors import ConfigError
from align.losses import ChunkedSigLipLoss, SigLipLoss
from tests.losses.loss_reference import embeddings, ref_siglip


@pytest.mark.parametrize("loss_cls", [SigLipLoss, lambda: ChunkedSigLipLoss(chunk_size=3)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_siglip_matches_reference(loss_cls, use_mask):
    a, b = embeddings(8, 5, seed=5)
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool) if use_mask else None
    got = loss_cls()(a, b, s, t, mask)
    want = ref_siglip(a, b, s, t, mask)
    assert torch.allclose(got, want, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (a, b, s, t)), torch.autograd.grad(want, (a, b, s, t))):
        assert torch.allclose(g, w, atol=1e-12)


def test_siglip_normalises_by_valid_positives():
    # with s = 0 every logit is t: loss = n * [softplus(-t) + (n-1) softplus(t)] / n
    a, b = embeddings(5, 3)
    mask = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    t = torch.tensor(0.5, dtype=torch.float64)
    sp = torch.nn.functional.softplus
    want = sp(-t) + 2 * sp(t)
    assert torch.allclose(SigLipLoss()(a, b, 0.0, t, mask), want)


def test_siglip_needs_bias():
    a, b = embeddings(3, 2)
    with pytest.raises(ConfigError, match="logit_bias"):
        SigLipLoss()(a, b, 1.0, None)


def test_chunked_siglip_float32_matches_dense():
    a, b = embeddings(200, 32, dtype=torch.float32, seed=6)
    s = torch.tensor(30.0, requires_grad=True)
    t = torch.tensor(-10.0, requires_grad=True)
    dense = SigLipLoss()(a, b, s, t)
    chunked = ChunkedSigLipLoss(48)(a, b, s, t)
    assert abs(dense.item() - chunked.item()) <= 1e-5 * abs(dense.item())
    for d, c in zip(torch.autograd.grad(dense, (a, b, s, t)), torch.autograd.grad(chunked, (a, b, s, t))):
        assert (d - c).abs().max() <= 1e-5 * d.abs().max()


@pytest.mark.parametrize("name", ["clip", "chunked_clip", "siglip", "chunked_siglip"])
def test_bf16_autocast_returns_an_fp32_loss_close_to_the_fp32_one(name):
    # bf16 embeddings under autocast (what a bf16 run feeds the loss): every loss sums in fp32 and returns
    # fp32, as ClipLoss's cross-entropy does; a bf16 sum of N^2 softplus terms was ~0.5 % off and logged so
    from align.losses import ChunkedClipLoss, ClipLoss
    make = {"clip": ClipLoss, "chunked_clip": lambda: ChunkedClipLoss(chunk_size=4),
            "siglip": SigLipLoss, "chunked_siglip": lambda: ChunkedSigLipLoss(chunk_size=4)}[name]
    torch.manual_seed(0)
    a, b = (torch.nn.functional.normalize(torch.randn(16, 8), dim=-1) for _ in range(2))
    s, t = torch.tensor(10.0), torch.tensor(-5.0)
    args = (s,) if name.endswith("clip") else (s, t)
    want = make()(a, b, *args)
    ab = [x.bfloat16().requires_grad_() for x in (a, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = make()(*ab, *args)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) < 2e-3 * float(want)
    got.backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in ab)
