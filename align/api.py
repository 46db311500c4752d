"""`align.load(path)`: a trained model from a run directory, a checkpoint, or an export.

    model = align.load("runs/demo")                 # newest checkpoint of a run
    model = align.load("runs/demo/checkpoints/best")
    img = model.image_transform(pil_image)[None]    # [1, 3, H, W]
    z_i = model.encode_image(img)                   # [1, E], L2-normalised
    z_t = model.encode_text(model.tokenize(["a photo of the digit seven."]))

open_clip models load through `align.load` (align.bench.models.OpenClipModel), for benchmarks:
    model = align.load("open_clip:ViT-B-32", pretrained="laion2b_s34b_b79k")   # or a checkpoint file
    model = align.load("local-dir:exports/demo")                               # open_clip's hub layout
"""
import json
import os
from typing import Optional

import yaml

from align.train.checkpoint import is_checkpoint_dir, list_checkpoints, load_weights, weights_path
from align.config import parse_recipe
from align.errors import AlignError
from align.model import AlignModel, build_model

ALIGN_CONFIG = "align_config.json"   # written beside every export: the recipe the model came from


def model_files(path: str):
    """-> (recipe dict, weights file) for a run dir, checkpoint dir or export dir."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise AlignError(f"no such model: {path}")
    if os.path.isfile(os.path.join(path, ALIGN_CONFIG)):                      # an export
        with open(os.path.join(path, ALIGN_CONFIG)) as f:
            cfg = json.load(f)
        for name in ("model.safetensors", "align_model.safetensors"):
            if os.path.isfile(os.path.join(path, name)):
                return cfg, os.path.join(path, name)
        raise AlignError(f"{path}: export has {ALIGN_CONFIG} but no align_model.safetensors")
    if os.path.isfile(os.path.join(path, "config.yaml")):                     # a run dir
        ckpts = list_checkpoints(os.path.join(path, "checkpoints"))
        if not ckpts:
            raise AlignError(f"{path}: run has no complete checkpoint yet")
        run, ckpt = path, ckpts[-1]
    elif is_checkpoint_dir(path):                                              # a checkpoint dir (or DCP)
        ckpt, run = path, os.path.dirname(os.path.dirname(path))
    else:
        raise AlignError(f"{path}: not an align run, checkpoint or export (no config.yaml, model.safetensors "
                         f"or {ALIGN_CONFIG})")
    cfg_path = os.path.join(run, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise AlignError(f"{ckpt}: cannot find the run's config.yaml at {cfg_path}")
    with open(cfg_path) as f:
        return yaml.safe_load(f), weights_path(ckpt)


def load(path: str, device: str = "cpu", pretrained: Optional[str] = None) -> AlignModel:
    """Loads a model in eval mode; embeddings from its encode_* methods are L2-normalised."""
    if pretrained:
        raise AlignError(f"{path}: pretrained= applies to open_clip:ARCH models only")
    cfg, weights = model_files(path)
    recipe = parse_recipe(cfg)
    # Pretrained tower weights are in the checkpoint: do not fetch them again.
    for t in recipe.model.towers.values():
        t.pop("pretrained", None)
    model = build_model(recipe.model)
    sd = load_weights(weights)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise AlignError(f"{weights}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.config = cfg
    model.name = cfg.get("name") or os.path.basename(os.path.normpath(path))
    return model.to(device).eval()
