"""`align train RECIPE.yaml [key=value ...]`: the training loop, on one page.

Accelerate is used directly: one process on CPU/GPU, or several through `accelerate launch` (DDP; FSDP2
with train.sharding: fsdp). `train()` below reads in this order (each part is named in its module):

  1. settings   thread count and determinism for the run, restored when it ends;       setup.process_settings
                the run dir's lock, held until the run ends (one live writer)          setup.hold_run_dir
                several processes: a step watchdog naming a hung rank (exit 70)        setup.watch_ranks, guard
  2. engine     accelerator; model, loss, optimizer, schedule                          setup.build_engine
  3. resume     weights, optimizer, schedule, counters (TrainState), data position,   setup.resume, state
                then the loader, then the RNG                                          setup.build_loader
  4. each step  fetch batch -> train_step: embed, contrastive loss, NaN guard,          step.train_step
                backward, clip, optimizer and schedule, clamp temperature
                -> count it -> unlock due towers -> log -> eval (best) -> checkpoint   state, metrics, setup.save
                -> heartbeat -> test hooks -> preempted? checkpoint and stop (exit 75)   guard, hooks
  5. the end    final checkpoint, eval, summary                                        metrics.RunLogger

"step" is the number of optimizer steps taken (TrainState.step): a step whose loss is NaN/Inf updates no
weight, advances neither the step count nor the schedule, and is counted in bad_steps. No callbacks.
"""
import time

from accelerate.utils import set_seed

from align.config import Recipe
from align.errors import SourceUnavailable
from align.train.hooks import TestHooks
from align.train.metrics import RunLogger, evaluate, run_val
from align.train.optim import unlock_due
from align.train.setup import (Batches, build_accelerator, build_engine, build_loader, evaluate_and_keep_best,
                               hold_run_dir, process_settings, resolve_resume, restore_rng, resume, save,
                               stop_if_preempted, watch_ranks, write_config)
from align.train.guard import catch_preemption
from align.train.step import train_step

__all__ = ["train", "build_loader", "resolve_resume", "run_val"]


def train(r: Recipe, progress: bool = True) -> dict:
    # one live writer per output_dir (runlock); SIGTERM/SIGUSR1 stop at a step boundary with a checkpoint and
    # a rank that finishes no step for train.dist_timeout_s is named and ends the launch (guard)
    with process_settings(r.train), hold_run_dir(r) as lock, catch_preemption() as preempt, \
            watch_ranks(r, lock) as watch:
        acc = build_accelerator(r)
        preempt.install()                      # ranks > 0 catch SIGTERM from here on (guard.catch_preemption)
        set_seed(r.seed)
        resume_path = resolve_resume(r)        # the checkpoint to resume from, or None (a fresh start)
        eng = build_engine(r, acc, resume_path, watch)
        state, data_resume = resume(eng, resume_path)
        loader = build_loader(r, eng.core, eng.rank, eng.world, data_resume)
        batches = Batches(loader, state)       # before the RNG restore: its seed draw must not shift the RNG
        restore_rng(eng, resume_path, state)
        write_config(r, acc.is_main_process)
        if r.data.val:                         # fail now, not at the first eval, when a task has nothing to score
            from align.train.evaluate import check_val_set
            check_val_set(r.data.val, r.eval.tasks, eng.core.modalities, best_metric=r.eval.best_metric)
        log, hooks, last_good = RunLogger(r, eng, state, progress), TestHooks(eng.rank), resume_path
        for m in unlock_due(eng.core, r.train.unlock_at_step, state.step):    # resumed past an unlock step
            acc.print(f"unlocked the {m} tower (train.unlock_at_step.{m}={r.train.unlock_at_step[m]})")
        eng.model.train()
        watch.start(state.step)                # the first step runs unwatched: warm-up, loader start

        while state.step < eng.total_steps:
            t0 = time.perf_counter()
            try:
                micro = batches.take(r.train.accum_steps)
            except SourceUnavailable as exn:   # a remote source stayed down for data.retry_budget_s: keep the work
                state.elapsed_s = log.elapsed()
                ckpt = save(eng, state, loader, r)
                raise SourceUnavailable(f"{exn}; saved {ckpt} at step {state.step}, rerun to resume") from None
            log.waited(time.perf_counter() - t0, state)
            watch.fetched()                    # from here on this rank waits for the others, if anyone
            hooks.record_keys(state.step, state.epoch, micro)
            res = train_step(eng, micro, r.train.grad_clip)
            if not state.record_step(res.stepped, eng.global_batch, r.train.max_bad_steps, last_good):
                continue                       # NaN/Inf: no update, no step
            for m in unlock_due(eng.core, r.train.unlock_at_step, state.step):
                acc.print(f"unlocked the {m} tower at step {state.step}")
            log.step(state, res, loader)
            if r.eval.every and r.data.val and state.step % r.eval.every == 0 and state.step < eng.total_steps:
                evaluate_and_keep_best(eng, state, loader, r)    # rank 0 scores, every rank saves a best
            if r.train.checkpoint_every and state.step % r.train.checkpoint_every == 0:
                state.elapsed_s = log.elapsed()
                last_good = save(eng, state, loader, r)
            watch.beat(state.step)
            hooks.after_step(state.step)
            stop_if_preempted(eng, state, loader, r, log, preempt)
        log.close_bar()
        hooks.close()
        if hasattr(loader, "close"):
            loader.close()                     # workers started early for an epoch that will not run

        watch.stop()
        state.elapsed_s = log.elapsed()
        final = save(eng, state, loader, r)
        results = evaluate(eng, r, state.step) if r.data.val else {}
        summary = log.summary(state, loader, final, results)
        watch.barrier()                        # rank 0 evaluated while the others waited (a long wait)
        return summary
