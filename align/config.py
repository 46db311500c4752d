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
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from align.config_types import to_dataclass   # the YAML -> dataclass conversion, bounds and key checks
from align.errors import ConfigError
from align.yaml_files import read_yaml
from align.limits import DataLimits   # data.limits: sizes a shard may claim (the dataclass lives with its checks)


def _num(default, *, ge=None, gt=None, le=None, lt=None, help: str = ""):
    """A numeric field with bounds, checked at load (align.config_types checks them), and its one-line help."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "help": help})


def _key(default=dataclasses.MISSING, *, help: str, factory=dataclasses.MISSING):
    """A field with its one-line help (what `align train NAME --help-keys` prints). factory: mutable default."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """The towers and the shared embedding space."""
    towers: Dict[str, Dict[str, Any]] = _key(
        factory=dict, help="modality -> {type: TOWER_TYPE, ...tower options}; the types are listed below")
    open_clip: Optional[Union[str, Dict[str, Any]]] = _key(
        None, help="image+text towers from one open_clip architecture: a name (ViT-B-32), a JSON file or an "
                   "inline config; fills towers.image/text where unset")
    embed_dim: Optional[int] = _num(None, ge=1, help="shared embedding size (default: the open_clip config's, "
                                                     "else 512)")
    init_logit_scale: float = _key(2.6592600369262695, help="starting log temperature: log(1 / 0.07), as CLIP")
    max_logit_scale: float = _num(100.0, gt=0, help="cap on exp(logit_scale) (CLIP's 100)")
    init_logit_bias: Optional[float] = _key(None, help="starting logit bias; set (e.g. -10) for SigLIP")
    init_from: Optional[str] = _key(
        None, help="weights-only start: align run/checkpoint/export or open_clip checkpoint file/folder; step "
                   "and optimizer start fresh")


@dataclass
class DistillConfig:
    """loss.distill: a KL term towards a frozen teacher's in-batch similarities (align.losses.distill)."""
    teacher: str = _key(help="RUN | EXPORT | open_clip:ARCH (with pretrained: FILE; nothing downloads) | stored "
                             "(per-sample teacher_<modality>.npy members written by align data reinforce)")
    pretrained: Optional[str] = _key(None, help="open_clip:ARCH teachers: a local checkpoint file")
    weight: float = _num(1.0, ge=0, help="weight of the KL term beside the contrastive loss (open_clip's 1)")
    temperature: Optional[float] = _num(None, gt=0, help="divides the teacher's similarities (default: the "
                                                         "teacher's own 1/logit_scale)")


@dataclass
class LossConfig:
    """The contrastive objective."""
    type: str = _key("clip", help="loss name: clip | siglip | chunked_clip | chunked_siglip | hard_negative_clip | "
                                  "distill_clip (align.losses)")
    pairs: List[List[str]] = _key(factory=lambda: [["image", "text"]],
                                  help="modality pairs the loss aligns, e.g. [[image, text], [audio, text]]")
    weights: Optional[List[float]] = _key(None, help="one weight per pair (default: all 1)")
    chunk_size: int = _num(4096, ge=1, help="rows per block of the chunked losses (memory vs speed)")
    hard_negatives: int = _num(0, ge=0, help="K: up to K captions of each sample's neg.txt join its row as extra "
                                             "negatives (loss.type: hard_negative_clip); 0 = off")
    distill: Optional[DistillConfig] = _key(None, help="distil from a frozen teacher (loss.type: distill_clip): "
                                                        "{teacher, pretrained, weight, temperature}")


@dataclass
class SourceConfig:
    """One weighted training source (an entry of data.train)."""
    urls: Union[str, List[str]] = _key(help="shard pattern(s): dir, brace pattern, http(s) URL")
    weight: float = _num(1.0, ge=0, help="sampling weight against the other sources")


