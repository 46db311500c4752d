"""MultiPairLoss and build_loss against per-pair loop references."""
import pytest
import torch
import torch.nn.functional as F

from align.errors import AlignError, ConfigError
from align.losses import LOSSES, ChunkedClipLoss, ClipLoss, MultiPairLoss, SigLipLoss, build_loss
from tests.losses.loss_reference import embeddings, ref_clip, ref_siglip

B = 7


def batch():
    img, txt = embeddings(B, 4, seed=21)
    aud, _ = embeddings(B, 4, seed=22)
    feats = {"image": img, "text": txt, "audio": aud}
    masks = {"image": torch.tensor([1, 1, 1, 1, 0, 1, 1], dtype=torch.bool),
             "audio": torch.tensor([1, 0, 1, 0, 1, 1, 1], dtype=torch.bool)}  # text: all present
    return feats, masks


def test_weighted_sum_with_masks_matches_reference():
    feats, masks = batch()
    s = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    loss = MultiPairLoss([["image", "text"], ["audio", "text"]], [1.0, 0.5], ClipLoss())
    total, logs = loss(feats, masks, s)
    it = ref_clip(feats["image"], feats["text"], s, masks["image"])
    at = ref_clip(feats["audio"], feats["text"], s, masks["audio"])
    assert torch.allclose(total, it + 0.5 * at, atol=1e-12)
    assert set(logs) == {"image-text", "audio-text"}
    assert torch.allclose(logs["audio-text"], at, atol=1e-12) and not logs["audio-text"].requires_grad
    params = (feats["image"], feats["text"], feats["audio"], s)
    for g, w in zip(torch.autograd.grad(total, params), torch.autograd.grad(it + 0.5 * at, params)):
        assert torch.allclose(g, w, atol=1e-12)



