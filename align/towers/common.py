"""Helpers shared by the audio, Hugging Face text and timm image towers.

- `check_cfg`: reject unknown recipe keys with one line naming the key and the valid ones.
- `build_pretrained_tower`: the factory body of the towers over a pretrained encoder (hf, hf_image,
  hf_audio, timm): keys, modality, `model` required, `lock` with `unlocked_layers|groups`.
- `pos_int`: a positive-integer recipe key, or one line naming it.
- `SimpleTokenizerText`: tokenizer set-up, tokenize, count_tokens, dummy_input of the text towers over
  open_clip's SimpleTokenizer (rnn_text, bow_text).
- `build_scratch_tower`: the factory body of towers trained from scratch (rnn_text, bow_text): modality, keys,
  `lock` with `unlocked_groups` (`lock_spec` / `apply_lock`, also rnn_audio's).
- `build_projection`: the head every tower ends with (`proj: linear | mlp | none`).
- `LockableTower`: LiT-style locking by layer groups. Frozen parts run without
  gradient and stay in eval mode (BatchNorm statistics and dropout frozen too),
  while the projection head always stays trainable (it is new for the shared space).
- `load_weights_file`: safetensors or `torch.load(weights_only=True)`, nothing else.
- `hf_location`, `hf_load`, `hf_model`, `check_hf_tokenizer`: the Hugging Face towers' loading (hf, hf_image,
  hf_audio): a local folder read offline, a path that is no folder, an unreadable or pickled weights file, weights
  of another shape or architecture, a folder without its tokenizer: one ConfigError line each.
"""
import contextlib
import os
from pathlib import Path
from typing import Iterable, List, Mapping, Sequence, Union

import torch
from torch import nn

from align.errors import ConfigError
from align.text import refuse_surrogates
from align.towers.base import Tower

PROJ_KINDS = ("linear", "mlp", "none")


def check_cfg(cfg: Mapping, valid: Iterable[str], where: str) -> None:
    """Raise ConfigError for the first key of `cfg` not in `valid` (recipe typos fail loudly)."""
    valid = sorted(valid)
    for key in cfg:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")


