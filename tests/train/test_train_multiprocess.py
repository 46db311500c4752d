"""CPU processes over gloo through `accelerate launch`: trains, is killed, resumes, matches.

- 2 processes, both killed, resumed: the weights match an uninterrupted run;
- one of 2 processes SIGKILLed: the launch ends within a bound, resume=auto carries on (ddp; fsdp in
  test_sharding.py together with the kill in the middle of a checkpoint write);
- 2 "machines" on localhost (two launches of one process each): trains, a SIGKILL of the second ends
  the first within a bound, and the pair resumes to the same weights as one 2-process machine.

Slow (several launches each): `pytest -m slow`.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
# A launch whose worker was SIGKILLed must end within this many seconds of the kill (measured: ~2-4 s on
# an idle machine, see benchmarks/RESULTS.md; the bound leaves room for a loaded CI machine).
EXIT_BOUND_S = 30


def launch(recipe_path, env_extra=None, nproc=2, overrides=(), machine=None, port=None, background=False):
    """`accelerate launch` of `align train`; machine=(rank, of) makes it one machine of several on localhost."""
    env = dict(os.environ, **(env_extra or {}))
    cmd = ACCELERATE + ["--num_processes", str(nproc)]
    if machine is None:
        cmd += ["--num_machines", "1"] if nproc > 1 else []
    else:
        cmd += ["--num_machines", str(machine[1]), "--machine_rank", str(machine[0]),
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    if nproc == 1 and machine is None:
        cmd = [sys.executable, "-m", "align.cli"]     # one process: no launcher needed
    else:
        cmd += ["-m", "align.cli"]
    cmd += ["train", str(recipe_path), "--no-progress", *overrides]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def write_recipe(base, tmp_path, name, **train):
    d = json.loads(json.dumps(base))
    d["output_dir"] = str(tmp_path / name)
    d["train"].update(train)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(run_dir, step=8):
    from align.train.checkpoint import load_weights, weights_path
    return load_weights(weights_path(os.path.join(run_dir, "checkpoints", f"step-{step:08d}")))


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def killed_launch(recipe, stamp, env, **kw):
    """Runs a launch in which a worker SIGKILLs itself; -> (result, seconds from the kill to the launch's end)."""
    res = launch(recipe, dict(env, ALIGN_TEST_KILL_STAMP=str(stamp)), **kw)
    end = time.time()
    return res, end - float(stamp.read_text())


def reference_run(tmp_path_factory, folder: str, **train):
    """One uninterrupted 2-process run of the tiny model on synthetic data (8 steps, checkpoints every 2; `train`
    overrides those keys), which the launched tests' interrupted runs must match -> (its recipe, its run dir).
    The DDP reference below and test_dcp_faults.py's FSDP one (6 steps, sharding: fsdp) are this run."""
    from tests.conftest import TINY_OPEN_CLIP
    tmp = tmp_path_factory.mktemp(folder)
    base = {"seed": 0, "resume": "auto", "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
            "data": {"train": "synthetic", "synthetic_size": 512, "num_workers": 0},
            "train": {"batch_size": 8, "max_steps": 8, "lr": 1e-3, "log_every": 2, "checkpoint_every": 2,
                      "keep_last": 5, "num_threads": 1, **train}, "eval": {"every": 0}}
    res = launch(write_recipe(base, tmp, "ref"))
    assert res.returncode == 0, res.stderr[-2000:]
    return base, tmp / "ref"


@pytest.fixture(scope="module")
def ddp_ref(tmp_path_factory):
    """One uninterrupted 2-process DDP run of 8 steps (checkpoints every 2), shared by the tests below."""
    return reference_run(tmp_path_factory, "ref")


@pytest.mark.slow
def test_two_process_train_kill_resume(ddp_ref, tmp_path):
    base, ref = ddp_ref
    assert "world_size" in open(ref / "summary.json").read()
    assert os.path.isfile(ref / "checkpoints" / "step-00000008" / "rank-1.json")
    path = write_recipe(base, tmp_path, "killed")
    killed = launch(path, {"ALIGN_TEST_SIGKILL_AT_STEP": "5"})
    assert killed.returncode != 0
    resumed = launch(path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(str(ref / "checkpoints" / "step-00000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert_same_weights(a, b)


@pytest.mark.slow
def test_one_worker_killed_ends_the_launch_then_resume_carries_on(ddp_ref, tmp_path):
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "one")
    res, took = killed_launch(path, tmp_path / "stamp", {"ALIGN_TEST_SIGKILL_AT_STEP": "5",
                                                         "ALIGN_TEST_SIGKILL_RANK": "1"})
    print(f"launch ended {took:.1f}s after the SIGKILL of rank 1")
    assert res.returncode != 0 and took < EXIT_BOUND_S
    resumed = launch(path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "step-00000004" in resumed.stdout + resumed.stderr
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "one"))


@pytest.mark.slow
def test_two_machines_on_localhost_train_survive_a_kill_and_resume(ddp_ref, tmp_path):
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "nodes")

    def pair(env):
        port = free_port()
        first = launch(path, env, nproc=2, machine=(0, 2), port=port, background=True)
        second = launch(path, env, nproc=2, machine=(1, 2), port=port, background=True)
        out1 = second.communicate(timeout=600)[0]
        t1 = time.time()
        out0 = first.communicate(timeout=600)[0]
        return first.returncode, second.returncode, out0 + out1, t1

    # The second machine's only process dies after step 5: the first must end soon after.
    stamp = tmp_path / "stamp"
    rc0, rc1, out, _ = pair({"ALIGN_TEST_SIGKILL_AT_STEP": "5", "ALIGN_TEST_SIGKILL_RANK": "1",
                             "ALIGN_TEST_KILL_STAMP": str(stamp)})
    took = time.time() - float(stamp.read_text())
    print(f"first machine ended {took:.1f}s after the SIGKILL of the second")
    assert rc0 != 0 and rc1 != 0 and took < EXIT_BOUND_S, out[-2000:]
    rc0, rc1, out, _ = pair({})
    assert rc0 == 0 and rc1 == 0, out[-3000:]
    assert "resumed from" in out
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "nodes"))


