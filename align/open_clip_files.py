"""Reading open_clip's files: checkpoint files (.safetensors, or .pt/.bin loaded weights-only, as
open_clip and open_clip_train write them), hub-layout folders (open_clip_config.json + weights), and the
mapping of open_clip's state-dict keys onto align's. Used by per-tower `pretrained` (towers) and by
`model.init_from` (align.train.init_from); it imports nothing of align but its errors.
"""
import json
import os
import pickle
import re
from typing import Dict, Optional

import torch

from align.errors import ConfigError

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TEXT_TOP_LEVEL = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")


def strip_local_dir(path: str) -> str:
    return path[len("local-dir:"):] if path.startswith("local-dir:") else path


def load_error(path: str, exc: BaseException) -> str:
    """Why a weights file could not be read, in one line. torch's weights-only refusal opens with advice to
    re-run with weights_only=False (which would run the file's code): only the object it refused is kept."""
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        found = re.search(r"unsupported (?:GLOBAL|global:?)\s*(\S+)", text, re.IGNORECASE)
        return (f"{path!r} holds Python objects besides tensors" + (f" ({found.group(1)})" if found else "")
                + "; align never unpickles them (they could run code): save it as safetensors or plain tensors")
    first = (text.splitlines() or [type(exc).__name__])[0][:200]
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


def open_clip_folder_weights(folder: str) -> Optional[str]:
    """The weights file of an open_clip hub-layout folder, or None when `folder` is not one."""
    if not os.path.isfile(os.path.join(folder, OPEN_CLIP_CONFIG)):
        return None
    for name in OPEN_CLIP_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def folder_quick_gelu(path: str) -> Optional[bool]:
    """The activation (quick_gelu) an open_clip folder's config says its weights were trained with; None when
    `path` (`local-dir:DIR`, DIR) is no open_clip folder or its config cannot be read (the weights' own check
    reports a broken folder). Every tensor fits either activation, so only the config can tell."""
    folder = os.path.abspath(strip_local_dir(path))
    if not (os.path.isdir(folder) and open_clip_folder_weights(folder)):
        return None
    try:
        with open(os.path.join(folder, OPEN_CLIP_CONFIG), encoding="utf-8") as f:
            return bool((json.load(f).get("model_cfg") or {}).get("quick_gelu", False))
    except (OSError, ValueError, AttributeError):
        return None


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