def pos_int(v, key: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{where}.{key}: must be a positive integer, got {v!r}")
    return v


class SimpleTokenizerText:
    """What text towers over open_clip's SimpleTokenizer share (rnn_text, bow_text): its set-up, tokenize,
    count_tokens and dummy_input. The BPE vocabulary ships inside open_clip: 49408 ids, pad 0, <end_of_text> the
    largest id; ONNX export copies it (tokenizer_kind) with text_cfg's tokenizer_kwargs."""

    modality = "text"
    tokenizer_kind = "open_clip_simple"      # what ONNX export copies beside text.onnx

    def _set_tokenizer(self, context_length: int, where: str, *, min_length: int, why: str, clean: str = "lower"):
        from open_clip.tokenizer import SimpleTokenizer
        self.context_length = pos_int(context_length, "context_length", where)
        if self.context_length < min_length:
            raise ConfigError(f"{where}.context_length: must be >= {min_length} ({why}), got {context_length}")
        self._tokenizer = SimpleTokenizer(context_length=self.context_length, clean=clean)
        self.vocab_size = len(self._tokenizer.encoder)                        # 49408

    def tokenize(self, texts: List[str]) -> torch.Tensor:                     # list[str] -> long [B, L]
        texts = [texts] if isinstance(texts, str) else list(texts)
        refuse_surrogates(texts)          # as every text tower (align.text): SimpleTokenizer would read U+FFFD
        return self._tokenizer(texts)

    def count_tokens(self, texts: List[str]) -> List[int]:
        refuse_surrogates(texts)
        return [len(self._tokenizer.encode(t)) + 2 for t in texts]      # <sot> text <eot>, before truncation

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        """long [B, L] rows as the tokenizer writes them: <start_of_text>, random words, <end_of_text>, zero
        padding; lengths 2..L at random."""
        g = torch.randint(1, self.vocab_size - 2, (batch_size, self.context_length))
        n = torch.randint(2, self.context_length + 1, (batch_size, 1))
        t = torch.arange(self.context_length).unsqueeze(0)
        g[:, :1] = self._tokenizer.sot_token_id
        g = torch.where(t == n - 1, torch.full_like(g, self._tokenizer.eot_token_id), g)
        return torch.where(t >= n, torch.zeros_like(g), g)


def build_pretrained_tower(cls, cfg: dict, modality: str, embed_dim: int, keys, *, tower_type: str, encodes: str,
                           model_hint: str, unlocked_key: str = "unlocked_layers"):
    """cls(model, embed_dim, where=..., **rest of cfg), locked when `lock: true` (all but `unlocked_key`
    groups); one-line ConfigError for an unknown key, another modality, a missing `model`."""
    where = f"model.towers.{modality}"
    check_cfg(cfg, keys, where)
    if modality != encodes:
        raise ConfigError(f"{where}: the {tower_type} tower encodes the {encodes!r} modality, not {modality!r}")
    if "model" not in cfg:
        raise ConfigError(f"{where}.model: missing ({model_hint})")
    cfg = dict(cfg)
    lock, unlocked = cfg.pop("lock", False), cfg.pop(unlocked_key, None)
    if unlocked is not None and not lock:
        raise ConfigError(f"{where}.{unlocked_key}: only used with lock: true")
    if not isinstance(cfg.get("from_config", False), bool):
        raise ConfigError(f"{where}.from_config: true or false, got {cfg['from_config']!r}")
    tower = cls(cfg.pop("model"), embed_dim, where=where, **cfg)
    if lock:
        tower.lock(unlocked or 0)
    return tower


def lock_spec(cfg: Mapping, where: str):
    """(lock, unlocked_groups) of a scratch tower's section; one line for unlocked_groups without lock."""
    lock, unlocked = cfg.get("lock", False), cfg.get("unlocked_groups", 0)
    if not lock and "unlocked_groups" in cfg:
        raise ConfigError(f"{where}.unlocked_groups: only used with lock: true")
    return lock, unlocked


def apply_lock(tower: "LockableTower", spec) -> "LockableTower":
    if spec[0]:
        tower.lock(spec[1])
    return tower


def build_scratch_tower(cls, cfg: dict, modality: str, embed_dim: int, keys, *, tower_type: str, encodes: str,
                        hint: str = ""):
    """cls(embed_dim, where=..., **cfg minus the lock keys), locked when `lock: true` (all but `unlocked_groups`
    groups); one-line ConfigError for another modality or an unknown key."""
    where = f"model.towers.{modality}"
    if modality != encodes:
        raise ConfigError(f"{where}: {tower_type} encodes the {encodes!r} modality, not {modality!r}{hint}")
    check_cfg(cfg, keys, where)
    spec = lock_spec(cfg, where)
    rest = {k: v for k, v in cfg.items() if k not in ("lock", "unlocked_groups")}
    return apply_lock(cls(embed_dim, where=where, **rest), spec)


def build_projection(in_dim: int, embed_dim: int, kind: str, where: str) -> nn.Module:
    """Projection head [B, in_dim] -> [B, embed_dim].

    linear: one bias-free Linear (as CLIP); mlp: Linear-GELU-Linear with hidden size
    in_dim (as LAION-CLAP's projections); none: identity, only when in_dim == embed_dim.
    """
    if kind == "linear":
        return nn.Linear(in_dim, embed_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, embed_dim))
    if kind == "none":
        if in_dim != embed_dim:
            raise ConfigError(f"{where}.proj: 'none' needs the trunk width ({in_dim}) to equal "
                              f"embed_dim ({embed_dim}); use proj: linear or mlp")
        return nn.Identity()
    raise ConfigError(f"{where}.proj: {kind!r} is not one of {', '.join(PROJ_KINDS)}")


Group = Union[nn.Module, nn.Parameter, Sequence["Group"]]


def _group_params(group: Group) -> List[nn.Parameter]:
    if isinstance(group, nn.Parameter):
        return [group]
    if isinstance(group, nn.Module):
        return list(group.parameters())
    return [p for g in group for p in _group_params(g)]


def set_frozen_eval(module: nn.Module) -> None:
    """Put every maximal sub-module whose parameters are all frozen into eval mode.

    Called after `train(True)`: a frozen BatchNorm must not update its running
    statistics, and frozen layers should not apply dropout (LiT locks them as-is).
    Parameter-free modules directly under a partly trainable parent keep their mode.
    """
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        elif params:
            set_frozen_eval(child)


