"""Export to open_clip's own folder layout, loadable with `open_clip.create_model_and_transforms('local-dir:DIR')`.

The layout is what `open_clip.push_to_hf_hub` / `save_for_hf` write and what
`open_clip.factory.create_model` reads for a `local-dir:` name:
    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  the CustomTextCLIP state dict
    (tokenizer files)            only for HF tokenizers: open_clip's get_tokenizer('local-dir:DIR')
                                 loads an `hf_tokenizer_name` tokenizer from DIR itself
`model_cfg` sets `custom_text: true`, so open_clip builds `CustomTextCLIP`, whose
`visual.*` / `text.*` are the same open_clip modules align's `open_clip` towers
wrap as `.net`: the state dict maps 1:1, no conversion.

Only models whose image AND text towers are both `open_clip` towers can be
written this way; other towers (audio, hf, timm) are not representable and are
reported by `unsupported_reason`.
"""
import json
import os
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from align.errors import AlignError

CONFIG_NAME = "open_clip_config.json"      # open_clip.constants.HF_CONFIG_NAME
WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
PARITY_ATOL = 1e-5


def _is_open_clip_tower(tower) -> bool:
    from align.towers.open_clip_towers import OpenClipTower
    return isinstance(tower, OpenClipTower)


def _quick_gelu(tower) -> bool:
    return bool(tower.cfg.get("quick_gelu", tower.model_cfg.get("quick_gelu", False)))


def unsupported_reason(model) -> Optional[str]:
    """None when image+text can be written in open_clip format, else why not (one phrase)."""
    missing = [m for m in ("image", "text") if m not in model.towers]
    if missing:
        return f"open_clip format needs image and text towers; this model has no {' or '.join(missing)} tower"
    for m in ("image", "text"):
        if not _is_open_clip_tower(model.towers[m]):
            kind = type(model.towers[m]).__name__
            return (f"the {m} tower is {kind}, not an open_clip tower (type: open_clip); open_clip format only "
                    f"holds open_clip image and text towers")
    qi, qt = _quick_gelu(model.towers["image"]), _quick_gelu(model.towers["text"])
    if qi != qt:
        return (f"the image tower has quick_gelu={qi} and the text tower quick_gelu={qt}; open_clip's model_cfg has "
                f"a single quick_gelu for both")
    return None


def extra_modalities(model) -> List[str]:
    """Towers that open_clip format cannot carry (exported in align/ONNX form instead)."""
    return [m for m in model.modalities if m not in ("image", "text")]


def _jsonable(x):
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def model_cfg(model) -> dict:
    """open_clip model_cfg for CustomTextCLIP built from the model's image and text towers."""
    img, txt = model.towers["image"], model.towers["text"]
    cfg = {
        "embed_dim": int(img.embed_dim),
        "quick_gelu": _quick_gelu(img),
        "vision_cfg": _jsonable(dict(img.vision_cfg)),
        "text_cfg": _jsonable(dict(txt.text_cfg)),
        "custom_text": True,                  # CustomTextCLIP: visual.* / text.* like align's towers
    }
    if model.logit_bias is not None:         # SigLIP: CustomTextCLIP creates logit_bias only when this is set
        cfg["init_logit_bias"] = float(model.logit_bias.detach())
    return cfg


def preprocess_cfg(model) -> dict:
    """open_clip PreprocessCfg fields from the image tower: size, mean, std, interpolation, resize_mode."""
    p = model.towers["image"].preprocess_config()
    return _jsonable({k: p[k] for k in ("size", "mean", "std", "interpolation", "resize_mode") if k in p})


