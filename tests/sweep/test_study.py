"""`align sweep` (align/sweep/study.py, trial.py, report.py): real sweeps of a tiny recipe whose trials are
`align train` child processes; pruning by SIGTERM; a SIGKILLed sweep's trial resumed in its run dir.

The recipe: tiny open_clip towers on synthetic image-text data, evaluated on a 12-item val set of 3 classes
(zero-shot acc1 is the objective). In the default suite each trial is a process forked from pytest (ForkedTrial:
torch is imported already); the slow tests start `python -m align.cli train` as the sweep does (~10 s of imports
per trial), and tests/sweep/test_trial.py checks how the sweep starts and stops that process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from align.sweep.report import fmt as report_fmt
from tests.conftest import TINY_OPEN_CLIP, as_new_process, checkout_env

optuna = pytest.importorskip("optuna")

METRIC = "image/zeroshot/acc1"


def sweep_recipe(tmp_path, max_steps=4, every=2, checkpoint_every=0) -> str:
    """A tiny recipe YAML with a val set (CLIP_benchmark layout) and eval.best_metric."""
    import numpy as np
    from tests.bench.conftest import png_bytes, write_wds
    rng = np.random.default_rng(0)
    samples = [(f"v{i:03d}", {"png": png_bytes(rng), "cls": str(i % 3), "txt": f"a photo number {i}"})
               for i in range(12)]
    val = write_wds(str(tmp_path / "val"), samples, classnames=["cat", "dog", "car"], templates=["a photo of a {c}."])
    recipe = {"output_dir": "unused", "seed": 0,
              "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
              "data": {"train": "synthetic", "synthetic_size": 256, "num_workers": 0, "val": val},
              "train": {"batch_size": 8, "max_steps": max_steps, "lr": 1e-3, "log_every": 2, "num_threads": 1,
                        "checkpoint_every": checkpoint_every},
              "eval": {"every": every, "tasks": ["zeroshot"], "best_metric": METRIC, "batch_size": 12}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def space_file(tmp_path, text="train.lr: {log_uniform: [1.0e-4, 1.0e-2]}\ntrain.warmup_steps: {int: [0, 2]}\n"):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def env():
    return checkout_env()


class ForkedTrial:
    """A stand-in for align.sweep.trial.start's Popen (poll, wait, send_signal, kill): the trial's `align train`
    run by align.cli.main in a child forked from this process, its output in RUN/train.log as start() puts it.
    Torch and open_clip are imported here already, so a trial takes ~3 s, not a fresh interpreter's ~12 s (~9 s of
    it imports). tests/sweep/test_trial.py checks start() itself; the slow sweeps here run it."""

    def __init__(self, cmd, run_dir):
        import gc
        import multiprocessing as mp

        import open_clip  # noqa: F401  (imported once, here: every forked trial has it)

        import align.train.loop  # noqa: F401
        assert cmd[:3] == [sys.executable, "-m", "align.cli"], cmd       # what start() would run
        os.makedirs(run_dir, exist_ok=True)
        log = os.path.join(run_dir, "train.log")

        def child():
            os.setsid()                                       # start_new_session, as start()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)     # the sweep's handler is its own, not the trial's
            as_new_process(open(log, "a"))                   # its output in RUN/train.log, as start() puts it
            from align.cli import main
            sys.exit(main(cmd[3:]))
        gc.collect()            # here, not in the child (tests/train/test_train.py::_run says why)
        self._p = mp.get_context("fork").Process(target=child)
        self._p.start()
        self.pid = self._p.pid

    def poll(self):
        return self._p.exitcode

    def wait(self, timeout=None):
        self._p.join(timeout)
        if self._p.exitcode is None:
            raise subprocess.TimeoutExpired("align train (forked trial)", timeout)
        return self._p.exitcode

    def send_signal(self, sig):
        os.kill(self._p.pid, sig)

    def kill(self):
        self._p.kill()


def test_the_trial_exit_status_is_alignss_preemption_status():
    from align.sweep.trial import PREEMPTED_EXIT
    from align.train.guard import PREEMPTED_EXIT as guard
    assert PREEMPTED_EXIT == guard


def test_a_recipe_without_val_or_best_metric_is_refused_in_one_line(tmp_path, capsys):
    from align.cli import main
    recipe = sweep_recipe(tmp_path)
    assert main(["sweep", recipe, "--space", space_file(tmp_path), "--trials", "1", "--out", str(tmp_path / "s"),
                 "eval.best_metric=null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "align sweep maximises eval.best_metric on data.val" in err[0] and \
        "no eval.best_metric" in err[0]
    assert main(["sweep", recipe, "--space", space_file(tmp_path), "--trials", "1", "--out", str(tmp_path / "s"),
                 "data.val=null"]) == 2
    assert "no data.val" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def split_recipe(tmp_path) -> str:
    """A tiny recipe on real shards (10 speakers) whose held-out set is data.val_split's speakers, no data.val."""
    from tests.data.stream.test_val_split import _shards
    _shards(tmp_path / "s", per_speaker=4)
    recipe = yaml.safe_load(open(sweep_recipe(tmp_path)))
    recipe["data"].update(train=str(tmp_path / "s"), val=None, shuffle_buffer=8,
                          val_split={"groups_from": "speaker", "frac": 0.2})
    recipe["eval"].update(tasks=["retrieval"], best_metric="text-image/retrieval/image_retrieval_recall@5")
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


