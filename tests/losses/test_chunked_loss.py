"""ChunkedClipLoss: same value and gradients as the dense ClipLoss."""
import pytest
import torch

from align.errors import ConfigError
from align.losses import ChunkedClipLoss, ClipLoss, chunked_infonce_sum
from tests.losses.loss_reference import embeddings, ref_clip


def loss_and_grads(loss_fn, a, b, s, mask=None):
    loss = loss_fn(a, b, s, mask)
    return (loss, *torch.autograd.grad(loss, (a, b, s)))


@pytest.mark.parametrize("chunk", [1, 7, 32, 1000])
@pytest.mark.parametrize("use_mask", [False, True])
def test_chunked_equals_dense_float64(chunk, use_mask):
    a, b = embeddings(50, 16, seed=chunk)
    s = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(50) % 3 != 1) if use_mask else None
    dense = loss_and_grads(ClipLoss(), a, b, s, mask)
    chunked = loss_and_grads(ChunkedClipLoss(chunk), a, b, s, mask)
    for d, c in zip(dense, chunked):
        assert torch.allclose(d, c, atol=1e-12, rtol=0)


def test_chunked_equals_dense_float32_relative_1e5():
    a, b = embeddings(300, 64, dtype=torch.float32, seed=9)
    s = torch.tensor(100.0, requires_grad=True)   # CLIP's max scale: the hardest case for logsumexp
    dense = loss_and_grads(ClipLoss(), a, b, s)
    chunked = loss_and_grads(ChunkedClipLoss(64), a, b, s)
    for d, c in zip(dense, chunked):
        assert (d - c).abs().max() <= 1e-5 * d.abs().max()


def test_chunked_matches_loop_reference_directly():
    a, b = embeddings(7, 4, seed=11)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    got = loss_and_grads(ChunkedClipLoss(2), a, b, s)
    want = loss_and_grads(lambda *x: ref_clip(*x), a, b, s)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)


def test_row_range_kernel_equals_dense_rows():
    # the local_loss kernel: rows [lo, hi) of x against all y, positives on the diagonal
    x, y = embeddings(20, 6, seed=12)
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    got = chunked_infonce_sum(x, y, s, 4, 13, 3, False)
    logits = s * x[4:13] @ y.T
    want = torch.nn.functional.cross_entropy(logits, torch.arange(4, 13), reduction="sum")
    assert torch.allclose(got, want, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (x, y, s)), torch.autograd.grad(want, (x, y, s))):
        assert torch.allclose(g, w, atol=1e-12)


def test_chunked_never_builds_the_full_logits(monkeypatch):
    # every matmul inside the loss is at most [chunk, N]
    shapes = []
    real = torch.Tensor.__matmul__

    def spy(self, other):
        out = real(self, other)
        shapes.append(tuple(out.shape))
        return out
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    a, b = embeddings(40, 8)
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    ChunkedClipLoss(8)(a, b, s).backward()
    assert shapes and max(r for r, _ in shapes) <= 8


def test_bad_chunk_size():
    with pytest.raises(ConfigError, match="chunk_size"):
        ChunkedClipLoss(0)
