"""Everything the training loop needs before its first step, and the checkpoint it leaves after one.

  process_settings  torch's thread count and determinism flags for the run, restored when it ends; a data
                    worker's death held for the next step boundary (align.train.dataworkers); what the run's
                    stop lines tell the user to run next (resume_words)
  build_accelerator Accelerate (DDP / one process; FSDP through train.sharding), with the trackers
  build_engine      model (init_from, tower temperature), loss, optimizer and schedule, sharded or wrapped
  resume            weights, optimizer, schedule, counters and data position from the checkpoint to resume
  save              one checkpoint of the run (every rank writes its part); a full disk is one line
                    (align.train.storage)
  watch_ranks       multi-process: the step watchdog and the long waits (align.train.guard.StepWatch)
  evaluate_and_keep_best  a mid-run eval on rank 0, the `best` checkpoint agreed by every rank
  stop_if_preempted SIGTERM/SIGUSR1 on any rank: a checkpoint at the step reached, exit 75
  stop_at_data_fault  a source that stayed down or a killed data worker: a checkpoint, then one line
"""
import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional

import torch

from align.config import Recipe, recipe_to_dict
from align.errors import AlignError
from align.model import AlignModel, build_model, enable_grad_checkpointing
from align.train import rundir
from align.train.checkpoint import (data_states, load_checkpoint, load_sharded_ema, load_weights, prune_checkpoints,
                                   save_checkpoint)
from align.train.ema import WeightEMA
from align.train.guard import StepWatch
from align.train.state import TrainState
from align.train.step import Objective
from align.train.unused import unused_settings
from align.writes import RESUME_WORDS, SAME_COMMAND_RESUMES


@contextlib.contextmanager
def process_settings(r: Recipe):
    """train.num_threads and train.deterministic for the run; torch's previous values come back when it ends,
    normally or by an exception (they are process-wide: a notebook or test that trains must not keep them).
    Also for the run: a DataLoader worker's death waits for the next step boundary (align.train.dataworkers), and
    the stop lines say how to resume under the recipe's `resume` (resume_words)."""
    from align.train.dataworkers import deferred_worker_errors
    tc = r.train
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    try:
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.deterministic:
            # Deterministic kernels (GPU). CPU kernels already are, which is what makes resume bitwise
            # there. Filling fresh memory is never needed for that and costs ~25% of a small CPU step.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.utils.deterministic.fill_uninitialized_memory = False
        with deferred_worker_errors(), resume_words(r.resume):
            yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.utils.deterministic.fill_uninitialized_memory = saved[3]


@contextlib.contextmanager
def resume_words(resume: str):
    """The words a stop line of the run (a full disk, a preemption, a source that stayed down) ends with: the same
    command resumes only under resume=auto; under resume=none, or a path, it would refuse (the run dir holds
    checkpoints) or start from that path again (align.writes.RESUME_WORDS)."""
    token = RESUME_WORDS.set(SAME_COMMAND_RESUMES if resume == "auto" else
                             f"run the same command with resume=auto to resume (resume={resume} would not)")
    try:
        yield
    finally:
        RESUME_WORDS.reset(token)


@contextlib.contextmanager
def hold_run_dir(r: Recipe):
    """The run directory's lock (align.runlock), taken by the launch's global rank 0 before anything is
    written there (the Accelerator's trackers already write RUN/tb) and held for the whole run. The other
    ranks block in the process group's rendezvous until rank 0 joins, i.e. until it holds the lock; when
    it cannot, it exits with one line and the launcher ends the rest."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    from align.runlock import RunLock, missing_dirs, remove_if_empty
    created = missing_dirs(r.output_dir)
    lock = RunLock(r.output_dir, lifetime_s=r.train.lock_timeout_s).acquire()
    try:
        yield lock
    finally:
        lock.release()
        remove_if_empty(created)




@contextlib.contextmanager
def watch_ranks(r: Recipe, lock):
    """The step watchdog and the long waits of a multi-process run (align.train.guard.StepWatch), stopped when
    the run ends; a hung peer ends this process with one line and exit 70, the run dir's lock released."""
    from align.train.guard import watch_steps
    with watch_steps(r.output_dir, r.train.dist_timeout_s, lock.release if lock is not None else None,
                     r.train.lock_timeout_s) as w:
        yield w


