"""Tests for the timm image tower (tiny random-init models at 32x32, nothing downloaded)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from align.errors import ConfigError
from align.towers import build_tower

RESNET = {"type": "timm", "model": "resnet18", "image_size": 32}
VIT = {"type": "timm", "model": "vit_tiny_patch16_224", "image_size": 32,
       "model_kwargs": {"patch_size": 8, "depth": 2}}


def test_resnet_shapes_grads_and_transforms():
    t = build_tower(RESNET, "image", 24)
    x = t.dummy_input(2)
    assert x.shape == (2, 3, 32, 32)
    y = t(x)
    assert y.shape == (2, 24)
    y.sum().backward()
    assert t.trunk.conv1.weight.grad.abs().sum() > 0
    grey = Image.fromarray((np.random.default_rng(0).random((50, 40)) * 255).astype("uint8"))  # mode L
    for train in (True, False):
        out = t.preprocess(train)(grey)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    ev = t.preprocess(False)
    assert torch.equal(ev(grey), ev(grey))
    cfg = json.loads(json.dumps(t.preprocess_config()))
    assert cfg["image_size"] == [32, 32] and len(cfg["mean"]) == 3


def test_resnet_lock_freezes_batchnorm():
    t = build_tower(dict(RESNET, lock=True), "image", 24).train()
    assert {n for n, p in t.named_parameters() if p.requires_grad} == {"head.weight"}
    before = t.trunk.bn1.running_mean.clone()
    seen = []
    t.trunk.layer1.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    y = t(t.dummy_input(2) + 1.0)
    assert torch.equal(t.trunk.bn1.running_mean, before) and seen == [False] and y.requires_grad

    t = build_tower(dict(RESNET, lock=True, unlocked_groups=1), "image", 24).train()
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in t.named_parameters() if n.startswith(("trunk.layer4.", "head."))}
    assert t.trunk.layer4.training and not t.trunk.layer3.training


def test_vit_groups_and_partial_lock():
    t = build_tower(dict(VIT, lock=True, unlocked_groups=1), "image", 16)
    assert len(t.lock_groups()) == 1 + 2                      # stem, block 0, block 1 + final norm
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in t.named_parameters()
                         if n.startswith(("trunk.blocks.1.", "trunk.norm.", "head."))}
    outs = {}
    for i, blk in enumerate(t.trunk.blocks):
        blk.register_forward_hook(lambda m, inp, o, i=i: outs.__setitem__(i, o.requires_grad))
    y = t(t.dummy_input(2))
    assert y.shape == (2, 16) and outs == {0: False, 1: True}
    y.sum().backward()
    assert t.trunk.blocks[1].mlp.fc1.weight.grad is not None and t.trunk.blocks[0].mlp.fc1.weight.grad is None


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'img_size'; valid keys: .*image_size"):
        build_tower({"type": "timm", "model": "resnet18", "img_size": 32}, "image", 8)
    with pytest.raises(ConfigError, match="not a timm architecture"):
        build_tower({"type": "timm", "model": "resnet_nope"}, "image", 8)
    with pytest.raises(ConfigError, match="does not exist"):
        build_tower(dict(RESNET, pretrained=str(tmp_path / "w.safetensors")), "image", 8)
    with pytest.raises(ConfigError, match="augment: unknown key 'jitter'"):
        build_tower(dict(RESNET, augment={"jitter": 0.1}), "image", 8)
    with pytest.raises(ConfigError, match="'image' modality"):
        build_tower(RESNET, "audio", 8)


def test_pretrained_weights_file(tmp_path):
    from safetensors.torch import save_file
    src = build_tower(RESNET, "image", 8)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.trunk.state_dict().items()}, str(path))
    t = build_tower(dict(RESNET, pretrained=str(path)), "image", 8)
    assert torch.equal(t.trunk.conv1.weight, src.trunk.conv1.weight)


def _vit_weights():
    torch.manual_seed(0)
    import timm
    return {k: v.contiguous() for k, v in timm.create_model("test_vit", num_classes=0).state_dict().items()}


def test_a_timm_hub_folder_brings_its_preprocessing_and_weights(tmp_path):
    """The folder a timm Hub download leaves (config.json + model.safetensors): was 'weights file does not exist';
    its pretrained_cfg (mean, std) is the folder's, not the architecture's default tag's."""
    from safetensors.torch import save_file
    sd = _vit_weights()
    save_file(sd, str(tmp_path / "model.safetensors"))
    pcfg = {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear",
            "crop_pct": 1.0, "num_classes": 1000, "classifier": "head"}
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 1000,
                                                      "model_args": {"img_size": [32, 32]}, "pretrained_cfg": pcfg}))
    t = build_tower({"type": "timm", "model": "test_vit", "pretrained": str(tmp_path)}, "image", 8)
    c = t.preprocess_config()
    assert (c["mean"], c["std"], c["image_size"], c["interpolation"]) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6],
                                                                          [32, 32], "bilinear")
    torch.testing.assert_close(t.trunk.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    with pytest.raises(ConfigError, match=r"config.json' is the config of 'test_vit', not of 'resnet18': set the "
                                          r"tower's model: test_vit$"):
        build_tower({"type": "timm", "model": "resnet18", "pretrained": str(tmp_path)}, "image", 8)


def test_a_broken_or_partial_timm_weights_file_is_one_line_never_a_random_start(tmp_path):
    """timm loads a file non-strictly once the classifier is dropped: tensors the file lacks started at random
    without a word. A file cut short was a SafetensorError traceback; a pickle's line named no file."""
    import os
    from safetensors.torch import save_file
    sd = _vit_weights()
    tower = {"type": "timm", "model": "test_vit"}
    save_file({k: v for k, v in sd.items() if not k.startswith("blocks.0.")}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ConfigError, match=r"^model.towers.image.pretrained: '.*part.safetensors' lacks 12 of the "
                                          r"\d+ tensors of timm's 'test_vit' \(e.g. blocks.0.norm1.weight"):
        build_tower(dict(tower, pretrained=str(tmp_path / "part.safetensors")), "image", 8)
    save_file(sd, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cannot read '.*cut.safetensors' as a safetensors file \(damaged or cut"):
        build_tower(dict(tower, pretrained=str(tmp_path / "cut.safetensors")), "image", 8)
    torch.save(dict(sd, extra=os.path.join), tmp_path / "code.bin")
    with pytest.raises(ConfigError, match=r"'.*code.bin' holds Python objects besides tensors \(posixpath.join\)"):
        build_tower(dict(tower, pretrained=str(tmp_path / "code.bin")), "image", 8)
    save_file(dict(sd, **{"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}), str(tmp_path / "shape.safetensors"))
    with pytest.raises(ConfigError, match=r"shape.safetensors' does not fit the model: tensor "
                                          r"'blocks.0.attn.qkv.weight' has shape \[3, 3\] in the weights"):
        build_tower(dict(tower, pretrained=str(tmp_path / "shape.safetensors")), "image", 8)


def test_a_timm_weights_file_is_read_once(tmp_path, monkeypatch):
    """The check that a file filled every trunk tensor read the whole file a second time after timm loaded it;
    it takes what timm's own load left missing. No hook stays on the trunk (it pickles)."""
    import pickle
    sd = _vit_weights()
    torch.save(sd, tmp_path / "w.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.0.")}, tmp_path / "part.pth")
    reads, load = [], torch.load

    def counted(f, *a, **k):
        reads.append(str(f))
        return load(f, *a, **k)
    monkeypatch.setattr(torch, "load", counted)
    tower = build_tower({"type": "timm", "model": "test_vit", "pretrained": str(tmp_path / "w.pth")}, "image", 8)
    assert reads == [str(tmp_path / "w.pth")]
    torch.testing.assert_close(tower.trunk.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    assert not any(m._load_state_dict_post_hooks for m in tower.modules())
    pickle.dumps(tower.trunk)
    with pytest.raises(ConfigError, match=r"'.*part.pth' lacks 12 of the \d+ tensors of timm's 'test_vit' \(e.g. "
                                          r"blocks.0.norm1.weight"):
        build_tower({"type": "timm", "model": "test_vit", "pretrained": str(tmp_path / "part.pth")}, "image", 8)
