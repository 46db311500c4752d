"""`align sweep RECIPE --space SPACE.yaml --trials N`: the Optuna study, its storage, and the loop over trials.

The objective is the recipe's eval.best_metric on data.val (or on the groups data.val_split carves out of the
training data, the same in every trial), maximised (align keeps the `best` checkpoint by
the same rule: higher is better). data.val must hold the *selection* groups (e.g. speakers or writers
that neither training nor the final report uses): the sweep picks settings by that set, so its figures
are optimistic by the selection and the chosen run is reported on another set of unseen groups.

Storage: `sqlite:///DIR/study.db` by default; any Optuna storage URL (postgresql://, mysql://) lets several
machines share one study, each running the same command (its own --out, or a shared one). Optuna's RDB
storage is used as it is: its heartbeat (heartbeat_interval, grace_period) marks a trial whose sweep died
FAIL, and RetryHeartbeatStaleTrialCallback queues a copy with the same params (system attr
`failed_trial`: the original number), which the next sweep to ask for a trial runs in the *original*
trial's run dir with resume=auto. A rerun of a killed sweep first waits one grace period when the study
has RUNNING trials, to learn which are dead. Two live sweeps never train one run dir: the run dir's lock
(align.runlock) refuses a second `align train` with one line, and that trial fails.

N counts finished trials (COMPLETE or PRUNED) in the study: rerunning the command after a kill finishes
the same N; several machines together overshoot by at most the trials running when N is reached.

Layout: each study has its own folder in --out, OUT/STUDY/ (STUDY: --study, default the recipe's file name),
holding its trials' run dirs OUT/STUDY/trial-NNNN and its summary (sweep.csv, sweep.md, sweep.png); the
default storage OUT/study.db holds every study of that --out. Without --out, OUT is sweeps/RECIPE and the
recipe's own study is that folder itself (sweeps/RECIPE/trial-NNNN; another --study: sweeps/RECIPE/STUDY).
So `--study NEW` in the same --out never meets another study's runs; and each run dir records whose trial it
is (trial.claim_run_dir): a study made anew under an old name (study.db deleted) is refused at start, before
anything trains, instead of resuming the old study's finished runs as its own.
"""
import contextlib
import copy
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

from align.config import load_recipe_dict, parse_recipe
from align.errors import AlignError, ConfigError
from align.shipped import resolve_recipe
from align.sweep import report, trial as trials
from align.sweep.space import Param, describe_space, load_space
from align.writes import StorageError, is_storage_error, storage_line

FINISHED = ("COMPLETE", "PRUNED")
MAX_FAILS_IN_ROW = 3


