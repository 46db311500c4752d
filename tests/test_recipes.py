"""Every shipped recipe parses, opens with its header comment, and builds its model."""
import glob
import os

import pytest

from align.shipped import recipe_header
from align.config import load_recipe

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))
REQUIRED = {"demo", "clip-vit-b32", "siglip-vit-b16", "audio-text", "bind", "lit-minilm"}


def test_required_recipes_ship():
    assert REQUIRED <= {os.path.basename(p)[:-5] for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_parses_and_documents_itself(path):
    r = load_recipe(path)
    head = recipe_header(path).lower()
    assert "launch" in head and "expected" in head, "header must say launch command and expected result"
    assert len(r.model.towers) >= 2


@pytest.mark.parametrize("name", ["demo", "bind"])
def test_cpu_recipes_build_their_models(name):
    from align.model import build_model
    r = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", f"{name}.yaml"))
    m = build_model(r.model)
    assert set(m.modalities) == {"image", "text", "audio"}


def test_bind_never_pairs_audio_with_image():
    r = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", "bind.yaml"))
    assert all(set(p) != {"audio", "image"} for p in r.loss.pairs)