# Slow (~21 s, two trials): tools/mutate.py runs it (sweep.val_split_not_a_held_out_set); two sweeps that train
# (their trials forked: ForkedTrial) stay in the default suite.
@pytest.mark.slow
def test_a_sweep_without_data_val_scores_every_trial_on_the_same_val_split_groups(tmp_path):
    """Issue 20: the held-out groups carved from the training shards are the sweep's selection set."""
    from align.sweep import run_sweep
    lines, out = [], tmp_path / "sweep"
    res = run_sweep(split_recipe(tmp_path), space_file(tmp_path), 2, out=str(out), say=lines.append, poll_s=0.2)
    assert [r["state"] for r in res["rows"]] == ["COMPLETE", "COMPLETE"]
    assert "on the data.val_split groups (" in lines[0] and "'groups_from': 'speaker'" in lines[0]
    held = []
    for r in res["rows"]:
        run = out / "split" / f"trial-{r['trial']:04d}"
        summary = json.loads((run / "summary.json").read_text())
        assert r["value"] == summary["metrics"]["text-image/retrieval/image_retrieval_recall@5"]
        held.append((run / "val_split" / "val_split.json").read_text())
    counts = json.loads(held[0])["counts"]
    assert held[0] == held[1] and counts["held_out"] == 4 * counts["groups"]["held_out"] > 0   # whole speakers


