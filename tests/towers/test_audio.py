"""Tests for the audio front end (filterbank, log-mel, crops) and the audio / audio_cnn towers."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align.errors import ConfigError, DataError
from align.towers import build_tower
from align.towers.audio_features import (AudioFrontend, AudioPreprocess, LogMel, crop_or_pad,
                                         mel_filterbank, resample_wave)

# Small front end: 0.31 s at 16 kHz -> 4960 samples -> 32 frames, 32 mel bins.
SMALL = dict(clip_seconds=0.31, n_mels=32)
TINY_VIT = dict(SMALL, width=32, layers=2, heads=2, patch=4)


# ---- plain references (librosa formulas, written as loops) ---------------------------------

def ref_hz_to_mel(f, htk):
    if htk:
        return 2595.0 * math.log10(1.0 + f / 700.0)
    return f / (200.0 / 3) if f < 1000 else 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0)


def ref_mel_to_hz(m, htk):
    if htk:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)
    return m * 200.0 / 3 if m < 15 else 1000.0 * math.exp(math.log(6.4) / 27.0 * (m - 15.0))


def ref_filterbank(n_freqs, sr, n_mels, fmin, fmax, htk, slaney_norm):
    lo, hi = ref_hz_to_mel(fmin, htk), ref_hz_to_mel(fmax, htk)
    pts = [ref_mel_to_hz(lo + (hi - lo) * i / (n_mels + 1), htk) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for k in range(n_freqs):
        f = k * (sr / 2) / (n_freqs - 1)
        for m in range(n_mels):
            left, centre, right = pts[m], pts[m + 1], pts[m + 2]
            if left < f <= centre:
                w = (f - left) / (centre - left)
            elif centre < f < right:
                w = (right - f) / (right - centre)
            else:
                w = 0.0
            fb[k, m] = w * (2.0 / (right - left) if slaney_norm else 1.0)
    return fb


def ref_logmel(wave, fe):
    """numpy: centred zero-padded frames, periodic Hann, |rfft|^2, loop filterbank, log, normalise."""
    pad = fe.n_fft // 2
    x = np.concatenate([np.zeros(pad), wave.astype(np.float64), np.zeros(pad)])
    n = np.arange(fe.win_length)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.win_length)
    off = (fe.n_fft - fe.win_length) // 2
    full = np.zeros(fe.n_fft)
    full[off:off + fe.win_length] = win
    frames = 1 + len(wave) // fe.hop_length
    fb = ref_filterbank(fe.n_fft // 2 + 1, fe.sample_rate, fe.n_mels, fe.f_min, fe.f_max,
                        fe.mel_scale == "htk", fe.mel_norm == "slaney")
    out = np.zeros((fe.n_mels, frames))
    for t in range(frames):
        seg = x[t * fe.hop_length: t * fe.hop_length + fe.n_fft] * full
        power = np.abs(np.fft.rfft(seg)) ** 2
        out[:, t] = (np.log(power @ fb + fe.log_offset) - fe.norm_mean) / fe.norm_std
    return out


# ---- front end ----------------------------------------------------------------------------

@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_filterbank_matches_loop_reference(scale, norm):
    ours = mel_filterbank(201, 16000, 40, 50.0, 8000.0, scale, norm).double().numpy()
    ref = ref_filterbank(201, 16000, 40, 50.0, 8000.0, scale == "htk", norm == "slaney")
    assert ours.shape == (201, 40)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert (ours.max(axis=0) > 0).all()  # no empty filter at this resolution


@pytest.mark.parametrize("kw", [dict(), dict(mel_scale="slaney", mel_norm="slaney", win_length=300, f_min=0.0)])
def test_logmel_matches_numpy_reference(kw):
    fe = AudioFrontend(**SMALL, **kw).validate("t")
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(fe.clip_samples)).astype(np.float32)
    ours = LogMel(fe)(torch.from_numpy(wave)).double().numpy()
    assert ours.shape == (fe.n_mels, fe.n_frames) == (32, 1 + 4960 // 160)
    np.testing.assert_allclose(ours, ref_logmel(wave, fe), atol=2e-4)


def test_logmel_batches_leading_dims():
    fe = AudioFrontend(**SMALL)
    w = torch.randn(2, 3, fe.clip_samples)
    out = LogMel(fe)(w)
    assert out.shape == (2, 3, fe.n_mels, fe.n_frames)
    torch.testing.assert_close(out[1, 2], LogMel(fe)(w[1, 2]))


def test_eval_preprocess_is_deterministic_and_centre_crops():
    fe = AudioFrontend(**SMALL)
    w = (0.2 * np.random.default_rng(1).standard_normal(3 * fe.clip_samples + 7)).astype(np.float32)  # in [-1, 1]
    pre = AudioPreprocess(fe, train=False)
    a, b = pre((w, 16000)), pre((w.copy(), 16000))
    assert a.shape == (fe.n_mels, fe.n_frames) and torch.equal(a, b)
    start = (len(w) - fe.clip_samples) // 2
    torch.testing.assert_close(a, LogMel(fe)(torch.from_numpy(w[start:start + fe.clip_samples])))


def test_eval_clips_cover_the_recording():
    fe = AudioFrontend(**SMALL, eval_clips=3)
    L = fe.clip_samples
    w = (0.2 * np.random.default_rng(2).standard_normal(4 * L)).astype(np.float32)
    out = AudioPreprocess(fe, train=False)((w, 16000))
    assert out.shape == (3, fe.n_mels, fe.n_frames)
    lm = LogMel(fe)
    torch.testing.assert_close(out[0], lm(torch.from_numpy(w[:L])))                 # first starts at 0
    torch.testing.assert_close(out[2], lm(torch.from_numpy(w[-L:])))                # last ends at the end
    torch.testing.assert_close(out[1], lm(torch.from_numpy(w[round(1.5 * L):round(1.5 * L) + L])))
    short = AudioPreprocess(fe, train=False)((w[:100], 16000))                      # padded, repeated
    assert torch.equal(short[0], short[2])


def test_train_crop_is_random_and_within_bounds():
    fe = AudioFrontend(sample_rate=1600, clip_seconds=0.5, n_fft=64, win_length=64, hop_length=16,
                       n_mels=8, f_min=0.0, f_max=800.0).validate("t")
    L = fe.clip_samples                                                               # 800
    w = (0.2 * np.random.default_rng(3).standard_normal(L + 120)).astype(np.float32)
    # every admissible crop, as features: [121, n_mels, T]
    allcrops = LogMel(fe)(torch.from_numpy(np.stack([w[s:s + L] for s in range(121)])))
    pre = AudioPreprocess(fe, train=True)
    starts = set()
    for seed in range(12):
        out = pre((w, 1600), generator=torch.Generator().manual_seed(seed))
        d = (allcrops - out).abs().flatten(1).amax(1)                                # [121]
        assert float(d.min()) < 1e-5, "train output is not one of the admissible crops"
        starts.add(int(d.argmin()))
    assert len(starts) > 3
    again = pre((w, 1600), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, pre((w, 1600), generator=torch.Generator().manual_seed(0)))


def test_short_audio_is_zero_padded_and_stereo_downmixed():
    fe = AudioFrontend(**SMALL)
    w = (0.2 * np.random.default_rng(4).standard_normal(1000)).astype(np.float32)
    expect = LogMel(fe)(torch.from_numpy(crop_or_pad(w, 0, fe.clip_samples)))
    torch.testing.assert_close(AudioPreprocess(fe, train=True)((w, 16000)), expect)
    stereo = np.stack([w, w], axis=1)                                                 # soundfile [T, C]
    torch.testing.assert_close(AudioPreprocess(fe, train=False)((stereo, 16000)), expect)


def test_resampling_to_16k():
    t8, t16 = np.arange(8000) / 8000, np.arange(16000) / 16000
    up = resample_wave(np.sin(2 * np.pi * 440 * t8).astype(np.float32), 8000, 16000)
    assert up.dtype == np.float32 and up.shape == (16000,)
    np.testing.assert_allclose(up[100:-100], np.sin(2 * np.pi * 440 * t16)[100:-100], atol=2e-3)


@pytest.mark.parametrize("sample", [(np.zeros(0, np.float32), 16000), (np.full(100, np.nan, np.float32), 16000),
                                    (np.zeros((2, 2, 50), np.float32), 16000), (np.zeros(100, np.float32), 0),
                                    "not a pair"])
def test_bad_audio_raises_data_error(sample):
    with pytest.raises(DataError):
        AudioPreprocess(AudioFrontend(**SMALL), train=False)(sample)


def test_scipy_wavfiles_rate_data_order_and_a_bool_rate_are_one_line():
    """audio_transform(scipy.io.wavfile.read(path)) gives (rate, data): it was refused with numpy's two-line repr of
    the wave as the 'sample rate'; it now says the pair is the other way round. A bool rate (True) is no rate: it
    was read as 1 Hz and resampled to a 16000x longer wave."""
    pre = AudioPreprocess(AudioFrontend(**SMALL), train=False)
    wave = (np.sin(np.arange(4000) / 5) * 3000).astype(np.int16)
    with pytest.raises(DataError, match=r"^audio: expected \(wave, sample_rate\), got \(sample_rate 16000, a wave\): "
                                        r"scipy.io.wavfile.read returns \(rate, data\), pass \(data, rate\)$"):
        pre((16000, wave))
    with pytest.raises(DataError, match=r"^audio: sample rate must be a positive integer, got an array of shape "
                                        r"\(2,\)$"):
        pre((wave, np.array([16000, 16000])))
    with pytest.raises(DataError, match="sample rate must be a positive integer, got True"):
        pre((wave[:10], True))     # (read as 1 Hz: 160,000 samples)
    assert pre((wave, np.int64(16000))).shape == pre((wave, 16000)).shape


# ---- towers -------------------------------------------------------------------------------

def test_audio_tower_shapes_grads_and_clips():
    t = build_tower({"type": "audio", **TINY_VIT, "patch_stride": [2, 4]}, "audio", 16)
    assert t.grid == ((32 - 4) // 2 + 1, (32 - 4) // 4 + 1)
    x = t.dummy_input(3)
    assert x.shape == (3, 32, 32)
    y = t(x)
    assert y.shape == (3, 16)
    y.sum().backward()
    assert all(p.grad is not None for p in t.parameters())
    assert t.patch_embed.weight.grad.abs().sum() > 0
    t.eval()
    clips = torch.randn(2, 3, 32, 32)
    want = torch.stack([F.normalize(t(clips[i]), dim=-1).mean(0) for i in range(2)])
    torch.testing.assert_close(t.encode_clips(clips), want)
    with pytest.raises(ValueError, match="encode_clips"):
        t(clips)
    json.dumps(t.preprocess_config())
    assert t.preprocess(False)((np.zeros(16000, np.float32), 16000)).shape == (32, 32)


def test_audio_tower_lock_freezes_and_runs_without_grad():
    t = build_tower({"type": "audio", **TINY_VIT, "lock": True}, "audio", 16)
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight"}
    seen = []
    t.transformer.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    t.train()
    y = t(t.dummy_input(2))
    assert seen == [False] and y.requires_grad
    assert not t.transformer.training and t.head.training

    t = build_tower({"type": "audio", **TINY_VIT, "lock": True, "unlocked_groups": 1}, "audio", 16)
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in t.named_parameters()
                         if n.startswith(("transformer.resblocks.1.", "ln_post.", "head."))}
    outs = {}
    for i, blk in enumerate(t.transformer.resblocks):
        blk.register_forward_hook(lambda m, inp, o, i=i: outs.__setitem__(i, o.requires_grad))
    t(t.dummy_input(2)).sum().backward()
    assert outs == {0: False, 1: True}
    assert t.transformer.resblocks[1].mlp.c_fc.weight.grad is not None


def _vit_state(tmp_path, vision_cfg):
    from safetensors.torch import save_file
    from open_clip.model import CustomTextCLIP
    torch.manual_seed(0)
    vit = CustomTextCLIP(24, vision_cfg, {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1,
                                          "layers": 1}).visual
    sd = {f"visual.{k}": v.contiguous() for k, v in vit.state_dict().items()}
    sd["logit_scale"] = torch.ones([])                 # other open_clip keys are ignored
    path = tmp_path / "vit.safetensors"
    save_file(sd, str(path))
    return vit.state_dict(), path


def test_init_from_vit_copies_weights(tmp_path):
    vcfg = {"width": 64, "layers": 2, "patch_size": 4, "image_size": 32, "head_width": 32}
    src, path = _vit_state(tmp_path, vcfg)
    spec = {"vision_cfg": vcfg, "weights": str(path)}
    # same patch grid as the ViT (8 x 8): positional embeddings are copied unchanged
    t = build_tower({"type": "audio", **SMALL, "patch_stride": 4, "init_from_vit": spec}, "audio", 16)
    assert t.grid == (8, 8) and t.width == 64 and len(t.transformer.resblocks) == 2
    for k, v in t.transformer.state_dict().items():
        assert torch.equal(v, src[f"transformer.{k}"]), k
    for k in ("ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias"):
        assert torch.equal(t.state_dict()[k], src[k])
    assert torch.equal(t.class_embedding, src["class_embedding"])
    torch.testing.assert_close(t.patch_embed.weight, src["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(t.positional_embedding, src["positional_embedding"])
    assert t(t.dummy_input(2)).shape == (2, 16)

    # overlapping patches: a 15 x 8 grid. Give the ViT a position grid that varies along
    # rows only; after resizing it must still vary along frequency (rows) only.
    from safetensors.torch import load_file, save_file
    sd = load_file(str(path))
    ramp = torch.arange(8.0)[:, None, None].expand(8, 8, 64)                     # grid[r, c] = r
    sd["visual.positional_embedding"] = torch.cat([torch.full((1, 64), -5.0), ramp.reshape(64, 64)])
    save_file(sd, str(path))
    t2 = build_tower({"type": "audio", **SMALL, "patch_stride": [2, 4], "init_from_vit": spec}, "audio", 16)
    pos = t2.positional_embedding.detach()
    assert t2.grid == (15, 8) and pos.shape == (1 + 15 * 8, 64)
    assert torch.equal(pos[0], torch.full((64,), -5.0))                         # CLS row kept
    grid = pos[1:].reshape(15, 8, 64)
    torch.testing.assert_close(grid, grid[:, :1].expand(15, 8, 64))            # constant along time
    col = grid[:, 0, 0]
    assert col[0] < 0.5 and col[-1] > 6.5 and (col[1:] >= col[:-1] - 0.05).all()  # 0 -> 7 along freq


def test_init_from_vit_rejects_conflicts(tmp_path):
    spec = {"vision_cfg": {"width": 64, "layers": 2, "patch_size": 4, "image_size": 32, "head_width": 32}}
    with pytest.raises(ConfigError, match="width"):
        build_tower({"type": "audio", **SMALL, "width": 32, "init_from_vit": spec}, "audio", 16)
    with pytest.raises(ConfigError, match="patch"):
        build_tower({"type": "audio", **SMALL, "patch": 8, "init_from_vit": spec}, "audio", 16)
    with pytest.raises(ConfigError, match="does not exist"):
        build_tower({"type": "audio", **SMALL, "init_from_vit": dict(spec, weights=str(tmp_path / "x.pt"))},
                    "audio", 16)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        build_tower({"type": "audio", **SMALL, "init_from_vit": {"modle": "ViT-B-32"}}, "audio", 16)


def _bn(block):
    return next(m for m in block if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("layout", [{}, {"block": "plain", "stem_stride": 1}, {"stem_stride": [2, 1]}])
def test_audio_cnn_shapes_and_frozen_batchnorm(layout):
    cfg = {"type": "audio_cnn", **SMALL, "channels": [8, 16, 16], **layout}
    t = build_tower(cfg, "audio", 12)
    y = t(t.dummy_input(4))
    assert y.shape == (4, 12)
    y.sum().backward()
    assert t.blocks[0][0].weight.grad.abs().sum() > 0 and t.stem[0].weight.grad.abs().sum() > 0
    t = build_tower(dict(cfg, lock=True), "audio", 12).train()
    bn = _bn(t.blocks[0])
    before = bn.running_mean.clone()
    t(t.dummy_input(4) + 3.0)
    assert torch.equal(bn.running_mean, before)         # frozen BN keeps its statistics
    assert {n for n, p in t.named_parameters() if p.requires_grad} == {"head.weight"}
    t = build_tower(dict(cfg, lock=True, unlocked_groups=1), "audio", 12).train()
    assert _bn(t.blocks[2]).training and not _bn(t.blocks[1]).training


def test_audio_cnn_layouts():
    """Separable blocks: depthwise 3x3 then pointwise 1x1; the stem stride shrinks the first map."""
    sep = build_tower({"type": "audio_cnn", **SMALL, "channels": [8, 16]}, "audio", 12)
    dw, pw = sep.blocks[1][0], sep.blocks[1][1]
    assert dw.groups == 8 and tuple(dw.weight.shape) == (8, 1, 3, 3) and tuple(pw.weight.shape) == (16, 8, 1, 1)
    x = sep.dummy_input(2)
    assert sep.stem(sep.bn0(x).unsqueeze(1)).shape[2:] == (16, 16)       # [32, 32] log-mel, stride 2
    plain = build_tower({"type": "audio_cnn", **SMALL, "channels": [8, 16], "block": "plain", "stem_stride": 1},
                        "audio", 12)
    assert [type(m).__name__ for m in plain.blocks[1]][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert plain.stem(plain.bn0(x).unsqueeze(1)).shape[2:] == (32, 32)
    assert sum(p.numel() for p in sep.parameters()) < sum(p.numel() for p in plain.parameters())
    assert plain.preprocess_config()["block"] == "plain" and sep.preprocess_config()["stem_stride"] == [2, 2]


@pytest.mark.parametrize("cfg,match", [
    ({"type": "audio", "widht": 8}, "unknown key 'widht'; valid keys: .*width"),
    ({"type": "audio_cnn", "n_mels": 0}, "n_mels"),
    ({"type": "audio", "heads": 5}, "divisible"),
    ({"type": "audio", "unlocked_groups": 1}, "lock: true"),
    ({"type": "audio", **TINY_VIT, "lock": True, "unlocked_groups": 9}, "between"),
    ({"type": "audio_cnn", "block": "dense"}, r"block: 'dense' is not 'plain' or 'separable'"),
    ({"type": "audio_cnn", **SMALL, "stem_stride": 4, "channels": [8, 8, 8, 8]}, "below one bin"),
    ({"type": "audio", "normalize": "loud"}, r"normalize: must be 'none', 'peak' or 'rms'"),
    ({"type": "audio", "target_db": 3}, r"target_db: must be a number of dBFS"),
    ({"type": "audio", "trim_db": -1}, r"trim_db: must be a number >= 0"),
    ({"type": "audio_cnn", "n_fft": 401, "win_length": 400}, r"n_fft: must be even \(got 401\)"),
])
def test_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_tower(cfg, "audio", 16)
    with pytest.raises(ConfigError, match="'audio' modality"):
        build_tower({"type": "audio"}, "text", 16)


def test_batched_front_end_equals_per_sample():
    """The pipeline's two-stage path (crop per sample, one STFT per batch) gives the per-sample features."""
    import numpy as np
    import torch
    from align.towers.audio_features import AudioFrontend, AudioPreprocess
    fe = AudioFrontend(clip_seconds=0.5, eval_clips=2)
    pp = AudioPreprocess(fe, train=False)
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n).astype(np.float32), sr) for n, sr in ((4000, 16000), (20000, 16000),
                                                                          (11025, 22050))]
    one_by_one = torch.stack([pp(w) for w in waves])                     # [3, 2, n_mels, T]
    batched = pp.per_batch(torch.stack([pp.per_sample(w) for w in waves]))
    assert batched.shape == one_by_one.shape
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


