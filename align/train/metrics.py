"""What a run reports, in one owner: metrics.jsonl, the trackers (TensorBoard, W&B), the progress bar,
eval.jsonl and the end summary (summary.json, loss.png, one console line).

Rows of metrics.jsonl: every train.log_every steps and the last one: step, epoch, loss (of that step), lr,
logit_scale (exp applied), logit_bias, samples_per_s and data_wait_frac (over the steps since the last row),
skipped / skipped_by_reason (samples the loaders dropped, every rank, whole run), bad_steps (NaN/Inf steps, whole run),
loss/PAIR (unweighted, per modality pair). loss and loss/PAIR are the global batch's: the mean over the ranks of their
losses (mean_over_ranks), not rank 0's own. A weights-only start writes a step-0 row with its temperature.
Files are written by the main process; trackers log on it only.
"""
import json
import math
import os
import time
from typing import Optional

from align.config import Recipe, recipe_to_dict
from align.errors import AlignError
from align.train import rundir
from align.train.state import TrainState
from align.train.storage import append_line
from align.writes import write_text_whole
from align.train.step import StepResult


def build_trackers(r: Recipe) -> list:
    """Accelerate trackers: TensorBoard in output_dir/tb always, W&B when train.wandb_project is set.
    They log on the main process only, beside metrics.jsonl (which the loss plot and tests read)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker
    trackers = [TensorBoardTracker(rundir.TB_DIR, r.output_dir)]
    if r.train.wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise AlignError("train.wandb_project is set but wandb is not installed (pip install wandb)") from None
        trackers.append(WandBTracker(r.train.wandb_project, config=recipe_to_dict(r), dir=r.output_dir,
                                     resume="allow"))
    return trackers


class RunLogger:
    """One run's reporting (see the module docstring). `eng`: align.train.setup.Engine."""

    def __init__(self, r: Recipe, eng, state: TrainState, progress: bool = True):
        from align.progress import progress as progress_bar
        from align.train.storage import resume_metrics, truncate_metrics
        self.r, self.eng, self.acc, self.is_main = r, eng, eng.acc, eng.acc.is_main_process
        self.acc.init_trackers("align")     # starts the trackers of build_trackers (main process only)
        self.path = os.path.join(r.output_dir, rundir.METRICS)
        # rows past the step this run resumes from were logged by a run that died after its last checkpoint: drop
        # them, so metrics.jsonl never holds a step twice. The loss of the last step taken: the summary's
        # final_loss; a run resumed at its last step (killed after its final checkpoint, before its summary) takes
        # no step, and its final loss is the one logged at that step (read in the same pass)
        self.loss = float("nan")
        if self.is_main:
            self.loss = resume_metrics(self.path, state.step)
            truncate_metrics(os.path.join(r.output_dir, rundir.EVAL), state.step)
        # unbuffered: a full disk fails the write of that row, which append_line then cuts back whole
        self.f = open(self.path, "ab", buffering=0) if self.is_main else None
        self.row_loss = self.loss              # the last metrics row's loss: the mean over ranks (OverfitWatch)
        # a bar on a terminal; one plain line every 30 s in a log file (align.progress)
        self.bar = progress_bar(total=eng.total_steps, initial=state.step, disable=not (progress and self.is_main),
                                unit="step", desc="train", dynamic_ncols=True)
        self.overfit = OverfitWatch()
        self.t_start = time.perf_counter() - state.elapsed_s
        self._window()
        if eng.init_row is not None:
            self._write(eng.init_row)
            self.acc.log({"train/logit_scale": eng.init_row["logit_scale"]}, step=0)

    def _window(self) -> None:
        self.t_window, self.wait_window, self.n_window = time.perf_counter(), 0.0, 0

    def _write(self, row: dict) -> None:
        if self.is_main:     # a full disk: one line naming the intact checkpoint (align.train.storage)
            append_line(self.f, self.path, json.dumps(row) + "\n", rundir.checkpoints_dir(self.r.output_dir))

    def elapsed(self) -> float:
        """Training wall time of the run, resumed parts included."""
        return time.perf_counter() - self.t_start

    def waited(self, seconds: float, state: TrainState) -> None:
        """Time spent waiting for the step's batches."""
        self.wait_window += seconds
        state.data_wait_s += seconds

    def step(self, state: TrainState, res: StepResult, loader) -> None:
        """After optimizer step `state.step`: a metrics row when due, the progress bar."""
        from align.train.sharding import full_value
        self.n_window += 1
        self.loss = float(res.loss)
        if state.step % self.r.train.log_every == 0 or state.step == self.eng.total_steps:
            dt = max(time.perf_counter() - self.t_window, 1e-9)
            sps = self.n_window * self.eng.global_batch / dt
            core = self.eng.core
            mine = {"loss": self.loss, **{f"loss/{pair}": float(v) for pair, v in res.pair_losses.items()}}
            # one collective a row: every rank's skip counts and losses in one gather (StepWatch.gather_object)
            every = self.eng.watch.gather_object({"counts": own_counts(loader), "losses": mine})
            counts = add_counts([theirs["counts"] for theirs in every])
            losses = mean_over_ranks(mine, [theirs["losses"] for theirs in every])
            self.loss = self.row_loss = losses["loss"]
            rec = {"step": state.step, "epoch": state.epoch, "loss": self.loss,
                   "lr": self.eng.scheduler.get_last_lr()[0],
                   "logit_scale": float(full_value(core.logit_scale.detach()).exp()),
                   "samples_per_s": sps, "data_wait_frac": self.wait_window / dt,
                   # counted by the loader, also those at a stream's end that ride on no batch
                   "skipped": sum(counts["skipped"].values()), "skipped_by_reason": counts["skipped"],
                   "bad_steps": state.bad_steps_total}
            if core.logit_bias is not None:
                rec["logit_bias"] = float(full_value(core.logit_bias.detach()))
            rec.update({k: v for k, v in losses.items() if k != "loss"})   # unweighted, per pair
            self._write(rec)
            self.acc.log({f"train/{k}": v for k, v in rec.items() if k not in ("step", "epoch")
                          and not isinstance(v, dict)}, step=state.step)
            self.bar.set_postfix(loss=f"{self.loss:.3f}", lr=f"{rec['lr']:.2e}", samples_per_s=f"{sps:.0f}",
                                 data_wait=f"{rec['data_wait_frac']:.1%}")
            self._window()
        self.bar.update(1)

    def close_bar(self) -> None:
        self.bar.close()

    def bad_step(self, state: TrainState, max_bad_steps: int) -> None:
        """One console line for an attempt the NaN guard skipped (main process): every rank skipped it together
        (align.train.step.is_finite), so the line is the launch's, said once."""
        if self.is_main:
            self.bar.write(f"step {state.step + 1}: loss NaN/Inf, skipped without an update ({state.bad_in_row} "
                           f"in a row; the run stops at train.max_bad_steps={max_bad_steps})")

    def heldout(self, results: dict, step: int) -> None:
        """After a periodic evaluation: its figure in one line, and one warning when the held-out metric falls while
        the loss falls (main process). The bar stays: it is cleared for the lines and drawn again below them."""
        name = heldout_metric(results, self.r.eval.best_metric)
        if name and self.is_main:
            self.bar.write(f"step {step}: val {name} {results[name]:.4f}")
        # the last row's loss, not this rank's own one (a SigLIP rank's is world_size x its rows' share)
        line = self.overfit.check(name, results.get(name) if name else None, self.row_loss, step)
        if line and self.is_main:
            self.bar.write(f"warning: {line}")

    def summary(self, state: TrainState, loader, final: str, results: dict, counts: Optional[dict] = None) -> dict:
        """summary.json, the trackers' end, loss.png and one console line (main process); returns the summary
        ({} on other ranks). Collective: a sharded model's FLOPs are counted by a forward on every rank.
        counts: every rank's skipped/noted counts summed (run_counts); default: this loader's own."""
        from align.train.perf import estimate_flops_per_sample, peak_flops
        from align.train.plots import write_loss_plot
        r, acc, wall = self.r, self.acc, state.elapsed_s
        flops = estimate_flops_per_sample(self.eng.core) if self.is_main or self.eng.fsdp else None
        if not self.is_main:
            return {}
        counts = counts or {"skipped": dict(loader.skipped), "noted": dict(getattr(loader, "noted", {}))}
        sps = state.samples / max(wall, 1e-9)
        peak = peak_flops(acc.device, r.train.precision) * self.eng.world
        summary = {"steps": state.step, "final_loss": self.loss, "wall_time_s": wall, "samples_per_s": sps,
                   "data_wait_frac": state.data_wait_s / max(wall, 1e-9),
                   "flops_per_sample": flops, "peak_flops": peak,
                   "mfu": (flops * sps / peak) if peak and flops else None, "skipped": dict(counts["skipped"]),
                   "noted": dict(counts["noted"]),
                   "bad_steps": state.bad_steps_total, "checkpoint": final, "metrics": results,
                   "world_size": self.eng.world, "precision": r.train.precision,
                   "weights": f"ema {r.train.ema:g}" if r.train.ema else "trained"}
        # loss.png first, summary.json last, each whole (a full disk: one line naming it and `final`): a rerun
        # takes a run whose summary.json is of its last step as finished (setup.finished_summary) and writes nothing
        held = heldout_metric(results, r.eval.best_metric)
        write_loss_plot(self.path, os.path.join(r.output_dir, rundir.LOSS_PLOT),
                        eval_path=os.path.join(r.output_dir, rundir.EVAL), metric=held, intact=final)
        write_text_whole(os.path.join(r.output_dir, rundir.SUMMARY), json.dumps(summary, indent=1), intact=final)
        self.f.close()
        if r.train.wandb_project:
            acc.get_tracker("wandb", unwrap=True).summary.update(
                {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        for tracker in acc.trackers:   # not acc.end_training(): that also destroys the process group
            tracker.finish()
        acc.print(f"trained {state.step} steps in {wall:.0f}s ({sps:.0f} samples/s), final loss {self.loss:.3f}"
                  + (f", val {held} {results[held]:.4f}" if held else "")
                  + (f", weights: their average (train.ema {r.train.ema:g})" if r.train.ema else "")
                  + skipped_words(counts["skipped"])
                  + (f", {state.bad_steps_total} NaN/Inf step(s) skipped" if state.bad_steps_total else "")
                  + "".join(f", {n} {what}" for what, n in sorted(counts["noted"].items()))
                  + f" -> {r.output_dir}")
        return summary


def run_counts(loader, gather) -> dict:
    """{"skipped": {reason: n}, "noted": {what: n}} of every rank's loader, summed (collective: `gather` is
    align.train.guard.StepWatch.gather_object). Each rank reads its own shards, so one rank's counts miss the
    broken samples of the others' shards."""
    return add_counts(gather(own_counts(loader)))


def own_counts(loader) -> dict:
    """This rank's loader's {"skipped": {reason: n}, "noted": {what: n}}."""
    return {"skipped": dict(loader.skipped), "noted": dict(getattr(loader, "noted", {}))}


def add_counts(every: list) -> dict:
    """The sum of every rank's own_counts (`every`: index rank)."""
    from collections import Counter
    total = {"skipped": Counter(), "noted": Counter()}
    for theirs in every:
        for k in total:
            total[k].update(theirs[k])
    return {k: dict(v) for k, v in total.items()}


def mean_over_ranks(values: dict, every: list) -> dict:
    """{name: mean over every rank of that rank's value}; `values`: this rank's, `every`: every rank's (index rank,
    gathered by the caller: StepWatch.gather_object). A rank's SigLIP loss (any loss with local_loss) is world_size x
    its own rows' share of the global batch's loss, so rank 0's value alone is not the loss of the batch the step
    trained on; the mean over ranks is, for every loss (align.losses.distributed). CLIP's global mode holds that value
    on every rank already."""
    # a pair no row of a rank's batch had is not in its values (align.losses.multipair): the mean of those that have it
    return {k: sum(have) / len(have) for k in values for have in [[float(v[k]) for v in every if k in v]]}


def skipped_words(skipped: dict) -> str:
    """", skipped N samples" for the end line, counting samples only: a duplicate file inside a sample drops that
    file, not the sample, and an unreadable shard is no sample (as `align data inspect` counts them)."""
    from align.data.stream.faults import not_samples, skipped_samples
    apart = sorted((k, n) for k, n in skipped.items() if not_samples(k) and n)
    return f", skipped {skipped_samples(skipped)} samples" + "".join(f", {n} {k}" for k, n in apart)


def heldout_metric(results: dict, best_metric: Optional[str]) -> Optional[str]:
    """The held-out figure a person looks at first: eval.best_metric, else the first zero-shot acc1 or
    retrieval R@1 of the results; None without results."""
    if best_metric and best_metric in results:
        return best_metric
    for end in ("/zeroshot/acc1", "retrieval/image_retrieval_recall@1", "retrieval/audio_retrieval_recall@1",
                "recall@1"):
        for k in results:
            if k.endswith(end):
                return k
    return None


class OverfitWatch:
    """Warns once when the held-out metric has fallen at `patience` evaluations in a row while the training
    loss kept falling: the model is fitting its training groups, not the task (train.max_steps or the data)."""

    def __init__(self, patience: int = 2):
        self.patience, self.said = patience, False
        self.prev: Optional[tuple] = None      # (metric, train loss) at the previous evaluation
        self.falls = 0

    def check(self, name: Optional[str], metric: Optional[float], loss: float, step: int) -> Optional[str]:
        if name is None or metric is None or not math.isfinite(loss):
            return None
        if self.prev is not None:
            worse, learning = metric < self.prev[0], loss < self.prev[1]
            self.falls = self.falls + 1 if (worse and learning) else 0
        self.prev = (metric, loss)
        if self.falls >= self.patience and not self.said:
            self.said = True
            return (f"held-out {name} fell at {self.falls} evaluations in a row (now {metric:.4f} at step {step}) "
                    f"while the training loss kept falling ({loss:.4f}): the model fits its training groups; "
                    f"the best checkpoint so far is kept when eval.best_metric is set")
        return None


def run_val(core, r: Recipe, acc, step: int) -> dict:
    """eval.tasks (names of the benchmark registry, align.bench BENCHMARKS) on the val set (CLIP_benchmark
    layout), expanded over the modalities by align.train.evaluate; flat {WHERE/TASK/METRIC: value}, logged
    to the trackers and appended to eval.jsonl. Main process only ({} elsewhere)."""
    if not acc.is_main_process:
        return {}
    from align.train.evaluate import evaluate_model
    core.eval()
    core.data_limits = r.data.limits    # the val set's media are decoded within the recipe's limits, as training's
    flat = evaluate_model(core, r.data.val, tasks=r.eval.tasks, batch_size=r.eval.batch_size, progress=False)
    acc.log({f"val/{k}": v for k, v in flat.items()}, step=step)
    path = os.path.join(r.output_dir, rundir.EVAL)
    with open(path, "ab", buffering=0) as f:     # a full disk: one line, the file cut back to whole rows
        append_line(f, path, json.dumps({"step": step, **flat}) + "\n", rundir.checkpoints_dir(r.output_dir))
    return flat


def evaluate(eng, r: Recipe, step: int) -> dict:
    """run_val on the model: a plain copy gathered on the main process when it is sharded (collective); with
    train.ema, the weight average (the trained weights come back after it; sharded: before the gather).
    The global RNGs (torch CPU and CUDA, Python, NumPy) are put back afterwards: an evaluation's own draws (its
    DataLoaders' base seeds) would shift every later dropout mask, so eval.every would change the trained weights."""
    from align.train.checkpoint import rng_state, set_rng_state
    saved = rng_state()
    try:
        return _evaluate(eng, r, step)
    finally:
        set_rng_state(*saved)


def _evaluate(eng, r: Recipe, step: int) -> dict:
    from align.train.sharding import unsharded_copy
    if eng.ema is not None and eng.fsdp:
        with eng.ema.applied(eng.core):        # every rank swaps in its shards of the average, then the gather
            core = unsharded_copy(eng.core, r.model, eng.acc.is_main_process)
        return run_val(core, r, eng.acc, step)
    if eng.ema is not None and eng.acc.is_main_process:
        with eng.ema.applied(eng.core):
            return run_val(eng.core, r, eng.acc, step)
    core = unsharded_copy(eng.core, r.model, eng.acc.is_main_process) if eng.fsdp else eng.core
    return run_val(core, r, eng.acc, step)
