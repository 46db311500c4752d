"""`model.init_from`: a weights-only start from a pretrained model (step and optimizer start fresh).

    model: {open_clip: ViT-B-32, init_from: exports/demo}            # an align export (open_clip layout too)
    model: {init_from: runs/demo}                                    # an align run (newest checkpoint) or ckpt dir
    model: {init_from: epoch_32.pt}                                  # open_clip_train's checkpoint file
    model: {init_from: local-dir:/models/clip}                       # open_clip_config.json + weights

Sources, tried in this order:
  - an align run dir, checkpoint dir or export (align_config.json): align's own keys;
  - an open_clip folder (`local-dir:DIR` or DIR with open_clip_config.json and open_clip_model.safetensors
    or open_clip_pytorch_model.bin): open_clip keys;
  - a weights file: .safetensors, or .pt/.bin/.pth loaded with torch.load(weights_only=True). open_clip_train
    saves {"epoch", "name", "state_dict", "optimizer"}; the state_dict is taken, `module.` (DDP) stripped.
open_clip keys map onto align's: `visual.*` -> towers.image.net.*, `text.*` -> towers.text.net.* (a CLIP
state dict with the text tower at top level is first put in CustomTextCLIP form, as open_clip does);
logit_scale and logit_bias (SigLIP) are copied, so the temperature is the pretrained one.

`apply_init_from` prints one table: per tower the tensors matched and those that start new (a tower
with nothing matched is "new", e.g. an audio tower added to an image-text model), and the source
tensors ignored. A tensor whose shape differs fails with one line naming it.
"""
import os
from typing import Dict, List, Optional, Tuple

import torch

from align.errors import ConfigError
from align.open_clip_files import (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, folder_quick_gelu, load_file_state,
                                   open_clip_folder_weights, open_clip_to_align, strip_local_dir)
from align.towers.open_clip_towers import check_folder_preprocess
from align.train.rundir import EXPORT_CONFIG, locate


def load_source(path: str, where: str = "model.init_from") -> Tuple[Dict[str, torch.Tensor], str]:
    """-> (state dict in align's key space, a short description of the source)."""
    p = os.path.abspath(strip_local_dir(path))
    if not os.path.exists(p):
        raise ConfigError(f"{where}: no such file or folder {path!r}")
    if os.path.isdir(p):
        oc = open_clip_folder_weights(p)
        if oc and (path.startswith("local-dir:") or not os.path.isfile(os.path.join(p, EXPORT_CONFIG))):
            return open_clip_to_align(load_file_state(oc, where)), f"open_clip folder {p}"
        from align.errors import AlignError
        from align.train.checkpoint import load_weights
        try:
            weights = locate(p).weights          # a run dir, checkpoint dir (plain or DCP) or export
            sd = load_weights(weights)
        except AlignError as e:
            if os.path.isfile(os.path.join(p, OPEN_CLIP_CONFIG)):    # a hub download copied without its weights
                raise ConfigError(f"{where}: {p} holds {OPEN_CLIP_CONFIG} but no weights file "
                                  f"({' or '.join(OPEN_CLIP_WEIGHTS)}) beside it") from None
            raise ConfigError(f"{where}: {e} (nor an open_clip folder with {OPEN_CLIP_CONFIG})") from None
        return dict(sd), f"align model {weights}"
    sd = load_file_state(p, where)
    if any(k.startswith("towers.") for k in sd):
        return sd, f"align weights {p}"
    return open_clip_to_align(sd), f"open_clip weights {p}"


def init_from_tokenizer(cfg: dict, init_from) -> None:
    """For an open_clip text tower section without a tokenizer of its own (nor files beside its `pretrained`
    weights) whose architecture names a Hugging Face tokenizer (`model.open_clip: ViT-B-16-SigLIP`): the tokenizer
    files of `model.init_from`'s folder (DIR, a weights file's folder, or an align export's tokenizer/ copy), or the
    `tokenizer_folder` an align run (or its checkpoint dir) recorded in RUN/config.yaml, become its
    `tokenizer_folder`, so a fine-tuning start from a hub download (or a run of one) reads them, not the Hub."""
    from align.open_clip_files import holds_tokenizer, weights_folder
    from align.towers.open_clip_towers import tokenizer_folder_from
    own = weights_folder(cfg["pretrained"]) if isinstance(cfg.get("pretrained"), str) else None
    folder = weights_folder(init_from) if isinstance(init_from, str) else None
    if folder is not None and not (own is not None and holds_tokenizer(own)):
        tokenizer_folder_from(cfg, [folder, os.path.join(folder, "tokenizer"),   # tokenizer/: an align export's
                                    run_tokenizer_folder(folder)])


def run_tokenizer_folder(folder: str) -> Optional[str]:
    """The text tower's `tokenizer_folder` that the align run behind `folder` (a run dir or one of its checkpoint
    dirs) recorded in RUN/config.yaml; None for anything else, or when it recorded none."""
    import yaml
    from align.train.rundir import CONFIG, find_run_dir
    run = find_run_dir(folder)
    try:
        with open(os.path.join(run, CONFIG)) as f:
            text = ((yaml.safe_load(f) or {}).get("model") or {}).get("towers", {}).get("text") or {}
    except (OSError, TypeError, AttributeError, yaml.YAMLError):
        return None                            # not a run (run is None), or a config.yaml not of this shape
    found = text.get("tokenizer_folder") if isinstance(text, dict) else None
    return found if isinstance(found, str) and os.path.isdir(found) else None


