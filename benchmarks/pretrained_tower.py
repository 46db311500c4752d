"""Time to build one open_clip tower from a pretrained checkpoint: align's per-tower load vs the earlier path
that created the whole open_clip model (both towers) to copy one of them.

    python benchmarks/pretrained_tower.py [ARCH]        # default ViT-B-32; random weights saved locally

Prints one line per method (median of 3 builds, seconds) and the ratio.
"""
import os
import statistics
import sys
import tempfile
import time

import torch


def main(arch: str = "ViT-B-32") -> None:
    import open_clip
    from safetensors.torch import save_file
    from align.towers import build_tower
    from align.towers.open_clip_towers import OpenClipTower, resolve_model_cfg
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    d = tempfile.mkdtemp()
    path = os.path.join(d, "ckpt.safetensors")
    full = open_clip.create_model(arch, force_custom_text=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    del full
    embed = resolve_model_cfg({"model": arch}, "x")["embed_dim"]

    def old():      # the earlier load_pretrained: build the whole model, copy one tower
        cfg = {"model": arch}
        tower = OpenClipTower("image", embed, resolve_model_cfg(cfg, "x"), cfg)
        whole = open_clip.create_model(arch, pretrained=path, force_custom_text=True)
        tower.net.load_state_dict(whole.visual.state_dict())

    def new():
        build_tower({"type": "open_clip", "model": arch, "pretrained": path}, "image", embed)

    res = {}
    for name, fn in (("whole model (before)", old), ("one tower (align)", new)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        res[name] = statistics.median(times)
        print(f"{arch} image tower, pretrained from a local file, {name}: {res[name]:.2f} s (median of 3)")
    a, b = res.values()
    print(f"ratio: {a / b:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
