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
from typing import Optional

from align.config import parse_recipe
from align.errors import AlignError
from align.model import AlignModel, build_model
from align.towers import drop_pretrained
from align.train.checkpoint import load_model_state, load_weights
from align.train.rundir import EXPORT_CONFIG, display_name, find_model

ALIGN_CONFIG = EXPORT_CONFIG   # written beside every export: the recipe the model came from (align.train.rundir)


def load(path: str, device: str = "cpu", pretrained: Optional[str] = None) -> AlignModel:
    """Loads a model in eval mode; embeddings from its encode_* methods are L2-normalised."""
    if pretrained:
        raise AlignError(f"{path}: pretrained= applies to open_clip:ARCH models only")
    cfg, weights = find_model(path)          # a run dir, checkpoint dir (plain or DCP) or export
    recipe = parse_recipe(cfg)
    # Pretrained tower weights are in the checkpoint: do not fetch them again.
    for m, t in recipe.model.towers.items():
        drop_pretrained(t, m)
    model = build_model(recipe.model)
    load_model_state(model, load_weights(weights), f"{weights}: weights do not fit the model",
                     "a run directory holds the config of its last run: load a checkpoint of that run")
    model.config = cfg
    model.data_limits = recipe.data.limits   # the sizes its media are decoded within (align bench, embed, search)
    model.weights_file = weights             # the file or DCP store read (align.export names its checkpoint)
    model.name = cfg.get("name") or display_name(path)
    return model.to(device).eval()
