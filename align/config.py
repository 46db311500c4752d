"""Recipes: YAML plus dotted overrides, validated into typed settings.

    cfg = load_recipe("recipes/demo.yaml", ["train.max_steps=100", "model.embed_dim=64"])

An unknown key, a wrong type or a missing required value raises ConfigError
with one line naming the key (and, for unknown keys, the valid ones). Tower
sections are free-form mappings validated by their tower factories.
"""
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from align.errors import ConfigError


@dataclass
class ModelConfig:
    towers: Dict[str, Dict[str, Any]] = field(default_factory=dict)   # modality -> {type: ..., ...}
    # Dual towers from one open_clip architecture: a name ("ViT-B-32"), a JSON config file, or an inline
    # config. Fills towers.image and towers.text (type open_clip) where the recipe does not set them.
    open_clip: Optional[Union[str, Dict[str, Any]]] = None
    embed_dim: Optional[int] = None                         # default: the open_clip config's, else 512
    init_logit_scale: float = 2.6592600369262695            # log(1 / 0.07), as CLIP
    max_logit_scale: float = 100.0
    init_logit_bias: Optional[float] = None                 # set (e.g. -10) for SigLIP


@dataclass
class LossConfig:
    type: str = "clip"                                      # clip | siglip | chunked_clip
    pairs: List[List[str]] = field(default_factory=lambda: [["image", "text"]])
    weights: Optional[List[float]] = None                   # per pair; default all 1
    chunk_size: int = 4096                                  # chunked_clip only


@dataclass
class SourceConfig:
    urls: Union[str, List[str]]
    weight: float = 1.0


@dataclass
class DataConfig:
    train: Union[str, List[Union[str, SourceConfig]]] = "synthetic"   # pattern(s), sources, or "synthetic"
    val: Optional[str] = None                               # CLIP_benchmark-layout dir for periodic eval
    samples_per_epoch: Optional[int] = None
    resampled: bool = False
    shuffle_buffer: int = 1000
    num_workers: int = 2
    allow_pipe: bool = False                                # pipe: URLs run shell commands
    max_skip_frac: Optional[float] = None                   # abort when the skip rate exceeds this
    synthetic_size: int = 10000                             # samples per epoch for data.train=synthetic
    synthetic_caption: str = "Dummy caption"                # its text (open_clip's synthetic caption)
    # Training augmentations, {image|audio: [{type: ..., ...}]}: see align.data.augment (off when unset).
    augment: Optional[Dict[str, Optional[List[Dict[str, Any]]]]] = None


@dataclass
class TrainConfig:
    batch_size: int = 64                                    # per process
    max_steps: Optional[int] = None
    epochs: Optional[int] = None
    accum_steps: int = 1                                    # micro-batches per step (GradCache: all negatives kept)
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = 0                               # steps; 0 = only at the end
    keep_last: int = 2
    log_every: int = 10
    compile: bool = False
    grad_checkpointing: bool = False
    max_bad_steps: int = 5                                  # consecutive NaN/Inf losses before stopping
    num_threads: Optional[int] = None                       # torch CPU threads
    deterministic: bool = False                             # deterministic GPU kernels (slower)
    wandb_project: Optional[str] = None                     # also log to Weights & Biases (pip install wandb)


@dataclass
class EvalConfig:
    every: int = 0                                          # steps; 0 = only at the end
    tasks: List[str] = field(default_factory=lambda: ["zeroshot", "retrieval"])
    best_metric: Optional[str] = None                       # e.g. "image/zeroshot/acc1": keep the best ckpt
    batch_size: int = 256


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
    """Cross-field checks that types alone cannot express."""
    _expand_open_clip(r.model)
    if len(r.model.towers) < 2:
        raise ConfigError("model.towers: need at least two towers (or set model.open_clip)")
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
    if r.loss.type == "siglip" and r.model.init_logit_bias is None:
        raise ConfigError("model.init_logit_bias: required for loss.type=siglip (e.g. -10)")
    if r.data.augment:
        from align.data.augment import build_augmenter
        build_augmenter(r.data.augment, "data.augment")   # one-line ConfigError on a bad stage
    if r.train.batch_size < 1 or r.train.accum_steps < 1:
        raise ConfigError("train.batch_size and train.accum_steps must be >= 1")


def recipe_to_dict(r: Recipe) -> dict:
    return dataclasses.asdict(r)


# -- shipped recipes -------------------------------------------------------------------------
REPO_RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def recipes_dir() -> str:
    return os.environ.get("ALIGN_RECIPES", REPO_RECIPES)


def resolve_recipe(name: str) -> str:
    """A path, or the name of a shipped recipe (`demo` -> recipes/demo.yaml)."""
    if os.path.isfile(name):
        return name
    cand = os.path.join(recipes_dir(), name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(cand):
        return cand
    raise ConfigError(f"recipe not found: {name} (not a file, nor one of `align recipes`)")


def recipe_header(path: str) -> str:
    """The opening comment block of a recipe (what it trains, launch, runtime)."""
    lines = []
    for line in open(path):
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)
