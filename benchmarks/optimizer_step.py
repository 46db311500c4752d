"""AdamW step time: torch's default (foreach) path vs the fused kernel align uses, on the demo's and
ViT-B-32's parameter sets (the 49408-row token embedding dominates small CLIP models).

    python benchmarks/optimizer_step.py [--threads N]
"""
import argparse
import time

import torch


def params_of(name: str):
    import open_clip
    model = open_clip.create_model(name) if name != "demo" else None
    if model is None:
        import os
        from align.config import load_recipe
        from align.model import build_model
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        model = build_model(load_recipe(os.path.join(root, "recipes", "demo.yaml")).model)
    return [p for p in model.parameters() if p.requires_grad]


def time_step(params, fused: bool, reps: int) -> float:
    ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(ps, lr=1e-3, fused=fused)
    opt.step()
    t = time.perf_counter()
    for _ in range(reps):
        opt.step()
    return (time.perf_counter() - t) / reps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for name in ("demo", "ViT-B-32"):
        params = params_of(name)
        n = sum(p.numel() for p in params) / 1e6
        base, fused = time_step(params, False, a.reps), time_step(params, True, a.reps)
        print(f"{name:10s} {n:6.1f}M params  foreach {base:8.1f} ms  fused {fused:8.1f} ms  speedup {base / fused:.2f}x")


if __name__ == "__main__":
    main()
