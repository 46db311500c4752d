"""`align train RECIPE.yaml [key=value ...]`: the training loop, on one page.

Accelerate is used directly: one process on CPU/GPU, or several through `accelerate launch` (DDP; FSDP2
with train.sharding: fsdp). `train()` below reads in this order (each part is named in its module):

  1. settings   thread count and determinism for the run, restored when it ends;       setup.process_settings
                the run dir's lock, held until the run ends (one live writer)          setup.hold_run_dir
                several processes: a step watchdog naming a hung rank (exit 70)        setup.watch_ranks, guard
  2. engine     accelerator; a CSV / folder in data.train written as shards once;      feed, setup.build_engine
                image_size: auto from the data; model, loss, optimizer, schedule
  3. resume     weights, optimizer, schedule, counters (TrainState), data position,   setup.resume, state
                then the loader, then the RNG                                          feed.build_loader
                data.val_split's held-out groups written out as the val set            feed.carve_val_split
  4. each step  fetch batch -> train_step: embed, contrastive loss, NaN guard,          step.train_step
                backward, clip, optimizer and schedule, clamp temperature
                -> count it -> weight average -> unlock due towers -> log -> eval     state, ema, metrics
                (best) -> checkpoint                                                   setup.save
                -> heartbeat -> test hooks -> preempted? checkpoint and stop (exit 75)   guard, hooks
                (a source down, a data worker killed: checkpoint and stop, one line   setup.stop_at_data_fault
                 a full disk: the partial checkpoint removed, one line                 storage)
  5. the end    final checkpoint, eval, summary                                        metrics.RunLogger

"step" is the number of optimizer steps taken (TrainState.step): a step whose loss is NaN/Inf updates no
weight, advances neither the step count nor the schedule, and is counted in bad_steps. No callbacks.
"""
import contextlib
import time

from accelerate.utils import set_seed

from align.config import Recipe, recipe_to_dict
from align.data.stream.features import step_features
from align.errors import SourceUnavailable
from align.train.dataworkers import DataWorkerDied
from align.train.hooks import TestHooks
from align.train.metrics import RunLogger, evaluate, run_counts, run_val
from align.train.optim import unlock_due
from align.train.feed import (Batches, build_loader, carve_val_split, fit_val_tasks, resolve_auto_clip_seconds,
                              resolve_auto_image_size, shards_from_tables)
from align.train.rundir import write_config
from align.train.setup import (build_accelerator, build_engine, evaluate_and_keep_best, finished_summary,
                               hold_run_dir, keep_if_best, process_settings, resolve_resume, restore_rng, resume, save,
                               stop_at_data_fault, stop_if_preempted, watch_ranks)
from align.train.guard import catch_preemption
from align.train.step import train_step

__all__ = ["train", "build_loader", "resolve_resume", "run_val"]


