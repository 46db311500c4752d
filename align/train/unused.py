"""Recipe keys that cannot act in the recipe's own mode: one line each, said before the first step.

A key set away from its default is still accepted where it means nothing for this run (a recipe made for shards
trained for a smoke test on `data.train=synthetic`, a template recipe without `data.val`); the run says which
keys it does not use instead of ignoring them without a word:

  data.train=synthetic      the shard stream's keys (shuffle_buffer, num_workers, augment, samples_per_epoch, ...)
  data.train = shards       data.synthetic_size, data.synthetic_caption; data.features_in without an audio tower
  no data.val / val_split   eval.every, eval.tasks, eval.best_metric, eval.batch_size (nothing is evaluated)
  train.sharding=ddp        train.fsdp.*
  loss.type                 loss.chunk_size for a loss that is not chunked; model.init_logit_bias for a softmax
                            loss (a bias added to every logit does not change it)
"""
import dataclasses
from typing import List

from align.config import Recipe

# data keys that act only on the shard stream (align.data.stream), never on synthetic batches
SHARD_KEYS = ("samples_per_epoch", "resampled", "shuffle_buffer", "num_workers", "features_in", "allow_pipe",
              "retry_budget_s", "max_skip_frac", "augment", "text_keys")
# ... and those that also act on a data.val table (written as an eval set, within the limits)
TABLE_KEYS = ("limits", "shards_cache")
SYNTHETIC_KEYS = ("synthetic_size", "synthetic_caption")
EVAL_KEYS = ("every", "tasks", "best_metric", "batch_size")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def changed(section, names, prefix: str) -> List[str]:
    """'PREFIX.KEY=VALUE' for each of `names` (None: all) whose value in the dataclass `section` is not its
    default."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    out = []
    for name in names if names is not None else list(fields):
        value = getattr(section, name)
        if value != _default(fields[name]):
            shown = "{...}" if dataclasses.is_dataclass(value) or isinstance(value, dict) else value
            out.append(f"{prefix}.{name}={shown}")
    return out


def _line(keys: List[str], why: str) -> List[str]:
    if not keys:
        return []
    return [f"{', '.join(keys)}: not used ({why})"]


def unused_settings(r: Recipe) -> List[str]:
    """One line per group of keys of `r` that this run will not read (see the module docstring)."""
    from align.losses import LOSSES, loss_options
    d = r.data
    lines = []
    if d.train == "synthetic":
        keys = SHARD_KEYS + (TABLE_KEYS if not d.val else ())
        lines += _line(changed(d, keys, "data"), "data.train is synthetic: they act on the shard stream; "
                                                 "data.synthetic_size sets the epoch")
    else:
        lines += _line(changed(d, SYNTHETIC_KEYS, "data"), "data.train is not synthetic")
        if "audio" not in r.model.towers:
            lines += _line(changed(d, ("features_in",), "data"), "no audio tower: it says where the audio "
                                                                  "log-mel is computed")
    if not d.val and d.val_split is None:
        lines += _line(changed(r.eval, EVAL_KEYS, "eval"), "no data.val or data.val_split: nothing is evaluated")
    if r.train.sharding != "fsdp":
        lines += _line(changed(r.train.fsdp, None, "train.fsdp"), f"train.sharding is {r.train.sharding}")
    if "chunk_size" not in loss_options(r.loss.type):
        lines += _line(changed(r.loss, ("chunk_size",), "loss"), f"loss.type={r.loss.type} is not chunked")
    if r.model.init_logit_bias is not None and not getattr(LOSSES.get(r.loss.type), "uses_logit_bias", False):
        lines += _line([f"model.init_logit_bias={r.model.init_logit_bias:g}"],
                       f"loss.type={r.loss.type} is a softmax loss, which a bias on every logit does not change")
    return lines
