"""Training: the engine behind `align train`, laid out so that a reader finds each part by name.

  loop        train(recipe): the whole loop on one page, in the order of its docstring
  setup       accelerator, model/loss/optimizer/schedule (the Engine), resume, saving a checkpoint
  feed        the training loader (shards or synthetic), its batches across epochs, data.val_split's held-out set
  step        train_step: forward, loss, NaN guard, backward, clip, optimizer and schedule (plain and GradCache)
  state       TrainState: the counters a checkpoint saves; "step" = optimizer steps taken
  metrics     RunLogger: metrics.jsonl, trackers, progress bar, eval.jsonl, summary.json and loss.png
  rundir      the name of every file of a run dir; run / checkpoint / export from a path; is it sharded (DCP)
  checkpoint  checkpoint files: save (atomic), verify, load (safetensors / DCP)
  manifest    every checkpoint file's size and sha256, written last; verify() names a damaged file
  guard       preemption signals (SIGTERM/SIGUSR1) as an agreed flag; the per-rank progress watchdog
  storage     a full disk as one line; metrics rows past a resumed checkpoint dropped
  dataworkers a killed data worker (OOM killer, decoder crash): held to a step boundary, one line, exit 71
  hooks       fault injection for the tests (environment variables; inert otherwise)
  optim       AdamW parameter groups, per-tower lr, layer decay, warmup-cosine schedule
  ema         train.ema: the moving average of the weights that evaluation, load and export read
  elastic     the lr schedule by samples seen when the global batch changes on resume
  sharding    FSDP2 wrapping (train.sharding: fsdp)
  gradcache   GradCache: accumulated steps that keep every negative
  evaluate    val-set evaluation through the benchmark registry (eval.tasks)
  init_from   weights-only start from a run, export or open_clip checkpoint (model.init_from)
  teacher     loss.distill's frozen teacher: online (run, export, open_clip:ARCH) or stored embeddings
  unused      recipe keys the run's mode does not read (synthetic data, no data.val, ddp, ...): one line each
  perf, plots FLOPs/MFU accounting; the loss curve

`from align.train import train` works as before; the submodules load only when used, so reading a
checkpoint (align.train.checkpoint) does not import the loop and its engines.
"""

_LAZY = {"train": "align.train.loop", "resolve_resume": "align.train.setup", "run_val": "align.train.metrics",
         "build_loader": "align.train.feed"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'align.train' has no attribute {name!r}")
