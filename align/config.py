"""Recipes: YAML plus dotted overrides, validated into typed settings.

    cfg = load_recipe("recipes/demo.yaml", ["train.max_steps=100", "model.embed_dim=64"])

Every mistake fails here, at load, before anything is built: an unknown key, a
wrong type, a missing required value, a value out of range (bounds live in the
field's metadata: `_num(5e-4, ge=0)`), and names that must exist in a registry
(`loss.type`, a tower `type`, `eval.tasks`, `eval.best_metric`). Each raises
ConfigError with one line naming the key and the valid values. Tower options
beyond `type` are validated by the tower factories when the model is built.
"""
import dataclasses
import fnmatch
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from align.errors import ConfigError
from align.shipped import resolve_shipped, shipped_names
from align.limits import DataLimits   # data.limits: sizes a shard may claim (the dataclass lives with its checks)


def _num(default, *, ge=None, gt=None, le=None, lt=None):
    """A numeric field with bounds, checked at load (see _check_bounds)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class ModelConfig:
    towers: Dict[str, Dict[str, Any]] = field(default_factory=dict)   # modality -> {type: ..., ...}
    # Dual towers from one open_clip architecture: a name ("ViT-B-32"), a JSON config file, or an inline
    # config. Fills towers.image and towers.text (type open_clip) where the recipe does not set them.
    open_clip: Optional[Union[str, Dict[str, Any]]] = None
    embed_dim: Optional[int] = _num(None, ge=1)             # default: the open_clip config's, else 512
    init_logit_scale: float = 2.6592600369262695            # log(1 / 0.07), as CLIP
    max_logit_scale: float = _num(100.0, gt=0)
    init_logit_bias: Optional[float] = None                 # set (e.g. -10) for SigLIP
    # Weights-only start (align run/checkpoint/export, open_clip checkpoint file or folder); step and
    # optimizer start fresh, the temperature is the source's. See align/train/init_from.py.
    init_from: Optional[str] = None


@dataclass
class LossConfig:
    type: str = "clip"                                      # a LOSSES name (align.losses)
    pairs: List[List[str]] = field(default_factory=lambda: [["image", "text"]])
    weights: Optional[List[float]] = None                   # per pair; default all 1
    chunk_size: int = _num(4096, ge=1)                      # chunked losses only


@dataclass
class SourceConfig:
    urls: Union[str, List[str]]
    weight: float = _num(1.0, ge=0)


@dataclass
class DataConfig:
    train: Union[str, List[Union[str, SourceConfig]]] = "synthetic"   # pattern(s), sources, or "synthetic"
    val: Optional[str] = None                               # CLIP_benchmark-layout dir for periodic eval
    samples_per_epoch: Optional[int] = _num(None, ge=1)
    resampled: bool = False
    shuffle_buffer: int = _num(1000, ge=0)
    num_workers: int = _num(2, ge=0)
    allow_pipe: bool = False                                # pipe: URLs run shell commands
    retry_budget_s: float = _num(300.0, gt=0)               # http(s) source unreachable this long: stop the run
    max_skip_frac: Optional[float] = _num(None, ge=0, le=1)  # abort when the skip rate exceeds this
    synthetic_size: int = _num(10000, ge=1)                 # samples per epoch for data.train=synthetic
    synthetic_caption: str = "Dummy caption"                # its text (open_clip's synthetic caption)
    # Training augmentations, {image|audio: [{type: ..., ...}]}: see align.data.stream.augment (off when unset).
    augment: Optional[Dict[str, Optional[List[Dict[str, Any]]]]] = None
    limits: DataLimits = field(default_factory=DataLimits)  # e.g. data.limits.max_image_pixels=200000000


@dataclass
class FsdpConfig:
    """train.sharding=fsdp: torch FSDP2 (fully_shard per tower block, then the root)."""
    reshard_after_forward: bool = True                      # free gathered block weights after forward (less memory)
    param_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"   # dtype parameters are gathered and computed in
    reduce_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # dtype gradients are reduce-scattered in


@dataclass
class TrainConfig:
    batch_size: int = _num(64, ge=1)                        # per process
    max_steps: Optional[int] = _num(None, ge=1)
    epochs: Optional[int] = _num(None, ge=1)
    accum_steps: int = _num(1, ge=1)                        # micro-batches per step (GradCache: all negatives kept)
    lr: float = _num(5e-4, ge=0)
    weight_decay: float = _num(0.2, ge=0)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = _num(1e-6, ge=0)
    warmup_steps: int = _num(0, ge=0)
    min_lr_ratio: float = _num(0.0, ge=0, le=1)
    grad_clip: Optional[float] = _num(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = _num(0, ge=0)                   # steps; 0 = only at the end
    keep_last: int = _num(2, ge=1)
    log_every: int = _num(10, ge=1)
    compile: bool = False
    grad_checkpointing: bool = False
    max_bad_steps: int = _num(5, ge=1)                      # consecutive NaN/Inf losses before stopping
    num_threads: Optional[int] = _num(None, ge=1)           # torch CPU threads
    deterministic: bool = False                             # deterministic GPU kernels (slower)
    wandb_project: Optional[str] = None                     # also log to Weights & Biases (pip install wandb)
    # Fine-tuning controls (align/train/optim.py): per-tower base lr, layer-wise lr decay, unlock a locked tower at a step
    tower_lr: Dict[str, float] = field(default_factory=dict)
    layer_decay: Optional[float] = None
    unlock_at_step: Dict[str, int] = field(default_factory=dict)
    sharding: Literal["ddp", "fsdp"] = "ddp"                # fsdp: parameters, grads, optimizer state sharded
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)


@dataclass
class EvalConfig:
    every: int = _num(0, ge=0)                              # steps; 0 = only at the end
    tasks: List[str] = field(default_factory=lambda: ["zeroshot", "retrieval"])
    best_metric: Optional[str] = None                       # e.g. "image/zeroshot/acc1": keep the best ckpt
    batch_size: int = _num(256, ge=1)


@dataclass
class Recipe:
    model: ModelConfig
    output_dir: str = "runs/run"
    seed: int = 0
    resume: str = "auto"                                    # auto | none | PATH
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: Optional[str] = None
    description: Optional[str] = None


# -- typed conversion ------------------------------------------------------------------------
def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:                 # Optional[X]: X's own, more specific message
            return _convert(value, options[0], key)
        # A mapping or list can only mean the option of that shape: report its own error (e.g. the
        # unknown key `url` of a data.train source) rather than "expected a string or a list".
        shaped = [a for a in options if _shape(a) == _shape_of(value)] if _shape_of(value) else []
        if len(shaped) == 1:
            return _convert(value, shaped[0], key)
        for a in options:
            try:
                return _convert(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_tname(a) for a in options)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _to_dataclass(tp, value, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):          # PyYAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp}")


def _shape(tp) -> Optional[str]:
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Dict):
        return "mapping"
    if typing.get_origin(tp) in (list, List):
        return "list"
    return None


def _shape_of(value) -> Optional[str]:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else None


def _check_bounds(value, f: dataclasses.Field, key: str) -> None:
    """Bounds from _num(...) metadata; None (unset optional) is always fine."""
    bounds = f.metadata.get("bounds") if f.metadata else None
    if not bounds or value is None:
        return
    ok = {"ge": value >= bounds.get("ge", value), "gt": "gt" not in bounds or value > bounds["gt"],
          "le": value <= bounds.get("le", value), "lt": "lt" not in bounds or value < bounds["lt"]}
    if not all(ok.values()):
        words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        want = " and ".join(f"{words[k]} {v}" for k, v in bounds.items())
        raise ConfigError(f"{key}: must be {want}, got {value!r}")


def _tname(tp) -> str:
    if typing.get_origin(tp) in (list, List):
        return "a list"
    if typing.get_origin(tp) in (dict, Dict):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", None) or str(tp).replace("typing.", ""))


def _to_dataclass(cls, data: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {where!r}; valid keys{' in ' + prefix if prefix else ''}: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
            _check_bounds(kwargs[name], f, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)


# -- overrides -------------------------------------------------------------------------------
def apply_override(data: dict, item: str) -> None:
    """`a.b.c=value` (value parsed as YAML) sets data['a']['b']['c']."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.max_steps=100)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def load_recipe_dict(path: str, overrides: Optional[List[str]] = None) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"recipe not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    for item in overrides or []:
        apply_override(data, item)
    return data