class LockableTower(Tower):
    """A Tower with a `trunk` (the pretrained/backbone part) and a `head` (projection).

    Subclasses implement `lock_groups()` -> ordered list of groups, input side first;
    `lock(n)` freezes the whole trunk and unfreezes its last n groups. When the
    trunk is fully frozen, `trunk_context()` is `torch.no_grad()` so no graph is
    built; when only a prefix is frozen, autograd already records nothing for it
    (its inputs and parameters do not require grad).
    """

    trunk_locked: bool = False

    def lock_groups(self) -> List[Group]:
        raise NotImplementedError

    def lock(self, unlocked_groups: int = 0) -> None:
        if isinstance(unlocked_groups, bool) or not isinstance(unlocked_groups, int):
            raise ConfigError(f"{type(self).__name__}: unlocked groups/layers must be an integer, "
                              f"got {unlocked_groups!r}")
        groups = self.lock_groups() if unlocked_groups else []
        if unlocked_groups and not 0 < unlocked_groups <= len(groups):
            raise ConfigError(f"{type(self).__name__}: unlocked_groups={unlocked_groups} must be "
                              f"between 0 and {len(groups)} (the number of layer groups)")
        for p in self.trunk_parameters():
            p.requires_grad_(False)
        if unlocked_groups:
            for g in groups[-unlocked_groups:]:
                for p in _group_params(g):
                    p.requires_grad_(True)
        self.trunk_locked = not any(p.requires_grad for p in self.trunk_parameters())
        self.train(self.training)  # re-apply eval to the frozen parts

    def trunk_parameters(self) -> List[nn.Parameter]:
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def trunk_context(self):
        return torch.no_grad() if self.trunk_locked else contextlib.nullcontext()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            set_frozen_eval(self)
        return self


def load_weights_file(path: Union[str, Path], where: str) -> dict:
    """Load a state dict from .safetensors or a torch file (weights_only=True only).

    Unwraps a {'state_dict': ...} checkpoint and strips DDP's 'module.' prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code objects, ...
        raise ConfigError(f"{where}: cannot load weights from {str(path)!r}: {e}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConfigError(f"{where}: {str(path)!r} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def hf_grad_checkpointing(model: nn.Module, enable: bool) -> bool:
    """Turns a transformers model's own activation checkpointing on/off; False where it has none."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    if enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    return True


def find_layers(model: nn.Module):
    """A transformers model's list of layers: the ModuleList whose length is config.num_hidden_layers
    (hierarchical models such as CLAP's Swin: the stages, len(config.depths)); None if there is none."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if isinstance(getattr(cfg, "depths", None), (list, tuple)):
        n = len(cfg.depths)
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and n and len(m) == n:
            return m
    return None


def hf_lock_groups(model: nn.Module, where: str, what: str) -> List:
    """Lock groups of a transformers model: [everything before the layers (embeddings)], layer_0, ...,
    [layer_last + everything after (final norms, pooler)], in parameter registration order."""
    layers = find_layers(model)
    if layers is None:
        raise ConfigError(f"{where}.unlocked_layers: cannot find the layer list of {what}; "
                          f"use lock: true without unlocked_layers")
    in_layers = {id(p) for p in layers.parameters()}
    pre, post, seen = [], [], False
    for p in model.parameters():
        if id(p) in in_layers:
            seen = True
        else:
            (post if seen else pre).append(p)
    blocks = list(layers)
    return [pre, *blocks[:-1], [blocks[-1], post]]


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hf_location(name, key: str):
    """(folder or Hub id, local_files_only) for the recipe key `key` naming a Hugging Face model or tokenizer. A
    folder is read offline; a Hub id goes through transformers' cache (offline with HF_HUB_OFFLINE=1); a path
    that is no folder is one line."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key}: expected a local folder or a Hub id, got {name!r}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ConfigError(f"{key}: {name!r} is a file; give the folder that holds its config.json")
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise ConfigError(f"{key}: no such folder {name!r} (a Hub id is NAME or ORG/NAME)")
    if not offline:
        from align.hub import hub_unreachable
        host = hub_unreachable()
        if host is not None:         # a compute node: huggingface_hub would retry 50-100 s before any answer
            from huggingface_hub import try_to_load_from_cache
            if not isinstance(try_to_load_from_cache(name, "config.json"), str):
                raise ConfigError(f"{key}: {name!r} is not in the Hugging Face cache and {host} does not answer "
                                  f"(offline? fetch the model where a network is and set {key} to its folder)")
            return name, True        # cached: transformers reads the cache without asking the hub
    return name, offline


def _hf_reason(path: str, e: BaseException) -> str:
    """Why transformers could not load `path`, in one line; a pickled or damaged weights file is named."""
    from align.open_clip_files import load_error
    text = str(e).strip()
    if type(e).__name__ in ("UnpicklingError", "SafetensorError") or text.startswith("Weights only load failed"):
        weights = os.path.join(path, HF_WEIGHTS[0 if type(e).__name__ == "SafetensorError" else 1])
        return load_error(weights if os.path.isfile(weights) else path, e)
    return (text.splitlines() or [type(e).__name__])[0][:200]


