"""Shared test helpers: a tiny open_clip config and recipe dict used across tests."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_OPEN_CLIP = {
    "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}


@pytest.fixture
def tiny_recipe(tmp_path):
    """A dict recipe of a tiny dual-tower model on synthetic data."""
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "resume": "auto",
        "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
        "data": {"train": "synthetic", "synthetic_size": 256, "num_workers": 0},
        "train": {"batch_size": 8, "max_steps": 6, "lr": 1e-3, "log_every": 2, "checkpoint_every": 3,
                  "keep_last": 5, "num_threads": 1},
        "eval": {"every": 0},
    }