def tower_of(key: str) -> str:
    parts = key.split(".")
    return parts[1] if parts[0] == "towers" and len(parts) > 2 else "(model)"


def match_state(model, sd: Dict[str, torch.Tensor], where: str = "model.init_from") -> dict:
    """Copies every source tensor whose key and shape fit the model; returns the report.

    {"matched": {tower: n}, "new": {tower: [keys]}, "new_towers": [...], "ignored": [keys]}.
    Raises ConfigError (one line) on the first tensor whose shape differs.
    """
    own = model.state_dict()
    load, ignored = {}, []
    for k, v in sd.items():
        if k not in own:
            ignored.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(f"{where}: tensor {k!r} has shape {list(v.shape)} in the source but "
                              f"{list(own[k].shape)} in the model")
        load[k] = v.to(own[k].dtype)
    with torch.no_grad():
        model.load_state_dict(load, strict=False)
    matched: Dict[str, int] = {}
    new: Dict[str, List[str]] = {}
    for k in own:
        t = tower_of(k)
        matched.setdefault(t, 0)
        if k in load:
            matched[t] += 1
        else:
            new.setdefault(t, []).append(k)
    new_towers = [t for t in matched if t != "(model)" and matched[t] == 0]
    return {"matched": matched, "new": new, "new_towers": new_towers, "ignored": sorted(ignored)}


def report_table(report: dict, source: str) -> str:
    """One table: per tower matched / new tensors, then the ignored ones."""
    rows = [("tower", "matched", "starts new", "")]
    for t, n in report["matched"].items():
        new = report["new"].get(t, [])
        note = "new tower" if t in report["new_towers"] else (", ".join(new[:3]) + (" ..." if len(new) > 3 else ""))
        rows.append((t, str(n), str(len(new)), note))
    ign = report["ignored"]
    listed = (": " + ", ".join(ign[:4]) + (" ..." if len(ign) > 4 else "")) if ign else ""
    rows.append(("(ignored)", "-", "-", f"{len(ign)} source tensors{listed}"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"init_from {source}"]
    lines += ["  ".join(r[i].ljust(w[i]) for i in range(3)) + ("  " + r[3] if r[3] else "") for r in rows]
    return "\n".join(lines)


def check_activation(model, path: str) -> None:
    """ConfigError when an open_clip folder's config says another activation than the model's open_clip towers
    (quick_gelu): every weight fits, so nothing else would notice, but the features differ (open_clip warns)."""
    theirs = folder_quick_gelu(path)
    if theirs is None:
        return
    for name, tower in model.towers.items():
        ours = getattr(tower, "quick_gelu", None)
        if ours is not None and ours != theirs:
            raise ConfigError(f"model.init_from: {path} was trained with quick_gelu={str(theirs).lower()} but "
                              f"tower {name!r} uses quick_gelu={str(ours).lower()}; set quick_gelu: "
                              f"{str(theirs).lower()} in the tower (or the open_clip model) config")


def apply_init_from(model, path: str, printer=print) -> dict:
    """Loads `path` into `model` (weights only) and prints the table; returns the report."""
    check_activation(model, path)
    for name, tower in model.towers.items():     # an open_clip folder's image preprocessing, not a default
        check_folder_preprocess(tower, path, "model.init_from", f"model.towers.{name}")
    sd, source = load_source(path)
    report = match_state(model, sd)
    if not any(n for t, n in report["matched"].items() if t != "(model)"):
        # Starting every tower from random weights while the user asked for a pretrained start is a failure
        # they would only notice in the metrics (a Hugging Face model folder, another framework's file).
        ign = report["ignored"]
        raise ConfigError(f"model.init_from: no tensor of {source} fits this model's towers ("
                          f"{len(ign)} source tensors, e.g. {', '.join(ign[:3]) or 'none'}): it is not a "
                          "checkpoint of this architecture (a Hugging Face model folder is a tower of its own: "
                          "{type: hf | hf_image | hf_audio, model: FOLDER})")
    model.clamp_logit_scale()
    if printer:
        printer(report_table(report, source))
    return report


def apply_tower_temperature(model, model_cfg) -> Optional[str]:
    """`pretrained_temperature: true` on an open_clip tower with `pretrained`: that checkpoint's logit_scale
    (and logit_bias) become the model's. Returns the tower name used, or None."""
    for m, tcfg in model_cfg.towers.items():
        if not (tcfg.get("pretrained_temperature") and tcfg.get("pretrained")):
            continue
        scales = getattr(model.towers[m], "pretrained_scales", None) or {}
        if "logit_scale" not in scales:
            raise ConfigError(f"model.towers.{m}.pretrained_temperature: its pretrained weights hold no logit_scale")
        with torch.no_grad():
            model.logit_scale.copy_(scales["logit_scale"].reshape(()))
            if model.logit_bias is not None and "logit_bias" in scales:
                model.logit_bias.copy_(scales["logit_bias"].reshape(()))
        return m
    return None
