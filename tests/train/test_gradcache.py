"""gradcache_step against one plain full-batch backward."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError
from align.train.gradcache import gradcache_step
from align.losses import ClipLoss, MultiPairLoss


class TinyTwoTower(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 4))
        self.txt = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 4))
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.double()

    def forward(self, mb):
        return {"image": F.normalize(self.img(mb["image"]), dim=-1),
                "text": F.normalize(self.txt(mb["text"]), dim=-1),
                "logit_scale": self.logit_scale.exp()}


def data(n=12):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 6, generator=g, dtype=torch.float64),
            "text": torch.randn(n, 5, generator=g, dtype=torch.float64),
            "masks": {"image": torch.arange(n) % 4 != 1}}


def split(batch, sizes):
    out, i = [], 0
    for n in sizes:
        out.append({"image": batch["image"][i:i + n], "text": batch["text"][i:i + n],
                    "masks": {"image": batch["masks"]["image"][i:i + n]}})
        i += n
    return out


LOSS = MultiPairLoss([("image", "text")], None, ClipLoss())


def loss_fn(f, masks):
    return LOSS(f, masks, f["logit_scale"])[0]


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("sizes", [[12], [4, 4, 4], [5, 3, 4]])
def test_gradcache_equals_full_batch(sizes):
    batch = data()
    ref = TinyTwoTower()
    full = loss_fn(ref(batch), batch["masks"])
    full.backward()
    model = TinyTwoTower()
    loss = gradcache_step(model, split(batch, sizes), loss_fn)
    assert abs(loss.item() - full.item()) < 1e-12
    for k, g in grads(ref).items():
        assert torch.allclose(model.state_dict(keep_vars=True)[k].grad, g, atol=1e-12), k


def test_scale_read_directly_in_loss_fn_also_gets_its_gradient():
    batch = data()
    ref = TinyTwoTower()
    LOSS(ref(batch), batch["masks"], ref.logit_scale.exp())[0].backward()
    model = TinyTwoTower()
    gradcache_step(model, split(batch, [6, 6]),
                   lambda f, m: LOSS(f, m, model.logit_scale.exp())[0])
    assert torch.allclose(model.logit_scale.grad, ref.logit_scale.grad, atol=1e-12)
    assert torch.allclose(model.img[0].weight.grad, ref.img[0].weight.grad, atol=1e-12)


def test_dropout_masks_are_replayed_in_pass_two():
    # reference: the same micro-batches encoded once, in order, from the same seed, with grad
    batch = data()
    mbs = split(batch, [4, 4, 4])
    ref = TinyTwoTower(dropout=0.5)
    torch.manual_seed(123)
    outs = [ref(mb) for mb in mbs]
    after_ref = torch.get_rng_state()
    feats = {k: torch.cat([o[k] for o in outs]) for k in ("image", "text")}
    feats["logit_scale"] = outs[0]["logit_scale"]
    loss_fn(feats, batch["masks"]).backward()
    model = TinyTwoTower(dropout=0.5)
    torch.manual_seed(123)
    gradcache_step(model, mbs, loss_fn)
    assert torch.equal(torch.get_rng_state(), after_ref)  # RNG advanced as by one encode pass
    for k, g in grads(ref).items():
        assert torch.allclose(model.state_dict(keep_vars=True)[k].grad, g, atol=1e-12), k


def test_no_sync_wraps_all_but_last_micro_batch():
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(True)
        yield
    model = TinyTwoTower()
    gradcache_step(model, split(data(), [3, 3, 3, 3]), loss_fn, no_sync=no_sync)
    assert len(entered) == 3


def test_bad_encode_outputs_are_clear_errors():
    model = TinyTwoTower()
    mbs = split(data(), [6, 6])
    with pytest.raises(AlignError, match="no micro-batches"):
        gradcache_step(model, [], loss_fn)
    with pytest.raises(AlignError, match="must return a dict of tensors"):
        gradcache_step(lambda mb: [1], mbs, loss_fn)
    calls = iter([{"image": torch.zeros(6, 4)}, {"text": torch.zeros(6, 4)}])
    with pytest.raises(AlignError, match=r"micro_batches\[1\] encoded to keys \['text'\]"):
        gradcache_step(lambda mb: next(calls), mbs, loss_fn)


def test_a_declined_backward_skips_pass_two_and_leaves_no_gradient():
    """loss_backward returning False (the step's NaN guard: align.train.step.backward_if_finite) ran pass 2 anyway:
    k forwards for no gradient, the last outside no_sync, which left DDP armed for a backward that never came (the
    next step failed on every rank; the 2-process launch is tests/train/test_nan_multiprocess.py). Only pass 1's
    k forwards run now, and no parameter has a gradient."""
    model, calls, declined = TinyTwoTower(), [], []

    def encode(mb):
        calls.append(torch.is_grad_enabled())
        return model(mb)
    loss = gradcache_step(encode, split(data(), [4, 4, 4]), loss_fn,
                          loss_backward=lambda t: declined.append(t) or False)
    assert len(declined) == 1 and loss.requires_grad is False
    assert calls == [False, False, False]                          # pass 1 only (no_grad), no re-encode with grad
    assert all(p.grad is None for p in model.parameters())