@dataclass
class DataConfig:
    """Training and validation data."""
    train: Union[str, List[Union[str, SourceConfig]]] = _key(
        "synthetic", help="shard pattern(s), a list of {urls, weight} sources, a CSV/TSV/JSONL/Parquet file or folder "
                          "of pairs (written as shards first: data.shards_cache), or synthetic")
    val: Optional[str] = _key(None, help="CLIP_benchmark-layout dir for the periodic and final eval, or a CSV/TSV/"
                                          "JSONL/Parquet file or folder of pairs (written as such a dir first: "
                                          "data.shards_cache; a label column gives zero-shot, captions retrieval)")
    samples_per_epoch: Optional[int] = _num(None, ge=1, help="epoch length in samples, over all processes "
                                                                "(train.epochs needs it); each epoch goes on in the "
                                                                "shards where the last one stopped")
    resampled: bool = _key(False, help="draw shards with replacement (endless stream, as webdataset's resampled); "
                                       "each reading of a sample gets its own random draws")
    shuffle_buffer: int = _num(1000, ge=0, help="samples held in the shuffle buffer (0: no shuffling)")
    num_workers: int = _num(2, ge=0, help="DataLoader worker processes per training process")
    features_in: Literal["step", "workers"] = _key(
        "step", help="where a training batch's audio log-mel is computed: step (in the training step, on its device: "
                     "the GPU's microseconds; also where CPU workers are the bottleneck) | workers (in the data "
                     "workers' collate: a CPU run whose workers have cores to spare, long clips, short steps)")
    allow_pipe: bool = _key(False, help="allow pipe: URLs (they run shell commands)")
    retry_budget_s: float = _num(300.0, gt=0, help="seconds an http(s) source may stay unreachable before the "
                                                   "run stops")
    max_skip_frac: Optional[float] = _num(None, ge=0, le=1, help="abort when the fraction of skipped samples "
                                                                 "exceeds this")
    synthetic_size: int = _num(10000, ge=1, help="samples per epoch for data.train=synthetic")
    synthetic_caption: str = _key("Dummy caption", help="the caption of synthetic samples (open_clip's)")
    augment: Optional[Dict[str, Optional[List[Dict[str, Any]]]]] = _key(
        None, help="training augmentations {image|audio|text: [{type: ..., ...}]} (align.data.stream.augment); "
                   "off when unset")
    limits: DataLimits = _key(factory=DataLimits, help="the sizes a shard may claim, checked before any "
                              "allocation (align.limits), e.g. data.limits.max_image_pixels=200000000")
    text_keys: Optional[Dict[str, float]] = _key(
        None, help="several caption sources drawn by weight, one per sample and epoch (as open_clip's "
                   "--json-text-key-probs): {MEMBER_EXT | json:PATH: weight}, e.g. {txt: 0.7, json:extra.long: 0.3}")
    shards_cache: Optional[str] = _key(
        None, help="where a table or folder of pairs named in data.train is written as shards once (default "
                   "$ALIGN_CACHE, else ~/.cache/align; align.data.write.cached)")
    val_split: Optional[Dict[str, Any]] = _key(
        None, help="hold out unseen groups of the training shards as the val set: {groups_from: FIELD, groups: "
                   "[...] | frac: 0.1} (align.data.stream.val_split); instead of data.val")


