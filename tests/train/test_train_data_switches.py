"""Every data.* switch of a recipe, through `train()` on real shards written here.

The sample keys each step trained come from ALIGN_TEST_RECORD_KEYS (train.py writes them per rank).
Each test fails when its switch is ignored; tests/README.md maps switches to tests.
"""
import json
import os

import pytest

from align.errors import DataError
from tests.switch_helpers import metrics, recipe, train_dict
from tests.wds_helpers import image_text, make_shards, write_shard


def _keys(monkeypatch, tmp_path, r):
    """Trains r; returns the keys of each step (rank 0), in order."""
    log = str(tmp_path / (os.path.basename(r["output_dir"]) + "-keys"))
    monkeypatch.setenv("ALIGN_TEST_RECORD_KEYS", log)
    train_dict(r)
    monkeypatch.delenv("ALIGN_TEST_RECORD_KEYS")
    return [json.loads(line)["keys"] for line in open(log + ".rank0.jsonl")]


def _flat(steps):
    return [k for s in steps for k in s]


def _runs(keys):
    """How many runs of consecutive keys from the same shard (key prefix before '_')."""
    return 1 + sum(a.split("_")[0] != b.split("_")[0] for a, b in zip(keys, keys[1:]))


@pytest.fixture
def shards(tmp_path):
    paths, keys = make_shards(tmp_path / "shards", 4, 8)
    return str(tmp_path / "shards" / "s-{000..003}.tar"), keys


def test_train_on_shards_trains_every_sample_of_an_epoch_once(tmp_path, monkeypatch, shards):
    """data.train: a brace pattern of shards -> one epoch (32 samples, batch 8) trains each key once."""
    pattern, keys = shards
    r = recipe(tmp_path, "ep", data={"train": pattern, "shuffle_buffer": 1}, train={"max_steps": 4})
    assert sorted(_flat(_keys(monkeypatch, tmp_path, r))) == sorted(keys)


def test_shuffle_buffer(tmp_path, monkeypatch, shards):
    """data.shuffle_buffer=1 keeps each shard's samples together; 32 interleaves shards within the epoch."""
    pattern, _ = shards
    plain = _flat(_keys(monkeypatch, tmp_path, recipe(tmp_path, "b1", data={"train": pattern, "shuffle_buffer": 1},
                                                     train={"max_steps": 4})))
    mixed = _flat(_keys(monkeypatch, tmp_path, recipe(tmp_path, "b32", data={"train": pattern, "shuffle_buffer": 32},
                                                     train={"max_steps": 4})))
    assert _runs(plain) == 4 and _runs(mixed) > 8
    assert sorted(plain) == sorted(mixed)


def test_resampled_draws_shards_with_replacement(tmp_path, monkeypatch, shards):
    """data.resampled: an endless stream of shard draws, so 40 samples of 32 stay in epoch 0 (and, by
    pigeonhole, repeat some); without it the epoch ends after the 32 samples, each trained once."""
    pattern, _ = shards
    d = {"train": pattern, "shuffle_buffer": 1}
    r = recipe(tmp_path, "plain", data=d, train={"max_steps": 5})
    plain = _keys(monkeypatch, tmp_path, r)
    assert len(set(_flat(plain[:4]))) == 32 and [row["epoch"] for row in metrics(r["output_dir"])] == [0] * 4 + [1]
    r = recipe(tmp_path, "res", data=dict(d, resampled=True), train={"max_steps": 5})
    res = _flat(_keys(monkeypatch, tmp_path, r))
    assert len(res) == 40 and [row["epoch"] for row in metrics(r["output_dir"])] == [0] * 5


def test_samples_per_epoch_sets_the_epoch_length(tmp_path, monkeypatch, shards):
    """data.samples_per_epoch=16 with train.epochs=2 at batch 8: 4 steps, epoch 1 from step 3."""
    pattern, _ = shards
    r = recipe(tmp_path, "spe", data={"train": pattern, "samples_per_epoch": 16, "shuffle_buffer": 1},
               train={"max_steps": None, "epochs": 2})
    steps = _keys(monkeypatch, tmp_path, r)
    assert len(steps) == 4 and [row["epoch"] for row in metrics(r["output_dir"])] == [0, 0, 1, 1]


