"""A 2-process launch of `align train` (CPU, gloo) whose loss is NaN on one rank only: the NaN guard and the logged
loss across real processes and collectives, where their unit tests use a stand-in for the collective
(tests/train/test_step.py, test_metrics.py).

- NaN on rank 1 at one attempt (InfoNCE, SigLIP, SigLIP with GradCache: train.accum_steps 2): both ranks skip that
  same attempt, the skip is counted once (summary.json and metrics.jsonl's bad_steps: 1, not one per rank), the run
  finishes, every logged loss is finite and the mean of the two ranks' own losses, and both ranks end on the same
  weights;
- NaN on rank 1 at every attempt from one on: both ranks stop after train.max_bad_steps attempts with one line for
  the launch and a non-zero exit, no traceback per rank, no hang.

The NaN comes from poisoned_main: it wraps the run's objective on one rank and then runs `align train` as the CLI
does, so the library carries no hook for it. Two ways to start the ranks (`launch`):
- "fork": two processes forked from pytest, with the environment `accelerate launch` gives its ranks (RANK,
  WORLD_SIZE, MASTER_ADDR/PORT, ...): the same Accelerator, gloo group, DDP and collectives, 3-4 s a launch, as
  the ranks reuse pytest's imports (a fresh rank imports torch, torchvision, open_clip and transformers: ~10 s);
- "accelerate": the real `accelerate launch` of a script (LAUNCHER) that calls poisoned_main, 15-25 s a launch on a
  shared 2-core machine.
SigLIP with GradCache (it covers the guard's all-reduce too) and the persistent NaN run forked by default; the
real launches, and the plain-step cases, with `pytest -m slow`. A launch that hangs is killed after HANG_S (a hang
detector only, far above a launch's time); the recipe's train.dist_timeout_s lets the watchdog end a
desynchronised launch sooner.
"""
import gc
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import align
from tests.conftest import as_new_process
from tests.train.test_train_multiprocess import ACCELERATE, free_port

HANG_S = 300
NAN_RANK = 1

# A rank of the real launch: the checkout's tests package on PYTHONPATH (nan_launch sets it).
LAUNCHER = '''
import os, sys
from tests.train.test_nan_multiprocess import poisoned_main
first, last = (int(x) for x in os.environ["NANTEST_AT"].split(","))
sys.exit(poisoned_main(sys.argv[1:], (first, last), os.environ["NANTEST_OUT"]))
'''


def poisoned_main(argv, nan_at: tuple, out: str) -> int:
    """`align.cli.main(argv)` in this rank (a process of its own: the patches stay), the objective's loss multiplied
    by NaN on rank NAN_RANK at its attempts nan_at = (first, last): 0-based calls of the objective, one per attempted
    step. Writes OUT.rankR.json: this rank's own loss at every attempt and whether each attempt stepped
    (TrainState.record_step), and OUT.rankR.pt: its final weights."""
    import align.train.loop as loop
    import align.train.state as state
    import align.train.step as step
    from align.cli import main
    rank = int(os.environ["RANK"])
    seen = {"losses": [], "stepped": []}
    objective, record_step, build_engine, engines = step.Objective.__call__, state.TrainState.record_step, \
        loop.build_engine, []

    def poisoned(self, feats, mask):
        total = objective(self, feats, mask)
        if rank == NAN_RANK and nan_at[0] <= len(seen["losses"]) < nan_at[1]:
            total = total * float("nan")          # this rank's loss only, its graph kept: a backward would run
        seen["losses"].append(float(total.detach()))
        return total

    def recorded(self, stepped, *a, **k):
        seen["stepped"].append(bool(stepped))
        return record_step(self, stepped, *a, **k)

    def engine(*a, **k):
        engines.append(build_engine(*a, **k))
        return engines[-1]

    step.Objective.__call__, state.TrainState.record_step, loop.build_engine = poisoned, recorded, engine
    try:
        return main(argv)
    finally:
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(seen, f)
        if engines:
            torch.save({k: v.detach().clone() for k, v in engines[0].core.state_dict().items()}, f"{out}.rank{rank}.pt")