class SweepStopped(KeyboardInterrupt):
    """SIGTERM to the sweep: handled like Ctrl-C (the running trial checkpoints and is queued again)."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise AlignError("align sweep needs Optuna: pip install 'align-clip[sweep]'") from None
    # the sweep prints its own line per trial (a failed trial's one-line error included, not a traceback)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass
class Sweep:
    """What every trial of one sweep shares."""
    recipe_path: str
    overrides: List[str]
    params: List[Param]
    metric: str
    out: str                             # the study's folder, OUT/STUDY: its run dirs and summary
    study: object = None
    retry: object = None                 # the RetryHeartbeatStaleTrialCallback the storage calls
    poll_s: float = 0.5
    running: Optional[int] = None        # the Optuna number of the trial this process is running
    stopped: set = field(default_factory=set)
    fails_in_row: int = 0
    t_start: float = 0.0
    say: object = print                  # the sweep's console lines (run_sweep's `say`)


def load_sweep_recipe(recipe: str, overrides: List[str]):
    """(path, recipe dict, Recipe); one line when the recipe cannot be swept (no data.val or best_metric)."""
    path = resolve_recipe(recipe)
    data = load_recipe_dict(path, overrides)
    try:
        r = parse_recipe(copy.deepcopy(data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    held_out = r.data.val or r.data.val_split
    if not held_out or not r.eval.best_metric:
        missing = " and ".join(k for k, v in (("data.val or data.val_split", held_out),
                                              ("eval.best_metric", r.eval.best_metric)) if not v)
        raise ConfigError(f"{path}: align sweep maximises eval.best_metric on data.val or data.val_split (the "
                          f"selection groups' val set); this recipe has no {missing} (set it in the recipe or as "
                          "KEY=VALUE)")
    from align.data.write.cached import val_input
    if r.data.val and val_input(r.data.val) is None:
        from align.train.evaluate import check_val_set
        check_val_set(r.data.val, r.eval.tasks, list(r.model.towers), best_metric=r.eval.best_metric)
    # (a data.val CSV / folder of pairs: the first trial writes it as an eval set in data.shards_cache, the others
    # read that folder, and each checks it before its first step, as for data.train's tables)
    # (data.val_split: each trial carves the same groups out of the training data -- a function of the split and
    # `seed` -- into its run dir, and checks the val set there before its first step)
    return path, data, r


def check_split_fixed(r, params: list, path: str) -> None:
    """data.val_split with `frac` draws its groups by `seed`: a space over seed would score each trial on other
    groups, so that is refused in one line (name the groups instead). So is a space over the held-out set itself
    (data.val, data.val_split), or over data.train when data.val_split carves the held-out set out of it: the
    sweep would pick the set a trial scores best on (a report set among them), not the best setting."""
    split = r.data.val_split
    moved = [p.key for p in params if p.key.split(".")[:2] in (["data", "val"], ["data", "val_split"])
             or (split and p.key.split(".")[:2] == ["data", "train"])]
    if moved:
        raise ConfigError(f"{path}: the space sweeps {', '.join(moved)}, which changes the held-out set each trial "
                          "is scored on: every trial must be scored on the same selection groups; fix data.val or "
                          "data.val_split (and its data.train) in the recipe")
    if split and not split.get("groups") and "seed" in {p.key for p in params}:   # (config: never with data.val)
        raise ConfigError(f"{path}: the space sweeps `seed`, and data.val_split's frac draws its held-out groups "
                          "by seed: trials would be scored on different groups; give data.val_split.groups "
                          "[...] or data.val")


def open_study(optuna, storage: str, name: str, heartbeat_s: int, pruner: str, startup: int, space: dict):
    """The study (created or loaded), its storage with Optuna's heartbeat and retry callback."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}   # several writers wait
    for attempt in range(5):
        try:
            st = RDBStorage(storage, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                            grace_period=3 * heartbeat_s, heartbeat_stale_trial_callback=retry)
            break
        except Exception as e:    # a bad URL, an unreachable server, a missing driver: one line
            if is_storage_error(e):                     # a full disk: storage_guard's line, without retrying
                raise
            # two sweeps started together on a new database both create its tables: one loses (IntegrityError)
            if type(e).__name__ not in ("IntegrityError", "OperationalError") or attempt == 4:
                raise AlignError(f"--storage {storage}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    chosen = (optuna.pruners.MedianPruner(n_startup_trials=startup) if pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=st, study_name=name, direction="maximize", load_if_exists=True,
                                pruner=chosen)
    had = study.user_attrs.get("space")
    if had is None:
        study.set_user_attr("space", space)
    elif had != space:
        differ = sorted(k for k in set(had) | set(space) if had.get(k) != space.get(k))
        raise ConfigError(f"study {name!r} in {storage} was made with another space (it differs in "
                          f"{', '.join(differ)}); use --study NEW for this one (its runs go to their own folder, "
                          f"OUT/NEW)")
    return study, retry


@contextlib.contextmanager
def storage_guard(storage: str):
    """A full disk under the study's storage (SQLite: "database or disk is full") is one line, StorageError (exit
    74) naming the database, instead of Optuna's traceback (StorageInternalError, which blames invalid data)."""
    try:
        yield
    except AlignError:
        raise
    except Exception as e:
        if not is_storage_error(e):
            raise
        where = storage[len("sqlite:///"):] if storage.startswith("sqlite:///") else storage
        raise StorageError(storage_line(e, where, None, None, kept="the study's finished trials are kept in it")) \
            from None


def _count(study, states) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def started_at(study, number: int) -> Optional[str]:
    """When trial `number` of the study started (ISO time; None when the study has no such trial): what its run
    dir records, and what a study made anew under the same name does not share."""
    t = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return t.datetime_start.isoformat() if t is not None and t.datetime_start is not None else None


def check_trial_dirs(sw: Sweep, name: str) -> None:
    """Up front, before anything trains: every non-empty OUT/STUDY/trial-NNNN must be that trial of this very
    study (its record names it and its start time), else one line (trials.RunDirTaken)."""
    for entry in sorted(os.listdir(sw.out)):
        number = entry.removeprefix("trial-")
        path = os.path.join(sw.out, entry)
        if entry.startswith("trial-") and number.isdigit() and os.path.isdir(path) and os.listdir(path):
            trials.claim_run_dir(path, name, int(number), started_at(sw.study, int(number)))


