"""`hf_image` towers: CLIP / SigLIP vision, a full CLIP checkpoint, DINOv2 from tiny local transformers folders."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from align.errors import ConfigError
from align.towers import TOWERS, build_tower
from tests.towers.hf_tiny import save_tiny

IMAGES = ("clip_vision", "clip", "siglip_vision", "dinov2")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_image")
    return {k: save_tiny(k, root / k) for k in IMAGES}


def _img(seed, size=(45, 37)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", IMAGES)
def test_matches_transformers(folders, kind):
    """Preprocess = the folder's AutoImageProcessor; embedding = head(the model's own pooled output)."""
    from transformers import AutoImageProcessor, AutoModel
    tower = build_tower({"type": "hf_image", "model": folders[kind]}, "image", 16).eval()
    imgs = [_img(0), _img(1, (20, 60))]
    x = torch.stack([tower.preprocess(train=True)(im) for im in imgs])               # [2, 3, 32, 32]
    ref_x = AutoImageProcessor.from_pretrained(folders[kind])(images=imgs, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(x, ref_x, atol=0, rtol=0)
    ref = AutoModel.from_pretrained(folders[kind]).eval()
    ref = getattr(ref, "vision_model", ref)         # full CLIP: its vision half
    with torch.no_grad():
        want = ref(pixel_values=x).pooler_output @ tower.head.weight.T
        got = tower(x)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert tower.model_type in ("clip_vision_model", "siglip_vision_model", "dinov2")


def test_unused_parameters_are_frozen(folders):
    """DINOv2's mask_token never takes part in an embedding: frozen, so DDP does not wait for its gradient."""
    tower = build_tower({"type": "hf_image", "model": folders["dinov2"]}, "image", 16).train()
    assert tower.unused == ["embeddings.mask_token"] and not tower.trunk.embeddings.mask_token.requires_grad
    tower(tower.dummy_input(2)).sum().backward()
    assert all(p.grad is not None for p in tower.parameters() if p.requires_grad)


def test_registered_by_explicit_type():
    assert "hf_image" in TOWERS and "hf_audio" in TOWERS


def test_lock_and_unlocked_layers(folders):
    tower = build_tower({"type": "hf_image", "model": folders["clip_vision"], "lock": True, "unlocked_layers": 1},
                        "image", 16)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("head.", "trunk.encoder.layers.1.",
                                           "trunk.post_layernorm.")) for n in trainable)
    assert any(n.startswith("trunk.encoder.layers.1.") for n in trainable)
    full = build_tower({"type": "hf_image", "model": folders["clip_vision"], "lock": True}, "image", 16)
    assert {n for n, p in full.named_parameters() if p.requires_grad} == {"head.weight"}
    full.train()
    x = full.dummy_input(2)
    full(x).sum().backward()
    assert full.head.weight.grad is not None
    assert all(p.grad is None for n, p in full.named_parameters() if n.startswith("trunk."))
    assert not full.trunk.training                                  # frozen: dropout/BN frozen too


