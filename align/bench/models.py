"""Models `align bench` can score: align runs/checkpoints/exports and open_clip models, by an explicit scheme.

    run dir, checkpoint or export           align.load(PATH)
    open_clip:ARCH  + pretrained TAG|FILE   open_clip.create_model(ARCH, pretrained=...): a TAG resolves through
                                            open_clip (download); a FILE is a checkpoint open_clip or
                                            open_clip_train wrote (.safetensors, or .pt/.bin loaded weights-only);
                                            a Hugging Face tokenizer's files beside it are ARCH's tokenizer
    local-dir:DIR                           open_clip's hub layout (open_clip_config.json +
                                            open_clip_model.safetensors | open_clip_pytorch_model.bin),
                                            as `align export` writes it

`OpenClipModel` gives an open_clip model the interface the benchmarks use (the one
`align.load` models have): `modalities`, `encode_image` / `encode_text` (L2-normalised),
`tokenize`, `image_transform`, `audio_transform` (None), `name`, `pretrained`, `fingerprint()`.

A model spec is a string, or a mapping {model: ..., pretrained: ..., name: ..., limits: ...} (suite YAML
`models:` entries); `name` labels the model's column in the side-by-side table.

Every loaded model carries `data_limits` (align.limits.DataLimits), the sizes its media are decoded within: the
recipe's `data.limits` of an align run, checkpoint or export (and of a `local-dir:` export that holds align's
recipe copy, align_config.json), else the defaults; a spec's `limits: {NAME: VALUE}` and then the command's
`--limit NAME=VALUE` (load_model's `limits`) replace single fields.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError, ConfigError
from align.limits import DataLimits, as_limits, override_limits, parse_limit_options
from align.model import check_input, text_list, weights_fingerprint
from align.hub import hub_offline
from align.open_clip_files import OPEN_CLIP_WEIGHTS, offline_tag_weights, open_clip_folder_weights, weights_error
from align.towers.text_trim import can_trim_text, trimmed_text_forward
from align.registry import Registry

MODEL_SOURCES: Registry = Registry("model source")   # scheme -> loader(rest, pretrained, device) -> model
SPEC_KEYS = {"model", "pretrained", "name", "limits"}


class OpenClipModel(nn.Module):
    """An open_clip CLIP/CustomTextCLIP behind align's benchmark interface (image + text)."""

    def __init__(self, net: nn.Module, image_transform: Callable, tokenizer: Callable, name: str,
                 pretrained: Optional[str]):
        super().__init__()
        self.net = net
        self.image_transform = image_transform          # PIL -> float [3, H, W] (open_clip's eval preprocess)
        self.audio_transform = None
        self._tokenizer = tokenizer
        self.name, self.pretrained = name, pretrained
        self._fp: Optional[str] = None
        self._image_shape: object = False                # [C, H, W] image_transform makes (None: any), once known
        # causal text encoders: drop the padding after the batch's last EOT (a CLIP holds its text parts
        # itself; a CustomTextCLIP's encode_text is its .text tower's forward)
        text = getattr(net, "text", None)
        self._trim_net = net if can_trim_text(net) else text if text is not None and can_trim_text(text) else None

    @property
    def modalities(self) -> List[str]:
        return ["image", "text"]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:  # [B,3,H,W] -> [B,E]
        check_input("image", images, image_shape=self.image_shape())   # one line, as AlignModel's
        z = self.net.encode_image(images)
        return F.normalize(z, dim=-1) if normalize else z

    def image_shape(self) -> Optional[tuple]:
        """The [C, H, W] image_transform makes of a square and of a wide image when they agree, else None (no
        transform, or one that keeps the aspect ratio): the size encode_image takes. Worked out once."""
        if self._image_shape is False:
            from align.media.image import transform_shape
            self._image_shape = transform_shape(self.image_transform)
        return self._image_shape

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:   # long [B,L] -> [B,E]
        check_input("text", tokens, getattr(self.net, "context_length", None))
        if self._trim_net is not None and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            # same features, ~context/caption-length less work; exact length (eager: no shapes to keep few)
            z = trimmed_text_forward(self._trim_net, tokens, multiple=1)
        else:
            z = self.net.encode_text(tokens)
        return F.normalize(z, dim=-1) if normalize else z

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        return self._tokenizer(text_list(texts))

    def fingerprint(self) -> str:
        """A hash of the weights (benchmark caches key on it); computed once, weights do not change in a bench."""
        if self._fp is None:
            self._fp = weights_fingerprint(self.net)
        return self._fp


def _open_clip_error(what: str, e: Exception, hint: str = "") -> AlignError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return AlignError(f"{what}: open_clip cannot load it: {type(e).__name__}: {msg[:300]}{hint}")