def hf_load(cls, name: str, path: str, local: bool, where: str, what: str, **kwargs):
    """`cls.from_pretrained(path, local_files_only=local, **kwargs)`; any failure is one ConfigError line."""
    try:
        return cls.from_pretrained(path, local_files_only=local, **kwargs)
    except Exception as e:  # noqa: BLE001  pickle, damaged file, missing file, offline: one line, never a traceback
        raise ConfigError(f"{where}.model: {what} {name!r} ({_hf_reason(path, e)})") from None


@contextlib.contextmanager
def load_report_held():
    """transformers 5 logs a LOAD REPORT table (tens of lines: each tensor missing from the weights or not used)
    on every from_pretrained that does not match exactly, also for tensors align drops on purpose (the text
    pooler, a CLIPModel's other half). hf_model checks the same lists itself and says one line, so the table is
    held back; when the load fails, it is let through (it explains transformers' error)."""
    import logging
    held = []

    def keep(record) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    log = logging.getLogger("transformers.modeling_utils")
    log.addFilter(keep)
    try:
        yield held
    except BaseException:
        log.removeFilter(keep)
        for record in held:
            log.handle(record)
        raise
    finally:
        log.removeFilter(keep)


def _examples(keys: Sequence[str]) -> str:
    return ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")


def hf_model(cls, name: str, path: str, local: bool, where: str, what: str, unused=lambda key, model: False,
             from_config: bool = False):
    """`hf_load` of a model in float32; weights whose shapes differ from its config, a file that holds few of its
    tensors (another architecture's) or lacks some the tower uses (`unused(key, model)`: those it does not, e.g.
    the text half of a CLIPModel for an image tower), are one line: transformers would start them at random.
    Tensors it lacks that the tower does not use, and tensors of the file the model has no place for, are one
    warning line (rank 0's), in place of transformers' LOAD REPORT table (load_report_held).
    from_config: the architecture of the folder's config.json only, no weights read (a tower's `from_config: true`:
    an export's, whose weights are the export's own)."""
    if from_config:
        from transformers import AutoConfig
        config = hf_load(AutoConfig, name, path, local, where, "cannot read the config.json of")
        try:
            return cls.from_config(config, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001  an unknown model_type, a config that does not build: one line
            raise ConfigError(f"{where}.model: {what} {name!r} from its config.json "
                              f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})") from None
    with load_report_held():
        model, info = hf_load(cls, name, path, local, where, what, dtype=torch.float32, output_loading_info=True,
                              ignore_mismatched_sizes=True)
    bad = sorted(info.get("mismatched_keys") or [], key=lambda m: str(m[0]))
    if bad:
        key, theirs, ours = bad[0][:3]
        raise ConfigError(f"{where}.model: the weights of {name!r} do not fit its config.json: tensor {key!r} has "
                          f"shape {list(theirs)} in the weights but {list(ours)} in the model ({len(bad)} such)")
    missing, total = sorted(info.get("missing_keys") or []), len(model.state_dict())
    extra = sorted(info.get("unexpected_keys") or [])
    if total and 2 * len(missing) >= total:
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise ConfigError(f"{where}.model: the weights of {name!r} are not those of its {kind} config.json: "
                          f"{len(missing)} of its {total} tensors are missing (e.g. {', '.join(missing[:2])}), "
                          f"{len(extra)} others are there instead")
    used = [k for k in missing if not unused(k, model)]
    if used:
        hint = "; pooling: cls or mean does not use its pooler" if all(".pooler." in "." + k for k in used) else ""
        raise ConfigError(f"{where}.model: the weights of {name!r} lack {len(used)} of the {total} tensors of its "
                          f"config.json (e.g. {', '.join(used[:2])}): transformers would start them at random{hint}")
    said = ([f"{len(missing)} tensor(s) the tower does not use are not in the weights ({_examples(missing)})"]
            if missing else []) + ([f"{len(extra)} tensor(s) of the weights have no place in the model and are not "
                                    f"used ({_examples(extra)})"] if extra else [])
    from align.progress import main_process
    if said and main_process():      # every process of a launch loads it: rank 0 says it
        import logging
        logging.getLogger("align.towers").warning("%s.model: %s: loaded; %s", where, name, "; ".join(said))
    return model


def check_hf_tokenizer(tok, name: str, key: str) -> None:
    """A folder without its tokenizer files still gives transformers a tokenizer (an empty vocabulary) that maps
    every word to the unknown token: one line instead of training on captions that all read alike."""
    unk = getattr(tok, "unk_token_id", None)
    ids = tok("a photo of a dog", add_special_tokens=False)["input_ids"]
    if unk is not None and ids and all(i == unk for i in ids):
        raise ConfigError(f"{key}: the tokenizer of {name!r} maps every word to its unknown token "
                          f"({len(tok)} entries): the folder lacks its tokenizer files (tokenizer.json, vocab.txt, "
                          "...)")