def train(r: Recipe, progress: bool = True) -> dict:
    # one live writer per output_dir (runlock); SIGTERM/SIGUSR1 stop at a step boundary with a checkpoint and
    # a rank that finishes no step for train.dist_timeout_s is named and ends the launch (guard)
    with process_settings(r), hold_run_dir(r) as lock, catch_preemption() as preempt, \
            watch_ranks(r, lock) as watch, contextlib.ExitStack() as on_exit:
        acc = build_accelerator(r)
        preempt.install()                      # ranks > 0 catch SIGTERM from here on (guard.catch_preemption)
        # the checkpoint to resume from, or None (a fresh start); a fresh start among another run's checkpoints
        # stops here, before the auto sizes below read the data
        resume_path = resolve_resume(r)
        watch.connect()                        # its long-timeout group: the others wait out rank 0's cache build
        r = shards_from_tables(r, acc, watch.share_object, progress)   # data.train=pairs.csv: shards once, read
        r = resolve_auto_image_size(r, acc.print)   # image_size: auto -> the training images' own size
        r = resolve_auto_clip_seconds(r, acc.print)  # clip_seconds: auto -> long enough for 99 % of the clips
        set_seed(r.seed)
        eng = build_engine(r, acc, resume_path, watch)
        state, data_resume = resume(eng, resume_path)
        done = (finished_summary(r, state, eng.total_steps, acc.is_main_process, watch.share_object, acc.print)
                if resume_path else None)
        if done is not None:                   # trained to its end before: said, nothing written
            return done
        loader = build_loader(r, eng.core, eng.rank, eng.world, data_resume, pin_memory=acc.device.type == "cuda")
        if hasattr(loader, "close"):           # an error exit stops its workers before the interpreter ends
            on_exit.callback(loader.close)     # (its finalisation could meet the receiver thread in torch: abort)
        eng.features = step_features(loader, acc.device)   # audio log-mel in the step, on the device (or None)
        batches = Batches(loader, state)       # before the RNG restore: its seed draw must not shift the RNG
        restore_rng(eng, resume_path, state)
        write_config(r.output_dir, recipe_to_dict(r), acc.is_main_process, state.step,   # a resume with other
                     acc.print)                                                      # settings keeps the old
        r = carve_val_split(r, eng)            # data.val_split: its held-out groups become data.val (RUN/val_split)
        if r.data.val:                         # fail now, not at the first eval, when no task has anything to score
            r = fit_val_tasks(r, eng.core.modalities, acc.print)
        log, hooks, last_good = RunLogger(r, eng, state, progress), TestHooks(eng.rank), resume_path
        for m in unlock_due(eng.core, r.train.unlock_at_step, state.step):    # resumed past an unlock step
            acc.print(f"unlocked the {m} tower (train.unlock_at_step.{m}={r.train.unlock_at_step[m]})")
        eng.model.train()
        watch.start(state.step)                # the first step runs unwatched: warm-up, loader start

        while state.step < eng.total_steps:
            t0 = time.perf_counter()
            try:
                micro = batches.take(r.train.accum_steps)
            except (SourceUnavailable, DataWorkerDied) as exn:   # a source down for data.retry_budget_s, a
                stop_at_data_fault(eng, state, batches, r, log, exn)  # killed data worker: checkpoint, one line
            log.waited(time.perf_counter() - t0, state)
            watch.fetched()                    # from here on this rank waits for the others, if anyone
            hooks.record_keys(state.step, state.epoch, micro)
            res = train_step(eng, micro, r.train.grad_clip)
            # Freed here, not when the next take replaces it: the batches' shared memory is unmapped as they go
            # (~1 ms a batch), a cost of the step, not of waiting for data (data_wait_frac).
            micro = None
            if not state.record_step(res.stepped, eng.global_batch, r.train.max_bad_steps, last_good):
                log.bad_step(state, r.train.max_bad_steps)    # NaN/Inf: no update, no step; one line
                continue
            if eng.ema is not None:            # train.ema: the weight average after this step (align.train.ema)
                eng.ema.update(eng.core, state.step)
            for m in unlock_due(eng.core, r.train.unlock_at_step, state.step):
                acc.print(f"unlocked the {m} tower at step {state.step}")
            log.step(state, res, loader)
            if r.eval.every and r.data.val and state.step % r.eval.every == 0 and state.step < eng.total_steps:
                res = evaluate_and_keep_best(eng, state, loader, r)   # rank 0 scores, every rank saves a best
                log.heldout(res, state.step)   # warns once when held-out falls while the train loss falls
            if r.train.checkpoint_every and state.step % r.train.checkpoint_every == 0:
                state.elapsed_s = log.elapsed()
                last_good = save(eng, state, loader, r)
            watch.beat(state.step)
            hooks.after_step(state.step)
            stop_if_preempted(eng, state, loader, r, log, preempt, last_good)
        log.close_bar()
        hooks.close()
        if hasattr(loader, "close"):
            loader.close()                     # its workers have gone on into an epoch that will not run

        watch.finish()                         # no verdict from here on; heartbeats go on (rank 0's last waits)
        counts = run_counts(loader, watch.gather_object)     # every rank's skipped samples, for the summary
        state.elapsed_s = log.elapsed()
        final = save(eng, state, loader, r)
        results = evaluate(eng, r, state.step) if r.data.val else {}
        keep_if_best(eng, state, loader, r, results)         # the final model may be the best
        summary = log.summary(state, loader, final, results, counts)
        watch.barrier()                        # rank 0 evaluated while the others waited (a long wait)
        return summary