@pytest.mark.slow
def test_two_processes_carve_one_val_split_and_agree_on_the_best_checkpoint(tmp_path):
    """data.val_split + eval.best_metric under a 2-process launch: rank 0 writes RUN/val_split once, the eval runs
    on rank 0, and every rank joins the best checkpoint's save (the metric is broadcast): the launch finishes,
    checkpoints/best exists with the best eval row's step, and `align export RUN` takes it."""
    from tests.conftest import TINY_OPEN_CLIP
    from tests.data.stream.test_val_split import _shards
    _shards(tmp_path / "s", per_speaker=8)             # 2 shards: one per rank
    metric = "text-image/retrieval/image_retrieval_recall@5"
    base = {"seed": 0, "resume": "auto", "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
            "data": {"train": str(tmp_path / "s"), "num_workers": 0, "shuffle_buffer": 8, "samples_per_epoch": 64,
                     "val_split": {"groups_from": "speaker", "groups": ["spk1", "spk5"]}},
            "train": {"batch_size": 4, "max_steps": 12, "lr": 1e-3, "log_every": 2, "checkpoint_every": 6,
                      "keep_last": 5, "num_threads": 1},
            "eval": {"every": 3, "batch_size": 8, "best_metric": metric}}
    res = launch(write_recipe(base, tmp_path, "vs"))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run = tmp_path / "vs"
    rows = [json.loads(x) for x in open(run / "eval.jsonl")]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    best_row = max(rows, key=lambda r: (r[metric], -r["step"]))          # the first of the best values
    state = json.load(open(run / "checkpoints" / "best" / "state.json"))
    assert state["step"] == best_row["step"] and state["best"] == pytest.approx(best_row[metric])
    assert (res.stdout + res.stderr).count("data.val_split: held out 16 samples of 2 groups") == 1


@pytest.mark.slow
def test_a_launch_counts_every_ranks_skips_at_its_end_and_says_each_warning_once(tmp_path):
    """Each rank's loader counts only the shards it reads: summary.json and the end line counted rank 0's skips
    alone (rank 1's broken samples were lost from the summary), and the 'shards do not exist' warning was printed
    by both ranks. One broken sample first in each of 2 shards (no shuffle buffer: read first), s-002 missing:
    2 skipped in all."""
    from tests.conftest import TINY_OPEN_CLIP
    from tests.wds_helpers import image_text, write_shard
    (tmp_path / "d").mkdir()
    for i in range(2):
        broken = {"__key__": f"s{i}_bad", "jpg": b"not an image", "txt": "broken"}
        write_shard(tmp_path / "d" / f"s-{i:03d}.tar", [broken] + [image_text(f"s{i}_{j}", seed=10 * i + j)
                                                                   for j in range(7)])
    base = {"seed": 0, "resume": "auto", "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
            "data": {"train": str(tmp_path / "d" / "s-{000..002}.tar"), "num_workers": 0, "shuffle_buffer": 0},
            "train": {"batch_size": 2, "max_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2,
                      "num_threads": 1}, "eval": {"every": 0}}
    res = launch(write_recipe(base, tmp_path, "sk"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert json.load(open(tmp_path / "sk" / "summary.json"))["skipped"].get("undecodable image") == 2
    ends = [line for line in out.splitlines() if line.startswith("trained 2 steps")]
    assert len(ends) == 1 and "skipped 2 samples" in ends[0]
    assert out.count("1 of 3 shards do not exist") == 1