def test_source_weights_set_the_mix(tmp_path, monkeypatch):
    """data.train as sources with weights 3:1 (then 1:3): about 3/4 of the first 32 samples from the first."""
    make_shards(tmp_path / "a", 2, 32, prefix="a")
    make_shards(tmp_path / "b", 2, 32, prefix="b")
    frac = []
    for wa, wb in ((3.0, 1.0), (1.0, 3.0)):
        srcs = [{"urls": str(tmp_path / "a"), "weight": wa}, {"urls": str(tmp_path / "b"), "weight": wb}]
        keys = _flat(_keys(monkeypatch, tmp_path, recipe(tmp_path, f"w{wa}", data={"train": srcs, "shuffle_buffer": 1},
                                                        train={"max_steps": 4})))
        frac.append(sum(k.startswith("a") for k in keys) / len(keys))
    assert frac[0] >= 0.6 and frac[1] <= 0.4, frac


def test_num_workers_decode_in_worker_processes(tmp_path, monkeypatch, shards):
    """data.num_workers=2: the image transform runs in two processes other than the trainer's; 0: in it."""
    from align.model import AlignModel
    pattern, _ = shards
    pid_log = tmp_path / "pids"
    real = AlignModel.transforms

    def transforms(model, train):
        out = real(model, train)
        image = out["image"]

        def logged(img):
            with open(pid_log, "a") as f:
                f.write(f"{os.getpid()}\n")
            return image(img)
        return dict(out, image=logged)
    monkeypatch.setattr(AlignModel, "transforms", transforms)
    pids = {}
    for n in (0, 2):
        pid_log.write_text("")
        train_dict(recipe(tmp_path, f"w{n}", data={"train": pattern, "num_workers": n, "shuffle_buffer": 1},
                          train={"max_steps": 2}))
        pids[n] = set(pid_log.read_text().split())
    assert pids[0] == {str(os.getpid())}
    assert len(pids[2]) >= 2 and str(os.getpid()) not in pids[2]     # (the next epoch's may start early)


def test_one_data_worker_trains_as_none_and_two_the_same_samples_in_another_order(tmp_path, monkeypatch, shards):
    """What data.num_workers changes: 0 and 1 read the one stream per rank (same keys per step, same weights bit for
    bit); 2 split the rank's shards between two streams taken in turn: every epoch trains the same samples (4 shards
    of 8, nothing left in a short batch), in another order."""
    import torch

    from tests.switch_helpers import final_weights
    pattern, keys = shards
    steps, weights = {}, {}
    for n in (0, 1, 2):
        r = recipe(tmp_path, f"w{n}", data={"train": pattern, "num_workers": n, "shuffle_buffer": 4},
                   train={"max_steps": 8, "batch_size": 4})
        steps[n] = _keys(monkeypatch, tmp_path, r)
        weights[n] = final_weights(r["output_dir"])
    assert steps[0] == steps[1] and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert sorted(_flat(steps[0])) == sorted(_flat(steps[2])) == sorted(keys)       # 8 steps of 4: one epoch
    assert steps[0] != steps[2]


def test_align_train_refuses_pipe_unless_the_recipe_allows_it(tmp_path, shards, capfd):
    """data.allow_pipe through `align train` (align.cli.main, in this process): false (default) -> exit 2 and one
    line naming the setting, and the shell command never ran; true -> trains (the command ran). The installed
    `align` script's own exit status and line on an error: tests/test_cli.py::test_installed_console_script."""
    import yaml

    from align.cli import main
    marker = tmp_path / "pipe-ran"
    shard = shards[0].replace("{000..003}", "000")
    url = f"pipe:touch {marker} && cat {shard}"
    for allow in (False, True):
        r = recipe(tmp_path, f"pipe{allow}", data={"train": url, "allow_pipe": allow, "shuffle_buffer": 1},
                   train={"max_steps": 1})
        if not allow:
            path = tmp_path / "pipe.yaml"
            path.write_text(yaml.safe_dump(r))
            capfd.readouterr()
            rc = main(["train", str(path), "--no-progress"])
            err = capfd.readouterr().err
            last = err.strip().splitlines()[-1]
            assert rc == 2 and last.startswith("align: error: ") and "allow_pipe" in last, err
            assert "Traceback" not in err, err
            assert not marker.exists()
        else:
            assert train_dict(r)["steps"] == 1 and marker.exists()