def test_bad_config_is_one_line(folders, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'layers'"):
        build_tower({"type": "hf_image", "model": folders["dinov2"], "layers": 2}, "image", 16)
    with pytest.raises(ConfigError, match="encodes the 'image' modality"):
        build_tower({"type": "hf_image", "model": folders["dinov2"]}, "text", 16)
    with pytest.raises(ConfigError, match="pooling"):
        build_tower({"type": "hf_image", "model": folders["dinov2"], "pooling": "gem"}, "image", 16)
    with pytest.raises(ConfigError, match="model.towers.image.model: no image processor"):
        build_tower({"type": "hf_image", "model": str(tmp_path)}, "image", 16)
    import shutil                  # a download copied without its preprocessor: named, not transformers' advice
    shutil.copytree(folders["dinov2"], tmp_path / "copy")
    (tmp_path / "copy" / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match=r"^model.towers.image.model: no image processor for '.*copy': the folder "
                                          r"lacks preprocessor_config.json \(copy it from the download"):
        build_tower({"type": "hf_image", "model": str(tmp_path / "copy")}, "image", 16)


def test_onnx_export(folders, tmp_path):
    from align.export.onnx_format import check_tower, export_tower
    tower = build_tower({"type": "hf_image", "model": folders["clip_vision"]}, "image", 16).eval()
    path = str(tmp_path / "image.onnx")
    export_tower(tower, path)
    diffs = check_tower(tower, path)
    assert max(diffs.values()) <= 1e-4


def test_clip_vision_trains_beside_open_clip_text(folders, tmp_path):
    """A CLIP vision tower from a local transformers folder trains beside an open_clip text tower, through
    real shards (the image processor runs in the data path)."""
    from tests.conftest import TINY_OPEN_CLIP
    from tests.train.test_train import _final_weights, _run
    from tests.wds_helpers import make_shards
    paths, _ = make_shards(tmp_path / "shards", 2, 16)
    r = {"output_dir": str(tmp_path / "run"), "resume": "none",
         "model": {"embed_dim": 16, "towers": {
             "image": {"type": "hf_image", "model": folders["clip_vision"]},
             "text": {"type": "open_clip", "config": json.loads(json.dumps(TINY_OPEN_CLIP))}}},
         "data": {"train": str(tmp_path / "shards"), "num_workers": 1, "shuffle_buffer": 8},
         "train": {"batch_size": 8, "max_steps": 3, "lr": 1e-3, "log_every": 1, "num_threads": 1}}
    from align.config import parse_recipe
    from align.model import build_model
    torch.manual_seed(0)
    init = build_model(parse_recipe(r).model).state_dict()
    assert _run(r) == 0
    rows = [json.loads(l) for l in open(os.path.join(r["output_dir"], "metrics.jsonl"))]
    assert len(rows) == 3 and all(np.isfinite(x["loss"]) for x in rows) and rows[-1]["skipped"] == 0
    final = _final_weights(r["output_dir"])
    k = "towers.image.trunk.encoder.layers.0.mlp.fc1.weight"
    assert k in final and not torch.equal(final[k], init[k])


def test_weights_transformers_cannot_use_are_one_line_naming_the_file(folders, tmp_path):
    """A pickle with code, a cut-short safetensors file, weights of other shapes or of another architecture (which
    transformers loads as random weights beside a report): one ConfigError line each, nothing unpickled."""
    import shutil
    from safetensors.torch import load_file, save_file
    sd = load_file(os.path.join(folders["clip_vision"], "model.safetensors"))

    def variant(name, weights=None, raw=None):
        d = tmp_path / name
        shutil.copytree(folders["clip_vision"], d)
        os.remove(d / "model.safetensors")
        if raw is not None:
            (d / "model.safetensors").write_bytes(raw)
        elif name == "pickle":
            torch.save(weights, d / "pytorch_model.bin")
        else:
            save_file(weights, str(d / "model.safetensors"))
        return str(d)

    class Code:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))
    cases = {
        variant("pickle", dict(sd, extra=Code())): r"pickle/pytorch_model.bin' holds Python objects besides tensors",
        variant("cut", raw=open(os.path.join(folders["clip_vision"], "model.safetensors"), "rb").read()[:999]):
            r"cut/model.safetensors' as a safetensors file \(damaged or cut short\?\)",
        variant("shape", dict(sd, **{"post_layernorm.weight": torch.ones(48)})):
            r"do not fit its config.json: tensor 'post_layernorm.weight' has shape \[48\] in the weights but \[32\]",
        variant("other", load_file(os.path.join(folders["dinov2"], "model.safetensors"))):
            r"are not those of its clip_vision_model config.json: \d+ of its \d+ tensors are missing",
    }
    for folder, msg in cases.items():
        with pytest.raises(ConfigError, match=r"model.towers.image.model: .*" + msg):
            build_tower({"type": "hf_image", "model": folder}, "image", 16)
    assert not (tmp_path / "ran").exists()


def test_the_image_size_encode_image_takes_is_what_the_processor_makes(folders, tmp_path):
    """DINOv2 interpolates its position embeddings, so a 48 px batch into this 32 px tower embedded without a word;
    encode_image refuses it in one line. A processor that keeps the aspect ratio (no crop) has no one size: any
    is taken."""
    import shutil

    from align.model import AlignModel, InputError
    tower = build_tower({"type": "hf_image", "model": folders["dinov2"]}, "image", 16).eval()
    assert tower.input_shape() == (3, 32, 32)
    with torch.no_grad():
        assert tower(torch.zeros(1, 3, 48, 48)).shape == (1, 16)                   # the tower itself takes it
        model = AlignModel({"image": tower})
        assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
        with pytest.raises(InputError, match=r"expected \[B, 3, 32, 32\].*got float32 \[1, 3, 48, 48\]$"):
            model.encode_image(torch.zeros(1, 3, 48, 48))
    free = tmp_path / "uncropped"
    shutil.copytree(folders["dinov2"], free)
    cfg = json.loads((free / "preprocessor_config.json").read_text())
    (free / "preprocessor_config.json").write_text(json.dumps(dict(cfg, do_center_crop=False)))
    tower = build_tower({"type": "hf_image", "model": str(free)}, "image", 16).eval()
    assert tower.input_shape() is None
    with torch.no_grad():
        assert AlignModel({"image": tower}).encode_image(torch.zeros(1, 3, 40, 32)).shape == (1, 16)


def test_a_pooler_the_checkpoint_lacks_is_refused_only_where_the_tower_uses_it(tmp_path):
    """A ViTModel over a ViTForImageClassification download has no pooler weights: under pooling auto the tower
    embedded through a pooler transformers started at random; cls and mean never use it."""
    import transformers as T
    cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=3)
    T.ViTForImageClassification(cfg).save_pretrained(tmp_path)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"lack 2 of the \d+ tensors of its config.json \(e.g. pooler.dense.bias, "
                                          r"pooler.dense.weight\): transformers would start them at random; pooling: "
                                          r"cls or mean does not use its pooler$"):
        build_tower({"type": "hf_image", "model": str(tmp_path)}, "image", 8)
    for pooling in ("cls", "mean"):
        build_tower({"type": "hf_image", "model": str(tmp_path), "pooling": pooling}, "image", 8)