def _forked_rank(rank: int, port: int, argv, nan_at: tuple, out: str) -> None:
    """One rank of the forked launch: the variables `accelerate launch` sets, its output to OUT.rankR.log, a fresh
    Accelerate state (not the one pytest's earlier runs left), then poisoned_main; exits with its status."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    as_new_process(open(f"{out}.rank{rank}.log", "w"))
    sys.exit(poisoned_main(argv, nan_at, out))


def _fork_launch(argv, nan_at: tuple, out: str):
    """Both ranks forked (see the module docstring) -> (exit status: the first non-zero one, output of both)."""
    import open_clip  # noqa: F401  imported here, once: the forked ranks reuse it (and what it imports)

    import align.cli  # noqa: F401
    import align.train.loop  # noqa: F401
    port = free_port()
    gc.collect()    # see tests/train/test_train.py: no native garbage collected in a forked child
    ranks = [mp.get_context("fork").Process(target=_forked_rank, args=(r, port, argv, nan_at, out)) for r in range(2)]
    for p in ranks:
        p.start()
    deadline = time.monotonic() + HANG_S
    for p in ranks:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = any(p.is_alive() for p in ranks)
    for p in ranks:
        if p.is_alive():
            p.kill()
            p.join()
    logs = "".join(open(f"{out}.rank{r}.log").read() for r in range(2) if os.path.exists(f"{out}.rank{r}.log"))
    if hung:
        pytest.fail(f"the launch hung: killed after {HANG_S} s\n{logs[-3000:]}")
    return next((p.exitcode for p in ranks if p.exitcode), 0), logs


def _accelerate_launch(argv, nan_at: tuple, out: str, tmp_path):
    """`accelerate launch` of LAUNCHER -> (exit status, output)."""
    (tmp_path / "nan_launch.py").write_text(LAUNCHER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(align.__file__)))
    env = dict(os.environ, NANTEST_AT=f"{nan_at[0]},{nan_at[1]}", NANTEST_OUT=out,
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", str(tmp_path / "nan_launch.py"), *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)       # its own group: a hung launch is killed whole
    try:
        out = proc.communicate(timeout=HANG_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the launch hung: killed after {HANG_S} s\n{proc.communicate()[0][-3000:]}")
    return proc.returncode, out


def nan_launch(tmp_path, loss: str, nan_at: tuple, launch: str, **train):
    """A 2-process run of `align train` (tiny open_clip, synthetic data), rank 1's loss NaN at attempts
    nan_at = (first, last), its ranks forked or started by `accelerate launch`; -> (exit status, output, run dir,
    [what rank 0 saw, what rank 1 saw])."""
    from tests.conftest import TINY_OPEN_CLIP
    run = tmp_path / "run"
    recipe = {"seed": 0, "resume": "none", "output_dir": str(run), "loss": {"type": loss},
              "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP),
                        **({"init_logit_bias": -10.0} if loss == "siglip" else {})},
              "data": {"train": "synthetic", "synthetic_size": 256, "num_workers": 0},
              "train": {"batch_size": 4, "max_steps": 5, "lr": 1e-3, "log_every": 1, "checkpoint_every": 0,
                        "num_threads": 1, "dist_timeout_s": 30, **train}, "eval": {"every": 0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    argv, out = ["train", str(tmp_path / "r.yaml"), "--no-progress"], str(tmp_path / "seen")
    rc, output = (_fork_launch(argv, nan_at, out) if launch == "fork" else
                  _accelerate_launch(argv, nan_at, out, tmp_path))
    files = [tmp_path / f"seen.rank{r}.json" for r in range(2)]
    assert all(f.exists() for f in files), f"a rank ended before its record (exit {rc})\n{output[-3000:]}"
    return rc, output, run, [json.loads(f.read_text()) for f in files]


SLOW = pytest.mark.slow


@pytest.mark.parametrize("loss, accum, launch", [pytest.param("clip", 1, "accelerate", marks=SLOW),
                                                 pytest.param("siglip", 1, "accelerate", marks=SLOW),
                                                 pytest.param("siglip", 2, "accelerate", marks=SLOW),
                                                 ("siglip", 2, "fork")])
def test_a_nan_loss_on_one_rank_is_skipped_by_both_counted_once_and_the_ranks_stay_equal(tmp_path, loss, accum,
                                                                                          launch):
    """Rank 1's loss is NaN at attempt 2 (after step 2), rank 0's is finite. Both ranks skip that attempt and train
    steps 3-5 on the next batches; bad_steps counts 1; every metrics row's loss is finite and the mean of the ranks'
    own losses at that step; the two ranks' final weights are equal bit for bit. With train.accum_steps 2 (GradCache)
    the step after the NaN one failed on every rank with DDP's "Expected to have finished reduction in the prior
    iteration" traceback: GradCache's pass 2 ran its DDP forwards for a backward that never came."""
    rc, out, run, seen = nan_launch(tmp_path, loss, (2, 3), launch, accum_steps=accum)
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert math.isnan(seen[NAN_RANK]["losses"][2]) and math.isfinite(seen[0]["losses"][2])   # one rank's NaN
    for rank in range(2):
        assert seen[rank]["stepped"] == [True, True, False, True, True, True], (rank, seen[rank])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["bad_steps"] == 1, summary
    said = [ln for ln in out.splitlines() if "loss NaN/Inf, skipped without an update" in ln]
    assert len(said) == 1 and said[0].startswith("step 3: ") and "1 in a row" in said[0], out[-3000:]   # once
    assert ", 1 NaN/Inf step(s) skipped" in out, out[-3000:]                                         # end line
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["bad_steps"] for r in rows] == [0, 0, 1, 1, 1]
    stepped = [a for a, ok in enumerate(seen[0]["stepped"]) if ok]           # the attempt each step trained
    for row, attempt in zip(rows, stepped):
        mean = (seen[0]["losses"][attempt] + seen[1]["losses"][attempt]) / 2
        assert math.isfinite(row["loss"]) and row["loss"] == pytest.approx(mean, rel=1e-6, abs=1e-9), (row, mean)
    assert summary["final_loss"] == pytest.approx(rows[-1]["loss"], rel=1e-6)
    w0, w1 = (torch.load(tmp_path / f"seen.rank{r}.pt", weights_only=True) for r in range(2))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), \
        [k for k in w0 if not torch.equal(w0[k], w1[k])]


