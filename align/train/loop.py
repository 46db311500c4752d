"""`align train RECIPE.yaml [key=value ...]`: the training loop, in one place.

Accelerate is used directly: one process on CPU/GPU, or several through
`accelerate launch` (DDP; FSDP/DeepSpeed through Accelerate's config). The
whole step is visible below: fetch batch -> embed -> contrastive loss ->
NaN guard -> backward -> clip -> optimizer/scheduler -> clamp temperature ->
log -> checkpoint -> eval. No hooks, no callbacks.
"""
import json
import os
import time
from typing import Optional

import torch

from align.train import rundir
from align.train.checkpoint import data_states, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from align.config import Recipe, recipe_to_dict
from align.errors import AlignError
from align.model import AlignModel, build_model, enable_grad_checkpointing
from align.train.sharding import full_value, shard_model, unsharded_copy
from align.data.stream.synthetic import SyntheticLoader
from align.train.optim import build_optimizer, build_scheduler, restore_scheduler, unlock_due
from align.train.perf import estimate_flops_per_sample, peak_flops
from align.train.plots import write_loss_plot


def build_loader(r: Recipe, model: AlignModel, rank: int, world: int, resume_state):
    """The training stream: real shards through the streaming pipeline, or synthetic inputs.

    resume_state: the data position of every rank of the checkpoint (a list, index = rank); the loader
    re-partitions it when the world size, per-rank batch or number of workers changed.
    """
    if r.data.train == "synthetic":
        if resume_state is not None:
            # Synthetic batches have no identity: after a change of world size or batch, continue at the
            # same fraction of the epoch.
            old = resume_state[rank] if len(resume_state) == world else resume_state[0]
            done = old["batches"] * old.get("batch_size", r.train.batch_size) * len(resume_state)
            resume_state = {"epoch": old["epoch"], "batches": done // (r.train.batch_size * world)}
        return SyntheticLoader(model, r.train.batch_size, seed=r.seed, rank=rank,
                               samples_per_epoch=r.data.synthetic_size // world, resume_state=resume_state,
                               caption=r.data.synthetic_caption)
    from align.data.stream.loader import SourceSpec, build_train_loader
    train = r.data.train if isinstance(r.data.train, list) else [r.data.train]
    sources = [SourceSpec(urls=s) if isinstance(s, str) else SourceSpec(urls=s.urls, weight=s.weight) for s in train]
    return build_train_loader(
        sources, transforms=model.transforms(train=True), batch_size=r.train.batch_size,
        modalities=model.modalities, rank=rank, world_size=world, num_workers=r.data.num_workers, seed=r.seed,
        epoch=(resume_state or [{}])[0].get("epoch", 0), samples_per_epoch=r.data.samples_per_epoch,
        resampled=r.data.resampled, shuffle_buffer=r.data.shuffle_buffer, allow_pipe=r.data.allow_pipe,
        max_skip_frac=r.data.max_skip_frac, resume_state=resume_state, train=True, augment=r.data.augment,
        retry_budget_s=r.data.retry_budget_s)


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


def resolve_resume(r: Recipe) -> Optional[str]:
    if r.resume == "none":
        return None
    if r.resume == "auto":
        found = list_checkpoints(rundir.checkpoints_dir(r.output_dir))
        return found[-1] if found else None
    return r.resume


def train(r: Recipe, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if r.train.num_threads:
        torch.set_num_threads(r.train.num_threads)
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[r.train.precision]
    # Without CUDA, `accelerate launch --multi_gpu --num_processes N` starts N processes that only
    # form a (gloo) process group when Accelerator is told cpu=True.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accel = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    fsdp = r.train.sharding == "fsdp"
    if r.train.precision == "fp16" and not accel:
        # Accelerate turns fp16 autocast off on CPU without a word: the run would be fp32 while its
        # summary said fp16.  (bf16 autocast does run on CPU.)
        raise AlignError("train.precision=fp16 needs a GPU: on CPU Accelerate runs it as fp32; "
                         "use train.precision=bf16 or fp32")
    try:
        acc = Accelerator(mixed_precision=mp, cpu=multi_cpu, log_with=build_trackers(r))
    except ImportError as exn:  # e.g. a DeepSpeed launch config without deepspeed installed
        raise AlignError(f"accelerate: {exn}") from None
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        # Without CUDA, Accelerate drops an FSDP/DeepSpeed launch config and trains unsharded.
        if os.environ.get(flag, "").lower() in ("1", "true") and acc.distributed_type.value != name:
            raise AlignError(f"accelerate was launched with {name}, but Accelerate set up "
                             f"{acc.distributed_type.value} (it needs CUDA devices); relaunch without it")
    rank, world, is_main = acc.process_index, acc.num_processes, acc.is_main_process
    set_seed(r.seed)
    if r.train.deterministic:
        # Deterministic kernels (GPU). CPU kernels already are, which is what makes resume bitwise
        # there. Filling fresh memory is never needed for that and costs ~25% of a small CPU step.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False

    # -- model, loss, optimizer ------------------------------------------------------------
    resume_path = resolve_resume(r)        # the checkpoint to resume from, or None (a fresh start)
    model = build_model(r.model)
    model.config = recipe_to_dict(r)
    # Weights-only starts (step and optimizer fresh); a resumed run has its own weights.
    init_row = None
    if not resume_path:
        from align.train.init_from import apply_init_from, apply_tower_temperature
        apply_tower_temperature(model, r.model)
        if r.model.init_from:
            apply_init_from(model, r.model.init_from, printer=acc.print)
        if r.model.init_from or any(t.get("pretrained_temperature") for t in r.model.towers.values()):
            # a step-0 row: the starting temperature, before any update (loss: none yet)
            init_row = {"step": 0, "epoch": 0, "loss": float("nan"), "lr": 0.0, "init_from": r.model.init_from,
                        "logit_scale": float(model.logit_scale.detach().exp())}
            if model.logit_bias is not None:
                init_row["logit_bias"] = float(model.logit_bias.detach())
    if r.train.unlock_at_step and world > 1:
        raise AlignError("train.unlock_at_step: unlocking a tower mid-run is single-process only for now "
                         "(DDP fixes the set of trained parameters when it wraps the model)")
    if r.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    from align.losses import build_loss, loss_options
    weights = r.loss.weights or [1.0] * len(r.loss.pairs)
    # loss.chunk_size goes to the loss classes that take it (by their signature, not by their name)
    loss_opts = {"chunk_size": r.loss.chunk_size} if "chunk_size" in loss_options(r.loss.type) else {}
    loss_fn = build_loss(r.loss.type, pairs=[tuple(p) for p in r.loss.pairs], weights=weights, rank=rank,
                         world_size=world, **loss_opts)
    total_steps = r.train.max_steps
    if total_steps is None:
        if not r.data.samples_per_epoch and r.data.train != "synthetic":
            raise AlignError("train.epochs needs data.samples_per_epoch (or set train.max_steps)")
        spe = r.data.samples_per_epoch or r.data.synthetic_size
        total_steps = r.train.epochs * max(1, spe // (r.train.batch_size * world * r.train.accum_steps))
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
    from align.train.elastic import continue_by_samples, schedule_by_samples
    global_batch = r.train.batch_size * world * r.train.accum_steps
    schedule_by_samples(scheduler, global_batch)
    if r.train.compile:
        model = torch.compile(model)

    # -- resume: everything, including the position in the data stream -----------------------
    os.makedirs(r.output_dir, exist_ok=True)
    ckpt_dir = rundir.checkpoints_dir(r.output_dir)
    # Skip counts live in the loader (and its state_dict), not here.
    state = {"step": 0, "epoch": 0, "data": None, "bad_steps_total": 0, "elapsed_s": 0.0, "samples": 0,
             "best": None, "data_wait_s": 0.0}
    data_resume = None
    if resume_path:
        saved = load_checkpoint(resume_path, core, optimizer, rank=rank, restore_rng=False, sharded=fsdp)
        state.update({k: saved[k] for k in state if k in saved})
        restore_scheduler(scheduler, saved["scheduler"])
        if acc.scaler is not None and saved.get("scaler"):
            acc.scaler.load_state_dict(saved["scaler"])
        data_resume = data_states(resume_path, saved)
        # Another world size / per-rank batch: silent if the global batch is kept, else one line.
        total_steps, note = continue_by_samples(scheduler, state["step"], state["samples"], global_batch, total_steps)
        if note:
            acc.print(note)
    loader = build_loader(r, core, rank, world, data_resume)
    batches = iter(loader)      # created before the RNG restore: its seed draw must not shift the RNG stream
    if resume_path:
        load_checkpoint(resume_path, rank=rank, restore_rng=True)
        acc.print(f"resumed from {resume_path} at step {state['step']}")
    if is_main:
        with open(os.path.join(r.output_dir, rundir.CONFIG), "w") as f:
            import yaml
            yaml.safe_dump(recipe_to_dict(r), f, sort_keys=False)

    if r.data.val:                 # fail now, not at the first eval, when a task has nothing to score
        from align.train.evaluate import check_val_set
        check_val_set(r.data.val, r.eval.tasks, core.modalities, best_metric=r.eval.best_metric)
    acc.init_trackers("align")     # starts the trackers of build_trackers (main process only)
    metrics_f = open(os.path.join(r.output_dir, rundir.METRICS), "a") if is_main else None
    if init_row is not None:
        if is_main:
            metrics_f.write(json.dumps(init_row) + "\n")
        acc.log({"train/logit_scale": init_row["logit_scale"]}, step=0)
    bar = tqdm(total=total_steps, initial=state["step"], disable=not (progress and is_main), unit="step",
               dynamic_ncols=True)
    bad_in_row, last_good = 0, resume_path
    # Fault injection for the resume tests: SIGKILL this process right after finishing step N.
    kill_at = int(os.environ.get("ALIGN_TEST_SIGKILL_AT_STEP", "0"))
    # For the no-sample-lost-or-repeated tests: each rank appends the sample keys of every step it trains.
    keys_log = os.environ.get("ALIGN_TEST_RECORD_KEYS")
    keys_f = open(f"{keys_log}.rank{rank}.jsonl", "a") if keys_log else None
    t_window, wait_window, n_window = time.perf_counter(), 0.0, 0
    t_start = time.perf_counter() - state["elapsed_s"]
    for m in unlock_due(core, r.train.unlock_at_step, state["step"]):    # resumed past an unlock step
        acc.print(f"unlocked the {m} tower (train.unlock_at_step.{m}={r.train.unlock_at_step[m]})")
    loss_val = float("nan")
    model.train()

    def next_batch():
        nonlocal batches
        while True:
            try:
                return next(batches)
            except StopIteration:
                state["epoch"] += 1
                loader.set_epoch(state["epoch"])
                batches = iter(loader)

    def save(name=None, extra=None):
        # Every rank writes its part (DCP shards under fsdp, its RNG and data position); the checkpoint
        # appears under its name only after all ranks finished (see align.train.checkpoint).
        sd = None if fsdp else acc.get_state_dict(model)
        st = dict(state, data=loader.state_dict(), scheduler=scheduler.state_dict(), world_size=world,
                  global_batch=global_batch, scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
                  **(extra or {}))
        return save_checkpoint(ckpt_dir, name or rundir.step_name(state["step"]), sd, optimizer, st, rank=rank,
                               barrier=acc.wait_for_everyone, rank_state={"data": loader.state_dict()},
                               sharded=(model, optimizer) if fsdp else None)

    while state["step"] < total_steps:
        # -- data -----------------------------------------------------------------------------
        t0 = time.perf_counter()
        micro = [next_batch() for _ in range(r.train.accum_steps)]
        waited = time.perf_counter() - t0
        wait_window += waited
        state["data_wait_s"] += waited
        if keys_f is not None:
            keys_f.write(json.dumps({"step": state["step"], "keys": [k for b in micro for k in b.get("__key__", [])]}) + "\n")
            keys_f.flush()
        micro = [{k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in b.items()} for b in micro]
        masks = [{m: b[f"{m}_mask"] for m in core.modalities if f"{m}_mask" in b} for b in micro]

        # -- step: embed, loss, NaN guard, backward ------------------------------------------------
        pair_losses = {}

        def compute_loss(feats, mask):
            total, parts = loss_fn(feats, mask or None, feats["logit_scale"], feats.get("logit_bias"))
            pair_losses.update(parts)       # {pair name: detached loss}, e.g. "image-text"
            return total

        if r.train.accum_steps == 1:
            with acc.autocast():
                feats = model(micro[0])
                loss = compute_loss(feats, masks[0])
            finite = bool(torch.isfinite(loss.detach()).all())
            if finite:
                acc.backward(loss)
        else:
            from align.train.gradcache import gradcache_step
            for b, m in zip(micro, masks):
                b["masks"] = m                       # {modality: bool [b]}: concatenated by gradcache
            with acc.autocast():
                loss = gradcache_step(lambda mb: model(mb), micro, compute_loss, masks_key="masks",
                                      no_sync=lambda: acc.no_sync(model), loss_backward=acc.backward)
            finite = bool(torch.isfinite(loss.detach()).all())
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            bad_in_row += 1
            state["bad_steps_total"] += 1
            if bad_in_row >= r.train.max_bad_steps:
                raise AlignError(f"loss was NaN/Inf for {bad_in_row} steps in a row (last at step {state['step']}); "
                                 f"last good checkpoint: {last_good or 'none'}")
            state["step"] += 1
            continue
        bad_in_row = 0
        if r.train.grad_clip:
            acc.clip_grad_norm_(model.parameters(), r.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        core.clamp_logit_scale()
        state["step"] += 1
        for m in unlock_due(core, r.train.unlock_at_step, state["step"]):
            acc.print(f"unlocked the {m} tower at step {state['step']}")
        state["samples"] += global_batch
        n_window += 1
        loss_val = float(loss.detach())

        # -- log ------------------------------------------------------------------------------
        if state["step"] % r.train.log_every == 0 or state["step"] == total_steps:
            dt = time.perf_counter() - t_window
            sps = n_window * global_batch / max(dt, 1e-9)
            rec = {"step": state["step"], "epoch": state["epoch"], "loss": loss_val,
                   "lr": scheduler.get_last_lr()[0], "logit_scale": float(full_value(core.logit_scale.detach()).exp()),
                   "samples_per_s": sps, "data_wait_frac": wait_window / max(dt, 1e-9),
                   # counted by the loader, also those at a stream's end that ride on no batch
                   "skipped": sum(loader.skipped.values()), "skipped_by_reason": dict(loader.skipped),
                   "bad_steps": state["bad_steps_total"]}
            if core.logit_bias is not None:
                rec["logit_bias"] = float(full_value(core.logit_bias.detach()))
            rec.update({f"loss/{pair}": float(v) for pair, v in pair_losses.items()})   # unweighted, per pair
            if is_main:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
            acc.log({f"train/{k}": v for k, v in rec.items() if k not in ("step", "epoch") and not isinstance(v, dict)},
                    step=state["step"])
            bar.set_postfix(loss=f"{loss_val:.3f}", sps=f"{sps:.0f}", lr=f"{rec['lr']:.2e}")
            t_window, wait_window, n_window = time.perf_counter(), 0.0, 0
        bar.update(1)

        # -- eval and checkpoint -------------------------------------------------------------------
        if r.eval.every and r.data.val and state["step"] % r.eval.every == 0 and state["step"] < total_steps:
            res = run_val(unsharded_copy(core, r.model, is_main) if fsdp else core, r, acc, state["step"])
            metric = res.get(r.eval.best_metric) if r.eval.best_metric else None
            if metric is not None and (state["best"] is None or metric > state["best"]):
                state["best"] = metric
                save(rundir.BEST, {"best_metric": r.eval.best_metric})
            model.train()
        if r.train.checkpoint_every and state["step"] % r.train.checkpoint_every == 0:
            state["elapsed_s"] = time.perf_counter() - t_start
            last_good = save()
            if is_main:
                prune_checkpoints(ckpt_dir, r.train.keep_last)
        if kill_at and state["step"] == kill_at and os.environ.get("ALIGN_TEST_SIGKILL_RANK", str(rank)) == str(rank):
            import signal
            if os.environ.get("ALIGN_TEST_KILL_STAMP"):      # when it died, for the bounded-exit tests
                with open(os.environ["ALIGN_TEST_KILL_STAMP"], "w") as f:
                    f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if hasattr(loader, "close"):
        loader.close()  # workers started early for an epoch that will not run

    # -- the end: final checkpoint, eval, summary ----------------------------------------------------
    wall = time.perf_counter() - t_start
    state["elapsed_s"] = wall
    final = save()
    if is_main:
        prune_checkpoints(ckpt_dir, r.train.keep_last)
    results = run_val(unsharded_copy(core, r.model, is_main) if fsdp else core, r, acc,
                      state["step"]) if r.data.val else {}
    summary = {}
    # Counted by a forward pass: a sharded model's forward needs every rank.
    flops = estimate_flops_per_sample(core) if is_main or fsdp else None
    if is_main:
        sps = state["samples"] / max(wall, 1e-9)
        peak = peak_flops(acc.device, r.train.precision) * world
        summary = {"steps": state["step"], "final_loss": loss_val, "wall_time_s": wall, "samples_per_s": sps,
                   "data_wait_frac": state["data_wait_s"] / max(wall, 1e-9),
                   "flops_per_sample": flops, "peak_flops": peak,
                   "mfu": (flops * sps / peak) if peak else None, "skipped": dict(loader.skipped),
                   "bad_steps": state["bad_steps_total"], "checkpoint": final, "metrics": results,
                   "world_size": world, "precision": r.train.precision}
        with open(os.path.join(r.output_dir, rundir.SUMMARY), "w") as f:
            json.dump(summary, f, indent=1)
        metrics_f.close()
        if r.train.wandb_project:
            acc.get_tracker("wandb", unwrap=True).summary.update(
                {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        for tracker in acc.trackers:   # not acc.end_training(): that also destroys the process group
            tracker.finish()
        write_loss_plot(os.path.join(r.output_dir, rundir.METRICS), os.path.join(r.output_dir, rundir.LOSS_PLOT))
        skipped = sum(loader.skipped.values())
        acc.print(f"trained {state['step']} steps in {wall:.0f}s ({sps:.0f} samples/s), final loss {loss_val:.3f}"
                  f", skipped {skipped} samples -> {r.output_dir}")
    acc.wait_for_everyone()
    return summary


def run_val(core: AlignModel, r: Recipe, acc, step: int) -> dict:
    """eval.tasks (names of the benchmark registry, align.bench BENCHMARKS) on the val set (CLIP_benchmark
    layout), expanded over the modalities by align.train.evaluate; flat {WHERE/TASK/METRIC: value}."""
    if not acc.is_main_process:
        return {}
    from align.train.evaluate import evaluate_model
    core.eval()
    flat = evaluate_model(core, r.data.val, tasks=r.eval.tasks, batch_size=r.eval.batch_size, progress=False)
    acc.log({f"val/{k}": v for k, v in flat.items()}, step=step)
    with open(os.path.join(r.output_dir, rundir.EVAL), "a") as f:
        f.write(json.dumps({"step": step, **flat}) + "\n")
    return flat
