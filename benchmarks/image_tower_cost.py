"""Forward + backward time of the demo's image tower at several ViT sizes on CPU (what recipes/demo.yaml's
image tower was chosen by, with benchmarks/demo_sweep.py's accuracies).

    python benchmarks/image_tower_cost.py [--batch 128] [--threads 2]

Each variant is recipes/demo.yaml's open_clip vision_cfg with the overrides shown; random input, mean of
5 steps after 2 warm-ups.
"""
import argparse
import time

import torch

V = "model.open_clip.vision_cfg."
VARIANTS = {
    "32px p8 w64 l2 (former demo)": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2},
    "32px p4 w64 l2": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 2},
    "32px p4 w96 l3": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3},
    "32px p4 w128 l3": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 3},
    "24px p4 w128 l3 (demo)": {"image_size": 24, "patch_size": 4, "width": 128, "layers": 3},
}


def main() -> None:
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    from align.model import build_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name, cfg in VARIANTS.items():
        recipe = load_recipe(resolve_recipe("demo"), [f"{V}{k}={v}" for k, v in cfg.items()])
        tower = build_model(recipe.model).towers["image"]
        x = torch.randn(a.batch, 3, cfg["image_size"], cfg["image_size"])
        for i in range(7):
            if i == 2:
                t0 = time.perf_counter()
            tower(x).sum().backward()
        ms = (time.perf_counter() - t0) / 5 * 1000
        params = sum(p.numel() for p in tower.parameters())
        print(f"{name:30s} {ms:7.0f} ms per forward+backward (batch {a.batch}, {a.threads} threads), "
              f"{params / 1e3:.0f} k parameters")


if __name__ == "__main__":
    main()