@dataclass
class FsdpConfig:
    """train.sharding=fsdp: torch FSDP2 (fully_shard per tower block, then the root)."""
    reshard_after_forward: bool = _key(True, help="free gathered block weights after forward (less memory)")
    param_dtype: Literal["fp32", "bf16", "fp16"] = _key("fp32", help="dtype parameters are gathered and "
                                                                     "computed in")
    reduce_dtype: Literal["fp32", "bf16", "fp16"] = _key("fp32", help="dtype gradients are reduce-scattered in")


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""
    batch_size: int = _num(64, ge=1, help="samples per step per process")
    max_steps: Optional[int] = _num(None, ge=1, help="stop after this many steps (set it or epochs)")
    epochs: Optional[int] = _num(None, ge=1, help="stop after this many epochs (set it or max_steps)")
    accum_steps: int = _num(1, ge=1, help="micro-batches per step (GradCache: every negative kept)")
    lr: float = _num(5e-4, ge=0, help="peak learning rate (AdamW)")
    weight_decay: float = _num(0.2, ge=0, help="AdamW weight decay (not on biases, norms, temperature, "
                                                   "embeddings)")
    betas: List[float] = _key(factory=lambda: [0.9, 0.98], help="AdamW betas [beta1, beta2]")
    eps: float = _num(1e-6, ge=0, help="AdamW epsilon")
    warmup_steps: int = _num(0, ge=0, help="linear warm-up steps before the cosine decay")
    min_lr_ratio: float = _num(0.0, ge=0, le=1, help="floor of the cosine decay, as a fraction of lr")
    grad_clip: Optional[float] = _num(None, gt=0, help="clip the global gradient norm to this")
    ema: float = _num(0.0, ge=0, lt=1, help="decay of an exponential moving average of the weights, e.g. 0.999: "
                                            "evaluated, kept as best and exported (align.train.ema); 0 = off")
    precision: Literal["fp32", "bf16", "fp16"] = _key("fp32", help="training precision (autocast)")
    checkpoint_every: int = _num(0, ge=0, help="steps between checkpoints; 0 = only at the end")
    keep_last: int = _num(2, ge=1, help="checkpoints kept")
    log_every: int = _num(10, ge=1, help="steps between log lines / metrics")
    compile: bool = _key(False, help="torch.compile the model")
    grad_checkpointing: bool = _key(False, help="recompute activations in backward, where a tower can")
    max_bad_steps: int = _num(5, ge=1, help="consecutive NaN/Inf losses before the run stops")
    lock_timeout_s: float = _num(300.0, gt=0, help="the run dir's lock is taken over when its holder's heartbeat "
                                                   "is this old (another host; a dead pid on this one: at once); "
                                                   "multi-process: the other ranks end the launch when rank 0's "
                                                   "heartbeat stops this long while they wait for it")
    dist_timeout_s: float = _num(300.0, gt=0, help="multi-process: a collective waits this long, and a rank "
                                                   "that finishes no step for this long is named and the launch "
                                                   "ends (exit 70; resume=auto continues)")
    num_threads: Optional[int] = _num(None, ge=1, help="torch CPU threads (default: torch's)")
    deterministic: bool = _key(False, help="deterministic GPU kernels (slower)")
    wandb_project: Optional[str] = _key(None, help="also log to this Weights & Biases project (pip install wandb)")
    tower_lr: Dict[str, float] = _key(factory=dict, help="per-tower base lr, e.g. {text: 1.0e-5}")
    layer_decay: Optional[float] = _key(None, help="layer-wise lr decay in (0, 1] (fine-tuning)")
    unlock_at_step: Dict[str, int] = _key(factory=dict, help="unlock a locked tower at a step, e.g. {text: 500}")
    sharding: Literal["ddp", "fsdp"] = _key("ddp", help="ddp, or fsdp: parameters, grads and optimizer state "
                                                        "sharded")
    fsdp: FsdpConfig = _key(factory=FsdpConfig, help="FSDP2 settings (train.sharding=fsdp)")


@dataclass
class EvalConfig:
    """Evaluation during and after training (on data.val)."""
    every: int = _num(0, ge=0, help="steps between evals; 0 = only at the end")
    tasks: List[str] = _key(factory=lambda: ["zeroshot", "retrieval"], help="benchmark tasks (align.bench)")
    best_metric: Optional[str] = _key(None, help="keep the best checkpoint by this metric, e.g. "
                                                 "image/zeroshot/acc1")
    batch_size: int = _num(256, ge=1, help="eval batch size")


@dataclass
class Recipe:
    """A training recipe: the YAML `align train` reads."""
    model: ModelConfig = _key(help="towers and embedding space")
    output_dir: str = _key("runs/run", help="run folder: checkpoints, metrics, summary")
    seed: int = _key(0, help="seed of weights, data order and augmentation")
    resume: str = _key("auto", help="auto (the run's last checkpoint) | none | PATH")
    loss: LossConfig = _key(factory=LossConfig, help="the contrastive objective")
    data: DataConfig = _key(factory=DataConfig, help="training and validation data")
    train: TrainConfig = _key(factory=TrainConfig, help="optimisation and the loop")
    eval: EvalConfig = _key(factory=EvalConfig, help="evaluation")
    name: Optional[str] = _key(None, help="model name (model card)")
    description: Optional[str] = _key(None, help="one line about the recipe (model card)")


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
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    for item in overrides or []:
        apply_override(data, item)
    return data


def parse_recipe(data: dict) -> Recipe:
    recipe = to_dataclass(Recipe, data, "")
    _check(recipe)
    return recipe


