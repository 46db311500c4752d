"""One trial: a normal run directory, trained by `align train` in a child process and watched from outside.

The training loop has no callbacks, and the sweep adds none: it starts

    python -m align.cli train RECIPE [overrides] KEY=VALUE... output_dir=OUT/STUDY/trial-NNNN resume=auto --no-progress

with stdout and stderr appended to RUN/train.log, reads RUN/eval.jsonl as rows appear (one per
eval.every steps, and the final eval), and reports eval.best_metric from each row to Optuna as an
intermediate value at its step. To prune, it sends SIGTERM: align's preemption (align.train.guard) stops
at the next step boundary, writes a checkpoint and exits 75 (EX_TEMPFAIL). The finished run's value is
summary.json's final metric, i.e. the model that `align.load(RUN)` and `align export RUN` take.

The child runs in its own session, so a Ctrl-C at the terminal reaches the sweep only (which then stops
the child with SIGTERM, so that it checkpoints); on Linux the child also gets SIGTERM when the sweep dies
in any way, SIGKILL included (prctl PR_SET_PDEATHSIG), so no orphan keeps the run dir's lock and a rerun
of the sweep resumes the trial from that checkpoint (`resume=auto`).

Because of resume=auto, a run dir must never be another trial's: before its first start a trial writes
RUN/sweep_trial.json (study name, trial number, and the Optuna trial's start time, which a study made anew
under the same name -- study.db deleted -- does not share), and a trial whose run dir holds anything else
is refused in one line (claim_run_dir) instead of "resuming" a finished run of another study.
"""
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from align.errors import AlignError
from align.sweep.space import override
from align.text import split_lines
from align.train import rundir

PREEMPTED_EXIT = 75        # align.train.guard.PREEMPTED_EXIT (tests/sweep checks they agree)
LOG = "train.log"          # the child's stdout and stderr, in the run dir
RECORD = "sweep_trial.json"   # whose trial the run dir is: {"study", "trial", "started"}


class TrialFailed(AlignError):
    """The trial's `align train` ended with an error, or gave no value: the trial is FAIL, the sweep goes on."""


class TrialStopped(TrialFailed):
    """The trial's `align train` was stopped from outside (exit 75, its checkpoint written): worth a retry."""


class RunDirTaken(AlignError):
    """The trial's run dir holds a run that is not this study's trial: the sweep stops (not one failed trial)."""