# a tag open_clip could not fetch (no network, hub down): the way out, after open_clip's own (cut) message
OFFLINE_HINT = " (offline? fetch the weights where a network is and pass the file: --pretrained FILE)"


def file_tokenizer(arch: str, path: str):
    """(tokenizer folder, hint): the folder of the weights file `path` when open_clip:ARCH tokenizes with a Hugging
    Face tokenizer (text_cfg.hf_tokenizer_name, a Hub id open_clip would ask) and its files are there, as a hub
    download leaves them; else None and, for such an architecture, what a failure to fetch it should add."""
    import open_clip
    from align.open_clip_files import TOKENIZER_FILES, holds_tokenizer
    name = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    folder = os.path.dirname(os.path.abspath(path))
    if not name:
        return None, ""
    if holds_tokenizer(folder):
        return folder, ""
    return None, (f" (its tokenizer {name} is asked of the Hub: offline, put its files ({' or '.join(TOKENIZER_FILES)})"
                  f" beside the weights, in {folder})")


def _tokenizer(model_name: str, folder: Optional[str]):
    """open_clip's tokenizer of `model_name`, its Hugging Face tokenizer read from `folder` when given (as
    open_clip.get_tokenizer builds it, with the architecture's context length and tokenizer settings)."""
    import open_clip
    if not folder:
        return open_clip.get_tokenizer(model_name)
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
    text = open_clip.get_model_config(model_name).get("text_cfg") or {}
    return HFTokenizer(folder, context_length=text.get("context_length", DEFAULT_CONTEXT_LENGTH),
                       tokenizer_mode=text.get("tokenizer_mode"), **dict(text.get("tokenizer_kwargs") or {}))


def _build_open_clip(model_name: str, pretrained: Optional[str], device: str, what: str, name: str,
                     label: Optional[str], hint: str = "", weights: Optional[str] = None,
                     tokenizer_folder: Optional[str] = None) -> OpenClipModel:
    """open_clip's model, eval transform and tokenizer; weights: the local file it reads (named in a failure to
    read or fit it: a pickle, a file cut short, a tensor of another shape); tokenizer_folder: where a Hugging Face
    tokenizer's files are (else open_clip asks its Hub id)."""
    import open_clip
    try:
        # weights_only=True: a .pt/.bin checkpoint is read with torch.load(weights_only=True), never unpickled code
        net, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device,
                                                                   weights_only=True)
        tokenizer = _tokenizer(model_name, tokenizer_folder)
    except Exception as e:  # unknown arch, missing file, offline tag, shape mismatch: one line naming the model
        line = weights_error(weights, e) if weights else None
        if line:
            raise AlignError(f"{what}: {line}") from None
        raise _open_clip_error(what, e, hint) from None
    return OpenClipModel(net.eval(), preprocess, tokenizer, name, label)