@pytest.mark.parametrize("pair_loss", ["clip", "chunked_clip", "siglip"])
def test_a_pair_without_a_row_adds_zero_and_is_left_out_of_the_logs(pair_loss):
    """No sample with audio in the batch: the audio-text pair adds 0 (gradient included) and has no log entry,
    where it logged a loss of 0.0 (a perfect pair to the reader of metrics.jsonl); image-text is logged as before."""
    feats, masks = batch()
    masks["audio"] = torch.zeros(B, dtype=torch.bool)
    s, t = torch.tensor(8.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    loss = {"clip": ClipLoss(), "chunked_clip": ChunkedClipLoss(chunk_size=2), "siglip": SigLipLoss()}[pair_loss]
    total, logs = MultiPairLoss([["image", "text"], ["audio", "text"]], None, loss)(feats, masks, s, t)
    it = ref_siglip(feats["image"], feats["text"], 8.0, -2.0, masks["image"]) if pair_loss == "siglip" else \
        ref_clip(feats["image"], feats["text"], 8.0, masks["image"])
    assert set(logs) == {"image-text"} and torch.allclose(logs["image-text"], it, atol=1e-10)
    assert torch.allclose(total, it, atol=1e-10)
    assert torch.count_nonzero(torch.autograd.grad(total, feats["audio"])[0]) == 0

def test_pair_mask_is_and_of_both_modalities():
    feats, masks = batch()
    masks["text"] = torch.tensor([0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    total, _ = MultiPairLoss([("image", "text")], None, ClipLoss())(feats, masks, 5.0)
    want = ref_clip(feats["image"], feats["text"], 5.0, masks["image"] & masks["text"])
    assert torch.allclose(total, want, atol=1e-12)


def test_siglip_pairs_with_per_pair_scale_and_bias():
    feats, masks = batch()
    scale = {"image-text": torch.tensor(10.0, dtype=torch.float64), "image-audio": torch.tensor(3.0)}
    bias = {"image-text": -2.0, "image-audio": 1.0}
    total, logs = MultiPairLoss([("image", "text"), ("image", "audio")], [2.0, 1.0], SigLipLoss())(
        feats, masks, scale, bias)
    it = ref_siglip(feats["image"], feats["text"], 10.0, -2.0, masks["image"])
    ia = ref_siglip(feats["image"], feats["audio"], 3.0, 1.0, masks["image"] & masks["audio"])
    assert torch.allclose(total, 2 * it + ia, atol=1e-12)


def test_errors_name_the_key():
    feats, masks = batch()
    loss = MultiPairLoss([("image", "depth")], None, ClipLoss())
    with pytest.raises(AlignError, match="image-depth.*'depth'"):
        loss(feats, masks, 1.0)
    with pytest.raises(AlignError, match="no value for pair 'image-text'"):
        MultiPairLoss([("image", "text")], None, ClipLoss())(feats, None, {"audio-text": 1.0})
    with pytest.raises(AlignError, match="bool \\[7\\]"):
        MultiPairLoss([("image", "text")], None, ClipLoss())(feats, {"image": torch.ones(7)}, 1.0)
    with pytest.raises(ConfigError, match="2 weights for 1 pairs"):
        MultiPairLoss([("image", "text")], [1.0, 2.0], ClipLoss())
    with pytest.raises(ConfigError, match="listed twice"):
        MultiPairLoss([("image", "text"), ("text", "image")], None, ClipLoss())
    with pytest.raises(ConfigError, match="two different"):
        MultiPairLoss([("image", "image")], None, ClipLoss())


def test_registry_and_build_loss():
    assert {"clip", "siglip", "chunked_clip", "chunked_siglip"} <= set(LOSSES.names())
    loss = build_loss("chunked_clip", [["image", "text"]], [1.0], rank=0, world_size=1, chunk_size=3)
    assert isinstance(loss.pair_loss, ChunkedClipLoss) and loss.pair_loss.chunk_size == 3
    feats, masks = batch()
    total, _ = loss(feats, masks, 4.0)
    assert torch.allclose(total, ref_clip(feats["image"], feats["text"], 4.0, masks["image"]), atol=1e-12)
    with pytest.raises(ConfigError, match="unknown loss type 'clipp'"):
        build_loss("clipp", [["image", "text"]])
    with pytest.raises(ConfigError, match="loss.chunk_size: not an option of loss type 'clip'"):
        build_loss("clip", [["image", "text"]], chunk_size=4)


# -- a model with a logit bias trained with a softmax loss, under DDP ---------------------------------------------
class _BiasedTwoTower(torch.nn.Module):
    """What AlignModel is with model.init_logit_bias set: a trainable bias a CLIP loss never reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = torch.nn.Linear(6, 4).double(), torch.nn.Linear(5, 4).double()
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0, dtype=torch.float64))

    def forward(self, b):
        return {"image": F.normalize(self.image(b["image"]), dim=-1), "text": F.normalize(self.text(b["text"]), dim=-1),
                "logit_scale": self.logit_scale.exp(), "logit_bias": self.logit_bias.clone()}


def _biased_batch(lo=0, hi=8):
    g = torch.Generator().manual_seed(3)
    return {k: v[lo:hi] for k, v in {"image": torch.randn(8, 6, generator=g, dtype=torch.float64),
                                     "text": torch.randn(8, 5, generator=g, dtype=torch.float64)}.items()}


def _biased_grads(rank, world):
    """Two plain steps' and one GradCache step's gradients, through DDP when world > 1 (rank r: rows 4r..4r+3)."""
    from align.train.gradcache import gradcache_step
    model = _BiasedTwoTower()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss = build_loss("clip", [["image", "text"]], rank=rank, world_size=world)
    fn = lambda f, m: loss(f, m, f["logit_scale"], f["logit_bias"])[0]   # noqa: E731  (as align.train.step)
    lo, hi = (4 * rank, 4 * rank + 4) if world > 1 else (0, 8)
    out = []
    for _ in range(2):                    # DDP fails the 2nd forward when the 1st left a reduction open
        model.zero_grad()
        fn(model(_biased_batch(lo, hi)), None).backward()
    out.append({k: p.grad.clone() for k, p in model.named_parameters()})
    model.zero_grad()
    half = (hi - lo) // 2
    gradcache_step(model, [_biased_batch(lo, lo + half), _biased_batch(lo + half, hi)], fn,
                   no_sync=getattr(model, "no_sync", None))
    out.append({k: p.grad.clone() for k, p in model.named_parameters()})
    return out


def _biased_worker(rank, world, init_file, out_path):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    got = _biased_grads(rank, world)
    if rank == 0:
        torch.save(got, out_path)
    dist.destroy_process_group()


def test_an_unused_logit_bias_gets_a_zero_gradient_so_ddp_averages_and_steps_again(tmp_path):
    """loss.type clip with model.init_logit_bias: DDP waited for the bias's gradient, so the step's gradients
    were never averaged and the next forward raised "Expected to have finished reduction"."""
    from tests.losses.gloo import run_workers
    got = run_workers(_biased_worker, tmp_path)
    want = _biased_grads(0, 1)
    for g, w in zip(got, want):
        for k, v in w.items():
            k2 = "module." + k
            assert torch.allclose(g[k2], v, atol=1e-12), k
        assert float(g["module.logit_bias"]) == 0.0
