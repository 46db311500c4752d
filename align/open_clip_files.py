"""Reading open_clip's files: checkpoint files (.safetensors, or .pt/.bin loaded weights-only, as
open_clip and open_clip_train write them), hub-layout folders (open_clip_config.json + weights), and the
mapping of open_clip's state-dict keys onto align's; the weights file a tower's `pretrained` names (a path, a
folder, or an open_clip tag fetched or found in the cache by open_clip: pretrained_file). Used by per-tower
`pretrained` (towers) and by `model.init_from` (align.train.init_from); of align it imports only its errors and
align.hub.
"""
import json
import os
import pickle
import re
from typing import Dict, Optional

import torch

from align.errors import ConfigError
from align.hub import hub_unreachable

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TEXT_TOP_LEVEL = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")


def strip_local_dir(path: str) -> str:
    return path[len("local-dir:"):] if path.startswith("local-dir:") else path


def load_error(path: str, exc: BaseException) -> str:
    """Why a weights file could not be read, in one line. torch's weights-only refusal opens with advice to
    re-run with weights_only=False (which would run the file's code): only the object it refused is kept."""
    text = str(exc).strip()
    first = (text.splitlines() or [type(exc).__name__])[0][:200]
    found = re.search(r"unsupported globals?:?\s*(\S+)", text, re.IGNORECASE)     # torch's GLOBAL, timm's globals:
    if found:
        return (f"{path!r} holds Python objects besides tensors ({found.group(1).rstrip('.,;')}); align never "
                "unpickles them (they could run code): save it as safetensors or plain tensors")
    if isinstance(exc, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        # no object refused (bytes that are no pickle: "Unsupported operand 110"): torch's own reason, not its
        # advice to load the file with weights_only=False
        after = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines() if "WeightsUnpickler" in text else []
        first = (after or ([first] if "weights_only" not in first else [type(exc).__name__]))[0][:200]
    kind = "safetensors" if path.endswith(".safetensors") else "weights-only torch"
    return f"cannot read {path!r} as a {kind} file (damaged or cut short?): {first}"


def load_file_state(path: str, where: str) -> Dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch file.

    {"state_dict": ...} (open_clip_train's checkpoints) is unwrapped and DDP's `module.` prefix stripped."""
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  a pickle with code, a corrupt file: one line, never a traceback
        raise ConfigError(f"{where}: {load_error(path, e)}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"{where}: {path!r} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def state_dict_mismatch(text: str) -> Optional[str]:
    """The first tensor torch's `load_state_dict` error names ("size mismatch for K: copying a param with shape
    ... from checkpoint, the shape in current model is ...", "Missing key(s) in state_dict: ...", "Unexpected
    key(s) ..."), as "tensor 'K' ..."; None when `text` is no such error."""
    found = re.search(r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                      r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)", text)
    if found:
        return (f"tensor {found.group(1)!r} has shape [{found.group(2)}] in the weights but [{found.group(3)}] in the "
                "model its config builds")
    for kind, what in (("Missing", "of the model its config builds is not in the weights"),
                       ("Unexpected", "of the weights is not in the model its config builds")):
        keys = re.search(kind + r" key\(s\) in state_dict: ((?:\"[^\"]+\"(?:, )?)+)", text)
        if keys:
            names = re.findall(r'"([^"]+)"', keys.group(1))
            return f"tensor {names[0]!r} {what} ({len(names)} such)"
    return None


def weights_error(path: str, exc: BaseException) -> Optional[str]:
    """open_clip's failure to read or fit the weights file `path` in one line naming the file (load_error, or the
    first tensor that does not fit); None when `exc` is about something else."""
    text = str(exc)
    if type(exc).__name__ in ("UnpicklingError", "SafetensorError") or "weights_only" in text:
        return load_error(path, exc)
    mismatch = state_dict_mismatch(text)
    return f"{path!r} does not fit the model: {mismatch}" if mismatch else None


def open_clip_folder_weights(folder: str) -> Optional[str]:
    """The weights file of an open_clip hub-layout folder, or None when `folder` is not one."""
    if not os.path.isfile(os.path.join(folder, OPEN_CLIP_CONFIG)):
        return None
    for name in OPEN_CLIP_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")   # a Hugging Face tokenizer saved in a folder
TOKENIZER_FOLDER = "tokenizer_folder"    # align's model config key: the folder an hf_tokenizer_name tokenizer is in


def holds_tokenizer(folder: str) -> bool:
    """True when `folder` holds a Hugging Face tokenizer's files (what open_clip's HFTokenizer(folder) reads)."""
    return any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_FILES)


def weights_folder(path: str) -> Optional[str]:
    """The folder (absolute) of a `pretrained` value that is a path: `local-dir:DIR` or DIR, or the folder a weights
    file is in; a Hugging Face tokenizer's files there go with the weights (as a hub download leaves them). None
    for anything else (an open_clip tag)."""
    p = os.path.abspath(strip_local_dir(path))
    if os.path.isfile(p):
        p = os.path.dirname(p)
    return p if os.path.isdir(p) else None


def read_config_file(path: str, where: str) -> dict:
    """An open_clip model config from a JSON file: open_clip's model_configs/NAME.json, or the open_clip_config.json
    of a hub-layout folder ({"model_cfg", "preprocess_cfg"}). Of the latter, the preprocess_cfg the weights were
    trained with is kept as model_cfg["preprocess_cfg"], and a text_cfg.hf_tokenizer_name tokenizer is read from
    the file's folder when that holds one (model_cfg["tokenizer_folder"]; as open_clip's local-dir: does), not from
    the Hub id it names.
    A file that is no JSON object is one ConfigError line naming `where` and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read {path!r} as JSON ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg", {}), dict):
        raise ConfigError(f"{where}: {path!r} is no open_clip model config (a JSON object with vision_cfg and "
                          f"text_cfg, or an {OPEN_CLIP_CONFIG} with model_cfg)")
    if "model_cfg" not in data:
        return data
    cfg = dict(data["model_cfg"])
    if isinstance(data.get("preprocess_cfg"), dict) and "preprocess_cfg" not in cfg:
        cfg["preprocess_cfg"] = dict(data["preprocess_cfg"])
    folder = os.path.dirname(os.path.abspath(path))
    text = cfg.get("text_cfg")
    if isinstance(text, dict) and text.get("hf_tokenizer_name") and holds_tokenizer(folder):
        cfg[TOKENIZER_FOLDER] = folder      # hf_tokenizer_name keeps the Hub id an export's config names
    return cfg


def folder_config(folder: str, need_weights: bool = True) -> Optional[dict]:
    """The open_clip_config.json of the open_clip folder `folder` as read (a JSON object), or None when it is no
    such folder (need_weights: with its weights file beside it) or its config cannot be read (the weights' own
    check, or open_clip's, reports a broken folder)."""
    if not (os.path.isdir(folder) and (open_clip_folder_weights(folder) or not need_weights)):
        return None
    try:
        with open(os.path.join(folder, OPEN_CLIP_CONFIG), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_field(data: Optional[dict], *keys: str):
    """data[k0][k1]... of a folder_config, or None where a level is missing or no JSON object."""
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def folder_preprocess(path: str) -> Optional[dict]:
    """The preprocess_cfg of an open_clip folder (`local-dir:DIR` or DIR with its weights, or the weights file
    itself taken out of it); None when `path` is no such folder, its config cannot be read or it has none."""
    folder = os.path.abspath(strip_local_dir(path))
    if os.path.isfile(folder) and os.path.basename(folder) in OPEN_CLIP_WEIGHTS:
        folder = os.path.dirname(folder)
    pp = config_field(folder_config(folder), "preprocess_cfg")
    return pp if isinstance(pp, dict) else None


def same_preprocess_value(a, b) -> bool:
    """Two preprocessing values alike: lists of numbers (mean, std) to 6 decimals, others (interpolation,
    resize_mode) by their text."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [round(float(v), 6) for v in a] == [round(float(v), 6) for v in b]
    return str(a) == str(b)


def folder_quick_gelu(path: str) -> Optional[bool]:
    """The activation (quick_gelu) an open_clip folder's config says its weights were trained with; None when
    `path` (`local-dir:DIR`, DIR) is no open_clip folder or its config cannot be read (the weights' own check
    reports a broken folder). Every tensor fits either activation, so only the config can tell."""
    data = folder_config(os.path.abspath(strip_local_dir(path)))
    if data is None:
        return None
    model_cfg = data.get("model_cfg") or {}
    return bool(model_cfg.get("quick_gelu", False)) if isinstance(model_cfg, dict) else None


def open_clip_to_align(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip CLIP / CustomTextCLIP keys -> align keys (towers.image.net.*, towers.text.net.*)."""
    if "text_projection" in sd or any(k.startswith("transformer.") for k in sd):   # CLIP: text at top level
        sd = {("text." + k if k.split(".")[0] in TEXT_TOP_LEVEL else k): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            out["towers.image.net." + k[len("visual."):]] = v
        elif k.startswith("text."):
            out["towers.text.net." + k[len("text."):]] = v
        else:
            out[k] = v
    return out


# -- open_clip tags whose weights live on the Hugging Face hub, on a machine that cannot reach it ---------------
def hub_cached_weights(hf_hub: str) -> Optional[str]:
    """The Hugging Face cache's file for an open_clip `hf_hub` entry ('org/repo/' or 'org/repo/FILE'), trying the
    names open_clip downloads (a .safetensors alternative first, as it does), or None."""
    from huggingface_hub import try_to_load_from_cache
    repo, fname = os.path.split(hf_hub)
    fname = fname or OPEN_CLIP_WEIGHTS[1]
    names = [OPEN_CLIP_WEIGHTS[0]] if fname == OPEN_CLIP_WEIGHTS[1] else \
        [fname[:-4] + ".safetensors"] if fname.endswith((".bin", ".pth")) else []
    for name in names + [fname]:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def offline_tag_weights(cfg: Optional[dict], label: str, fix: str) -> Optional[str]:
    """Before open_clip asks the hub for a tag's weights: the cached file when the hub does not answer (the file a
    download would return), else None (let open_clip fetch them). A tag not in the cache on a machine without the
    hub is one ConfigError at once: huggingface_hub retried 25-55 s and ended in a message cut mid-word.
    label: the line's start, naming the key and the weights; fix: what to set instead."""
    hub = (cfg or {}).get("hf_hub")
    if not hub:
        return None                      # a URL tag (openai): open_clip reads its own cache without the network
    host = hub_unreachable()
    if host is None:
        return None
    cached = hub_cached_weights(hub)
    if cached is None:
        raise ConfigError(f"{label}: {host} does not answer and the weights are not in the Hugging Face cache "
                          f"(offline? fetch them where a network is and {fix})")
    return cached


def pretrained_file(name: Optional[str], pretrained: str, where: str) -> str:
    """A local weights file for `pretrained`: a file path, an open_clip folder (`local-dir:DIR` or DIR),
    or an open_clip tag for the architecture `name`, downloaded (or found in the cache) by open_clip."""
    local = strip_local_dir(pretrained)
    if os.path.isfile(local):
        return local
    if os.path.isdir(local):
        found = open_clip_folder_weights(local)
        if found is None:
            raise ConfigError(f"{where}.pretrained: {pretrained!r} is a folder without open_clip_config.json and "
                              f"open_clip_model.safetensors / open_clip_pytorch_model.bin")
        return found
    if not name:
        raise ConfigError(f"{where}.pretrained: no such file or folder {pretrained!r} (an open_clip tag needs the "
                          f"architecture's name in {where}.model)")
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    cfg = get_pretrained_cfg(name, pretrained)
    if not cfg:
        raise ConfigError(f"{where}.pretrained: {pretrained!r} is neither a file, a folder nor an open_clip tag of "
                          f"{name!r} (tags: {', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})")
    cached = offline_tag_weights(cfg, f"{where}.pretrained: cannot fetch open_clip weights {name}/{pretrained}",
                                 f"set {where}.pretrained to the file")
    if cached is not None:               # the hub does not answer; the cache holds them
        return cached
    try:
        return download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001  offline, hub error: one line
        raise ConfigError(f"{where}.pretrained: cannot fetch open_clip weights {name}/{pretrained}: "
                          f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]} (offline? fetch them "
                          f"where a network is and set {where}.pretrained to the file)") from None
