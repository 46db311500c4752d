"""MultiPairLoss and build_loss against per-pair loop references."""
import pytest
import torch

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
