"""align.model: the dict of towers an open_clip user calls encode_* on."""
import numpy as np
import torch

from align.config import parse_recipe
from align.model import build_model


def _model(tiny_recipe):
    tiny_recipe["model"]["towers"] = {"audio": {"type": "audio", "clip_seconds": 0.31, "n_mels": 32, "width": 32,
                                                "layers": 2, "heads": 2, "patch": 4}}
    return build_model(parse_recipe(tiny_recipe).model).eval()


def test_float64_and_half_inputs_are_cast_to_the_towers_dtype(tiny_recipe):
    """float64 arrays from numpy (or float32 into a model.half()) failed in the first layer with
    'expected scalar type Float but found Double'; they embed as the same inputs in the tower's dtype."""
    model = _model(tiny_recipe)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 3, 16, 16))                  # float64, as numpy makes it
    with torch.no_grad():
        z64 = model.encode_image(torch.from_numpy(img))
        z32 = model.encode_image(torch.from_numpy(img).float())
        assert z64.dtype == torch.float32 and torch.equal(z64, z32)
        audio_in = torch.from_numpy(rng.standard_normal((2, 32, 32)))     # log-mel [B, n_mels, T]
        assert torch.equal(model.encode_audio(audio_in), model.encode_audio(audio_in.float()))
        tokens = model.tokenize(["a cat", "two dogs"])
        assert tokens.dtype == torch.long and model.encode_text(tokens).dtype == torch.float32  # ids stay integers
