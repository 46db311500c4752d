"""open_clip towers: shapes, tokenizer keeps <end_of_text>, locking, equality with open_clip's own model."""
import pytest
import torch
from PIL import Image

from align.errors import ConfigError
from align.towers import build_tower
from tests.conftest import TINY_OPEN_CLIP


def test_image_and_text_towers_match_open_clip_custom_text_clip():
    import open_clip
    torch.manual_seed(0)
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "image", 16)
    txt = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    ref = open_clip.model.CustomTextCLIP(16, TINY_OPEN_CLIP["vision_cfg"], TINY_OPEN_CLIP["text_cfg"])
    ref.visual.load_state_dict(img.net.state_dict())
    ref.text.load_state_dict(txt.net.state_dict())
    x = torch.randn(3, 3, 16, 16)
    tok = txt.tokenize(["a photo of a cat", "two dogs", "x"])
    assert tok.shape == (3, 12)
    assert torch.allclose(img(x), ref.encode_image(x), atol=1e-6)
    assert torch.allclose(txt(tok), ref.encode_text(tok), atol=1e-6)


def test_tokenizer_keeps_end_of_text_when_truncating():
    txt = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    tok = txt.tokenize(["word " * 50])
    eot = txt._tokenizer.eot_token_id
    assert tok[0, -1].item() == eot


def test_image_transform_shape():
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "image", 16)
    x = img.preprocess(train=True)(Image.new("RGB", (40, 30)))
    assert x.shape == (3, 16, 16)


def test_lock_freezes_image_tower():
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "lock": True}, "image", 16)
    assert not any(p.requires_grad for p in img.parameters())


def test_unknown_key_and_name():
    with pytest.raises(ConfigError, match="unknown key"):
        build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "layerz": 3}, "image", 16)
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        build_tower({"type": "open_clip", "model": "ViT-Nope"}, "image", 16)
    with pytest.raises(ConfigError, match="unknown tower type"):
        build_tower({"type": "open-clip"}, "image", 16)