def state_dict(model) -> Dict[str, torch.Tensor]:
    """align keys -> CustomTextCLIP keys: towers.image.net.* -> visual.*, towers.text.net.* -> text.*."""
    out = {}
    prefixes = {"towers.image.": "visual.", "towers.text.": "text."}
    for k, v in model.state_dict().items():
        for src, dst in prefixes.items():
            if k.startswith(src):
                rest = k[len(src):]
                if not rest.startswith("net."):
                    raise AlignError(f"open_clip export: unexpected parameter {k!r} outside the open_clip module")
                out[dst + rest[len("net."):]] = v
                break
        else:
            if k in ("logit_scale", "logit_bias"):
                out[k] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def local_path_note(model) -> Optional[str]:
    """A note when the exported config names a local folder for its Hugging Face text model: open_clip builds
    that tower from `text_cfg.hf_model_name` (AutoConfig), so the export loads only where that folder exists."""
    text = model.towers["text"] if "text" in model.towers else None
    name = (getattr(text, "text_cfg", None) or {}).get("hf_model_name")
    if not (isinstance(name, str) and os.path.isdir(name)):
        return None
    return (f"open_clip_config.json's text_cfg.hf_model_name is the local folder {name}: open_clip reads that "
            "model's config.json from it when loading, so on another machine put a copy at that path or set "
            "hf_model_name to the model's hub id (the weights and tokenizer are in this folder)")


def _save_hf_tokenizer(model, out_dir: str) -> List[str]:
    """open_clip's get_tokenizer('local-dir:DIR') loads an hf_tokenizer_name tokenizer from DIR itself."""
    if not model.towers["text"].text_cfg.get("hf_tokenizer_name"):
        return []
    before = set(os.listdir(out_dir))
    model.towers["text"].save_hf_tokenizer(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)


def write(model, out_dir: str) -> List[str]:
    """Writes open_clip_config.json + open_clip_model.safetensors (+ HF tokenizer files); returns file names."""
    reason = unsupported_reason(model)
    if reason:
        raise AlignError(f"cannot export in open_clip format: {reason}")
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump({"model_cfg": model_cfg(model), "preprocess_cfg": preprocess_cfg(model)}, f, indent=2)
    save_file(state_dict(model), os.path.join(out_dir, WEIGHTS_NAME))
    return [CONFIG_NAME, WEIGHTS_NAME] + _save_hf_tokenizer(model, out_dir)


@torch.no_grad()
def verify(model, out_dir: str, atol: float = PARITY_ATOL, batch_size: int = 3) -> Dict[str, float]:
    """Loads out_dir with open_clip and compares normalised embeddings on the same inputs.

    Returns {"image": max_abs_diff, "text": max_abs_diff}; raises AlignError above `atol`
    or when open_clip cannot load the folder or tokenizes differently.
    """
    import open_clip
    name = f"local-dir:{out_dir}"
    try:
        oc = open_clip.create_model(name).eval()
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # any open_clip failure is an export defect: say which folder and why
        raise AlignError(f"{out_dir}: open_clip cannot load the export: {type(e).__name__}: {e}") from None
    g = torch.Generator().manual_seed(0)
    img = model.towers["image"]
    x = img.dummy_input(batch_size)
    x = torch.randn(x.shape, generator=g, dtype=x.dtype)
    texts = ["a photo of a dog.", "an orange cat on a red sofa, photographed from above", ""]
    tokens = model.tokenize(texts)
    if not torch.equal(tokenizer(texts), tokens):
        raise AlignError(f"{out_dir}: open_clip's tokenizer for the export gives different tokens than align's")
    diffs = {
        "image": float((F.normalize(oc.encode_image(x), dim=-1) - model.encode_image(x)).abs().max()),
        "text": float((F.normalize(oc.encode_text(tokens), dim=-1) - model.encode_text(tokens)).abs().max()),
    }
    scale_diff = float((oc.logit_scale.detach() - model.logit_scale.detach()).abs().max())
    if scale_diff > 0:
        raise AlignError(f"{out_dir}: logit_scale differs after open_clip load ({scale_diff})")
    for m, d in diffs.items():
        if not d <= atol:
            raise AlignError(f"{out_dir}: open_clip {m} embeddings differ from align's by {d:.3g} (> {atol})")
    return diffs
