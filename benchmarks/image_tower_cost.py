"""Forward + backward time of the demo's image tower at several ViT sizes on CPU (what recipes/demo.yaml's
image tower was chosen by, with benchmarks/demo_sweep.py's accuracies).

    python benchmarks/image_tower_cost.py [--batch 128] [--threads 2]

Each variant is recipes/demo.yaml with the open_clip vision_cfg shown (ViTs with head width 32 and MLP ratio 2,
as the former demo's; `layers` as a list is open_clip's ModifiedResNet); random input, mean of 5 steps after 2
warm-ups.
"""
import argparse
import json
import time

import torch

V = "model.open_clip.vision_cfg"
VIT = {"head_width": 32, "mlp_ratio": 2.0}
VARIANTS = {
    "32px p8 w64 l2 (demo until 11-26)": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, **VIT},
    "32px p4 w64 l2": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 2, **VIT},
    "32px p4 w96 l3": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, **VIT},
    "32px p4 w128 l3": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 3, **VIT},
    "24px p4 w128 l3 (demo until 12-04)": {"image_size": 24, "patch_size": 4, "width": 128, "layers": 3, **VIT},
    "32px ResNet w8": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
    "32px ResNet w16 (demo)": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
    "32px ResNet w32 (small-image-text)": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32},
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
        recipe = load_recipe(resolve_recipe("demo"), [f"{V}={json.dumps(cfg)}"])
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