def test_sweeping_seed_over_a_frac_val_split_is_refused_in_one_line(tmp_path, capsys):
    """The frac draws its groups by seed: trials would be scored on different speakers."""
    from align.cli import main
    space = space_file(tmp_path, "seed: {int: [0, 3]}\n")
    assert main(["sweep", split_recipe(tmp_path), "--space", space, "--trials", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the space sweeps `seed`" in err[0] and "data.val_split.groups" in err[0]
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("which, text", [
    ("split", "data.val_split.frac: {uniform: [0.1, 0.5]}\n"),
    ("split", "data.val_split: {choice: {a: {groups_from: speaker, groups: [spk1]}, "
              "b: {groups_from: speaker, groups: [spk2]}}}\n"),
    ("split", "data.train: {choice: {a: S, b: S}}\n"),
    ("val", "data.val: {choice: {selection: VAL, report: VAL}}\n")])
def test_a_space_over_the_held_out_set_itself_is_refused_in_one_line(tmp_path, capsys, which, text):
    """A space over data.val / data.val_split (or data.train, out of which val_split carves) was accepted: each
    trial was scored on another set (the report groups among them) and the sweep picked the set, not a setting."""
    from align.cli import main
    rec = split_recipe(tmp_path) if which == "split" else sweep_recipe(tmp_path)
    space = space_file(tmp_path, text.replace("VAL", str(tmp_path / "val")).replace("S", str(tmp_path / "s")))
    assert main(["sweep", rec, "--space", space, "--trials", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changes the held-out set each trial is scored on" in err[0], err
    assert not os.path.exists(tmp_path / "o")


def test_without_optuna_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from align.cli import main
    monkeypatch.setitem(sys.modules, "optuna", None)        # import optuna -> ImportError
    assert main(["sweep", sweep_recipe(tmp_path), "--space", space_file(tmp_path), "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["align: error: align sweep needs Optuna: pip install 'align-clip[sweep]'"]


def test_a_two_trial_sweep_gives_runs_a_table_a_plot_and_a_best_run_that_loads(tmp_path, monkeypatch):
    """The trials forked from this process (ForkedTrial: the same `align train` command line, ~10 s less each)."""
    import align
    from align.sweep import run_sweep, trial
    monkeypatch.setattr(trial, "start", ForkedTrial)
    lines = []
    out = tmp_path / "sweep"
    res = run_sweep(sweep_recipe(tmp_path), space_file(tmp_path), 2, out=str(out), say=lines.append, poll_s=0.2)
    rows = res["rows"]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:     # each trial is a normal run dir; its value is the run's own final eval of the metric
        run = out / "recipe" / f"trial-{r['trial']:04d}"
        assert r["run_dir"] == str(run)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 4 and r["value"] == summary["metrics"][METRIC]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["train"]["lr"] == r["train.lr"] and cfg["train"]["warmup_steps"] == r["train.warmup_steps"]
    finished = [line.split(":")[0].split("] ")[1] for line in lines if " finished; " in line]
    assert finished == ["trial 0 complete", "trial 1 complete"]                  # one progress line per trial
    started = [line.split("] ")[1] for line in lines if " started: " in line]   # and one as each begins
    assert [line.split(":")[0] for line in started] == ["trial 0 started", "trial 1 started"]
    for line, r in zip(started, rows):
        assert f"train.lr={report_fmt(r['train.lr'])}" in line and line.endswith(
            f"-> {r['run_dir']} (log: {os.path.join(r['run_dir'], 'train.log')})")
    assert lines.index(next(x for x in lines if "trial 0 started" in x)) < \
        lines.index(next(x for x in lines if "trial 0 complete" in x))
    best = max(rows, key=lambda r: r["value"])
    assert res["best_run_dir"] == best["run_dir"] and res["best_value"] == best["value"]
    assert any(line.startswith(f"best run: {best['run_dir']}") for line in lines)
    csv_rows = (out / "recipe" / "sweep.csv").read_text().splitlines()
    assert csv_rows[0].startswith("trial,state,value,step,retry_of,train.lr,train.warmup_steps,run_dir")
    assert len(csv_rows) == 3 and (out / "recipe" / "sweep.md").read_text().count("| COMPLETE |") == 2
    assert (out / "recipe" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert align.load(res["best_run_dir"]).modalities      # the best trial loads (and exports) like any run


def test_a_trial_below_the_median_is_stopped_by_sigterm_at_its_first_eval(tmp_path, monkeypatch):
    """A finished trial at 1.0 at every step is the median; the new trial's first eval (chance, ~0.33) is below
    it, so the sweep stops its run there: PRUNED, the run's checkpoint written by align's preemption, long
    before its 400 steps. (Its process forked from this one: ForkedTrial.)"""
    from align.sweep import run_sweep, trial
    monkeypatch.setattr(trial, "start", ForkedTrial)
    out = tmp_path / "sweep"
    out.mkdir()
    storage = f"sqlite:///{out}/study.db"
    study = optuna.create_study(storage=storage, study_name="recipe", direction="maximize")
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    study.add_trial(optuna.create_trial(params={"train.lr": 1e-3}, distributions={"train.lr": dist}, value=1.0,
                                        intermediate_values={s: 1.0 for s in range(2, 401, 2)}))
    lines = []
    res = run_sweep(sweep_recipe(tmp_path, max_steps=400), space_file(tmp_path, "train.lr: {log_uniform: "
                    "[1.0e-4, 1.0e-2]}\n"), 2, out=str(out), prune_after=1, say=lines.append, poll_s=0.1)
    pruned = res["rows"][1]
    assert pruned["state"] == "PRUNED" and pruned["value"] < 1.0
    run = out / "recipe" / "trial-0001"
    log = (run / "train.log").read_text()
    assert "preempted (SIGTERM)" in log                      # stopped by align's own preemption path
    assert not (run / "summary.json").exists()
    steps = [int(d.split("-")[1]) for d in os.listdir(run / "checkpoints") if d.startswith("step-")]
    assert steps and max(steps) < 400
    assert any(f"trial 1 pruned: pruned at step {pruned['step']}" in line for line in lines)


@pytest.mark.slow
def test_a_killed_sweep_rerun_resumes_its_trial_in_the_same_run_dir(tmp_path):
    """SIGKILL the sweep mid-trial; its `align train` child gets SIGTERM (parent-death signal), checkpoints and
    exits. The same command again: Optuna's heartbeat marks the trial stale, the retry callback queues it, and
    it runs in trial-0000 with resume=auto, from the checkpoint (no step trained twice)."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "align.cli", "sweep", sweep_recipe(tmp_path, max_steps=1000, every=100,
           checkpoint_every=10), "--space", space_file(tmp_path), "--trials", "1", "--out", str(out),
           "--heartbeat", "1"]
    first = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = out / "recipe" / "trial-0000" / "checkpoints"
    deadline = time.time() + 120
    while not (ckpts.is_dir() and any(d.startswith("step-") for d in os.listdir(ckpts))):
        assert time.time() < deadline and first.poll() is None, first.communicate()[0]
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    lock_info = out / "recipe" / "trial-0000" / "align.lock.json"
    deadline = time.time() + 60
    while lock_info.exists():                                # the orphaned child checkpoints and lets go
        assert time.time() < deadline
        time.sleep(0.2)
    log = (out / "recipe" / "trial-0000" / "train.log").read_text()
    assert "preempted (SIGTERM)" in log
    killed_at = max(int(d.split("-")[1]) for d in os.listdir(ckpts) if d.startswith("step-"))
    assert killed_at < 1000

    second = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "trials [0] are RUNNING" in second.stdout
    assert "] trial 1 started (a retry of trial 0): " in second.stdout      # the retry says whose run it goes on
    log = (out / "recipe" / "trial-0000" / "train.log").read_text()
    assert f"resumed from {ckpts / f'step-{killed_at:08d}'} at step {killed_at}" in log
    assert not (out / "recipe" / "trial-0001").exists()
    steps = [json.loads(line)["step"] for line in open(out / "recipe" / "trial-0000" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 1000
    study = optuna.load_study(study_name="recipe", storage=f"sqlite:///{out}/study.db")
    t0, t1 = study.trials
    assert t0.state.name == "FAIL" and t1.state.name == "COMPLETE"
    assert t1.system_attrs["failed_trial"] == 0 and t1.params == t0.params
    assert t1.user_attrs["run_dir"] == str(out / "recipe" / "trial-0000") and study.best_trial.number == 1


@pytest.mark.slow
def test_two_live_sweeps_on_one_study_train_different_run_dirs(tmp_path):
    """The same command twice at once (one SQLite study): every trial number, so every run dir, is trained by
    one sweep only; the second one's start-up wait does not take the first one's live trial for a dead one."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "align.cli", "sweep", sweep_recipe(tmp_path, max_steps=20, every=10),
           "--space", space_file(tmp_path), "--trials", "4", "--out", str(out), "--heartbeat", "2"]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [[int(line.split("] trial ")[1].split()[0]) for line in o.splitlines() if " finished; " in line]
           for o in outs]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])            # no trial ran in both
    study = optuna.load_study(study_name="recipe", storage=f"sqlite:///{out}/study.db")
    states = [t.state.name for t in study.trials]
    assert "FAIL" not in states and states.count("COMPLETE") + states.count("PRUNED") >= 4
    dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(dirs)) == len(dirs) and all(os.path.isdir(d) for d in dirs)


@pytest.mark.slow
def test_sigterm_to_the_sweep_checkpoints_the_trial_and_queues_it_for_the_rerun(tmp_path):
    """A scheduler's SIGTERM to the sweep: the trial's run checkpoints, the sweep exits 75 with one line, and the
    rerun resumes the trial in its run dir at once (queued by the retry callback: no heartbeat wait)."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "align.cli", "sweep", sweep_recipe(tmp_path, max_steps=300, every=100,
           checkpoint_every=10), "--space", space_file(tmp_path), "--trials", "1", "--out", str(out),
           "--heartbeat", "30"]
    first = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = out / "recipe" / "trial-0000" / "checkpoints"
    deadline = time.time() + 120
    while not (ckpts.is_dir() and any(d.startswith("step-") for d in os.listdir(ckpts))):
        assert time.time() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 75
    run = out / "recipe" / "trial-0000"
    assert err.strip().splitlines() == [f"align: trial 0 interrupted (SIGTERM); its run checkpointed and it is "
                                        f"queued again: rerun the same command to resume it in {run}"]
    stopped_at = max(int(d.split("-")[1]) for d in os.listdir(ckpts) if d.startswith("step-"))
    t0 = time.time()
    second = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "RUNNING" not in second.stdout and time.time() - t0 < 90        # no 4 x 30 s heartbeat wait
    assert f"at step {stopped_at}" in (out / "recipe" / "trial-0000" / "train.log").read_text()
    assert "1 (retry of 0)  COMPLETE" in second.stdout and not (out / "recipe" / "trial-0001").exists()


def test_a_sweep_takes_a_val_csv_that_its_trials_write_as_an_eval_set(tmp_path):
    """data.val=val.csv: not a CLIP_benchmark folder yet, so the sweep leaves it to the trials (each run writes it
    once into data.shards_cache and checks it before its first step) instead of refusing it."""
    from align.sweep.study import load_sweep_recipe
    (tmp_path / "val.csv").write_text("image,label\na.png,cat\n")
    _, data, r = load_sweep_recipe(sweep_recipe(tmp_path), [f"data.val={tmp_path / 'val.csv'}"])
    assert r.data.val == str(tmp_path / "val.csv")
    from align.errors import DataError
    with pytest.raises(DataError, match="cb/test/0.tar cannot be opened"):   # a CLIP_benchmark folder: checked now
        (tmp_path / "cb" / "test").mkdir(parents=True)
        (tmp_path / "cb" / "test" / "nshards.txt").write_text("1\n")
        load_sweep_recipe(sweep_recipe(tmp_path), [f"data.val={tmp_path / 'cb'}"])


@pytest.mark.parametrize("args, line", [
    (["--out", "FILE"], "align: error: --out {FILE}: not a folder"),
    (["--prune-after", "-1"], "align: error: --prune-after: must be >= 0, got -1"),
    (["--pruner", "none", "--prune-after", "3"], "align: error: --prune-after: only with --pruner median"),
    (["--heartbeat", "0"], "align: error: --heartbeat: must be >= 1, got 0"),
    (["--study", "a/b"], "align: error: --study 'a/b': the study's runs go to the folder OUT/STUDY"),
    (["--study", "study.db"], "align: error: --study 'study.db': a name of what a study keeps in its folder"),
    (["--study", "Sweep.csv"], "align: error: --study 'Sweep.csv': a name of what a study keeps in its folder"),
])
def test_a_bad_option_is_one_line_naming_it(tmp_path, capsys, args, line):
    from align.cli import main
    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
    assert main(["sweep", sweep_recipe(tmp_path), "--space", space_file(tmp_path), "--trials", "1", *out,
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line.replace("{FILE}", str(tmp_path / "file"))), err
    assert not (tmp_path / "o").exists()


def test_a_study_named_like_a_trials_run_dir_is_refused_before_anything(tmp_path, capsys, monkeypatch):
    """Without --out, --study trial-0003 was sweeps/RECIPE/trial-0003: the recipe's own study's run dir."""
    from align.cli import main
    recipe, space = sweep_recipe(tmp_path), space_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", recipe, "--space", space, "--trials", "1", "--study", "trial-0003"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study 'trial-0003': a name of what a study keeps in its folder (run dirs" in err[0]
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow   # 20 s: two real sweeps; test_trial.py checks the run-dir claim in the default suite
def test_another_study_in_the_same_out_trains_its_own_runs_and_a_study_made_anew_is_refused(tmp_path):
    """--study NEW in an --out that holds a finished study: its trial 0 is a new run in OUT/NEW (not the old
    trial-0000 "resumed" at its last step with the old value), and each study keeps its own tables. Then the
    storage deleted: the study made anew under the old name refuses the old runs before anything trains."""
    from align.errors import AlignError
    from align.sweep import run_sweep
    out, recipe = tmp_path / "sweep", sweep_recipe(tmp_path)
    first = run_sweep(recipe, space_file(tmp_path, "train.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n"), 1, out=str(out),
                      say=[].append, poll_s=0.2)
    table = (out / "recipe" / "sweep.csv").read_text()
    second = run_sweep(recipe, space_file(tmp_path, "train.lr: {log_uniform: [1.0e-5, 1.0e-4]}\n"), 1,
                       study="NEW", out=str(out), say=[].append, poll_s=0.2)
    run = out / "NEW" / "trial-0000"
    assert second["rows"][0]["run_dir"] == str(run)
    assert first["rows"][0]["run_dir"] == str(out / "recipe" / "trial-0000")
    assert "resumed from" not in (run / "train.log").read_text()
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == second["rows"][0]["train.lr"] < 1e-4
    assert (out / "recipe" / "sweep.csv").read_text() == table and (out / "NEW" / "sweep.csv").is_file()
    (out / "study.db").unlink()
    lines = []
    with pytest.raises(AlignError, match=f"^{out / 'recipe' / 'trial-0000'}: holds trial 0 of a study 'recipe' "):
        run_sweep(recipe, space_file(tmp_path, "train.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n"), 1, out=str(out),
                  say=lines.append, poll_s=0.2)
    assert not lines                                       # refused before the first trial (no line said)


def test_a_full_disk_under_the_study_db_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """SQLite's "database or disk is full" under study.db (reproduced on a 200 KB tmpfs) came out as a 100-line
    traceback ending in Optuna's StorageInternalError, which blames "invalid data ... exceeding max length".
    Here Optuna raises it as it did there (the sqlite3 error inside SQLAlchemy's, inside Optuna's)."""
    import sqlite3

    import sqlalchemy.exc

    from align.cli import main

    def full(*a, **k):
        try:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as e:
                raise sqlalchemy.exc.OperationalError("INSERT INTO studies", {}, e) from e
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
    monkeypatch.setattr(optuna, "create_study", full)
    out = tmp_path / "o"
    assert main(["sweep", sweep_recipe(tmp_path), "--space", space_file(tmp_path), "--trials", "1", "--out",
                 str(out)]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"align: error: {out / 'study.db'}: database or disk is full ("), err
    assert err[0].endswith("the study's finished trials are kept in it; free space and run the same command again")


def _folders(monkeypatch, recipe, space, **kw):
    """run_sweep up to its study: (the study's folder, its storage, the lines said); nothing is trained."""
    from align.sweep import study as study_mod
    seen, lines = {}, []

    def stop(optuna, storage, name, path, r, params, n_trials, overrides, folder, *rest):
        seen.update(folder=folder, storage=storage)
        return None
    monkeypatch.setattr(study_mod, "_run_study", stop)
    monkeypatch.setattr(study_mod, "summarise", lambda sw, say: {})
    study_mod.run_sweep(recipe, space, 1, say=lines.append, **kw)
    return seen["folder"], seen["storage"], lines


def test_without_out_the_recipes_study_is_sweeps_recipe_not_sweeps_recipe_recipe(tmp_path, monkeypatch):
    """The default --out is sweeps/RECIPE (the help's path); the recipe's own study was then put in
    sweeps/RECIPE/RECIPE. Its run dirs and summary are in sweeps/RECIPE now; --study and --out as before."""
    recipe, space = sweep_recipe(tmp_path), space_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'sweeps' / 'recipe' / 'study.db'}"
    assert _folders(monkeypatch, recipe, space) == (os.path.join("sweeps", "recipe"), db, [])
    assert _folders(monkeypatch, recipe, space, study="recipe")[0] == os.path.join("sweeps", "recipe")
    assert _folders(monkeypatch, recipe, space, study="NEW")[:2] == (os.path.join("sweeps", "recipe", "NEW"), db)
    out = str(tmp_path / "o")
    assert _folders(monkeypatch, recipe, space, out=out)[:2] == (os.path.join(out, "recipe"),
                                                                 f"sqlite:///{tmp_path / 'o' / 'study.db'}")


def test_a_sweep_begun_in_the_old_doubled_folder_goes_on_there_said_in_one_line(tmp_path, monkeypatch):
    """A study begun before the fix (sweeps/RECIPE/RECIPE/trial-0000, study.db in sweeps/RECIPE) is resumed in
    its own run dirs, not started afresh beside them; once sweeps/RECIPE holds a study, that one is used."""
    recipe, space = sweep_recipe(tmp_path), space_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "sweeps" / "recipe" / "recipe" / "trial-0000"
    old.mkdir(parents=True)
    (old / "train.log").write_text("step 1\n")
    folder, storage, lines = _folders(monkeypatch, recipe, space)
    assert folder == os.path.join("sweeps", "recipe", "recipe")
    assert storage == f"sqlite:///{tmp_path / 'sweeps' / 'recipe' / 'study.db'}"      # the same study.db as then
    assert len(lines) == 1 and f"resuming the study begun in {folder}" in lines[0], lines
    assert os.listdir(tmp_path / "sweeps" / "recipe") == ["recipe"]                  # nothing made beside it
    (tmp_path / "sweeps" / "recipe" / "trial-0000").mkdir()
    assert _folders(monkeypatch, recipe, space) == (os.path.join("sweeps", "recipe"), storage, [])