def evaluate_and_keep_best(eng, state: TrainState, loader, r: Recipe) -> dict:
    """A mid-run eval: rank 0 scores while the others wait (a long wait, not bound by train.dist_timeout_s),
    then checkpoints/best when eval.best_metric improved (keep_if_best). -> the results (rank 0; {} elsewhere)."""
    from align.train.metrics import evaluate
    with eng.watch.paused():
        res = evaluate(eng, r, state.step)
        keep_if_best(eng, state, loader, r, res)
    eng.model.train()
    return res


def stop_if_preempted(eng, state, loader, r: Recipe, log, preempt, written: Optional[str] = None) -> None:
    """Between steps: when any rank got SIGTERM/SIGUSR1 (all ranks agree, align.train.guard), write a
    checkpoint at this step on every rank and stop with one line (align.train.guard.Preempted, exit 75).
    `written`: the checkpoint this run wrote last; when it is this step's (the signal came during that save),
    it is the one to resume from, not written a second time in the scheduler's grace period."""
    from align.train.guard import Preempted, all_ranks_max
    with eng.watch.collective():       # a rank stalled here waits for another (the watchdog names that one)
        if not preempt.agreed(all_ranks_max):
            return
    if written and os.path.basename(written) == rundir.step_name(state.step):
        ckpt = written
    else:
        state.elapsed_s = log.elapsed()
        ckpt = save(eng, state, loader, r)
    log.close_bar()
    raise Preempted(f"preempted ({preempt.name()}) at step {state.step}, checkpoint written to {ckpt}; "
                    f"{RESUME_WORDS.get()}")


def keep_if_best(eng, state, loader, r: Recipe, results: dict) -> None:
    """After an evaluation: checkpoints/best when eval.best_metric improved. The evaluation runs on the main
    process only, so its value is shared first (over the watch's long-timeout group: rank 0 may have evaluated
    for longer than train.dist_timeout_s): every rank records the same best and joins the save, whose barrier
    would otherwise wait for ranks that never come."""
    if not r.eval.best_metric:
        return
    if state.improves(eng.watch.share(results.get(r.eval.best_metric))):
        save(eng, state, loader, r, rundir.BEST, {"best_metric": r.eval.best_metric})