def load_recipe(path: str, overrides: Optional[List[str]] = None) -> Recipe:
    try:
        return parse_recipe(load_recipe_dict(path, overrides))
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(f"{path}: ") else f"{path}: {e}") from None


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
    _check_loss_inputs(r, LOSSES.get(r.loss.type))
    if len(r.train.betas) != 2 or not all(0 <= b < 1 for b in r.train.betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {r.train.betas}")
    if r.train.sharding == "fsdp" and "fp16" in (r.train.precision, r.train.fsdp.param_dtype):
        raise ConfigError("train.sharding=fsdp: fp16 needs a sharded gradient scaler align does not set up; "
                          "use bf16 (train.precision or train.fsdp.param_dtype)")
    if r.data.augment:
        from align.data.stream.augment import build_augmenter
        build_augmenter(r.data.augment, "data.augment")   # one-line ConfigError on a bad stage
    vision = ((r.model.towers.get("image") or {}).get("config") or {})
    vision = vision.get("vision_cfg") if isinstance(vision, dict) else None
    if isinstance(vision, dict) and vision.get("image_size") == "auto" and r.data.train == "synthetic":
        raise ConfigError("model.open_clip.vision_cfg.image_size: auto reads the training images' sizes; "
                          "data.train is synthetic (give a number)")
    for m, tower in r.model.towers.items():
        if isinstance(tower, dict) and tower.get("clip_seconds") == "auto" and r.data.train == "synthetic":
            raise ConfigError(f"model.towers.{m}.clip_seconds: auto reads the training clips' durations; "
                              f"data.train is synthetic (give a number of seconds)")
    if r.data.text_keys is not None:
        tk = r.data.text_keys
        if not tk or any(not str(k).strip() or str(k).startswith("__") or str(k) == "json:" for k in tk) or \
                any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf")
                    for w in tk.values()) or not sum(tk.values()) > 0:
            raise ConfigError(f"data.text_keys: {{member extension or json:PATH: weight >= 0}} with a positive sum, "
                              f"got {tk!r}")
        if "text" not in r.model.towers:
            raise ConfigError("data.text_keys: the model has no text tower")
    if r.data.val_split is not None:
        from align.data.stream.val_split import ValSplit
        ValSplit.from_config(r.data.val_split, r.seed)       # one-line ConfigError on a bad key or value
        if r.data.val:
            raise ConfigError("data.val and data.val_split: give one (val_split makes the val set from the "
                              "training shards' held-out groups)")
        if r.data.train == "synthetic":
            raise ConfigError("data.val_split carves groups out of training shards; data.train is synthetic")
    _check_finetune(r)
    _check_eval(r)


def _check_loss_inputs(r: Recipe, cls) -> None:
    """loss.hard_negatives and loss.distill: only with a loss type that takes them, and it needs them."""
    takes_neg, takes_teacher = getattr(cls, "takes_negatives", False), getattr(cls, "takes_teacher", False)
    if r.loss.hard_negatives and not takes_neg:
        raise ConfigError(f"loss.hard_negatives: loss.type={r.loss.type} takes no hard negatives; use "
                          "loss.type=hard_negative_clip")
    if r.loss.hard_negatives and (r.data.train == "synthetic" or "text" not in r.model.towers):
        raise ConfigError("loss.hard_negatives: needs shards with neg.txt members and a text tower")
    if r.loss.distill is not None and not takes_teacher:
        raise ConfigError(f"loss.distill: loss.type={r.loss.type} takes no teacher; use loss.type=distill_clip")
    if takes_teacher and r.loss.distill is None:
        raise ConfigError(f"loss.type={r.loss.type}: set loss.distill.teacher (RUN, EXPORT, open_clip:ARCH or stored)")
    if r.loss.distill is not None and r.loss.distill.teacher == "stored" and r.data.train == "synthetic":
        raise ConfigError("loss.distill.teacher=stored reads teacher members of the shards; data.train is synthetic")


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
            raise ConfigError(f"train.unlock_at_step.{m}: the {m} tower is not locked "
                              f"(set model.towers.{m}.lock: true)")
    if r.train.layer_decay is not None and not 0 < r.train.layer_decay <= 1:
        raise ConfigError(f"train.layer_decay: must be in (0, 1], got {r.train.layer_decay}")


def recipe_to_dict(r: Recipe) -> dict:
    return dataclasses.asdict(r)
