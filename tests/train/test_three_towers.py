"""Image, text and audio towers through `train()` on shards whose samples each hold two of the three modalities
(image-text, audio-text and image-audio pairs mixed, as `align train bind` on a mix of sources reads them).

- a sample is trained in every pair of loss.pairs it has both modalities of; one in none of them (image-audio under
  bind's [[image, text], [audio, text]]) is skipped and counted as `no pair of loss.pairs`, never trained for
  nothing while counted as trained;
- the step's loss is the plain reference over each pair's present rows (tests/losses/loss_reference.py); a step
  with no row of a pair logs no loss for it (not a loss of 0);
- (slow) a run SIGKILLed mid-way (GradCache, a data worker) resumes to the uninterrupted run's weights and skip counts;
- (slow) 2 processes over gloo each train their shard's pairs and the summary adds up both ranks' skips.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.switch_helpers import Spy, metrics, recipe, train_dict
from tests.wds_helpers import flac_bytes, jpeg_bytes, write_shard

AUDIO = {"type": "audio", "clip_seconds": 0.5, "n_mels": 16, "patch": 8, "width": 32, "layers": 1, "heads": 2}
BIND = [["image", "text"], ["audio", "text"]]
KINDS = ("ia", "it", "at")     # image-audio (no caption), image-text, audio-text: a trainable sample last


def mixed_shard(tmp_path, n=24):
    """One shard of n samples cycling through KINDS; -> (path, {kind: keys})."""
    samples, keys = [], {k: [] for k in KINDS}
    for i in range(n):
        kind = KINDS[i % 3]
        s = {"__key__": f"{kind}{i:03d}"}
        if "i" in kind:
            s["jpg"] = jpeg_bytes(i, 16)
        if "a" in kind:
            s["flac"] = flac_bytes(i, 8000)
        if "t" in kind:
            s["txt"] = f"a caption number {i}"
        samples.append(s)
        keys[kind].append(s["__key__"])
    return write_shard(tmp_path / "mixed-000.tar", samples), keys


def three_tower_recipe(tmp_path, name, shard, pairs, **train):
    r = recipe(tmp_path, name, data={"train": shard, "num_workers": 0, "shuffle_buffer": 0},
               train=dict({"batch_size": 8, "max_steps": 2}, **train), loss={"pairs": pairs})
    del r["data"]["synthetic_size"]
    r["model"]["towers"] = {"audio": AUDIO}
    return r


def trained_keys(monkeypatch, tmp_path, r):
    log = str(tmp_path / (os.path.basename(r["output_dir"]) + "-keys"))
    monkeypatch.setenv("ALIGN_TEST_RECORD_KEYS", log)
    train_dict(r)
    monkeypatch.delenv("ALIGN_TEST_RECORD_KEYS")
    return [k for line in open(log + ".rank0.jsonl") for k in json.loads(line)["keys"]]


def test_a_sample_in_no_loss_pair_is_skipped_and_counted_the_others_train(tmp_path, monkeypatch):
    """bind's pairs on 8 image-text, 8 audio-text and 8 image-audio samples: the 16 with a caption make the epoch's
    2 steps of 8, the 8 image-audio ones are skipped and counted (summary.json, metrics.jsonl); with the
    audio-image pair in the loss, all 24 train (3 steps) and none is skipped."""
    shard, keys = mixed_shard(tmp_path)
    r = three_tower_recipe(tmp_path, "bind", shard, BIND, max_steps=2)
    assert sorted(trained_keys(monkeypatch, tmp_path, r)) == sorted(keys["it"] + keys["at"])
    summary = json.load(open(os.path.join(r["output_dir"], "summary.json")))
    assert summary["skipped"] == {"no pair of loss.pairs": 8}
    assert metrics(r["output_dir"])[-1]["skipped_by_reason"] == {"no pair of loss.pairs": 8}
    r = three_tower_recipe(tmp_path, "all", shard, BIND + [["audio", "image"]], max_steps=3)
    assert sorted(trained_keys(monkeypatch, tmp_path, r)) == sorted(keys["it"] + keys["at"] + keys["ia"])
    assert json.load(open(os.path.join(r["output_dir"], "summary.json")))["skipped"] == {}


def test_the_step_loss_is_the_reference_over_each_pairs_present_rows(tmp_path, monkeypatch):
    """Step 1 of three pairs over a batch of image-text, audio-text and image-audio samples: the logged loss and
    each pair's loss are ref_clip over the rows holding both of the pair's modalities (the zero-filled rows of a
    missing modality take no part)."""
    from tests.losses.loss_reference import ref_clip
    shard, keys = mixed_shard(tmp_path)
    pairs = BIND + [["audio", "image"]]
    spy = Spy(monkeypatch)
    r = three_tower_recipe(tmp_path, "ref", shard, pairs, max_steps=1, lr=0.0)
    train_dict(r)
    out = {k: v.double() for k, v in spy.forwards[0]["out"].items()}
    got = [k[:2] for k in trained_keys(monkeypatch, tmp_path, three_tower_recipe(tmp_path, "k", shard, pairs,
                                                                                   max_steps=1, lr=0.0))]
    has = {m: torch.tensor([m[0] in kind for kind in got]) for m in ("image", "audio", "text")}
    assert 0 < int(has["audio"].sum()) < len(got) and 0 < int(has["image"].sum()) < len(got)
    s = float(out["logit_scale"])
    row = metrics(r["output_dir"])[0]
    total = 0.0
    for a, b in pairs:
        want = float(ref_clip(out[a], out[b], s, has[a] & has[b]))
        assert abs(row[f"loss/{a}-{b}"] - want) < 1e-5 * max(1.0, want), (a, b)
        total += want
    assert abs(row["loss"] - total) < 1e-5 * total


def test_a_pair_of_weight_zero_keeps_no_sample():
    """loss.weights 0 for audio-image: a sample in that pair alone trains nothing, so it is skipped like one in no
    pair; every weight 0 checks nothing."""
    from align.config import parse_recipe
    from align.train.feed import trained_pairs
    r = {"model": {"open_clip": {}, "towers": {"audio": AUDIO}}, "train": {"max_steps": 1},
         "loss": {"pairs": BIND + [["audio", "image"]], "weights": [1.0, 0.5, 0.0]}}
    assert trained_pairs(parse_recipe(r)) == [("image", "text"), ("audio", "text")]
    r["loss"]["weights"] = [0.0, 0.0, 0.0]
    assert trained_pairs(parse_recipe(r)) is None
    del r["loss"]["weights"]
    assert trained_pairs(parse_recipe(r)) == [("image", "text"), ("audio", "text"), ("audio", "image")]


def test_a_step_without_a_pairs_rows_logs_no_loss_for_it(tmp_path):
    """8 image-text samples, then 8 audio-text ones, read in order (no shuffle buffer), batches of 8: step 1's
    metrics row holds loss/image-text alone, equal to its loss, step 2's loss/audio-text alone (step 1 logged
    loss/audio-text 0.0, a perfect pair to whoever reads the log)."""
    samples = [{"__key__": f"it{i}", "jpg": jpeg_bytes(i, 16), "txt": f"a photo {i}"} for i in range(8)]
    samples += [{"__key__": f"at{i}", "flac": flac_bytes(i, 8000), "txt": f"a sound {i}"} for i in range(8)]
    shard = write_shard(tmp_path / "two-000.tar", samples)
    r = three_tower_recipe(tmp_path, "split", shard, BIND, max_steps=2)
    train_dict(r)
    rows = metrics(r["output_dir"])
    assert [sorted(k for k in row if k.startswith("loss/")) for row in rows] == [["loss/image-text"],
                                                                                  ["loss/audio-text"]]
    assert abs(rows[0]["loss/image-text"] - rows[0]["loss"]) < 1e-6
    assert abs(rows[1]["loss/audio-text"] - rows[1]["loss"]) < 1e-6


@pytest.mark.slow
def test_a_killed_three_tower_run_resumes_to_the_same_weights_and_counts(tmp_path):
    """GradCache (2 micro-batches of 4), one data worker, a shuffle buffer: SIGKILLed after step 3 (checkpoint at
    2) and resumed, the run ends on the uninterrupted run's weights, with the same skips counted."""
    from tests.switch_helpers import final_weights
    from tests.conftest import checkout_env
    shard, _ = mixed_shard(tmp_path, n=48)

    def run(name, **env):
        r = three_tower_recipe(tmp_path, name, shard, BIND, max_steps=5, checkpoint_every=2, accum_steps=2,
                               batch_size=4)
        r["resume"], r["data"]["shuffle_buffer"], r["data"]["num_workers"] = "auto", 4, 1
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
        return subprocess.run([sys.executable, "-m", "align.cli", "train", str(tmp_path / f"{name}.yaml"),
                               "--no-progress"], env=checkout_env(**env), capture_output=True, text=True, timeout=300)
    assert run("whole").returncode == 0
    assert run("cut", ALIGN_TEST_SIGKILL_AT_STEP="3").returncode != 0
    res = run("cut")
    assert res.returncode == 0 and "resumed from" in res.stdout + res.stderr, res.stderr[-2000:]
    whole, cut = final_weights(str(tmp_path / "whole")), final_weights(str(tmp_path / "cut"))
    assert whole.keys() == cut.keys() and any(k.startswith("towers.audio.") for k in whole)
    for k in whole:
        torch.testing.assert_close(whole[k], cut[k], rtol=0, atol=0, msg=k)
    counts = [json.load(open(tmp_path / n / "summary.json"))["skipped"] for n in ("whole", "cut")]
    assert counts[0] == counts[1] and counts[0]["no pair of loss.pairs"] > 0