@MODEL_SOURCES.register("open_clip")
def load_open_clip(arch: str, pretrained: Optional[str] = None, device: str = "cpu") -> OpenClipModel:
    """open_clip:ARCH with pretrained TAG (resolved by open_clip) or FILE (a checkpoint open_clip can read)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    if not arch:
        raise ConfigError("model 'open_clip:' names no architecture; e.g. open_clip:ViT-B-32")
    if open_clip.get_model_config(arch) is None:
        raise ConfigError(f"model open_clip:{arch}: unknown open_clip architecture (see open_clip.list_models())")
    if not pretrained:
        raise ConfigError(f"model open_clip:{arch} needs pretrained weights: --pretrained TAG|FILE "
                          f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})")
    is_file = os.path.isfile(pretrained)
    if not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        raise ConfigError(f"model open_clip:{arch}: pretrained {pretrained!r} is neither a file nor an open_clip tag "
                          f"for {arch} (tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})")
    label = os.path.abspath(pretrained) if is_file else pretrained
    folder, tok_hint = file_tokenizer(arch, pretrained) if is_file else (None, "")
    cached = None if is_file else offline_tag_weights(
        get_pretrained_cfg(arch, pretrained), f"model open_clip:{arch} pretrained {pretrained!r}: cannot fetch it",
        "pass the file: --pretrained FILE")
    # the hub does not answer but the weights are cached: open_clip reads them at once (no retries), still by the
    # tag, so the tag's own settings (quick_gelu, preprocessing) apply as with a network
    with hub_offline() if cached else contextlib.nullcontext():
        model = _build_open_clip(arch, pretrained, device, f"open_clip:{arch} pretrained {pretrained!r}", arch,
                                 label, hint=tok_hint if is_file else OFFLINE_HINT,
                                 weights=pretrained if is_file else cached, tokenizer_folder=folder)
    if is_file:
        check_file_preprocess(model, arch, pretrained)
    return model


def check_file_preprocess(model: OpenClipModel, arch: str, path: str) -> None:
    """One line when `path` is the weights file of an open_clip folder whose config normalises images otherwise than
    open_clip:ARCH's transform (a file holds no preprocessing: the folder's, as local-dir:, would apply)."""
    from align.open_clip_files import folder_preprocess, same_preprocess_value
    pp = folder_preprocess(path) or {}
    norm = next((t for t in getattr(model.image_transform, "transforms", []) if hasattr(t, "mean")), None)
    for key in ("mean", "std"):
        if norm is None or key not in pp:
            continue
        if not same_preprocess_value(pp[key], list(getattr(norm, key))):
            folder = os.path.dirname(os.path.abspath(path))
            raise ConfigError(f"model open_clip:{arch} pretrained {path!r}: the folder's open_clip_config.json "
                              f"normalises images with {key} {list(pp[key])}, open_clip:{arch} with "
                              f"{[round(float(v), 6) for v in getattr(norm, key)]}: load the folder as "
                              f"local-dir:{folder}")


@MODEL_SOURCES.register("local-dir")
def load_local_dir(path: str, pretrained: Optional[str] = None, device: str = "cpu") -> OpenClipModel:
    """local-dir:DIR in open_clip's hub layout (config + weights in one folder)."""
    if pretrained:
        raise ConfigError(f"model local-dir:{path}: the folder holds its weights; drop --pretrained {pretrained!r}")
    cfg = os.path.join(path, "open_clip_config.json")
    if not os.path.isfile(cfg):
        raise ConfigError(f"model local-dir:{path}: no open_clip_config.json in that folder")
    path = os.path.abspath(path)
    weights = folder_weights(path)
    if weights is None:       # open_clip would warn and go on with random weights
        raise ConfigError(f"model local-dir:{path}: no weights file in that folder ({' or '.join(OPEN_CLIP_WEIGHTS)}"
                          f" beside open_clip_config.json); open_clip would start from random weights")
    check_folder_tokenizer(path)
    limits = export_limits(path)            # before the weights load: a bad recipe copy is one line at once
    model = _build_open_clip(f"local-dir:{path}", None, device, f"local-dir:{path}",
                             os.path.basename(os.path.normpath(path)), path, weights=weights)
    model.data_limits = limits
    return model


def folder_weights(folder: str) -> Optional[str]:
    """The weights file open_clip reads from a local-dir: folder (align's names first, then any .safetensors, .bin
    or .pth, as open_clip looks), or None when it holds none."""
    found = open_clip_folder_weights(folder)
    if found:
        return found
    names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin", ".pth")))
    names.sort(key=lambda n: not n.endswith(".safetensors"))
    return os.path.join(folder, names[0]) if names else None


def check_folder_tokenizer(folder: str) -> None:
    """One line when the folder's config names a Hugging Face tokenizer (text_cfg.hf_tokenizer_name) whose files
    are not in the folder, where open_clip's local-dir: reads it (its error was "Couldn't instantiate the backend
    tokenizer from one of:", cut there)."""
    from align.open_clip_files import OPEN_CLIP_CONFIG, TOKENIZER_FILES, config_field, folder_config, holds_tokenizer
    # a config that cannot be read: open_clip's own line names it
    name = config_field(folder_config(folder, need_weights=False), "model_cfg", "text_cfg", "hf_tokenizer_name")
    if name and not holds_tokenizer(folder):
        raise ConfigError(f"model local-dir:{folder}: its {OPEN_CLIP_CONFIG} names the tokenizer {name!r}, whose files "
                          f"({' or '.join(TOKENIZER_FILES)}, ...) are not in the folder: copy them there from the "
                          "download")


def export_limits(folder: str) -> DataLimits:
    """The data.limits of the recipe copy an align export keeps beside its open_clip files (align_config.json);
    the defaults for an open_clip folder that holds none."""
    import json

    from align.api import ALIGN_CONFIG
    p = os.path.join(folder, ALIGN_CONFIG)
    if not os.path.isfile(p):
        return as_limits(None)
    try:
        with open(p, "rb") as f:
            recipe = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: not readable as align's recipe copy ({str(e)[:200]})") from None
    data = recipe.get("data") if isinstance(recipe, dict) else None
    try:
        return as_limits((data or {}).get("limits") if isinstance(data, dict) else None)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


@MODEL_SOURCES.register("align")
def load_align(path: str, pretrained: Optional[str] = None, device: str = "cpu"):
    """An align run dir, checkpoint dir or export (align.load)."""
    if pretrained:
        raise ConfigError(f"model {path!r}: --pretrained applies to open_clip:ARCH models only")
    from align.api import load
    return load(path, device=device)


