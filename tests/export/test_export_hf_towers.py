"""Exports of Hugging Face towers (hf, hf_image, hf_audio) are self-contained: align_config.json named each tower's
model folder by its absolute path, so an export moved to another machine without that folder broke. The export holds
hf/<modality>/ (config.json and the tokenizer / image processor / feature extractor, no weights) named relative to
it, with `from_config: true`; an export written before (absolute `model`) still loads."""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

import align
from align.export import export
from tests.export.conftest import make_run
from tests.test_open_clip_files import no_hub  # noqa: F401  (offline uses it)
from tests.towers.hf_tiny import save_tiny, save_tiny_tokenizer
from tests.towers.test_open_clip_towers import offline  # noqa: F401  (a fixture)


def _tiny_bert(folder) -> str:
    import transformers as T
    save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    T.BertModel(T.BertConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=16)).save_pretrained(str(folder))
    return str(folder)


def _embeddings(model):
    img = model.image_transform(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)))
    wave = (0.1 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    aud = model.towers["audio"].preprocess(train=False)((wave, 16000))
    with torch.no_grad():
        return (model.encode_text(model.tokenize(["a photo of a dog", "a red cat"])), model.encode_image(img[None]),
                model.encode_audio(aud[None]))


def test_an_export_of_hf_towers_loads_moved_without_the_model_folders(tmp_path, offline):
    models = tmp_path / "models"
    towers = {"text": {"type": "hf", "model": _tiny_bert(models / "bert"), "context_length": 8},
              "image": {"type": "hf_image", "model": save_tiny("clip", models / "clip")},
              "audio": {"type": "hf_audio", "model": save_tiny("whisper", models / "whisper")}}
    run, model = make_run(tmp_path, open_clip=False, towers=towers, embed_dim=8)
    want = _embeddings(model)
    export(run, str(tmp_path / "e"), fmt="onnx", progress=False)
    recipe = json.load(open(tmp_path / "e" / "align_config.json"))
    assert "- `hf/` (the Hugging Face towers' config.json" in (tmp_path / "e" / "README.md").read_text()
    for mod in towers:
        t = recipe["model"]["towers"][mod]
        assert t["model"] == f"hf/{mod}" and t["from_config"] is True
        assert not {"model.safetensors", "pytorch_model.bin"} & set(os.listdir(tmp_path / "e" / "hf" / mod))
    os.makedirs(tmp_path / "elsewhere")
    moved = shutil.move(str(tmp_path / "e"), str(tmp_path / "elsewhere" / "e"))
    old = dict(recipe, model=dict(recipe["model"], towers={m: dict(t, model=towers[m]["model"], from_config=False)
                                                           for m, t in recipe["model"]["towers"].items()}))
    shutil.copytree(moved, tmp_path / "old")       # as an export written before the copy named them
    json.dump(old, open(tmp_path / "old" / "align_config.json", "w"))
    for got, w in zip(_embeddings(align.load(str(tmp_path / "old"))), want):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)
    shutil.rmtree(models)
    again = align.load(moved)
    for got, w in zip(_embeddings(again), want):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)
    assert offline[0] == []


def test_from_config_that_is_not_a_boolean_is_one_line(tmp_path):
    import pytest
    from align.errors import ConfigError
    from align.towers import build_tower
    with pytest.raises(ConfigError, match=r"^model.towers.text.from_config: true or false, got 'yes'$"):
        build_tower({"type": "hf", "model": str(tmp_path), "from_config": "yes"}, "text", 8)
