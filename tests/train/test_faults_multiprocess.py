"""A 2-process `accelerate launch` (CPU, gloo) under faults: a hung rank, SIGTERM to the launcher, the run dir's
lock, and ranks whose shards differ in size (issue 25).

- rank 1 stopped (SIGSTOP): rank 0's watchdog names it in one line within train.dist_timeout_s, the launch
  ends non-zero, and resume=auto finishes on the uninterrupted run's weights; the same for rank 1 stopped in the
  middle of the final checkpoint write, where rank 0 waits on the long-timeout group;
- SIGTERM to the launcher: every rank finishes its step, they agree on it, one checkpoint is written there, the
  launcher exits 128 + SIGTERM (143), and the resumed run ends on the uninterrupted run's weights;
- a 2-process launch takes one lock (rank 0's), and a launch on a directory another live process holds is
  refused with one line naming the holder, no file changed;
- shards of very unequal size per rank and no data.samples_per_epoch: the ranks' epochs drift apart, but the
  step-based loop keeps them in step and finishes.
- 3 shards on 2 ranks, one all broken: no hang, the summary adds both ranks' skips, and the val set (fewer items
  than ranks x batch, fewer shards than ranks) scores as in one process on the same weights.

Slow (several launches each): `pytest -m slow`. Helpers and the reference run come from test_train_multiprocess.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from align.train.guard import HUNG_EXIT
from tests.train.test_train_multiprocess import ACCELERATE, assert_same_weights, final_weights, launch, write_recipe
from tests.train.test_train_multiprocess import ddp_ref  # noqa: F401,F811  the shared reference run (a fixture)
from tests.wds_helpers import image_text, make_shards, write_shard

# The launcher's own exit status when it was sent SIGTERM: accelerate's torchrun forwards the signal to the
# workers (which checkpoint and exit PREEMPTED_EXIT), waits for them, then exits 128 + the signal.
LAUNCHER_TERMINATED = 128 + signal.SIGTERM
# After the watchdog's verdict, torchrun asks the stopped rank to end (SIGTERM, which a stopped process
# cannot act on) and SIGKILLs it after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s): the launch ends within
# train.dist_timeout_s + that grace + a margin for a loaded machine.
SHUTDOWN_GRACE_S = 30
MARGIN_S = 30


def background(recipe_path, env_extra=None, overrides=()):
    """A 2-process launch in its own process group (so that the test can end all of it)."""
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli", "train",
                        str(recipe_path), "--no-progress", *overrides]
    return subprocess.Popen(cmd, env=dict(os.environ, **(env_extra or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def end_group(proc):
    """SIGKILL what is left of a background launch (its process group, i.e. the workers too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=60)


def wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the launch ended before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def newest_step(run_dir):
    names = sorted(n for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.startswith("step-"))
    return int(names[-1].split("-")[1])


@pytest.mark.slow
def test_a_stopped_rank_is_named_and_ends_the_launch_then_resume_carries_on(ddp_ref, tmp_path):
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "hung", dist_timeout_s=10)
    stopped = tmp_path / "stopped"          # "PID TIME" of rank 1, written just before it stops itself
    proc, out, took = _stopped_launch(path, stopped, {"ALIGN_TEST_SIGSTOP_AT_STEP": "5",
                                                      "ALIGN_TEST_SIGKILL_RANK": "1"})
    print(f"launch ended {took:.1f}s after rank 1 stopped; exit {proc.returncode}")
    assert proc.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "made no progress" in ln]
    assert len(lines) == 1, out[-3000:]
    print(lines[0])
    assert lines[0].startswith("align: error: rank 1 on host ") and "(last step 5)" in lines[0], lines[0]
    assert f"exitcode  : {HUNG_EXIT}" in out            # torchrun's report of rank 0's exit
    assert took < 10 + SHUTDOWN_GRACE_S + MARGIN_S

    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-2000:]
    assert "resumed from" in out and "step-00000004" in out
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "hung"))