# ---- preprocessing shared by training and evaluation ---------------------------------------------

def _spectrum(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    return np.fft.rfftfreq(len(x), 1 / sr), spec


def test_8khz_tone_is_resampled_without_images():
    """1 kHz at 8 kHz -> 16 kHz: the tone stays at 1 kHz, no mirror image at 7 kHz, twice the samples."""
    t = np.arange(8000) / 8000
    w = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    fe = AudioFrontend(clip_seconds=1.0)
    clip = AudioPreprocess(fe, train=False).per_sample((w, 8000))[0].numpy()       # [16000]
    freqs, spec = _spectrum(clip[200:-200], 16000)
    assert abs(freqs[spec.argmax()] - 1000) < 2
    assert spec[freqs > 4000].sum() < 1e-6 * spec.sum()
    feats = AudioPreprocess(fe, train=False)((w, 8000))                            # [n_mels, T]
    centres = mel_to_hz_centres(fe)
    assert abs(centres[int(feats[:, 20:-20].mean(1).argmax())] - 1000) < 150       # log-mel peak near 1 kHz


def mel_to_hz_centres(fe):
    from align.towers.audio_features import hz_to_mel, mel_to_hz
    lo, hi = (float(hz_to_mel(torch.tensor(f, dtype=torch.float64), fe.mel_scale)) for f in (fe.f_min, fe.f_max))
    pts = torch.linspace(lo, hi, fe.n_mels + 2, dtype=torch.float64)[1:-1]
    return mel_to_hz(pts, fe.mel_scale).numpy()


def test_trim_silence_and_level_normalisation_train_and_eval():
    from align.towers.audio_features import normalize_level, trim_silence
    sr = 16000
    tone = 0.05 * np.sin(2 * np.pi * 440 * np.arange(1600) / sr)
    w = np.concatenate([np.zeros(3200), 1e-5 * np.ones(800), tone, np.zeros(4800)]).astype(np.float32)
    trimmed = trim_silence(w, sr, 40)
    assert 1600 <= len(trimmed) <= 1600 + 2 * 160 and np.allclose(trimmed[trimmed != 0].std(), tone.std(), rtol=0.2)
    assert len(trim_silence(np.zeros(500, np.float32), sr, 40)) == 500          # all silent: unchanged
    peak = normalize_level(w, "peak", -1.0)
    assert abs(np.abs(peak).max() - 10 ** (-1 / 20)) < 1e-6
    rms = normalize_level(w, "rms", -20.0)
    assert abs(np.sqrt(np.mean(rms.astype(np.float64) ** 2)) - 0.1) < 1e-6
    assert np.array_equal(normalize_level(np.zeros(10, np.float32), "peak", -1), np.zeros(10))
    fe = AudioFrontend(clip_seconds=0.1, trim_db=40.0, normalize="peak", target_db=-1.0)
    for train in (True, False):                                                 # the same at train and eval
        clip = AudioPreprocess(fe, train=train).per_sample((w, sr))[0].numpy()
        assert abs(np.abs(clip).max() - 10 ** (-1 / 20)) < 1e-5
        assert np.abs(clip[:160]).max() > 0.3                                 # the tone starts the clip


def test_utterance_cmvn_matches_a_plain_reference_and_ignores_the_padding():
    """cmvn: utterance -> each mel bin of each recording to mean 0, std 1 over its own (unpadded) frames;
    a per-bin offset (a microphone's colour, a speaker's vocal tract) drops out."""
    from align.towers.audio_features import utterance_cmvn
    g = torch.Generator().manual_seed(0)
    floor = math.log(1e-6)
    x = torch.randn(3, 8, 20, generator=g) * 3 - 2
    lengths = [20, 13, 5]
    for i, n in enumerate(lengths):
        x[i, :, n:] = floor                                               # zero padding after the recording
    out = utterance_cmvn(x, floor)
    for i, n in enumerate(lengths):
        v = x[i, :, :n].double().numpy()
        ref = (v - v.mean(axis=1, keepdims=True)) / np.sqrt(v.var(axis=1, keepdims=True) + 1e-5)
        assert np.allclose(out[i, :, :n].double().numpy(), ref, atol=1e-5)
        assert torch.all(out[i, :, n:] == 0)
    shifted = x.clone()
    shifted[:, :, :] += torch.linspace(-1, 1, 8)[None, :, None]           # a per-bin offset ...
    for i, n in enumerate(lengths):
        shifted[i, :, n:] = floor
    assert torch.allclose(utterance_cmvn(shifted, floor), out, atol=1e-4)  # ... is gone
    fe = AudioFrontend(clip_seconds=0.2, n_mels=16, cmvn="utterance").validate("t")
    feats = LogMel(fe)(torch.randn(2, fe.clip_samples, generator=g) * 0.1)
    assert feats.shape == (2, 16, fe.n_frames) and abs(float(feats.mean())) < 1e-4
    with pytest.raises(ConfigError, match="cmvn"):
        AudioFrontend(cmvn="global").validate("t")


def test_a_float_file_louder_than_full_scale_gives_the_features_it_was_trained_on(tmp_path):
    """A float WAV may hold samples past +-1 (a mix with overs). The shard writer stores 16-bit FLAC, clipped to
    [-1, 1]: training saw the clipped wave, while the same file passed to the tower's eval transform (align.load
    -> audio_transform, `align search`) was read unclipped (log-mel up to 4.6 apart, mean 1.0, at a peak of 3).
    Both clip now, after resampling as the writer does; the rest is the FLAC's 16-bit rounding. (hf_audio:
    tests/towers/test_hf_audio.py.)"""
    import io
    import tarfile

    import soundfile

    from align.data.write.shards import write_shards
    from align.media.audio import decode_audio

    g = np.random.default_rng(0)
    t = np.arange(44100) / 44100.0
    wave = (3.0 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * g.standard_normal(t.size)).astype(np.float32)
    (tmp_path / "in").mkdir()
    soundfile.write(tmp_path / "in" / "loud.wav", wave, 44100, subtype="FLOAT")
    (tmp_path / "in" / "loud.txt").write_text("a loud tone")
    write_shards(tmp_path / "in", tmp_path / "out", sample_rate=16000, progress=False)
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        flac = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".flac"))
    pre = AudioPreprocess(AudioFrontend(clip_seconds=1.0), train=False)
    trained = pre(decode_audio(flac))                                       # the writer, then training's decoder
    user = pre(soundfile.read(io.BytesIO((tmp_path / "in" / "loud.wav").read_bytes()), dtype="float32"))
    assert trained.shape == user.shape
    assert float((trained - user).abs().max()) < 0.05
