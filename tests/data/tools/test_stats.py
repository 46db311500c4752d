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
