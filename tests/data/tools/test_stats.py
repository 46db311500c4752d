"""`align data stats` (align.data.tools.stats): the mean/std of the audio tower's un-normalised eval log-mel
over shards equal a direct computation on the same waves; max_samples stops early; the CLI prints the keys.
Image sizes and `image_size: auto`; clip durations after trimming and `clip_seconds: auto`."""
import io
import json

import numpy as np
import pytest
import torch

from align.data.tools.stats import feature_stats
from align.errors import AlignError
from align.towers.audio_features import AudioFrontend, AudioPreprocess, unnormalised_eval_frontend
from tests.wds_helpers import write_shard

SMALL = dict(clip_seconds=0.31, n_mels=32)


def test_logmel_stats_of_shards_match_a_direct_computation(tmp_path, capsys):
    import soundfile as sf
    from align.cli import main
    rng = np.random.default_rng(0)
    waves, samples = [], []
    for i in range(6):
        w = (rng.standard_normal(4000 + 500 * i) * 0.1 * (i + 1)).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, w, 16000, format="WAV", subtype="FLOAT")
        waves.append(w)
        samples.append({"__key__": f"k{i}", "wav": buf.getvalue(), "txt": "x"})
    pattern = write_shard(tmp_path / "a.tar", samples)
    fe = AudioFrontend(**SMALL)
    raw = AudioFrontend(**dict(SMALL, norm_mean=0.0, norm_std=1.0))
    direct = torch.stack([AudioPreprocess(raw, train=False)((w, 16000)) for w in waves]).double()
    stats = feature_stats(pattern, unnormalised_eval_frontend(fe), progress=False)
    assert stats["samples"] == 6 and stats["skipped"] == 0
    assert abs(stats["norm_mean"] - float(direct.mean())) < 1e-3
    assert abs(stats["norm_std"] - float(direct.std(unbiased=False))) < 1e-3
    assert feature_stats(pattern, unnormalised_eval_frontend(fe), max_samples=2, progress=False)["samples"] == 2
    assert main(["data", "stats", pattern, "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0])["samples"] == 6 and "model.towers.audio.norm_mean=" in out[1]
    # an override without --recipe changed nothing (the defaults' stats, exit 0): one line naming it now
    assert main(["data", "stats", pattern, "--no-progress", "model.towers.audio.n_mels=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.towers.audio.n_mels=8 overrides a key of --recipe; give --recipe" in err[0], err


def _image_shard(tmp_path, sizes):
    from PIL import Image
    samples = []
    for i, (w, h) in enumerate(sizes):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (i * 20, 0, 0)).save(buf, "PNG")
        samples.append({"__key__": f"k{i}", "png": buf.getvalue(), "txt": f"an image {i}",
                        "json": json.dumps({"extra": {"writer": f"w{i % 3}"}})})
    samples.append({"__key__": "bad", "png": b"\x89PNG broken", "txt": "x"})
    return write_shard(tmp_path / "img.tar", samples)


def test_image_sizes_come_from_the_headers_and_image_size_is_the_median_longest_side(tmp_path, capsys):
    from align.cli import main
    from align.data.tools.stats import image_size_stats
    pattern = _image_shard(tmp_path, [(28, 28), (29, 20), (26, 40), (28, 27), (100, 10)])
    st = image_size_stats(pattern)
    assert st["images"] == 5 and st["unreadable"] == 1
    assert st["width"] == {"min": 26, "median": 28, "max": 100} and st["height"]["median"] == 27
    assert st["image_size"] == 28                          # longest sides 28, 29, 40, 28, 100: median 29 -> 28
    assert image_size_stats(pattern, multiple=16)["image_size"] == 32
    assert image_size_stats(pattern, max_samples=2)["images"] == 2
    assert main(["data", "stats", pattern]) == 0
    out = capsys.readouterr().out
    assert "image_size: auto trains at 28 px" in out and "norm_mean" not in out        # no audio: no log-mel


def test_image_size_auto_trains_at_the_datas_size_and_the_run_records_it(tmp_path, capsys):
    import yaml

    import align
    from align.errors import ConfigError
    from tests.switch_helpers import recipe, train_dict
    pattern = _image_shard(tmp_path, [(12, 12)] * 8 + [(40, 40)])
    r = recipe(tmp_path, "run", data={"train": pattern, "num_workers": 0, "shuffle_buffer": 0},
               train={"batch_size": 4, "max_steps": 2})
    r["model"]["open_clip"]["vision_cfg"]["image_size"] = "auto"
    patch = r["model"]["open_clip"]["vision_cfg"]["patch_size"]
    train_dict(r)
    want = max(patch, round(12 / patch) * patch)
    assert f"image_size: auto -> {want} px" in capsys.readouterr().out
    cfg = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert cfg["model"]["towers"]["image"]["config"]["vision_cfg"]["image_size"] == want
    assert align.load(str(tmp_path / "run")).image_transform is not None
    r2 = recipe(tmp_path, "syn")
    r2["model"]["open_clip"]["vision_cfg"]["image_size"] = "auto"
    with pytest.raises(ConfigError, match="image_size: auto reads the training images"):
        train_dict(r2)


def test_the_auto_sizes_read_every_shard_and_every_source_not_the_first_samples(tmp_path, capsys):
    """Shards written in order of size (small images first): up to max_samples images are read from every shard
    alike (and at most SPREAD_SHARDS shards, evenly spaced), so the second shard's large images count; with two
    sources in data.train, the second source's images count too."""
    from align.data.stream.sources import SourceSpec
    from align.data.tools import stats
    from tests.switch_helpers import recipe, train_dict
    for d in ("s0", "s1", "l0", "l1"):
        (tmp_path / d).mkdir()
    small = [_image_shard(tmp_path / f"s{i}", [(8, 8)] * 4) for i in range(2)]
    large = [_image_shard(tmp_path / f"l{i}", [(40, 40)] * 4) for i in range(2)]
    st = stats.image_size_stats(small + large, max_samples=8)
    assert st["images"] == 8 and st["width"]["min"] == 8 and st["width"]["max"] == 40    # 2 from each shard
    assert st["image_size"] == 24                                     # median longest side (8 + 40) / 2
    st = stats.image_size_stats(small + large, max_samples=4)
    assert st["images"] == 4 and st["width"]["max"] == 40
    old = stats.SPREAD_SHARDS
    try:                                          # more shards than SPREAD_SHARDS: evenly spaced, first included
        stats.SPREAD_SHARDS = 2
        st = stats.image_size_stats(small + large, max_samples=100)
        assert st["images"] == 8 and st["width"]["min"] == 8 and st["width"]["max"] == 40
    finally:
        stats.SPREAD_SHARDS = old
    two = [SourceSpec(urls=small[0]), SourceSpec(urls=large[0])]
    assert stats.image_size_stats(two)["width"]["max"] == 40
    r = recipe(tmp_path, "run", data={"train": [{"urls": small[0], "weight": 1.0}, {"urls": large[0], "weight": 1.0}],
                                      "num_workers": 0, "shuffle_buffer": 0}, train={"batch_size": 4, "max_steps": 1})
    r["model"]["open_clip"]["vision_cfg"]["image_size"] = "auto"
    train_dict(r)
    assert "median longest side of 8 training images: 24x24" in capsys.readouterr().out


def _tone_shard(tmp_path, seconds, rate=16000, pad=0.2):
    """Tones of the given lengths with `pad` s of silence either side, one undecodable clip, one image-only
    sample (no audio: not counted)."""
    import soundfile as sf
    samples = []
    for i, s in enumerate(seconds):
        t = np.arange(int(round(s * rate))) / rate
        w = np.concatenate([np.zeros(int(pad * rate)), 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros(int(pad * rate))])
        buf = io.BytesIO()
        sf.write(buf, w.astype(np.float32), rate, format="WAV", subtype="FLOAT")
        samples.append({"__key__": f"k{i}", "wav": buf.getvalue(), "txt": f"a tone {i}"})
    samples.append({"__key__": "broken", "wav": b"RIFF not a wave", "txt": "x"})
    return write_shard(tmp_path / "tones.tar", samples)


def test_audio_durations_after_trimming_and_clip_seconds_is_the_rounded_up_percentile(tmp_path):
    from align.data.tools.stats import audio_duration_stats
    from align.train.feed import clip_seconds_measure
    secs = [0.3, 0.45, 0.62, 0.81, 1.23]
    pattern = _tone_shard(tmp_path, secs, rate=22050)
    st = audio_duration_stats(pattern, clip_seconds_measure({"trim_db": 40}))
    assert st["clips"] == 5 and st["unreadable"] == 1
    # trimming works in 10 ms frames: each tone's length to within one frame
    assert abs(st["seconds"]["min"] - 0.3) <= 0.011 and abs(st["seconds"]["max"] - 1.23) <= 0.011
    assert abs(st["seconds"]["median"] - 0.62) <= 0.011
    assert st["clip_seconds"] == 1.3                                  # 99th percentile of 5 clips: the longest
    ref = np.percentile(np.array(secs), 50, method="inverted_cdf")   # nearest rank, numpy's reference
    assert audio_duration_stats(pattern, clip_seconds_measure({"trim_db": 40}), quantile=0.5)["clip_seconds"] == \
        pytest.approx(np.ceil(ref * 10 - 1e-6) / 10)
    untrimmed = audio_duration_stats(pattern, clip_seconds_measure({"trim_db": 0}))   # the silence counts
    assert abs(untrimmed["seconds"]["max"] - 1.63) <= 0.001 and untrimmed["clip_seconds"] == 1.7
    assert audio_duration_stats(pattern, clip_seconds_measure({}), max_samples=2)["clips"] == 2
    assert audio_duration_stats(_image_shard(tmp_path, [(8, 8)]), clip_seconds_measure({})) == \
        {"clips": 0, "unreadable": 0}
    with pytest.raises(AlignError, match="model.towers.audio.trim_db: must be a number"):
        clip_seconds_measure({"trim_db": "loud"})



def test_the_duration_bar_ends_at_100_percent_when_the_shards_hold_fewer_clips_than_the_cap(tmp_path, monkeypatch,
                                                                                            capsys):
    """`align data stats` on 1343 clips ended its bar at "1343/2000 clip (67%)" (2000: the cap), as if cut short."""
    from align.data.tools.stats import audio_duration_stats
    from align.train.feed import clip_seconds_measure
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")
    pattern = _tone_shard(tmp_path, [0.3, 0.45], rate=16000)
    assert audio_duration_stats(pattern, clip_seconds_measure({}), progress=True)["clips"] == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("audio durations: 2/2 clip (100%)")

def test_clip_seconds_auto_trains_at_the_clips_length_and_the_run_records_it(tmp_path, capsys):
    import yaml

    import align
    from align.cli import main
    from align.errors import ConfigError
    from align.towers.audio_features import AudioFrontend
    from tests.conftest import TINY_OPEN_CLIP
    from tests.switch_helpers import recipe, train_dict
    pattern = _tone_shard(tmp_path, [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.7])
    audio = {"type": "audio_cnn", "clip_seconds": "auto", "n_mels": 16, "channels": [4, 8], "trim_db": 40}
    model = {"embed_dim": 16, "towers": {
        "text": {"type": "open_clip", "config": {"embed_dim": 16, "text_cfg": TINY_OPEN_CLIP["text_cfg"]}},
        "audio": audio}}
    r = recipe(tmp_path, "run", model=model, loss={"type": "clip", "pairs": [["audio", "text"]]},
               data={"train": pattern, "num_workers": 0, "shuffle_buffer": 0}, train={"batch_size": 4, "max_steps": 2})
    r["model"] = model                                               # no image tower from the base recipe
    train_dict(r)
    assert "clip_seconds: auto -> 0.7 s (99th percentile of 8 training clips" in capsys.readouterr().out
    cfg = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert cfg["model"]["towers"]["audio"]["clip_seconds"] == 0.7
    assert align.load(str(tmp_path / "run")).towers["audio"].fe.clip_seconds == 0.7
    # the CLI says what auto trains at, with the recipe's trimming; the log-mel stats use the resolved clip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert main(["data", "stats", pattern, "--recipe", str(tmp_path / "r.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "clip_seconds: auto trains at 0.7 s" in out and "1 unreadable" in out
    assert "model.towers.audio.norm_mean=" in out
    syn = recipe(tmp_path, "syn", model=model, loss={"type": "clip", "pairs": [["audio", "text"]]})
    syn["model"] = model
    with pytest.raises(ConfigError, match="clip_seconds: auto reads the training clips"):
        train_dict(syn)
    with pytest.raises(ConfigError, match="clip_seconds: auto is set from data.train"):
        AudioFrontend(clip_seconds="auto").validate("model.towers.audio")
    with pytest.raises(ConfigError, match="clip_seconds: must be a number of seconds"):
        AudioFrontend(clip_seconds="long").validate("model.towers.audio")


def test_clip_seconds_auto_measures_only_the_clips_the_recipes_limits_let_through(tmp_path, capsys):
    """data.limits.max_audio_seconds 1.0: training skips the 1.1 s recording (0.7 s of tone + 0.4 s of padding),
    yet auto measured it (0.7 s: every trained clip padded to 1.4x its longest); raised limits, the other way:
    recordings past the default 600 s were 'unreadable' to auto while training read them."""
    import yaml

    from align.cli import main
    from align.config import parse_recipe
    from align.train.feed import resolve_auto_clip_seconds
    from tests.switch_helpers import recipe
    pattern = _tone_shard(tmp_path, [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.7])
    model = {"embed_dim": 16, "towers": {"audio": {"type": "audio_cnn", "clip_seconds": "auto", "trim_db": 40},
                                         "text": {"type": "bow_text", "width": 8}}}
    said = []
    for limits, want in (({}, 0.7), ({"max_audio_seconds": 1.0}, 0.5)):
        r = recipe(tmp_path, "run", model=model, loss={"type": "clip", "pairs": [["audio", "text"]]},
                   data={"train": pattern, "limits": limits})
        r["model"] = model
        got = resolve_auto_clip_seconds(parse_recipe(r), said.append).model.towers["audio"]["clip_seconds"]
        assert got == want, (limits, said[-1])
    assert "of 7 training clips" in said[-1]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))                 # `align data stats --recipe` says the same
    assert main(["data", "stats", pattern, "--recipe", str(tmp_path / "r.yaml"), "--no-progress"]) == 0
    assert "clip_seconds: auto trains at 0.5 s" in capsys.readouterr().out


def test_norm_stats_measure_only_the_clips_the_recipes_limits_let_through(tmp_path, capsys):
    """`align data stats --recipe` with data.limits.max_audio_seconds 0.8: training reads the three shorter
    recordings, and the durations said so, but norm_mean / norm_std were measured over all five (the default
    limits): numbers for audio the recipe never trains on. Now both are over the same three clips."""
    import yaml

    from align.cli import main
    from tests.switch_helpers import recipe
    pattern = _tone_shard(tmp_path, [0.1, 0.2, 0.3, 0.9, 1.2])             # + 0.4 s of padding: 0.5 .. 1.6 s
    audio = {"type": "audio_cnn", "clip_seconds": 1.0, "n_mels": 16}
    r = recipe(tmp_path, "run", model={"embed_dim": 16, "towers": {"audio": audio, "text": {"type": "bow_text"}}},
               loss={"type": "clip", "pairs": [["audio", "text"]]},
               data={"train": pattern, "limits": {"max_audio_seconds": 0.8}})
    r["model"] = {"embed_dim": 16, "towers": {"audio": audio, "text": {"type": "bow_text", "width": 8}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert main(["data", "stats", pattern, "--recipe", str(tmp_path / "r.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(next(line for line in out.splitlines() if line.startswith('{"norm_mean"')))
    assert stats["samples"] == 3 and stats["skipped"] == 3                  # two too long, one undecodable
    fe = AudioFrontend(clip_seconds=1.0, n_mels=16)
    (tmp_path / "short").mkdir()
    direct = feature_stats(_tone_shard(tmp_path / "short", [0.1, 0.2, 0.3]), unnormalised_eval_frontend(fe),
                           progress=False)                                   # the same three, default limits
    assert direct["samples"] == 3
    assert (stats["norm_mean"], stats["norm_std"]) == (direct["norm_mean"], direct["norm_std"])
    assert "3 clips read (3 unreadable)" in out