def read_record(run_dir: str) -> Optional[dict]:
    """RUN/sweep_trial.json, or None when the run dir has none (or an unreadable one)."""
    try:
        with open(os.path.join(run_dir, RECORD)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def claim_run_dir(run_dir: str, study: str, number: int, started: Optional[str]) -> None:
    """Makes `run_dir` trial `number` of `study` (its original start time `started`), or refuses in one line
    when it holds something else: a run of another study or of a study made anew under this name (resume=auto
    would take its checkpoint and its value as this trial's), or files of no trial."""
    want = {"study": study, "trial": number, "started": started}
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        rec = read_record(run_dir)
        if rec == want:
            return
        what = (f"files of no sweep trial (no {RECORD})" if rec is None else
                f"trial {rec.get('trial')} of a study {rec.get('study')!r} started {rec.get('started')}")
        mine = f"started {started}" if started else "which has no such trial"
        raise RunDirTaken(f"{run_dir}: holds {what}, not trial {number} of this study {study!r} ({mine}); a "
                          f"study made anew under the same name (study.db deleted, another --storage) does not "
                          f"reuse its runs: remove it, or use another --study or --out")
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump(want, f)
    os.replace(tmp, os.path.join(run_dir, RECORD))


def train_command(recipe_path: str, overrides: List[str], values: Dict[str, object], run_dir: str) -> List[str]:
    """The `align train` command of a trial: the user's overrides, then the trial's values, then its run dir."""
    return [sys.executable, "-m", "align.cli", "train", recipe_path, *overrides,
            *(override(k, v) for k, v in values.items()), f"output_dir={run_dir}", "resume=auto", "--no-progress"]


def _die_with_parent():
    """preexec_fn (Linux): SIGTERM to the child when its parent, the sweep, dies. Resolved before the fork,
    so the child only makes one libc call between fork and exec."""
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec():
        prctl(pr_set_pdeathsig, signal.SIGTERM)
    return preexec


def start(cmd: List[str], run_dir: str) -> subprocess.Popen:
    """Starts the trial's training; its output goes to RUN/train.log (appended: a resumed trial keeps both)."""
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(os.path.join(run_dir, LOG), "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True,
                                preexec_fn=_die_with_parent() if sys.platform.startswith("linux") else None)


def stop(proc: subprocess.Popen, grace_s: float = 600.0) -> int:
    """SIGTERM (align writes a checkpoint at the next step boundary and exits 75); SIGKILL after grace_s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def eval_rows(run_dir: str, metric: str) -> List[Tuple[int, float]]:
    """(step, value of `metric`) of every complete row of RUN/eval.jsonl, first row per step kept (a resumed
    run evaluates a step again that the killed one had already evaluated)."""
    path = os.path.join(run_dir, rundir.EVAL)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    out: Dict[int, float] = {}
    for line in text.split("\n")[:-1]:           # the last piece is "" or a row still being written
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if metric in row and isinstance(row.get("step"), int):
            out.setdefault(row["step"], float(row[metric]))
    return sorted(out.items())


def watch(proc: subprocess.Popen, trial, run_dir: str, metric: str,
          poll_s: float = 0.5) -> Tuple[int, Optional[Tuple[int, float]]]:
    """Reports each new eval row to the optuna `trial` while `proc` trains; stops the run (stop()) as soon as
    the pruner says so. -> (exit status, (step, value) it was pruned at, or None)."""
    reported = set()
    while True:
        rc = proc.poll()
        for step, value in eval_rows(run_dir, metric):
            if step in reported:
                continue
            reported.add(step)
            trial.report(value, step)
            if rc is None and trial.should_prune():
                rc = stop(proc)
                if rc == 0:                      # it finished while being stopped: a complete run
                    return rc, None
                return rc, (step, value)
        if rc is not None:
            return rc, None
        time.sleep(poll_s)


def final_value(run_dir: str, metric: str) -> float:
    """The finished run's value: that of the model `align export RUN` takes -- its best checkpoint's, when the run
    kept one by `metric` (eval.best_metric), else summary.json's final eval (else eval.jsonl's last row)."""
    found = rundir.best_of_run(run_dir)
    if found is not None and found[1].get("best_metric") == metric and isinstance(found[1].get("best"), (int, float)):
        return float(found[1]["best"])
    try:
        with open(os.path.join(run_dir, rundir.SUMMARY)) as f:
            value = json.load(f).get("metrics", {}).get(metric)
    except (OSError, ValueError):
        value = None
    if value is None:
        rows = eval_rows(run_dir, metric)
        value = rows[-1][1] if rows else None
    if value is None:
        raise TrialFailed(f"{run_dir}: the run finished without {metric} (neither summary.json nor eval.jsonl "
                          f"has it)")
    return float(value)


def last_line(run_dir: str) -> str:
    """The last non-empty line of the trial's train.log (its one-line error, when align train failed)."""
    try:
        with open(os.path.join(run_dir, LOG), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 4096))
            # a log line ends at \n (\r: a progress bar's redraw), not at a U+2028 inside an error's caption or key
            lines = [s.strip() for s in split_lines(f.read().decode(errors="replace")) if s.strip()]
    except OSError:
        return "(no train.log)"
    return lines[-1] if lines else "(train.log is empty)"


def outcome(rc: int, run_dir: str, metric: str) -> float:
    """The value of a run that exited with `rc` (not pruned), or the TrialFailed/TrialStopped it amounts to."""
    if rc == 0:
        return final_value(run_dir, metric)
    log = os.path.join(run_dir, LOG)
    if rc == PREEMPTED_EXIT:
        raise TrialStopped(f"align train was stopped from outside (exit 75, checkpoint written; {log})")
    raise TrialFailed(f"align train exited with status {rc}: {last_line(run_dir)} ({log})")
