"""Training speed of the audio towers on CPU: `audio_cnn` (new default layout, and the former PANNs layout)
against the `audio` transformer, in samples/s of a full training step of the tower alone.

    python benchmarks/audio_cnn_speed.py [--batch 64] [--steps 5] [--threads 1] [--clip 1.0] [--profile]

Towers, all with the demo's front end (1 s clips, 64 mel bins -> [64, 101] log-mel) and embed_dim 128:
  audio            the demo recipe's AST-style tower (width 64, 2 layers, 16x16 patches)
  audio_cnn        the default: strided stem conv + depthwise-separable blocks [32, 64, 128, 256]
  audio_cnn_panns  the layout audio_cnn had before (no stem, 2 x conv3x3 blocks from 1 channel, full
                   resolution), rebuilt here module for module
One step = forward + backward + SGD update on random log-mel; the towers run in the same process, in
turns, so a shared machine slows them alike and the ratios are what to read.  --profile prints
torch.profiler's top operators for each tower.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from align.towers import build_tower
from align.towers.audio import _ConvBlock

FRONT = {"clip_seconds": 1.0, "n_mels": 64}
TOWERS = {
    "audio": {"type": "audio", **FRONT, "patch": 16, "width": 64, "layers": 2, "heads": 2, "mlp_ratio": 2.0},
    "audio_cnn": {"type": "audio_cnn", **FRONT},
    "audio_cnn_panns": {"type": "audio_cnn", **FRONT, "stem_stride": 1, "block": "plain"},
}


def build(name: str, clip: float) -> nn.Module:
    cfg = dict(TOWERS[name], clip_seconds=clip)
    tower = build_tower(cfg, "audio", 128)
    if name == "audio_cnn_panns":   # exactly the former layout: no stem, first block from 1 channel
        tower.stem = nn.Identity()
        tower.blocks[0] = _ConvBlock(1, tower.channels[0], "plain")
    return tower


def step_rate(tower: nn.Module, batch: int, steps: int, rounds: int = 3) -> float:
    """Best-of-`rounds` samples/s of `steps` training steps (after one warm-up step)."""
    x = tower.dummy_input(batch)
    opt = torch.optim.SGD(tower.parameters(), lr=1e-3)
    tower.train()

    def one():
        opt.zero_grad(set_to_none=True)
        tower(x).pow(2).mean().backward()
        opt.step()

    one()
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        best = max(best, batch * steps / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    towers = {n: build(n, a.clip) for n in TOWERS}
    rates = {}
    for name, tower in towers.items():
        steps = max(1, a.steps // 4) if name == "audio_cnn_panns" else a.steps
        rates[name] = step_rate(tower, a.batch, steps)
        params = sum(p.numel() for p in tower.parameters())
        print(f"{name:16s} {rates[name]:9.1f} samples/s  ({params / 1e6:.2f} M parameters)", flush=True)
    print(f"audio_cnn vs former layout: {rates['audio_cnn'] / rates['audio_cnn_panns']:.1f}x faster; "
          f"audio_cnn / audio: {rates['audio_cnn'] / rates['audio']:.2f}; "
          f"former layout / audio: {rates['audio_cnn_panns'] / rates['audio']:.3f} "
          f"(batch {a.batch}, {a.threads} thread(s), {a.clip} s clips)")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, tower in towers.items():
            x = tower.dummy_input(a.batch)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                tower(x).pow(2).mean().backward()
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