def _half_broken(tmp_path, n=160):
    """One shard of n samples; every 4th has a JPEG that does not decode -> n/4 skips."""
    samples = [image_text(f"s00_{i:03d}", seed=i) for i in range(n)]
    for s in samples[::4]:
        s["jpg"] = b"not a jpeg"
    return write_shard(tmp_path / "broken.tar", samples)


def test_max_skip_frac_from_the_recipe_stops_the_run(tmp_path):
    """A quarter of the samples are broken: data.max_skip_frac=0.1 stops training with one line naming
    the setting; 0.5 trains on, and the skips are counted exactly."""
    shard = _half_broken(tmp_path)
    r = recipe(tmp_path, "strict", data={"train": shard, "max_skip_frac": 0.1, "shuffle_buffer": 1},
               train={"max_steps": 15})
    with pytest.raises(DataError, match=r"max_skip_frac=0\.1"):
        train_dict(r)
    r = recipe(tmp_path, "lenient", data={"train": shard, "max_skip_frac": 0.5, "shuffle_buffer": 1},
               train={"max_steps": 15})
    summary = train_dict(r)
    assert summary["steps"] == 15 and sum(summary["skipped"].values()) == 40, summary["skipped"]


def test_the_run_summary_adds_the_skips_every_rank_counted(tmp_path, monkeypatch, capsys):
    """Each rank reads its own shards and counts its own skips: summary.json, the end line and metrics.jsonl add the
    others' (stood in for here by rank 1's counts; the 2-process launch is in test_faults_multiprocess.py)."""
    from align.train.guard import StepWatch
    rank1 = {"skipped": {"undecodable image": 3, "undecodable audio": 2}, "noted": {"captions cut": 4}}
    monkeypatch.setattr(StepWatch, "gather_object",      # rank 1 stands in for the counts only (a row's, the end's)
                        lambda self, obj: [obj, {**obj, "counts": rank1} if "counts" in obj
                                                       else rank1 if "skipped" in obj else obj], raising=False)
    r = recipe(tmp_path, "sum", data={"train": _half_broken(tmp_path, n=40), "shuffle_buffer": 1},
               train={"max_steps": 3})
    summary = train_dict(r)
    with open(os.path.join(r["output_dir"], "checkpoints", "step-00000003", "state.json")) as f:
        own = json.load(f)["data"]["skipped"]["undecodable image"]           # rank 0's own count
    assert own > 0 and summary["skipped"] == {"undecodable image": own + 3, "undecodable audio": 2}
    assert summary["noted"] == {"captions cut": 4}
    assert metrics(r["output_dir"])[-1]["skipped_by_reason"] == summary["skipped"]      # metrics.jsonl's rows too
    assert f"skipped {own + 5} samples, 4 captions cut" in capsys.readouterr().out


def test_the_same_shards_in_another_folder_train_the_same_weights(tmp_path, shards):
    """Crops, captions and augmentations are seeded by the shard's file name, not its path: the same shards copied
    to another folder (node-local scratch, another mount) train bit-identical weights; the same samples under other
    file names draw other augmentations (so the seeds do depend on the shard, and the augmentation on them)."""
    import shutil

    import torch

    from tests.switch_helpers import final_weights
    pattern, _ = shards
    src = os.path.dirname(pattern)
    shutil.copytree(src, tmp_path / "elsewhere" / "deeper")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i in range(4):
        shutil.copy(os.path.join(src, f"s-{i:03d}.tar"), renamed / f"t-{i:03d}.tar")
    aug = {"image": [{"type": "affine", "degrees": 20, "translate": [0.2, 0.2]}, {"type": "blur", "p": 0.5}]}
    runs = {}
    for name, pat in (("here", pattern), ("moved", str(tmp_path / "elsewhere" / "deeper" / "s-{000..003}.tar")),
                      ("renamed", str(renamed / "t-{000..003}.tar"))):
        r = recipe(tmp_path, name, data={"train": pat, "shuffle_buffer": 1, "augment": aug}, train={"max_steps": 3})
        train_dict(r)
        runs[name] = final_weights(r["output_dir"])
    assert all(torch.equal(runs["here"][k], runs["moved"][k]) for k in runs["here"])
    assert not all(torch.equal(runs["here"][k], runs["renamed"][k]) for k in runs["here"])