def build_accelerator(r: Recipe):
    """The Accelerator for train.precision, refusing the launches it would silently run otherwise."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from align.train.guard import collective_timeout_s
    from align.train.metrics import build_trackers
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[r.train.precision]
    # Without CUDA, `accelerate launch --multi_gpu --num_processes N` starts N processes that only
    # form a (gloo) process group when Accelerator is told cpu=True.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accel = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    if r.train.precision == "fp16" and not accel:
        # Accelerate turns fp16 autocast off on CPU without a word: the run would be fp32 while its
        # summary said fp16.  (bf16 autocast does run on CPU.)
        raise AlignError("train.precision=fp16 needs a GPU: on CPU Accelerate runs it as fp32; "
                         "use train.precision=bf16 or fp32")
    # train.dist_timeout_s bounds every collective (the default is 30 minutes); see guard.collective_timeout_s
    pg = InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s(r.train.dist_timeout_s)))
    try:
        acc = Accelerator(mixed_precision=mp, cpu=multi_cpu, log_with=build_trackers(r), kwargs_handlers=[pg])
    except ImportError as exn:  # e.g. a DeepSpeed launch config without deepspeed installed
        raise AlignError(f"accelerate: {exn}") from None
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        # Without CUDA, Accelerate drops an FSDP/DeepSpeed launch config and trains unsharded.
        if os.environ.get(flag, "").lower() in ("1", "true") and acc.distributed_type.value != name:
            raise AlignError(f"accelerate was launched with {name}, but Accelerate set up "
                             f"{acc.distributed_type.value} (it needs CUDA devices); relaunch without it")
    return acc


@dataclass
class Engine:
    """What a step runs on. model: as prepared (DDP-wrapped, compiled); core: the AlignModel inside it."""
    acc: object
    model: torch.nn.Module
    core: AlignModel
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    global_batch: int                  # samples per optimizer step, all ranks: batch x world x accum_steps
    fsdp: bool
    init_row: Optional[dict] = None    # the step-0 metrics row of a weights-only start (its temperature)
    teacher: Optional[object] = None   # loss.distill: batch -> {"teacher_<m>": [B, Et]} (align.train.teacher)
    watch: StepWatch = field(default_factory=lambda: StepWatch("", 0))   # the loop's; inert until started
    features: Optional[object] = None  # batch -> batch: the log-mel on the device (align.data.stream.features)
    ema: Optional[WeightEMA] = None    # train.ema: the weight average of core, updated after every step

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes


def check_not_someone_elses(output_dir: str) -> None:
    """AlignError before a fresh start into a folder whose config.yaml, metrics.jsonl, eval.jsonl or summary.json
    a run would replace or truncate, unless its config.yaml is a recipe align wrote (a run that stopped before
    its first checkpoint starts again in place): the user's own files of those names are not ours to rewrite."""
    ours = (rundir.CONFIG, rundir.METRICS, rundir.EVAL, rundir.SUMMARY)
    found = [n for n in ours if os.path.isfile(os.path.join(output_dir, n))]
    if not found:
        return
    try:
        import yaml
        with open(os.path.join(output_dir, rundir.CONFIG), encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        if isinstance(cfg, dict) and {"output_dir", "model", "train", "data"} <= set(cfg):
            return                             # written by a run of align (recipe_to_dict)
    except (OSError, ValueError, yaml.YAMLError):
        pass
    raise AlignError(f"output_dir {output_dir} holds {', '.join(found)} of no align run (no checkpoint, no run's "
                     "config.yaml): a new run would overwrite them; choose an empty or new output_dir")


def finished_summary(r: Recipe, state: TrainState, total_steps: int, is_main: bool,
                     share=lambda x: x, printer=print) -> Optional[dict]:
    """The run's summary.json when it was resumed at its last step and that summary is of this step: the same
    command again (a scheduler's requeue) then changes nothing -- no config.yaml rewritten with other settings
    over weights trained with the first ones, no NaN final loss -- and says so (`printer`: the main process's).
    Rank 0 reads, every rank gets its answer."""
    done = None
    if is_main and state.step >= total_steps:
        try:
            with open(os.path.join(r.output_dir, rundir.SUMMARY), encoding="utf-8") as f:
                done = json.load(f)
        except (OSError, ValueError):
            done = None                        # ended before its summary: the end (save, eval, summary) runs again
        done = done if isinstance(done, dict) and done.get("steps") == state.step else None
    done = share(done)
    if done is not None:
        printer(f"{r.output_dir}: already trained to step {state.step} (train.max_steps); nothing to do, nothing "
                f"rewritten (raise train.max_steps to train on)")
    return done


def resolve_resume(r: Recipe) -> Optional[str]:
    """The checkpoint this run starts from (None: a fresh start).

    A fresh start (resume=none) or a start from another run's checkpoint (resume=PATH outside output_dir) into
    an output_dir that already holds checkpoints would write its own over and beside that run's, and align.load
    would then take whichever step is highest: one AlignError line instead, before anything is written."""
    if r.resume == "auto":
        found = rundir.newest_checkpoint(r.output_dir)    # the newest intact one (damaged ones named, skipped)
        if found is None:
            check_not_someone_elses(r.output_dir)
        rundir.say_partial_writes(r.output_dir, found)   # a save a kill or a full disk cut short: one line
        return found
    mine = rundir.checkpoints_dir(r.output_dir)
    here = rundir.list_checkpoints(mine)
    inside = r.resume != "none" and os.path.realpath(r.resume).startswith(os.path.realpath(mine) + os.sep)
    if not here:
        check_not_someone_elses(r.output_dir)
    if here and not inside:
        start = "a fresh start (resume=none)" if r.resume == "none" else f"a start from {r.resume}"
        raise AlignError(f"output_dir {r.output_dir} already holds checkpoints of a run (newest "
                         f"{os.path.basename(here[-1])}): {start} would write its own among them; resume=auto "
                         f"continues that run, or choose another output_dir (or move its checkpoints away)")
    if r.resume != "none":
        from align.train.manifest import verify
        problem = verify(r.resume)         # as resume=auto and align.load check it: never train on damaged weights
        if problem:
            raise AlignError(f"resume={r.resume}: damaged checkpoint: {problem}")
    return None if r.resume == "none" else r.resume


def _start_weights(model: AlignModel, r: Recipe, printer) -> Optional[dict]:
    """Weights-only starts (model.init_from, a tower's pretrained temperature); the step-0 metrics row."""
    from align.train.init_from import apply_init_from, apply_tower_temperature
    apply_tower_temperature(model, r.model)
    if r.model.init_from:
        apply_init_from(model, r.model.init_from, printer=printer)
    if not (r.model.init_from or any(t.get("pretrained_temperature") for t in r.model.towers.values())):
        return None
    # the starting temperature, before any update (loss: none yet)
    row = {"step": 0, "epoch": 0, "loss": float("nan"), "lr": 0.0, "init_from": r.model.init_from,
           "logit_scale": float(model.logit_scale.detach().exp())}
    if model.logit_bias is not None:
        row["logit_bias"] = float(model.logit_bias.detach())
    return row


def _objective(r: Recipe, rank: int, world: int, distill_temperature: Optional[float] = None) -> Objective:
    from align.losses import build_loss, loss_options
    weights = r.loss.weights or [1.0] * len(r.loss.pairs)
    # loss.chunk_size goes to the loss classes that take it (by their signature, not by their name)
    loss_opts = {"chunk_size": r.loss.chunk_size} if "chunk_size" in loss_options(r.loss.type) else {}
    if r.loss.distill is not None:     # the teacher's temperature is resolved when it is loaded (build_teacher)
        loss_opts.update(weight=r.loss.distill.weight, temperature=distill_temperature)
    loss_fn = build_loss(r.loss.type, pairs=[tuple(p) for p in r.loss.pairs], weights=weights, rank=rank,
                         world_size=world, **loss_opts)
    return Objective(loss_fn)


def _total_steps(r: Recipe, world: int, printer=print) -> int:
    total_steps = r.train.max_steps
    if total_steps is not None and r.train.epochs is not None:
        # A recipe's max_steps silently outranked an epochs= given on the command line (or the reverse).
        printer(f"train: max_steps={total_steps} and epochs={r.train.epochs} are both set; the run stops at "
                f"max_steps (epochs is not used; set train.max_steps=null to train by epochs)")
    if total_steps is None:
        if not r.data.samples_per_epoch and r.data.train != "synthetic":
            raise AlignError("train.epochs needs data.samples_per_epoch (or set train.max_steps)")
        # a synthetic epoch is data.synthetic_size samples (the loader's); samples_per_epoch is the shards'
        spe = r.data.synthetic_size if r.data.train == "synthetic" else r.data.samples_per_epoch
        total_steps = r.train.epochs * max(1, spe // (r.train.batch_size * world * r.train.accum_steps))
    return total_steps


def _without_pretrained(model_cfg):
    """A copy of the model section whose towers read no pretrained weights when built."""
    import copy
    from align.towers import drop_pretrained
    cfg = copy.deepcopy(model_cfg)
    for m, t in cfg.towers.items():
        drop_pretrained(t, m)
    return cfg


def build_engine(r: Recipe, acc, resume_path: Optional[str], watch: Optional[StepWatch] = None) -> Engine:
    """Model, loss, optimizer and schedule on `acc`; a fresh start gets its init_from / tower temperature."""
    from align.train.elastic import schedule_by_samples
    from align.train.optim import build_optimizer, build_scheduler, unused_lr_settings
    from align.train.sharding import shard_model
    rank, world, fsdp = acc.process_index, acc.num_processes, r.train.sharding == "fsdp"
    text = r.model.towers.get("text")
    if r.model.init_from and isinstance(text, dict) and text.get("type") == "open_clip":
        from align.train.init_from import init_from_tokenizer
        init_from_tokenizer(text, r.model.init_from)     # recorded in RUN/config.yaml: the run loads with it too
    # A resumed run has its own weights: a tower's `pretrained` (a file that may have moved, a tag that would
    # download again) is not read
    model = build_model(_without_pretrained(r.model) if resume_path else r.model)
    model.config = recipe_to_dict(r)
    # Weights-only starts (step and optimizer fresh); a resumed run has its own weights.
    init_row = None if resume_path else _start_weights(model, r, acc.print)
    if r.train.unlock_at_step and world > 1:
        raise AlignError("train.unlock_at_step: unlocking a tower mid-run is single-process only for now "
                         "(DDP fixes the set of trained parameters when it wraps the model)")
    if r.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    teacher, temperature = _teacher(r, acc)
    objective = _objective(r, rank, world, temperature)
    total_steps = _total_steps(r, world, acc.print)
    for line in unused_settings(r) + unused_lr_settings(model, r.train):   # said instead of ignored
        acc.print(line)
    if fsdp:
        # FSDP2 shards the model in place (each tower block, then the root), so the optimizer below is built
        # on the sharded parameters; Accelerate then prepares only the optimizer (it would wrap the model in DDP).
        shard_model(model, reshard_after_forward=r.train.fsdp.reshard_after_forward,
                    param_dtype=r.train.fsdp.param_dtype, reduce_dtype=r.train.fsdp.reduce_dtype,
                    device_type=acc.device.type)
    optimizer = build_optimizer(model, r.train, device_type=acc.device.type)
    scheduler = build_scheduler(optimizer, r.train, total_steps)
    if fsdp:
        optimizer = acc.prepare(optimizer)
    else:
        model, optimizer = acc.prepare(model, optimizer)
    core: AlignModel = acc.unwrap_model(model)
    # the average starts at the starting weights (init_from's, or a resumed run's: setup.resume)
    ema = WeightEMA(core, r.train.ema) if r.train.ema else None
    global_batch = r.train.batch_size * world * r.train.accum_steps
    schedule_by_samples(scheduler, global_batch)
    if r.train.compile:
        # Static: image and text run one code object (OpenClipTower.forward); dynamo's automatic dynamic shapes
        # compiled the second tower seen dynamic (ViT-Tiny 4.1 vs 2.6 s a step). Trimmed text: few shapes.
        model = torch.compile(model, dynamic=False)
    return Engine(acc, model, core, objective, optimizer, scheduler, total_steps, global_batch, fsdp, init_row,
                  teacher, watch=watch or StepWatch("", 0), ema=ema)


def _teacher(r: Recipe, acc):
    """loss.distill -> (the frozen teacher, its temperature), or (None, None)."""
    if r.loss.distill is None:
        return None, None
    from align.train.teacher import build_teacher
    teacher, temperature = build_teacher(r.loss.distill, r.loss.pairs, acc.device, _first_shard_dir(r))
    acc.print(f"loss.distill: teacher {r.loss.distill.teacher} ({', '.join(teacher.modalities)}), "
              f"temperature {temperature:.4g}, weight {r.loss.distill.weight:g}")
    return teacher, temperature


def _first_shard_dir(r: Recipe) -> Optional[str]:
    """The folder of the first training shard (a stored teacher's teacher.json is there), or None."""
    if r.data.train == "synthetic":
        return None
    from align.data.stream.sources import SourceSpec, resolve_sources
    first = r.data.train[0] if isinstance(r.data.train, list) else r.data.train
    spec = SourceSpec(urls=first) if isinstance(first, str) else SourceSpec(urls=first.urls, weight=first.weight)
    urls = resolve_sources([spec], allow_pipe=r.data.allow_pipe, warn=False)[0].urls   # the loader warns
    return os.path.dirname(urls[0]) if urls and "://" not in urls[0] else None


def resume(eng: Engine, path: Optional[str]):
    """-> (TrainState, the data position of every rank of the checkpoint or None). Restores weights, optimizer,
    schedule and loss scaler; not the RNG (restore_rng, after the loader drew its seed)."""
    from align.train.elastic import continue_by_samples
    from align.train.optim import restore_scheduler
    if not path:
        return TrainState(), None
    saved = load_checkpoint(path, eng.core, eng.optimizer, rank=eng.rank, restore_rng=False, sharded=eng.fsdp)
    state = TrainState.from_checkpoint(saved)
    if eng.ema is not None:
        _resume_ema(eng, path, state.step)
    restore_scheduler(eng.scheduler, saved["scheduler"])
    if eng.acc.scaler is not None and saved.get("scaler"):
        eng.acc.scaler.load_state_dict(saved["scaler"])
    # Another world size / per-rank batch: silent if the global batch is kept, else one line.
    eng.total_steps, note = continue_by_samples(eng.scheduler, state.step, state.samples, eng.global_batch,
                                                eng.total_steps)
    if note:
        eng.acc.print(note)
    return state, data_states(path, saved)


def _resume_ema(eng: Engine, path: str, step: int) -> None:
    """The weight average of the checkpoint; one written without train.ema starts it at the resumed weights."""
    saved = os.path.join(path, rundir.EMA)
    if eng.fsdp:                  # each rank's shards of the average, read in place through DCP
        found = load_sharded_ema(path, eng.ema.state_dict())
    elif os.path.isfile(saved):
        eng.ema.load_state_dict(load_weights(saved), saved)
        found = True
    else:
        found = False
    if not found:
        eng.ema = WeightEMA(eng.core, eng.ema.decay)
        eng.acc.print(f"train.ema: {path} has no weight average; it starts at the weights of step {step}")


def restore_rng(eng: Engine, path: Optional[str], state: TrainState) -> None:
    if path:
        load_checkpoint(path, rank=eng.rank, restore_rng=True)
        eng.acc.print(f"resumed from {path} at step {state.step}")


def stop_at_data_fault(eng, state, batches, r: Recipe, log, exn) -> None:
    """The data stopped between steps (SourceUnavailable: a remote source stayed down; DataWorkerDied: a data
    worker was killed): write a checkpoint at this step, its data position the last complete step's
    (batches: align.train.feed.Batches), and raise the same error as one line naming it. A multi-process
    launch writes none for a dead worker (the other ranks are mid-step, in a collective): resume=auto
    continues from the last periodic checkpoint."""
    from align.train.dataworkers import DataWorkerDied
    log.close_bar()
    if isinstance(exn, DataWorkerDied) and eng.world > 1:
        raise DataWorkerDied(f"{exn} (rank {eng.rank}; no checkpoint written in a multi-process launch: "
                             f"resume=auto continues from the last one)") from None
    state.elapsed_s = log.elapsed()
    ckpt = save(eng, state, batches.loader, r, data=batches.position())
    raise type(exn)(f"{exn}; saved {ckpt} at step {state.step}; {RESUME_WORDS.get()}") from None


def save(eng: Engine, state: TrainState, loader, r: Recipe, name: Optional[str] = None,
         extra: Optional[dict] = None, data: Optional[dict] = None) -> str:
    """Checkpoint `name` (default step-N) of the run; every rank writes its part (DCP shards under fsdp, its RNG
    and data position: `data`, default the loader's), and it appears under its name only once all have
    (align.train.checkpoint). Step checkpoints beyond train.keep_last are pruned. A full disk or an I/O error
    removes the partial checkpoint and raises StorageError, one line naming the intact one (align.train.storage)."""
    from align.train.storage import checkpoint_write
    acc, ckpt_dir = eng.acc, rundir.checkpoints_dir(r.output_dir)
    with eng.watch.paused():           # a long write is no hang; rank 0's own writes are waited out (long barrier)
        sd = None if eng.fsdp else acc.get_state_dict(eng.model)
        data = loader.state_dict() if data is None else data
        payload = state.to_checkpoint(data=data, scheduler=eng.scheduler.state_dict(),
                                      world_size=eng.world, global_batch=eng.global_batch,
                                      scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
                                      **(extra or {}))
        # before the first checkpoint, its size is guessed as the weights plus AdamW's two moments (and the
        # weight average, train.ema)
        copies = 3 + (eng.ema is not None)
        guess = copies * sum(v.numel() * v.element_size() for v in sd.values()) if sd else None
        ckpt = name or rundir.step_name(state.step)
        with checkpoint_write(ckpt_dir, ckpt, acc.is_main_process, guess):
            path = save_checkpoint(ckpt_dir, ckpt, sd, eng.optimizer, payload, rank=eng.rank,
                                   barrier=eng.watch.barrier, agree=eng.watch.most, rank_state={"data": data},
                                   sharded=(eng.model, eng.optimizer) if eng.fsdp else None,
                                   ema_sd=eng.ema.state_dict() if eng.ema is not None else None)
        if name is None and acc.is_main_process:
            prune_checkpoints(ckpt_dir, r.train.keep_last)
    return path