@pytest.mark.slow
def test_two_gloo_processes_train_three_towers_and_add_up_their_skips(tmp_path):
    """2 processes, one mixed shard each (8 image-audio samples first, then 16 with a caption), batch 8 a rank,
    2 steps: each rank trains exactly its shard's 16 captioned samples, the loss of every step is finite, and
    summary.json counts both ranks' 16 skipped image-audio samples."""
    from tests.conftest import checkout_env
    from tests.train.test_train_multiprocess import ACCELERATE
    (tmp_path / "d").mkdir()
    keys = []
    for i in range(2):
        path, k = mixed_shard(tmp_path / "d", n=24)
        os.rename(path, tmp_path / "d" / f"m-{i}.tar")
        keys.append(k)
    r = three_tower_recipe(tmp_path, "ddp", str(tmp_path / "d" / "m-{0..1}.tar"), BIND, max_steps=2)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(r))
    log = str(tmp_path / "keys")
    res = subprocess.run(ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli", "train",
                                       str(tmp_path / "ddp.yaml"), "--no-progress"],
                         env=checkout_env(ALIGN_TEST_RECORD_KEYS=log), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for rank in (0, 1):
        got = [k for line in open(f"{log}.rank{rank}.jsonl") for k in json.loads(line)["keys"]]
        assert sorted(got) == sorted(keys[0]["it"] + keys[0]["at"]), rank     # both shards hold the same keys
    assert json.load(open(tmp_path / "ddp" / "summary.json"))["skipped"] == {"no pair of loss.pairs": 16}
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in metrics(r["output_dir"]))