def split_scheme(spec: str):
    """'open_clip:ViT-B-32' -> ('open_clip', 'ViT-B-32'); a path (no registered scheme) -> ('align', path)."""
    head, sep, rest = spec.partition(":")
    if sep and head in MODEL_SOURCES and head != "align":
        return head, rest
    return "align", spec


def spec_fields(spec: Union[str, dict], where: str = "model") -> dict:
    """A string (or a pathlib.Path) or {model, pretrained, name, limits} mapping -> {"model", "pretrained", "name",
    "limits"} (limits: a checked {NAME: value} mapping of align.limits.DataLimits fields, or None)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)          # align.load(Path("runs/x")), as open() and every path function take
    if isinstance(spec, str):
        return {"model": spec, "pretrained": None, "name": None, "limits": None}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a model is a string or a mapping with keys model, pretrained, name, limits; "
                          f"got {type(spec).__name__}")
    bad = sorted(set(spec) - SPEC_KEYS)
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; valid: {', '.join(sorted(SPEC_KEYS))}")
    if not isinstance(spec.get("model"), str):
        raise ConfigError(f"{where}: 'model' (a path, open_clip:ARCH or local-dir:DIR) is required")
    return {"model": spec["model"], "pretrained": spec.get("pretrained"), "name": spec.get("name"),
            "limits": _spec_limits(spec.get("limits"), where)}


def _spec_limits(limits, where: str) -> Optional[dict]:
    """A spec's `limits: {NAME: VALUE}` checked as `--limit NAME=VALUE` is (names, types, bounds); None: none."""
    if limits is None:
        return None
    if not isinstance(limits, dict):
        raise ConfigError(f"{where}: 'limits' must be a mapping of limit names to values, got {limits!r}")
    return parse_limit_options([f"{k}={v}" for k, v in limits.items()], f"{where}: limits:") or None


def load_model(spec: Union[str, dict], pretrained: Optional[str] = None, device: str = "cpu",
               limits: Optional[dict] = None):
    """A benchmark model from a spec (see the module docstring), in eval mode on `device`. limits: {NAME: value}
    (align.limits.parse_limit_options: `--limit`) over its recipe's and its spec's data.limits."""
    f = spec_fields(spec)
    from align.bench.exact import check_device
    check_device(device, "device", types=None)     # before any weights load: "gpu", or cuda on a machine without
    scheme, rest = split_scheme(f["model"])
    model = MODEL_SOURCES.get(scheme)(rest, pretrained=f["pretrained"] or pretrained, device=device)
    if f["name"]:
        model.name = str(f["name"])
    if f["limits"] or limits:     # over the recipe's (align.load, local-dir: model.data_limits) or the defaults
        model.data_limits = override_limits(override_limits(getattr(model, "data_limits", None), f["limits"]), limits)
    return model.eval() if hasattr(model, "eval") else model


def pair_pretrained(models: List[str], pretrained: Optional[List[str]]) -> List[Union[str, dict]]:
    """CLI: the i-th --pretrained goes to the i-th open_clip:ARCH --model (one each, in order)."""
    pretrained = list(pretrained or [])
    oc = [i for i, m in enumerate(models) if split_scheme(m)[0] == "open_clip"]
    if len(pretrained) != len(oc):
        raise ConfigError(f"give one --pretrained per open_clip:ARCH --model ({len(oc)} such model(s), "
                          f"{len(pretrained)} --pretrained)")
    out: List[Union[str, dict]] = list(models)
    for i, p in zip(oc, pretrained):
        out[i] = {"model": models[i], "pretrained": p}
    return out


def _resolve(p: Optional[str], base: str, must_exist: bool) -> Optional[str]:
    """A path relative to the suite YAML's folder; a pretrained TAG (no such file there) is left as it is."""
    if p is None or os.path.isabs(p):
        return p
    q = os.path.normpath(os.path.join(base, p))
    return q if must_exist or os.path.exists(q) else p


def resolve_specs(models: list, base: str, where: str) -> List[Union[str, dict]]:
    """A suite's `models:` list (strings or {model, pretrained, name}) validated, with relative paths resolved
    against `base` (a pretrained TAG that is no file there stays as it is)."""
    out: List[Union[str, dict]] = []
    for i, m in enumerate(models):
        f = spec_fields(m, f"{where} models[{i}]")
        scheme, rest = split_scheme(f["model"])
        if scheme == "align":
            f["model"] = _resolve(rest, base, True)
        elif scheme == "local-dir":
            f["model"] = f"local-dir:{_resolve(rest, base, True)}"
        f["pretrained"] = _resolve(f["pretrained"], base, False)
        out.append({k: v for k, v in f.items() if v is not None})
    return out
