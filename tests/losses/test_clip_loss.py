"""ClipLoss against the loop reference (values, gradients, masks, errors)."""
import pytest
import torch

from align.errors import AlignError, ConfigError
from align.losses import ClipLoss
from tests.losses.loss_reference import embeddings, ref_clip


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs, allow_unused=True)


@pytest.mark.parametrize("use_mask", [False, True])
def test_clip_matches_reference(use_mask):
    a, b = embeddings(9, 5, seed=1)
    s = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool) if use_mask else None
    got = ClipLoss()(a, b, s, mask)
    want = ref_clip(a, b, s, mask)
    assert torch.allclose(got, want, atol=1e-12)
    for g, w in zip(grads(got, a, b, s), grads(want, a, b, s)):
        assert torch.allclose(g, w, atol=1e-12)


def test_masked_rows_get_no_gradient_and_do_not_change_loss():
    a, b = embeddings(6, 4, seed=2)
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    loss = ClipLoss()(a, b, 10.0, mask)
    ga, gb = grads(loss, a, b)
    assert ga[~mask].abs().max() == 0 and gb[~mask].abs().max() == 0
    assert ga[mask].abs().max() > 0
    # identical to running on the valid rows only
    keep = ClipLoss()(a[mask], b[mask], 10.0)
    assert torch.allclose(loss, keep, atol=1e-12)


def test_perfect_alignment_gives_small_loss_and_random_gives_about_log_n():
    a, _ = embeddings(64, 32, seed=3)
    assert ClipLoss()(a, a, 100.0) < 1e-3
    a, b = embeddings(64, 32, seed=4)
    assert abs(ClipLoss()(a, b, 1.0).item() - torch.log(torch.tensor(64.0)).item()) < 0.1


def test_no_valid_rows_gives_connected_zero():
    a, b = embeddings(4, 3)
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    loss = ClipLoss()(a, b, s, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    ga, gb, gs = grads(loss, a, b, s)
    assert ga.abs().max() == 0 and gs == 0


def test_bad_inputs_are_one_line_errors():
    a, b = embeddings(4, 3)
    with pytest.raises(AlignError, match=r"equal shape.*\(4, 3\).*\(3, 3\)"):
        ClipLoss()(a, b[:3], 1.0)
    with pytest.raises(AlignError, match="bool tensor of shape \\[4\\]"):
        ClipLoss()(a, b, 1.0, torch.ones(4))
    with pytest.raises(AlignError, match="not initialised"):
        ClipLoss(rank=0, world_size=2)(a, b, 1.0)
    with pytest.raises(AlignError, match="rank=3"):
        ClipLoss(rank=3, world_size=2)(a, b, 1.0)
    with pytest.raises(ConfigError, match="gather_with_grad"):
        ClipLoss(rank=0, world_size=2, local_loss=True, gather_with_grad=False)


def test_compact_trusts_a_host_known_all_valid_batch_and_reads_a_given_mask():
    from align.losses.distributed import compact, gather_batch
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    g = gather_batch([a, b], None, 0, 1)
    assert g.all_valid                                  # no mask, one process: nothing to read back
    assert not gather_batch([a, b], torch.ones(5, dtype=torch.bool), 0, 1).all_valid
    mask = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    (A, B), start, stop = compact(gather_batch([a, b], mask, 0, 1))
    assert torch.equal(A, a[mask]) and (start, stop) == (0, 3)
    assert ClipLoss()(a, b, 10.0) == pytest.approx(float(ref_clip(a, b, torch.tensor(10.0), None)), rel=1e-5)
