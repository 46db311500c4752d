"""`hf_audio` towers: AST, the Whisper encoder, wav2vec2, HuBERT, CLAP's audio model, from tiny local folders."""
import json
import os

import numpy as np
import pytest
import torch

from align.errors import ConfigError
from align.towers import build_tower
from tests.towers.hf_tiny import save_tiny

AUDIO = ("ast", "whisper", "wav2vec2", "hubert", "clap")
CLIP_S = {"wav2vec2": 0.5, "hubert": 0.5}        # these extractors fix no length: the recipe does


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_audio")
    return {k: save_tiny(k, root / k) for k in AUDIO}


def _tower(folders, kind, **kw):
    cfg = {"type": "hf_audio", "model": folders[kind], **kw}
    if kind in CLIP_S:
        cfg.setdefault("clip_seconds", CLIP_S[kind])
    return build_tower(cfg, "audio", 16)


def _wave(seed, n):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("kind", AUDIO)
def test_matches_transformers(folders, kind):
    """Eval preprocessing = resample + centre crop + the folder's AutoFeatureExtractor; the embedding is
    head(pooled output of the model's own forward)."""
    from transformers import AutoFeatureExtractor, AutoModel
    tower = _tower(folders, kind).eval()
    fe = AutoFeatureExtractor.from_pretrained(folders[kind])
    sr = int(fe.sampling_rate)
    long, short = _wave(0, tower.clip_samples + 999), _wave(1, tower.clip_samples // 3)
    pp = tower.preprocess(train=False)
    x = torch.stack([pp((long, sr)), pp((short, sr))])
    start = (len(long) - tower.clip_samples) // 2
    name = fe.model_input_names[0]
    if kind in CLIP_S:     # wave + attention mask packed as [2, N]
        out = fe([long[start:start + tower.clip_samples], short], sampling_rate=sr, padding="max_length",
                 max_length=tower.clip_samples, return_attention_mask=True, return_tensors="pt")
        torch.testing.assert_close(x[:, 0], out[name].float())
        assert torch.equal(x[:, 1].long(), out["attention_mask"].long())
        assert int(x[1, 1].sum()) == len(short)                       # the padding is masked
    else:
        ref_x = torch.stack([fe(w, sampling_rate=sr, return_tensors="pt")[name][0]
                             for w in (long[start:start + tower.clip_samples], short)]).float()
        torch.testing.assert_close(x, ref_x)
    model = AutoModel.from_pretrained(folders[kind]).eval()
    model = getattr(model, "audio_model", None) or (model.get_encoder() if kind == "whisper" else model)
    with torch.no_grad():
        if kind in CLIP_S:
            mask = x[:, 1].long()
            h = model(input_values=x[:, 0], attention_mask=mask).last_hidden_state          # [2, T, H]
            fm = model._get_feature_vector_attention_mask(h.shape[1], mask)
            pooled = torch.stack([h[i, fm[i]].mean(0) for i in range(2)])             # loop reference
        elif kind == "whisper":
            pooled = model(input_features=x).last_hidden_state.mean(1)
        else:
            pooled = model(**{name: x}).pooler_output
        want = pooled @ tower.head.weight.T
        got = tower(x)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_resamples_and_random_crops_in_training(folders):
    tower = _tower(folders, "ast")
    sr = int(tower.extractor.sampling_rate)
    w = _wave(2, 3 * tower.clip_samples)
    pp = tower.preprocess(train=True)
    a = pp((w, sr), generator=torch.Generator().manual_seed(0))
    b = pp((w, sr), generator=torch.Generator().manual_seed(1))
    assert a.shape == b.shape and not torch.equal(a, b)
    c = pp((np.repeat(w[:, None], 2, axis=1), 2 * sr))             # stereo, 2x rate: mono + resampled
    assert c.shape == a.shape


def test_bad_audio_is_a_data_error(folders):
    from align.errors import DataError
    tower = _tower(folders, "ast")
    with pytest.raises(DataError):
        tower.preprocess(train=True)((np.zeros(0, np.float32), 16000))
    with pytest.raises(ConfigError, match="clip_seconds"):
        _tower(folders, "ast", clip_seconds=-1)
    with pytest.raises(ConfigError, match="encodes the 'audio' modality"):
        build_tower({"type": "hf_audio", "model": folders["ast"]}, "image", 16)


@pytest.mark.parametrize("kind", ["ast", "whisper", "clap"])
def test_lock_keeps_last_layers(folders, kind):
    tower = _tower(folders, kind, lock=True, unlocked_layers=1)
    from align.towers.common import _group_params
    groups = tower.lock_groups()
    assert len(groups) == 3                                   # [before the layers], layer 0, [layer 1 + after]
    last = {id(p) for p in _group_params(groups[-1])}
    assert any(n.startswith("trunk.") and id(p) in last for n, p in tower.named_parameters())
    for n, p in tower.named_parameters():
        assert p.requires_grad == (n.startswith("head.") or id(p) in last), n


@pytest.mark.parametrize("kind", ["ast", "wav2vec2"])
def test_onnx_export(folders, kind, tmp_path):
    from align.export.onnx_format import check_tower, export_tower
    tower = _tower(folders, kind).eval()
    path = str(tmp_path / "audio.onnx")
    export_tower(tower, path)
    assert max(check_tower(tower, path).values()) <= 1e-4


def test_audio_text_run_from_a_local_ast(folders, tmp_path):
    """An audio-text run starts from a locally saved transformers AST and trains on real (FLAC) shards."""
    from tests.conftest import TINY_OPEN_CLIP
    from tests.train.test_train import _final_weights, _run
    from tests.wds_helpers import audio_text, make_shards
    make_shards(tmp_path / "shards", 2, 16, kind=audio_text)
    r = {"output_dir": str(tmp_path / "run"), "resume": "none",
         "model": {"embed_dim": 16, "towers": {
             "audio": {"type": "hf_audio", "model": folders["ast"]},
             "text": {"type": "open_clip", "config": json.loads(json.dumps(TINY_OPEN_CLIP))}}},
         "loss": {"pairs": [["audio", "text"]]},
         "data": {"train": str(tmp_path / "shards"), "num_workers": 1, "shuffle_buffer": 8},
         "train": {"batch_size": 8, "max_steps": 3, "lr": 1e-3, "log_every": 1, "num_threads": 1}}
    from transformers import AutoModel
    start = AutoModel.from_pretrained(folders["ast"]).state_dict()
    assert _run(r) == 0
    rows = [json.loads(l) for l in open(os.path.join(r["output_dir"], "metrics.jsonl"))]
    assert len(rows) == 3 and all(np.isfinite(x["loss"]) for x in rows) and rows[-1]["skipped"] == 0
    final = _final_weights(r["output_dir"])
    k = "layers.0.attention.q_proj.weight"
    assert not torch.equal(final["towers.audio.trunk." + k], start[k])


@pytest.mark.parametrize("kind", AUDIO)
def test_every_trainable_parameter_gets_a_gradient(folders, kind):
    """What DDP needs: no trainable parameter is left without a gradient in a training step."""
    tower = _tower(folders, kind).train()
    tower(tower.dummy_input(2)).sum().backward()
    missing = [n for n, p in tower.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and set(tower.unused) <= {n for n, _ in tower.trunk.named_parameters()}


def test_layerdrop_is_off(folders):
    tower = _tower(folders, "hubert")
    assert tower.trunk.config.layerdrop == 0.0


def test_a_clip_shorter_than_a_filterbank_window_is_padded_not_a_transformers_error(folders):
    """AST's extractor raised ValueError on waves under 400 samples (25 ms at 16 kHz): 1 sample, 50 samples."""
    tower = _tower(folders, "ast")
    full = tower.preprocess(train=False)((_wave(0, 16000), 16000))
    for n in (1, 50, 399):
        feats = tower.preprocess(train=False)((_wave(1, n), 16000))
        assert feats.shape == full.shape and torch.isfinite(feats).all()


def test_an_empty_batch_embeds_to_no_rows(folders):
    tower = _tower(folders, "ast").eval()
    feats = tower.preprocess(train=False)((_wave(0, 16000), 16000))
    with torch.no_grad():
        assert tower(feats[None][:0]).shape == (0, 16)


def test_a_float_file_louder_than_full_scale_gives_the_input_it_was_trained_on(folders):
    """The shard writer clips a float wave past +-1 into its 16-bit FLAC; the eval transform read the same wave
    unclipped (AST's filterbank input then differed by up to several units). Both clip after resampling now."""
    import io
    from types import SimpleNamespace

    import soundfile

    from align.data.write.media import encode_audio
    from align.limits import as_limits
    from align.media.audio import decode_audio

    g = np.random.default_rng(0)
    t = np.arange(44100) / 44100.0
    wave = (3.0 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * g.standard_normal(t.size)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave, 44100, format="WAV", subtype="FLOAT")
    flac, _ = encode_audio(buf.getvalue(), "loud.wav", SimpleNamespace(limits=as_limits(None), sample_rate=16000))
    pp = _tower(folders, "ast").preprocess(train=False)
    trained, user = pp(decode_audio(flac)), pp((wave, 44100))             # the writer + training; a caller
    assert trained.shape == user.shape
    assert float((trained - user).abs().max()) < 0.05