def _stopped_launch(path, stopped, env):
    """A background launch in which a rank SIGSTOPs itself -> (output, seconds from the stop to the end)."""
    proc = background(path, dict(env, ALIGN_TEST_STOPPED_PID=str(stopped)))
    try:
        out = proc.communicate(timeout=300)[0]
        end = time.time()
    finally:
        end_group(proc)
        if stopped.exists():              # never leave a stopped process behind
            try:
                os.kill(int(stopped.read_text().split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc, out, end - float(stopped.read_text().split()[1])


@pytest.mark.slow
def test_a_rank_stopped_in_the_final_checkpoint_write_is_named_by_rank0_then_resume_carries_on(ddp_ref, tmp_path):
    """Rank 1 stops (SIGSTOP) with its part of the last checkpoint written: rank 0 waited for it in the write's
    barrier on the 24 h group, silently, until the scheduler's limit. Now it names rank 1 in one line within
    train.dist_timeout_s; step-6 stays the newest complete checkpoint and resume=auto matches the reference."""
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "stopsave", dist_timeout_s=10, checkpoint_every=3)
    proc, out, took = _stopped_launch(path, tmp_path / "stopped", {"ALIGN_TEST_SIGSTOP_IN_SAVE": "step-00000008"})
    print(f"launch ended {took:.1f}s after rank 1 stopped; exit {proc.returncode}")
    assert proc.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "stopped: its watchdog wrote no heartbeat" in ln]
    assert len(lines) == 1 and lines[0].startswith("align: error: rank 1 (host "), out[-3000:]
    assert f"exitcode  : {HUNG_EXIT}" in out and took < 10 + SHUTDOWN_GRACE_S + MARGIN_S
    assert newest_step(tmp_path / "stopsave") == 6

    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "step-00000006" in out, out[-2000:]
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "stopsave"))


@pytest.mark.slow
def test_a_full_disk_seen_by_one_rank_ends_both_with_one_line_each_then_resume_matches(ddp_ref, tmp_path):
    """Rank 1 alone gets ENOSPC for its part of step-4: each rank says one line and exits 74 (before, rank 1 removed
    the partial dir under rank 0, which crashed with a bare traceback); step-2 stays the newest, resume matches."""
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "full")
    res = launch(path, {"ALIGN_TEST_ENOSPC_IN_SAVE": "step-00000004"})
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "[rank0]: Traceback" not in out and "[rank1]: Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("align: error: ")]
    assert len(lines) == 2 and any("No space left on device" in ln for ln in lines), out[-3000:]
    assert any("rank 1 could not write its part" in ln for ln in lines), lines
    assert "(exitcode: 74)" in out, out[-3000:]                     # torchrun's report of the first failure
    assert sorted(os.listdir(tmp_path / "full" / "checkpoints")) == ["step-00000002"]

    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "step-00000002" in out, out[-2000:]
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "full"))


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_every_rank_at_one_step_and_resume_matches(ddp_ref, tmp_path):
    base, ref = ddp_ref
    path = write_recipe(base, tmp_path, "term")
    run = tmp_path / "term"
    proc = background(path, {"ALIGN_TEST_STEP_SLEEP_S": "0.5"})    # ~0.5 s a step: a window to signal in
    try:
        wait_for(run / "checkpoints" / "step-00000002", proc)
        proc.send_signal(signal.SIGTERM)                            # the launcher only, as a scheduler does
        out = proc.communicate(timeout=120)[0]
    finally:
        end_group(proc)
    assert proc.returncode == LAUNCHER_TERMINATED, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("align: preempted (SIGTERM) at step ")]
    # every rank stopped at the same step, so the launch says its line once (align.progress.launch_line); ranks at
    # different steps would say different lines, each with its rank
    assert len(lines) == 1, out[-3000:]
    steps = {int(ln.split("at step ")[1].split(",")[0]) for ln in lines}
    step = steps.pop()
    assert 2 <= step < 8 and newest_step(run) == step
    assert os.path.isfile(run / "checkpoints" / f"step-{step:08d}" / "rank-1.json")
    assert "Traceback" not in out, out[-3000:]
    assert not os.path.exists(run / "align.lock")                   # released on the way out

    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-2000:]
    assert f"step-{step:08d}" in out and "resumed from" in out
    assert_same_weights(final_weights(ref), final_weights(run))


