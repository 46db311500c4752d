"""`align data stats` (align.data.tools.stats): the mean/std of the audio tower's un-normalised eval log-mel
over shards equal a direct computation on the same waves; max_samples stops early; the CLI prints the keys."""
import io
import json

import numpy as np
import torch

from align.data.tools.stats import feature_stats
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
    import pytest
    with pytest.raises(ConfigError, match="image_size: auto reads the training images"):
        train_dict(r2)