@pytest.mark.parametrize("launch", [pytest.param("accelerate", marks=SLOW), "fork"])
def test_a_nan_loss_that_stays_on_one_rank_stops_both_with_one_line(tmp_path, launch):
    """Rank 1's SigLIP loss is NaN from attempt 2 on: after train.max_bad_steps (3) NaN attempts in a row both ranks
    stop at the same attempt, the launch says one `align: error:` line and exits non-zero, no rank's traceback."""
    rc, out, run, seen = nan_launch(tmp_path, "siglip", (2, 10 ** 9), launch, max_bad_steps=3)
    assert rc != 0, out[-3000:]
    tracebacks = ["Traceback"] if launch == "fork" else ["[rank0]: Traceback", "[rank1]: Traceback"]   # not the
    assert not any(t in out for t in tracebacks), out[-3000:]               # launcher's own, on a failed rank
    lines = [ln for ln in out.splitlines() if ln.startswith("align: error:")]
    assert len(lines) == 1 and "loss was NaN/Inf for 3 steps in a row (last after step 2)" in lines[0], out[-3000:]
    assert "rank" not in lines[0], lines[0]                 # the launch's line, not one rank's
    for rank in range(2):
        assert seen[rank]["stepped"] == [True, True, False, False, False], (rank, seen[rank])
    assert not (run / "summary.json").exists()