def parse_recipe(data: dict) -> Recipe:
    recipe = _to_dataclass(Recipe, data, "")
    _check(recipe)
    return recipe


def load_recipe(path: str, overrides: Optional[List[str]] = None) -> Recipe:
    try:
        return parse_recipe(load_recipe_dict(path, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _expand_open_clip(m: ModelConfig) -> None:
    """model.open_clip -> towers.image/text of type open_clip; embed_dim from its config if unset."""
    if m.open_clip is not None:
        if isinstance(m.open_clip, dict):
            src = {"config": m.open_clip}
        elif m.open_clip.endswith(".json"):
            src = {"config_file": m.open_clip}
        else:
            src = {"model": m.open_clip}
        for modality in ("image", "text"):
            given = m.towers.get(modality) or {}
            if "type" not in given:  # absent, or only options (e.g. towers.image.grad_checkpointing=true)
                m.towers[modality] = {"type": "open_clip", **src, **given}
    if m.embed_dim is None:
        from align.towers.open_clip_towers import resolve_model_cfg
        for modality, t in m.towers.items():
            if t.get("type") == "open_clip":
                m.embed_dim = resolve_model_cfg(t, f"model.towers.{modality}").get("embed_dim")
                if m.embed_dim:
                    break
        m.embed_dim = m.embed_dim or 512


def _check(r: Recipe) -> None:
    """Cross-field checks that types alone cannot express, and names checked against the registries
    (imported here, not at module level: listing recipes must not import torch)."""
    _expand_open_clip(r.model)
    if len(r.model.towers) < 2:
        raise ConfigError("model.towers: need at least two towers (or set model.open_clip)")
    from align.towers import TOWERS
    for modality, t in r.model.towers.items():
        if t.get("type") not in TOWERS:
            what = "missing" if t.get("type") is None else f"unknown tower type {t['type']!r}"
            raise ConfigError(f"model.towers.{modality}.type: {what}; valid: {', '.join(TOWERS.names())}")
    if r.train.max_steps is None and r.train.epochs is None:
        raise ConfigError("train: set train.max_steps or train.epochs")
    if r.resume not in ("auto", "none") and not os.path.exists(r.resume):
        raise ConfigError(f"resume: {r.resume!r} is neither auto, none nor an existing checkpoint")
    mods = set(r.model.towers)
    for i, pair in enumerate(r.loss.pairs):
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"loss.pairs[{i}]: expected two different modalities, got {pair}")
        for m in pair:
            if m not in mods:
                raise ConfigError(f"loss.pairs[{i}]: no tower for {m!r} (towers: {', '.join(sorted(mods))})")
    if r.loss.weights is not None and len(r.loss.weights) != len(r.loss.pairs):
        raise ConfigError(f"loss.weights: {len(r.loss.weights)} weights for {len(r.loss.pairs)} pairs")
    if r.loss.weights is not None and not all(0 <= w < float("inf") for w in r.loss.weights):
        raise ConfigError(f"loss.weights: must be finite and >= 0, got {r.loss.weights}")
    from align.losses import LOSSES
    if r.loss.type not in LOSSES:
        raise ConfigError(f"loss.type: unknown loss {r.loss.type!r}; valid: {', '.join(LOSSES.names())}")
    if getattr(LOSSES.get(r.loss.type), "uses_logit_bias", False) and r.model.init_logit_bias is None:
        raise ConfigError(f"model.init_logit_bias: required for loss.type={r.loss.type} (e.g. -10)")
    if len(r.train.betas) != 2 or not all(0 <= b < 1 for b in r.train.betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {r.train.betas}")
    if r.train.sharding == "fsdp" and "fp16" in (r.train.precision, r.train.fsdp.param_dtype):
        raise ConfigError("train.sharding=fsdp: fp16 needs a sharded gradient scaler align does not set up; "
                          "use bf16 (train.precision or train.fsdp.param_dtype)")
    if r.data.augment:
        from align.data.stream.augment import build_augmenter
        build_augmenter(r.data.augment, "data.augment")   # one-line ConfigError on a bad stage
    _check_finetune(r)
    _check_eval(r)


def _check_eval(r: Recipe) -> None:
    """eval.tasks: names of the benchmark registry; eval.best_metric: a name the eval produces."""
    from align.bench import BENCHMARKS
    from align.train.evaluate import metric_keys
    for i, task in enumerate(r.eval.tasks):
        if task not in BENCHMARKS:
            raise ConfigError(f"eval.tasks[{i}]: unknown task {task!r}; valid: {', '.join(BENCHMARKS.names())}")
    best = r.eval.best_metric
    if best is None:
        return
    keys = metric_keys(r.eval.tasks, list(r.model.towers))
    if not any(fnmatch.fnmatchcase(best, k) for k in keys):
        raise ConfigError(f"eval.best_metric: {best!r} is not a metric of eval.tasks={r.eval.tasks} "
                          f"(names are WHERE/TASK/METRIC); valid: {', '.join(keys) or 'none'}")


def _check_finetune(r: Recipe) -> None:
    """The fine-tuning keys of train (tower_lr, layer_decay, unlock_at_step)."""
    # model.init_from is read (and a missing path reported) by training only: a finished run stays loadable
    # by align.load after its starting model is gone.
    for key in ("tower_lr", "unlock_at_step"):
        for m, v in getattr(r.train, key).items():
            if m not in r.model.towers:
                raise ConfigError(f"train.{key}.{m}: no such tower (towers: {', '.join(sorted(r.model.towers))})")
            if v <= 0:
                raise ConfigError(f"train.{key}.{m}: must be > 0, got {v}")
    for m in r.train.unlock_at_step:
        if not r.model.towers[m].get("lock"):
            raise ConfigError(f"train.unlock_at_step.{m}: the {m} tower is not locked (set model.towers.{m}.lock: true)")
    if r.train.layer_decay is not None and not 0 < r.train.layer_decay <= 1:
        raise ConfigError(f"train.layer_decay: must be in (0, 1], got {r.train.layer_decay}")


def recipe_to_dict(r: Recipe) -> dict:
    return dataclasses.asdict(r)


# -- shipped recipes -------------------------------------------------------------------------
_PKG = os.path.dirname(os.path.abspath(__file__))


def recipes_dir() -> str:
    """$ALIGN_RECIPES, else the recipes installed with the package (align/recipes: the repo's recipes/
    folder, shipped as package data), else those of a source checkout or editable install (recipes/)."""
    if os.environ.get("ALIGN_RECIPES"):
        return os.environ["ALIGN_RECIPES"]
    candidates = [os.path.join(_PKG, "recipes"), os.path.join(os.path.dirname(_PKG), "recipes")]
    for d in candidates:
        if os.path.isdir(d):
            return d
    raise ConfigError(f"no shipped recipes: neither {' nor '.join(candidates)} exists (a broken install? "
                      f"reinstall align-clip, or set ALIGN_RECIPES to a folder of recipes)")


def resolve_recipe(name: str) -> str:
    """A path, or the name of a shipped recipe (`demo` -> recipes/demo.yaml): align.shipped's rules."""
    return resolve_shipped(name, recipes_dir(), "recipe")


def shipped_recipes() -> List[str]:
    """Names of the shipped recipes (`align recipes`), sorted."""
    return shipped_names(recipes_dir())


def recipe_header(path: str) -> str:
    """The opening comment block of a recipe (what it trains, launch, runtime)."""
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
    return "\n".join(lines)