def wait_for_stale(optuna, sw: Sweep, heartbeat_s: int, say) -> None:
    """A rerun after a kill: RUNNING trials may be the dead sweep's; after one grace period without a
    heartbeat Optuna fails them and the retry callback queues them again (live sweeps keep beating)."""
    running = [t.number for t in sw.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    if not running:
        return
    wait = 3 * heartbeat_s + heartbeat_s
    say(f"trials {running} are RUNNING: waiting {wait} s for Optuna's heartbeat to tell a live sweep's "
        f"from a killed one's (a killed one's is resumed here, in its run dir)")
    time.sleep(wait)
    optuna.storages.fail_stale_trials(sw.study)


def objective(sw: Sweep, trial) -> float:
    """One trial: its values, its run dir (the original trial's for a retry), `align train`, watched."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    sw.running = trial.number
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)      # a retry: the original's number
    number = trial.number if first is None else first
    values = {p.key: p.suggest(trial) for p in sw.params}
    run_dir = os.path.abspath(os.path.join(sw.out, f"trial-{number:04d}"))
    trials.claim_run_dir(run_dir, trial.study.study_name, number, started_at(trial.study, number))
    trial.set_user_attr("run_dir", run_dir)
    trial.set_user_attr("host", socket.gethostname())
    # a trial trains for minutes to hours with its output in its log: say which one runs, on what, and where
    sw.say(f"[{time.time() - sw.t_start:6.0f}s] trial {trial.number} started"
           + (f" (a retry of trial {first})" if first is not None else "") + ": "
           + " ".join(f"{k}={report.fmt(v)}" for k, v in values.items())
           + f"  -> {run_dir} (log: {os.path.join(run_dir, trials.LOG)})")
    proc = trials.start(trials.train_command(sw.recipe_path, sw.overrides, values, run_dir), run_dir)
    try:
        rc, pruned = trials.watch(proc, trial, run_dir, sw.metric, sw.poll_s)
    except BaseException:          # Ctrl-C, SIGTERM, a storage error: the run checkpoints before we go
        trials.stop(proc)
        raise
    if pruned:
        raise optuna.TrialPruned(f"at step {pruned[0]}: {sw.metric}={pruned[1]:.4f}")
    try:
        return trials.outcome(rc, run_dir, sw.metric)
    except trials.TrialFailed as e:
        trial.set_user_attr("error", str(e))
        if isinstance(e, trials.TrialStopped):
            sw.stopped.add(trial.number)
        raise


def progress_line(sw: Sweep, study, t) -> str:
    """One line per finished trial: number, state, value, params, run dir, best so far."""
    params = " ".join(f"{k}={report.fmt(v)}" for k, v in t.params.items())
    if t.state.name == "COMPLETE":
        what = f"{sw.metric}={t.value:.4f}"
    elif t.state.name == "PRUNED" and t.intermediate_values:
        step = max(t.intermediate_values)
        what = f"pruned at step {step}, {sw.metric}={t.intermediate_values[step]:.4f}"
    else:
        what = t.user_attrs.get("error", "failed")
    try:
        best = f"best so far: trial {study.best_trial.number} ({study.best_value:.4f})"
    except ValueError:
        best = "no finished trial yet"
    done = _count(study, FINISHED)
    return (f"[{time.time() - sw.t_start:6.0f}s] trial {t.number} {t.state.name.lower()}: {what}  {params}  "
            f"-> {t.user_attrs.get('run_dir', '?')}  ({done} finished; {best})")


def _after_trial(sw: Sweep, say):
    """Optuna callback after each trial: the progress line, a stopped trial queued again, failures counted."""
    def callback(study, t):
        if t.state.name == "FAIL" and t.number in sw.stopped:
            sw.retry(study, t)
        say(progress_line(sw, study, t))
        sw.fails_in_row = sw.fails_in_row + 1 if t.state.name == "FAIL" else 0
    return callback


def run_loop(optuna, sw: Sweep, n_trials: int, say) -> None:
    """Trials until the study has n_trials finished ones and no queued retry; one trial per optimize() call,
    so that Optuna's own stale check (fail_stale_trials) runs before each. Ctrl-C / SIGTERM: the running
    trial's run checkpoints, the trial is failed and queued again (the same callback as a stale one)."""
    callback = _after_trial(sw, say)
    while True:
        optuna.storages.fail_stale_trials(sw.study)
        if _count(sw.study, FINISHED) >= n_trials and not _count(sw.study, ("WAITING",)):
            return
        if sw.fails_in_row >= MAX_FAILS_IN_ROW:
            raise AlignError(f"{sw.fails_in_row} trials in a row failed; the last: "
                             f"{sw.study.trials[-1].user_attrs.get('error', '?')}")
        try:
            sw.study.optimize(lambda t: objective(sw, t), n_trials=1, catch=(trials.TrialFailed,),
                              callbacks=[callback])
        except optuna.exceptions.UpdateFinishedTrialError:
            # this trial's heartbeat came late and another sweep failed (and re-queued) it meanwhile: the run
            # dir keeps what this one trained; the retry resumes from it or is refused by the run dir's lock
            say(f"trial {sw.running}: another sweep marked it failed while it ran here (a late heartbeat; "
                f"--heartbeat sets the interval); its retry goes on from its run dir")
        except KeyboardInterrupt as e:
            how = "SIGTERM" if isinstance(e, SweepStopped) else "Ctrl-C"
            t = next((t for t in sw.study.get_trials(deepcopy=False) if t.number == sw.running), None)
            if t is None or t.state.name != "FAIL":
                raise SweepStopped(f"sweep interrupted ({how}) between trials; rerun the same command to go "
                                   f"on") from None
            sw.retry(sw.study, t)
            raise SweepStopped(f"trial {t.number} interrupted ({how}); its run checkpointed and it is queued again: "
                               f"rerun the same command to resume it in {t.user_attrs.get('run_dir', '?')}") from None


def _raise_stopped(signum, frame):
    raise SweepStopped("SIGTERM")


def check_options(n_trials: int, prune_after: int, heartbeat_s: int, study: Optional[str], out: Optional[str]):
    """The command's own options, before the recipe is read: one line naming the option."""
    for opt, value, low in (("--trials", n_trials, 1), ("--prune-after", prune_after, 0),
                            ("--heartbeat", heartbeat_s, 1)):
        if value < low:
            raise AlignError(f"{opt}: must be >= {low}, got {value}")
    if study is not None and (not study.strip() or study in (".", "..") or "/" in study or os.sep in study):
        raise AlignError(f"--study {study!r}: the study's runs go to the folder OUT/STUDY, so its name must be a "
                         f"folder name (not empty, '.' or '..', no '/')")
    if study is not None and (_is_trial_dir(study) or study.lower() in (report.CSV, report.MARKDOWN, report.PLOT)
                              or study.lower().startswith("study.db")):
        raise AlignError(f"--study {study!r}: a name of what a study keeps in its folder (run dirs trial-NNNN, "
                         f"{report.CSV}, {report.MARKDOWN}, {report.PLOT}, study.db): OUT/STUDY would be inside "
                         "another study or its storage; name the study otherwise")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise AlignError(f"--out {out}: not a folder (the sweep writes its studies' run dirs and study.db in it)")


def make_folder(path: str, option: str = "--out") -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise AlignError(f"{option} {path}: cannot create this folder ({e.strerror or e})") from None


def study_folders(out: Optional[str], stem: str, name: str, say) -> tuple:
    """(OUT, the study's folder). An --out given: OUT/STUDY. Without one, OUT is sweeps/RECIPE and the recipe's
    own study (STUDY = RECIPE) is that folder itself, another study sweeps/RECIPE/STUDY. Sweeps before that put the
    recipe's own study in sweeps/RECIPE/RECIPE: one begun there (and none in sweeps/RECIPE) goes on there."""
    if out is not None:
        return out, os.path.join(out, name)
    out = os.path.join("sweeps", stem)
    if name != stem:
        return out, os.path.join(out, name)
    old = os.path.join(out, name)
    if os.path.isdir(old) and not _holds_study(out):
        say(f"sweep {name!r}: resuming the study begun in {old} (the folder sweeps before this version used; new "
            f"sweeps of {stem} use {out})")
        return out, old
    return out, out


def _holds_study(folder: str) -> bool:
    """A study's run dirs (trial-NNNN) or summary in folder."""
    return os.path.isdir(folder) and any(_is_trial_dir(e) or e == report.CSV for e in os.listdir(folder))


def _is_trial_dir(name: str) -> bool:
    """`name` is of the form of a trial's run dir, trial-NNNN."""
    return name.startswith("trial-") and name.removeprefix("trial-").isdigit()


def run_sweep(recipe: str, space: str, n_trials: int, storage: Optional[str] = None, study: Optional[str] = None,
              out: Optional[str] = None, overrides: Optional[List[str]] = None, pruner: str = "median",
              prune_after: Optional[int] = None, heartbeat_s: int = 10, poll_s: float = 0.5, say=None) -> dict:
    """The sweep (module docstring); returns {"best_run_dir", "best_value", "rows", "files"}.
    prune_after: finished trials before the median pruner stops any (default 2); only with pruner="median"."""
    say = say or (lambda line: print(line, flush=True))
    if prune_after is not None and pruner != "median":     # the pruner none never reads it
        raise AlignError(f"--prune-after: only with --pruner median (--pruner {pruner} stops no trial)")
    prune_after = 2 if prune_after is None else prune_after
    optuna = _optuna()
    check_options(n_trials, prune_after, heartbeat_s, study, out)
    path, data, r = load_sweep_recipe(recipe, list(overrides or []))
    params = load_space(space, data)
    check_split_fixed(r, params, path)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = study or stem
    out, folder = study_folders(out, stem, name, say)   # this study's run dirs and summary (module docstring)
    make_folder(out)
    make_folder(folder)
    storage = storage or f"sqlite:///{os.path.abspath(os.path.join(out, 'study.db'))}"
    with storage_guard(storage):
        sw = _run_study(optuna, storage, name, path, r, params, n_trials, overrides, folder, pruner, prune_after,
                        heartbeat_s, poll_s, say)
    return summarise(sw, say)


def _run_study(optuna, storage, name, path, r, params, n_trials, overrides, folder, pruner, prune_after,
               heartbeat_s, poll_s, say) -> Sweep:
    """run_sweep's study: opened and its trials run."""
    st, retry = open_study(optuna, storage, name, heartbeat_s, pruner, prune_after, describe_space(params))
    sw = Sweep(path, list(overrides or []), params, r.eval.best_metric, folder, st, retry, poll_s,
               t_start=time.time(), say=say)
    check_trial_dirs(sw, name)
    held = f"data.val={r.data.val}" if r.data.val else f"the data.val_split groups ({r.data.val_split})"
    say(f"sweep {name!r}: {n_trials} trials of {path}, maximising {sw.metric} on {held} "
        f"(the selection groups: report the chosen run on other unseen groups); storage {storage}; runs in {folder}")
    if pruner == "median" and not r.eval.every:
        say("eval.every=0: the runs evaluate only at their end, so there is nothing to prune on (set eval.every)")
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        wait_for_stale(optuna, sw, heartbeat_s, say)
        run_loop(optuna, sw, n_trials, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return sw


def summarise(sw: Sweep, say) -> dict:
    """The table (printed, CSV, Markdown), the plot, and the best trial's run dir."""
    rows = report.trial_rows(sw.study, sw.params)
    try:
        best = sw.study.best_trial
    except ValueError:
        best = None
    files = report.write_tables(rows, sw.metric, sw.out)
    plot = report.write_plot(rows, sw.params, sw.metric, os.path.join(sw.out, report.PLOT),
                             best.number if best else None)
    for line in report.table(rows, sw.metric):
        say(line)
    say(f"tables: {', '.join(files)}" + (f"; plot: {plot}" if plot else ""))
    if best is None:
        say("no trial finished: no best run")
        return {"best_run_dir": None, "best_value": None, "rows": rows, "files": files + [plot]}
    run_dir = best.user_attrs.get("run_dir")     # none for a trial added to the study by hand (study.add_trial)
    say(f"best: trial {best.number}, {sw.metric}={best.value:.4f}, "
        f"{' '.join(f'{k}={report.fmt(v)}' for k, v in best.params.items())}")
    say(f"best run: {run_dir}   (align export {run_dir} --out EXPORT_DIR)" if run_dir else
        "best run: none (the best trial was added to the study without a run dir)")
    return {"best_run_dir": run_dir, "best_value": best.value, "rows": rows, "files": files + [plot]}
