"""Augmentation stages: each one's effect, determinism per (seed, sample), config errors, and exact
resume of the streaming loader with augmentation on (bitwise, with and without workers)."""
import collections
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from align.config import parse_recipe
from align.data.stream.augment import STAGES, build_augmenter, sample_seed
from align.data.stream.build import build_train_loader
from align.errors import ConfigError
from align.towers.audio_features import AudioFrontend, AudioPreprocess
from align.data.stream.decode import SampleDecoder, captions
from tests.wds_helpers import TRANSFORMS, audio_text, image_text, image_tf, text_tf, write_shard


def stage(name, **params):
    aug = build_augmenter({STAGES.get(name).modality: [dict(type=name, **params)]})
    return (aug.image_stages + aug.wave_stages + aug.logmel_stages + aug.text_stages)[0]


def rng(seed=0):
    return np.random.default_rng(seed)


def square_image(size=32, box=(12, 12, 20, 20)):
    arr = np.zeros((size, size, 3), np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = 255
    return Image.fromarray(arr)


def gradient_image(size=32):
    x = np.linspace(0, 255, size, dtype=np.float32)
    arr = np.stack([x[None, :].repeat(size, 0), x[:, None].repeat(size, 1), 255 - x[None, :].repeat(size, 0)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def centroid(img):
    a = np.asarray(img, np.float64)[..., 0]
    ys, xs = np.indices(a.shape)
    return (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()


IMAGE_CASES = {
    "random_resized_crop": dict(scale=[0.2, 0.3]),
    "affine": dict(degrees=20, translate=[0.2, 0.2], shear=10),
    "color_jitter": dict(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1),
    "grayscale": dict(p=1.0),
    "blur": dict(sigma=[1.0, 2.0]),
    "random_erasing": dict(p=1.0),
    "stroke": dict(p=1.0),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_stage_changes_the_image_deterministically(name):
    st, img = stage(name, **IMAGE_CASES[name]), gradient_image()
    a, b, c = st(img, rng(1)), st(img, rng(1)), st(img, rng(2))
    assert a.size == img.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))                 # same seed, same output
    assert not np.array_equal(np.asarray(a), np.asarray(img))           # it did something
    if name != "grayscale":                                             # grayscale has no random part
        assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_probability_zero_is_identity_and_p_is_respected():
    img = gradient_image()
    assert stage("blur", p=0.0)(img, rng()) is img
    st = stage("grayscale", p=0.3)
    changed = sum(st(img, rng(i)) is not img for i in range(400))
    assert 80 < changed < 160                                           # ~120 of 400


def test_random_resized_crop_effect():
    img = gradient_image()
    assert np.array_equal(np.asarray(stage("random_resized_crop", scale=[1, 1], ratio=[1, 1])(img, rng())),
                          np.asarray(img))                              # the whole image: unchanged
    # A 25 % crop of a horizontal ramp, stretched back: the red channel spans about half the range.
    out = np.asarray(stage("random_resized_crop", scale=[0.25, 0.25], ratio=[1, 1])(img, rng(3)), np.float64)
    span = out[..., 0].max() - out[..., 0].min()
    assert 90 < span < 160


def test_affine_translation_moves_the_content_horizontally_only():
    img = square_image()
    st = stage("affine", degrees=0, translate=[0.3, 0.0], shear=0)
    cx0, cy0 = centroid(img)
    moved = [centroid(st(img, rng(i))) for i in range(10)]
    assert all(abs(cy - cy0) < 1e-6 for _, cy in moved)
    dx = [cx - cx0 for cx, _ in moved]
    assert max(abs(d) for d in dx) <= 0.3 * 32 + 0.5 and max(abs(d) for d in dx) > 2


def test_color_jitter_brightness_scales_within_range():
    img = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    st = stage("color_jitter", brightness=0.5, contrast=0, saturation=0, hue=0)
    ratios = [np.asarray(st(img, rng(i)), np.float64).mean() / 100 for i in range(30)]
    assert min(ratios) >= 0.49 and max(ratios) <= 1.51 and np.std(ratios) > 0.1


def test_grayscale_gives_equal_channels():
    out = np.asarray(stage("grayscale", p=1.0)(gradient_image(), rng()))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_blur_smooths_edges():
    img = square_image()
    out = stage("blur", sigma=[1.5, 1.5])(img, rng())
    steepest = lambda im: np.abs(np.diff(np.asarray(im, np.float64)[..., 0], axis=1)).max()
    assert steepest(img) == 255 and steepest(out) < 0.5 * 255
    assert abs(np.asarray(out, np.float64).sum() - np.asarray(img, np.float64).sum()) < 0.05 * np.asarray(img).sum()


def test_stroke_thins_or_thickens():
    img = square_image()                                                  # an 8x8 white square
    areas = {int((np.asarray(stage("stroke", p=1.0)(img, rng(i)))[..., 0] > 0).sum()) for i in range(20)}
    assert areas == {6 * 6, 10 * 10}


def test_random_erasing_fills_a_rectangle_of_the_requested_area():
    img = Image.fromarray(np.full((40, 40, 3), 255, np.uint8))
    for i in range(10):
        out = np.asarray(stage("random_erasing", p=1.0, scale=[0.1, 0.2], value=0)(img, rng(i)))
        erased = np.argwhere(out[..., 0] == 0)
        frac = len(erased) / 1600
        assert 0.07 < frac < 0.23
        (y0, x0), (y1, x1) = erased.min(0), erased.max(0)
        assert (y1 - y0 + 1) * (x1 - x0 + 1) == len(erased)             # one filled rectangle


SR = 16000


def tone(freq, seconds=0.5, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return torch.from_numpy((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32))[None]   # [1, L]


def peak_hz(x, sr=SR):
    spec = np.abs(np.fft.rfft(x.numpy()[0] * np.hanning(x.shape[-1])))
    return np.argmax(spec) * sr / x.shape[-1]


def test_gain_in_decibels():
    x = tone(440)
    st = stage("gain", db=[-6, 6])
    dbs = [20 * np.log10(float(st(x, rng(i), sr=SR).abs().max() / x.abs().max())) for i in range(40)]
    assert -6.001 <= min(dbs) < -3 and 3 < max(dbs) <= 6.001
    assert torch.equal(st(x, rng(5), sr=SR), st(x, rng(5), sr=SR))


@pytest.mark.parametrize("cut", [False, True])
def test_time_shift_moves_an_impulse_within_the_bound(cut):
    x = torch.zeros(1, 1600)
    x[0, 800] = 1.0
    st = stage("time_shift", max_seconds=0.02, cut=cut)                 # 320 samples at 16 kHz
    pos = [int(st(x, rng(i), sr=SR)[0].argmax()) for i in range(30)]
    assert all(480 <= p <= 1120 for p in pos) and len(set(pos)) > 10 and min(pos) < 800 < max(pos)
    y = st(x, rng(0), sr=SR)
    assert y.shape == x.shape and float(y.sum()) == 1.0


def test_time_shift_without_cut_never_drops_sound_of_a_trimmed_word():
    # A trimmed word sits at the start of its zero-padded clip [C, L]: it may only move into the padding.
    word = torch.zeros(2, 1600)
    word[:, :400] = torch.linspace(0.1, 1.0, 400)                       # sound from sample 0 to 399, both channels
    st, old = stage("time_shift", max_seconds=0.05), stage("time_shift", max_seconds=0.05, cut=True)
    starts = []
    for i in range(60):
        y = st(word, rng(i), sr=SR)
        start = int(torch.nonzero(y[0])[0])
        assert torch.equal(y[:, start:start + 400], word[:, :400]) and not y[:, start + 400:].any()
        starts.append(start)
    assert len(set(starts)) > 20 and max(starts) <= 800                   # delays of up to 0.05 s, varied
    assert any(old(word, rng(i), sr=SR)[0, 399] == 0 for i in range(60))  # cut: true cuts the onset at times
    full = torch.ones(1, 1600)                                          # no padding: nothing to shift into
    assert torch.equal(st(full, rng(3), sr=SR), full) and torch.equal(st(torch.zeros(1, 16), rng(0), sr=SR),
                                                                      torch.zeros(1, 16))
    with pytest.raises(ConfigError, match=r"cut: expected true or false"):
        stage("time_shift", cut="no")


def test_speed_changes_pitch_by_the_factor():
    x = tone(1000)
    y = stage("speed", factor=[1.1, 1.1])(x, rng(), sr=SR)
    assert y.shape == x.shape
    assert abs(peak_hz(y[..., :int(0.4 * SR)]) - 1100) < 15
    z = stage("speed", factor=[0.8, 0.8])(x, rng(), sr=SR)
    assert abs(peak_hz(z) - 800) < 15


@pytest.mark.parametrize("factor", [0.5, 0.85, 0.87, 0.9, 0.97, 1.03, 1.1, 1.13, 1.15, 1.5, 2.0])
def test_speed_resamples_only_the_content_and_gives_the_whole_clips_values(factor):
    """A word followed by zero padding (what the front end's crop/pad gives): the stage resamples the content and
    the filter's reach, and every output equals the whole clip's resampling (a zero may differ only in sign)."""
    from align.media.audio import resample
    g = np.random.default_rng(int(factor * 100))
    for n, length, ch in ((1500, 4000, 1), (3999, 4000, 1), (1, 4000, 2), (700, 4000, 2)):
        x = torch.zeros(ch, length)
        x[:, :n] = torch.from_numpy(g.standard_normal((ch, n)).astype(np.float32)) * 0.3
        x[:, n - 1] = 0.5                                            # the content ends exactly at n
        whole = torch.from_numpy(resample(x.numpy(), int(round(SR * factor)), SR))
        want = torch.zeros_like(x)
        want[..., :min(length, whole.shape[-1])] = whole[..., :length]
        got = stage("speed", factor=[factor, factor])(x, rng(), sr=SR)
        assert torch.equal(got, want), (factor, n, ch)
    silent = torch.zeros(1, 4000)
    assert torch.equal(stage("speed", factor=[factor, factor])(silent, rng(), sr=SR), silent)


def test_white_noise_at_the_requested_snr():
    x = tone(440)
    st = stage("noise", snr_db=[10, 10])
    y = st(x, rng(1), sr=SR)
    snr = 10 * np.log10(float(x.pow(2).mean() / (y - x).pow(2).mean()))
    assert abs(snr - 10) < 0.01
    assert torch.equal(y, st(x, rng(1), sr=SR)) and not torch.equal(y, st(x, rng(2), sr=SR))


def test_noise_from_a_folder_is_resampled_looped_and_scaled(tmp_path):
    (tmp_path / "noise").mkdir()
    t = np.arange(800) / 8000                                            # 0.1 s at 8 kHz, shorter than the clip
    sf.write(tmp_path / "noise" / "hum.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000)
    x = tone(2000)
    st = stage("noise", snr_db=[0, 0], folder=str(tmp_path / "noise"))
    y = st(x, rng(0), sr=SR)
    added = y - x
    assert abs(peak_hz(added) - 300) < 10
    assert abs(10 * np.log10(float(x.pow(2).mean() / added.pow(2).mean()))) < 0.01



def test_a_worker_keeps_the_noise_clips_it_drew_last_within_a_byte_budget(tmp_path, monkeypatch):
    """Every noise clip a worker ever drew stayed decoded in it: a folder of noise read at random ended up whole in
    each data worker (MUSAN's music, ~10 GB at 16 kHz, per worker). The clips drawn last are kept within
    NOISE_CACHE_BYTES; the noise added is the same."""
    from align.data.stream import augment_audio
    (tmp_path / "noise").mkdir()
    t = np.arange(800) / 8000                                            # 0.1 s at 8 kHz: 1,600 floats at SR
    for i in range(6):
        sf.write(tmp_path / "noise" / f"n{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32),
                 8000)
    x = tone(2000)
    free = stage("noise", snr_db=[0, 0], folder=str(tmp_path / "noise"))
    want = [free(x, rng(i), sr=SR) for i in range(40)]                  # the budget (256 MB) holds all six
    assert len(free._cache) == 6
    monkeypatch.setattr(augment_audio, "NOISE_CACHE_BYTES", 2 * 1600 * 4, raising=False)
    kept = stage("noise", snr_db=[0, 0], folder=str(tmp_path / "noise"))
    for i, y in enumerate(want):
        assert torch.equal(kept(x, rng(i), sr=SR), y)
        assert len(kept._cache) <= 2 and sum(c.nbytes for c in kept._cache.values()) <= 2 * 1600 * 4

def test_spec_augment_masks_bands_and_frames():
    x = torch.randn(32, 50)
    st = stage("spec_augment", freq_masks=2, freq_width=5, time_masks=3, time_width=4)
    outs = [st(x, rng(i)) for i in range(20)]
    for y in outs:
        rows = int((y == 0).all(dim=1).sum())
        cols = int((y == 0).all(dim=0).sum())
        assert rows <= 10 and cols <= 12
        assert torch.equal(y[y != 0], x[y != 0])                          # the rest is untouched
    assert sum(int((y == 0).any()) for y in outs) >= 18
    assert torch.equal(outs[0], st(x, rng(0)))


def test_vtlp_warps_the_mel_axis_by_alpha_and_keeps_the_top_bin():
    n, t = 40, 6
    x = torch.zeros(n, t)
    x[10] = 1.0                                                         # one formant at bin 10
    ident = stage("vtlp", alpha=[1.0, 1.0])(x, rng())
    assert torch.allclose(ident, x)
    # out[i] = x[alpha * i]: with alpha 2 the formant moves down to bin 5; with alpha 0.5 up to bin 20
    down, up = stage("vtlp", alpha=[2.0, 2.0], boundary=0.9)(x, rng()), stage("vtlp", alpha=[0.5, 0.5])(x, rng())
    assert int(down[:, 0].argmax()) == 5 and int(up[:, 0].argmax()) == 20
    ramp = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, t)
    for a in (0.9, 1.1, 1.3):
        y = stage("vtlp", alpha=[a, a])(ramp, rng())
        assert float(y[-1, 0]) == n - 1 and float(y[0, 0]) == 0             # both ends stay put
        assert bool((y[1:, 0] >= y[:-1, 0]).all())                          # monotone: no folding
    st = stage("vtlp")
    assert torch.equal(st(ramp, rng(3)), st(ramp, rng(3))) and not torch.equal(st(ramp, rng(3)), st(ramp, rng(4)))
    with pytest.raises(ConfigError, match="alpha"):
        stage("vtlp", alpha=[1.2, 1.1])


def test_sample_seed_depends_on_every_part():
    base = sample_seed(0, 0, "a.tar", "k")
    assert base == sample_seed(0, 0, "a.tar", "k")
    assert len({base, sample_seed(1, 0, "a.tar", "k"), sample_seed(0, 1, "a.tar", "k"),
                sample_seed(0, 0, "b.tar", "k"), sample_seed(0, 0, "a.tar", "j")}) == 5


@pytest.mark.parametrize("cfg, match", [
    ({"image": [{"type": "nope"}]}, r"data.augment.image\[0\].type: unknown augmentation 'nope'"),
    ({"image": [{"type": "blur", "radius": 2}]}, r"data.augment.image\[0\]: unknown key\(s\) \['radius'\]"),
    ({"image": [{"type": "blur", "sigma": [2, 1]}]}, r"data.augment.image\[0\].sigma: low 2.0 is above high 1.0"),
    ({"image": [{"type": "gain"}]}, r"gain is a audio augmentation, not image"),
    ({"video": []}, r"data.augment.video: augmentations exist for image, audio and text"),
    ({"text": [{"type": "gain"}]}, r"gain is a audio augmentation, not text"),
    ({"text": [{"type": "word_dropout", "rate": 1.0}]}, r"text\[0\].rate: expected a number in \[0, 0.95\]"),
    ({"audio": [{"type": "noise", "folder": "/does/not/exist"}]}, r"folder: '/does/not/exist' is not a folder"),
    ({"audio": [{"type": "spec_augment", "freq_masks": -1}]}, r"freq_masks: expected an integer >= 0"),
    ({"image": [{"type": "grayscale", "p": 2}]}, r"\.p: expected a number in \[0, 1\]"),
])
def test_config_errors_are_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_augmenter(cfg)
    assert "\n" not in str(e.value)


def test_recipe_key_is_validated_and_off_by_default(tiny_recipe):
    assert parse_recipe(dict(tiny_recipe)).data.augment is None
    ok = dict(tiny_recipe, data=dict(tiny_recipe["data"], augment={"image": [{"type": "blur"}]}))
    assert parse_recipe(ok).data.augment == {"image": [{"type": "blur"}]}
    bad = dict(tiny_recipe, data=dict(tiny_recipe["data"], augment={"image": [{"type": "blurr"}]}))
    with pytest.raises(ConfigError, match=r"data.augment.image\[0\].type: unknown augmentation 'blurr'"):
        parse_recipe(bad)


def test_open_clip_aug_cfg_is_honoured():
    from align.towers import build_tower
    from tests.conftest import TINY_OPEN_CLIP
    tower = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "aug_cfg": {"scale": [0.3, 0.4]}},
                        "image", 16)
    crops = [t for t in tower.preprocess(train=True).transforms if type(t).__name__ == "RandomResizedCrop"]
    assert crops and tuple(crops[0].scale) == (0.3, 0.4)


# ---- captions --------------------------------------------------------------------------------

def test_several_captions_as_lines_or_json_list_one_drawn_per_visit():
    assert captions(b'["a cat", " a dog ", ""]') == ["a cat", "a dog"]
    assert captions(b"[not json\nsecond") == ["[not json", "second"]
    dec = SampleDecoder(["image", "text"], TRANSFORMS, train=True)
    raw = dict(image_text("k", caption='["zero", "one", "two", "thre"]'), __url__="u.tar")
    raw = {k: v.encode() if isinstance(v, str) and not k.startswith("__") else v for k, v in raw.items()}
    drawn = {tuple(dec(raw, epoch)["text"].tolist()) for epoch in range(20)}
    assert len(drawn) >= 3                                               # different captions across visits
    assert dec(raw, 3)["text"].tolist() == dec(raw, 3)["text"].tolist()
    ev = SampleDecoder(["image", "text"], TRANSFORMS, train=False)
    assert ev(raw, 5)["text"].tolist() == text_tf(["zero"])[0].tolist()   # eval: always the first


def test_word_dropout_keeps_an_ordered_nonempty_subset_at_the_rate():
    st = stage("word_dropout", rate=0.3)
    words = "a voice says the number seven".split()
    kept = []
    for seed in range(3000):
        out = st(" ".join(words), rng(seed)).split()
        it = iter(words)
        assert out and all(w in it for w in out)          # a subsequence, in order, never empty
        kept.append(len(out))
    # each of 6 words kept with p 0.7 (the keep-one rule adds 0.3**6 / 6 per word): mean 4.2 +- 0.05
    assert abs(np.mean(kept) - 6 * 0.7) < 0.05
    assert st("seven", rng(0)) == "seven"                 # one word: nothing to drop
    assert all(st("two words", rng(s)) for s in range(200)) and stage("word_dropout", rate=0.95)("a b", rng(1))
    assert st("a voice says seven", rng(5)) == st("a voice says seven", rng(5))
    assert stage("word_dropout", rate=0.0)(" ".join(words), rng(0)) == " ".join(words)


def test_word_shuffle_permutes_every_word_with_probability_p():
    words = "a voice says the number seven".split()
    st = stage("word_shuffle")
    outs = [st(" ".join(words), rng(seed)).split() for seed in range(2000)]
    assert all(sorted(o) == sorted(words) for o in outs)                 # every word kept, none added
    firsts = collections.Counter(o[0] for o in outs)
    assert set(firsts) == set(words) and min(firsts.values()) > 2000 / 6 * 0.8    # each word leads ~1/6 of the time
    assert sum(o == words for o in outs) < 2000 / 720 * 4                # the written order only by chance (1/720)
    half = stage("word_shuffle", p=0.5)
    same = sum(half(" ".join(words), rng(s)) == " ".join(words) for s in range(2000))
    assert abs(same / 2000 - (0.5 + 0.5 / 720)) < 0.05                   # p: the share of visits shuffled
    assert st("seven", rng(0)) == "seven"
    assert st("a voice says seven", rng(5)) == st("a voice says seven", rng(5))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rate'\] for type word_shuffle"):
        stage("word_shuffle", rate=0.1)


def _chars(captions):            # [caption] -> LongTensor[1, 64] of char codes (wds_helpers' text_tf keeps 4)
    out = torch.zeros(1, 64, dtype=torch.long)
    out[0, :len(captions[0])] = torch.tensor([ord(c) for c in captions[0][:64]])
    return out


def test_word_dropout_runs_on_the_drawn_caption_in_training_only():
    caption = "a voice says the number seven"
    aug = build_augmenter({"text": [{"type": "word_dropout", "rate": 0.5}]})
    raw = dict(image_text("k", caption=caption), __url__="u.tar")
    raw = {k: v.encode() if isinstance(v, str) and not k.startswith("__") else v for k, v in raw.items()}
    tfs = dict(TRANSFORMS, text=_chars)
    read = lambda dec, epoch: "".join(chr(c) for c in dec(raw, epoch)["text"].tolist() if c)   # noqa: E731
    dec = SampleDecoder(["image", "text"], tfs, train=True, augment=aug)
    seen = [read(dec, epoch) for epoch in range(10)]
    assert len(set(seen)) >= 3 and any(len(t.split()) < 6 for t in seen)   # words dropped, anew per visit
    assert read(dec, 3) == seen[3]                                           # seeded by (seed, epoch, shard name, key)
    ev = SampleDecoder(["image", "text"], tfs, train=False, augment=aug)
    assert all(read(ev, e) == caption for e in range(5))                     # eval: the caption as written


# ---- the loader: augmentation on, exact resume -------------------------------------------------

AUG = {"image": [{"type": "random_resized_crop", "scale": [0.3, 1]}, {"type": "affine"},
                 {"type": "color_jitter"}, {"type": "grayscale"}, {"type": "blur"}, {"type": "random_erasing"}],
       "audio": [{"type": "gain"}, {"type": "time_shift", "max_seconds": 0.01}, {"type": "speed"},
                 {"type": "noise"}, {"type": "spec_augment", "freq_masks": 1, "freq_width": 4,
                                                     "time_masks": 1, "time_width": 2}]}


def _mixed_shards(root):
    root.mkdir()
    paths = []
    for i in range(3):
        samples = [image_text(f"i{i}_{j}", seed=10 * i + j) for j in range(5)]
        samples += [audio_text(f"a{i}_{j}", seed=10 * i + j) for j in range(5)]
        paths.append(write_shard(root / f"s{i}.tar", samples))
    return paths


def _loader_kw(num_workers, augment=AUG, **frontend):
    fe = AudioFrontend(clip_seconds=0.05, n_mels=16, **frontend)
    tf = dict(TRANSFORMS, image=image_tf, audio=AudioPreprocess(fe, train=True))
    return dict(transforms=tf, batch_size=4, modalities=["image", "text", "audio"], num_workers=num_workers,
                shuffle_buffer=6, augment=augment, min_modalities=2)


def _tensors(batch):
    return {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_with_augmentation_is_bitwise(tmp_path, num_workers):
    paths = _mixed_shards(tmp_path / "d")
    kw = _loader_kw(num_workers)
    ref = [_tensors(b) for b in build_train_loader(paths, **kw)]
    plain = [_tensors(b) for b in build_train_loader(paths, **dict(kw, augment=None))]
    assert len(ref) >= 5
    assert not torch.equal(ref[0]["image"], plain[0]["image"])          # augmentation is on
    for k in (1, 3):
        first = build_train_loader(paths, **kw)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        del it
        resumed = build_train_loader(paths, resume_state=state, **kw)
        tail = [_tensors(b) for b in resumed]
        assert len(tail) == len(ref) - k
        for want, got in zip(ref[k:], tail):
            assert want.keys() == got.keys()
            for name in want:
                assert torch.equal(want[name], got[name]), (k, name)


def test_augmentation_draws_again_each_epoch(tmp_path):
    paths = _mixed_shards(tmp_path / "d")
    kw = dict(_loader_kw(0), shuffle_buffer=0)
    loader = build_train_loader(paths, **kw)
    e0 = [_tensors(b) for b in loader]
    e1 = [_tensors(b) for b in loader]
    assert all(torch.equal(a["cls"], b["cls"]) for a, b in zip(e0, e1))
    assert not torch.equal(e0[0]["image"], e1[0]["image"])


def test_wave_augmentation_needs_the_two_stage_front_end():
    from align.errors import DataError
    with pytest.raises(DataError, match="two-stage front end"):
        SampleDecoder(["audio", "text"], TRANSFORMS, train=True, augment=build_augmenter({"audio": [{"type": "gain"}]}))


def test_towers_random_transforms_resume_exactly_in_workers(tmp_path):
    """A tower transform drawing from torch's global RNG (e.g. open_clip's random crop) is seeded per sample
    in the workers, so a resumed worker, which skips samples undecoded, draws what the first run drew."""
    paths = _mixed_shards(tmp_path / "d")
    tf = dict(TRANSFORMS, image=lambda img: torch.rand(3, 2, 2))
    kw = dict(transforms=tf, batch_size=3, modalities=["image", "text"], num_workers=2, shuffle_buffer=6)
    ref = [b["image"].clone() for b in build_train_loader(paths, **kw)]
    first = build_train_loader(paths, **kw)
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    del it
    tail = [b["image"].clone() for b in build_train_loader(paths, resume_state=state, **kw)]
    assert len(tail) == len(ref) - 2 and all(torch.equal(a, b) for a, b in zip(ref[2:], tail))
