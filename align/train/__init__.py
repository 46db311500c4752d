"""Training: the engine behind `align train`, laid out so that a reader finds each part by name.

  loop        train(recipe): the whole loop on one page, and the per-step function
  checkpoint  checkpoint files: save (atomic), list, verify, load (safetensors / DCP)
  optim       AdamW parameter groups, per-tower lr, layer decay, warmup-cosine schedule
  elastic     the lr schedule by samples seen when the global batch changes on resume
  sharding    FSDP2 wrapping (train.sharding: fsdp)
  gradcache   GradCache: accumulated steps that keep every negative
  evaluate    val-set evaluation through the benchmark registry (eval.tasks)
  init_from   weights-only start from a run, export or open_clip checkpoint (model.init_from)
  perf, plots FLOPs/MFU accounting; the loss curve

`from align.train import train` works as before; the submodules load only when used, so reading a
checkpoint (align.train.checkpoint) does not import the loop and its engines.
"""

_LAZY = {"train": "align.train.loop", "resolve_resume": "align.train.loop", "run_val": "align.train.loop",
         "build_loader": "align.train.loop"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'align.train' has no attribute {name!r}")