def _children(pid):
    """{child pid: its RANK} of the processes whose parent is `pid`."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = dict(kv.split("=", 1) for kv in open(f"/proc/{d}/environ").read().split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        kids[int(d)] = env.get("RANK")
    return kids


@pytest.mark.slow
def test_a_two_process_launch_takes_one_lock_and_a_held_dir_refuses_every_rank(ddp_ref, tmp_path):
    from align.runlock import RunLock
    base, _ = ddp_ref
    path = write_recipe(base, tmp_path, "one")
    run = tmp_path / "one"
    proc = background(path, {"ALIGN_TEST_STEP_SLEEP_S": "0.3"})
    try:
        wait_for(run / "checkpoints" / "step-00000002", proc)
        workers = _children(proc.pid)
        info = json.loads((run / "align.lock.json").read_text())
        lock_files = [n for n in os.listdir(run) if n.startswith("align.lock")]
        out = proc.communicate(timeout=300)[0]
    finally:
        end_group(proc)
    assert proc.returncode == 0, out[-3000:]
    assert sorted(workers.values()) == ["0", "1"], workers
    assert workers[info["pid"]] == "0"                     # rank 0 holds it ...
    claims = [n for n in lock_files if "|" in n]           # flufl's claim files: align.lock|host|pid|...
    assert all(n.split("|")[2] == str(info["pid"]) for n in claims), lock_files   # ... and nobody else

    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("another run's files\n")
    with RunLock(str(held)):
        before = {n: (held / n).read_bytes() for n in os.listdir(held) if not n.startswith("align.lock")}
        names = sorted(os.listdir(held))
        t0 = time.time()
        res = launch(write_recipe(base, tmp_path, "held"))
        took = time.time() - t0
        print(f"refused launch ended after {took:.1f}s, exit {res.returncode}")
        after = {n: (held / n).read_bytes() for n in os.listdir(held) if not n.startswith("align.lock")}
        assert sorted(os.listdir(held)) == names and after == before
    out = res.stdout + res.stderr
    assert res.returncode != 0
    lines = [ln for ln in out.splitlines() if "holds this directory" in ln]
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0], out[-3000:]
    # rank 1 ended when the launcher asked (SIGTERM), not in the rendezvous 30 s later by torchrun's SIGKILL
    assert "(SIGKILL)" not in out and "(SIGTERM)" in out, out[-3000:]


@pytest.mark.slow
def test_ranks_with_unequal_shards_and_no_samples_per_epoch_drift_apart_but_finish(ddp_ref, tmp_path):
    """Shard i goes to rank i % 2 (after the epoch's shuffle): one rank gets 2 batches an epoch, the other 10.
    Each rank rolls into its next epoch on its own, so they never disagree on the step; nothing waits."""
    base, _ = ddp_ref
    d = json.loads(json.dumps(base))
    make_shards(tmp_path / "shards", 1, 8)                                        # s-000.tar: 2 batches
    write_shard(tmp_path / "shards" / "s-001.tar", [image_text(f"big_{j:03d}", seed=j) for j in range(40)])
    d["data"] = {"train": str(tmp_path / "shards" / "s-{000..001}.tar"), "num_workers": 0, "shuffle_buffer": 1}
    d["train"].update(batch_size=4, max_steps=16, checkpoint_every=0, dist_timeout_s=60)
    d["output_dir"] = str(tmp_path / "uneven")
    path = tmp_path / "uneven.yaml"
    import yaml
    path.write_text(yaml.safe_dump(d))
    keys = str(tmp_path / "keys")
    res = launch(path, {"ALIGN_TEST_RECORD_KEYS": keys})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    epochs = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in open(f"{keys}.rank{rank}.jsonl")]
        assert [r["step"] for r in rows] == list(range(16))
        epochs[rank] = rows[-1]["epoch"]
    assert max(epochs.values()) >= 3 and epochs[0] != epochs[1], epochs   # several epochs, drifted apart


@pytest.mark.slow
def test_a_mid_run_eval_with_best_metric_keeps_the_ranks_in_step(ddp_ref, tmp_path):
    """Rank 0 evaluates alone; whether it is a new best must be agreed, since every rank writes the `best`
    checkpoint (one rank saving while the other trains on mismatched the collectives and hung)."""
    import numpy as np
    import yaml

    from tests.bench.conftest import png_bytes, write_wds
    base, _ = ddp_ref
    rng = np.random.default_rng(0)
    samples = [(f"v{i:03d}", {"png": png_bytes(rng), "cls": str(i % 3), "txt": f"a photo number {i}"})
               for i in range(12)]
    val = write_wds(str(tmp_path / "val"), samples, classnames=["cat", "dog", "car"], templates=["a photo of a {c}."])
    d = json.loads(json.dumps(base))
    d["data"]["val"] = val
    d["eval"] = {"every": 2, "tasks": ["zeroshot"], "best_metric": "image/zeroshot/acc1", "batch_size": 6}
    d["train"]["dist_timeout_s"] = 20
    d["output_dir"] = str(tmp_path / "best")
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(d))
    res = launch(path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "best" / "eval.jsonl")]
    assert [row["step"] for row in rows] == [2, 4, 6, 8]
    ckpts = os.listdir(tmp_path / "best" / "checkpoints")
    assert "best" in ckpts and "step-00000008" in ckpts
    assert os.path.isfile(tmp_path / "best" / "checkpoints" / "best" / "rank-1.json")   # both ranks wrote it


@pytest.mark.slow
def test_uneven_ranks_one_shard_all_broken_sum_their_skips_and_score_val_as_one_process(ddp_ref, tmp_path):
    """3 shards on 2 ranks, one all broken: at seed 2 rank 1 draws only that shard in passes 0-3, so it reads
    through 4 passes of broken samples while rank 0 trains; nothing hangs, and the summary adds both ranks' skips (it held
    rank 0's alone). The val set, 7 samples in 1 shard (fewer shards than ranks, fewer samples than ranks x
    eval.batch_size), is scored by rank 0 alone: its figures are those of one process on the same weights."""
    import numpy as np
    import torch
    import yaml

    import align
    from align.train.evaluate import evaluate_model
    from tests.bench.conftest import png_bytes, write_wds
    base, _ = ddp_ref
    (tmp_path / "shards").mkdir()
    for i in range(2):
        write_shard(tmp_path / "shards" / f"s-{i:03d}.tar", [image_text(f"s{i}_{j:03d}", seed=j) for j in range(8)])
    write_shard(tmp_path / "shards" / "s-002.tar", [{"__key__": f"bad_{j}", "jpg": b"not a jpeg", "txt": "x"}
                                                    for j in range(6)])
    rng = np.random.default_rng(0)
    val = write_wds(str(tmp_path / "val"), [(f"v{i}", {"png": png_bytes(rng), "cls": str(i % 3), "txt": f"photo {i}"})
                                            for i in range(7)], per_shard=8, classnames=["cat", "dog", "car"],
                    templates=["a photo of a {c}."])
    d = json.loads(json.dumps(base))
    d["seed"] = 2
    d["data"] = {"train": str(tmp_path / "shards" / "s-{000..002}.tar"), "num_workers": 0, "shuffle_buffer": 4,
                 "samples_per_epoch": 16, "val": val}
    d["train"].update(batch_size=2, max_steps=6, checkpoint_every=0, dist_timeout_s=60)
    d["eval"] = {"every": 3, "tasks": ["zeroshot", "retrieval"], "batch_size": 4}
    d["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(d))
    res = launch(path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000006"
    per_rank = [json.loads((ckpt / name).read_text())["data"]["skipped"].get("undecodable image", 0)
                for name in ("state.json", "rank-1.json")]
    assert per_rank[1] >= 24, per_rank                                   # rank 1 read the broken shard 4+ times
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped"] == {"undecodable image": sum(per_rank)}, (summary["skipped"], per_rank)
    assert f"skipped {sum(per_rank)} samples" in out
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[-1]["step"] == 6 and rows[-1]["skipped_by_reason"] == summary["skipped"]
    final = [json.loads(line) for line in open(tmp_path / "run" / "eval.jsonl")][-1]
    assert final["step"] == 6 and "image/zeroshot/acc1" in final
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                             # as the launch ran (train.num_threads)
    try:
        alone = evaluate_model(align.load(str(ckpt)), val, tasks=["zeroshot", "retrieval"], batch_size=4)
    finally:
        torch.set_num_threads(threads)
    assert alone == {k: v for k, v in final.items() if k != "step"}


@pytest.mark.slow
def test_a_launch_wide_error_is_one_line_not_one_per_process(tmp_path):
    """Every process of a launch meets a recipe without its model and printed `align: error: ...`: the line came
    twice."""
    (tmp_path / "r.yaml").write_text("train: {max_steps: 2}\n")                    # no model
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli", "train",
                        str(tmp_path / "r.yaml"), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("align: error:")]
    assert len(said) == 1 and "missing required key 'model'" in said[0] and "rank" not in said[0], res.stderr[-3000:]
