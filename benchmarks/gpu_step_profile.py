"""Where align's GPU training step loses to open_clip's: the step alone, inputs already on the device.

benchmarks/gpu_check.sh measured align's whole loop at 0.70x open_clip_train (ViT-B-32, bf16, batch 256,
H200). This script takes the loop apart, each variant timed over the same steps with CUDA synchronised
at both ends (the data loader left out, except in `loader`):

  open_clip       open_clip's model, open_clip.loss.ClipLoss, torch AdamW as open_clip_train builds it
                  (foreach, two groups), autocast bf16: the baseline step
  align           align.train.step.train_step on align's own engine (setup.build_engine), the batch with
                  the validity masks the loaders yield (as in a run)
  align_nomask    the same batch without masks
  align_nosync    align, with the loss's all-valid check and the NaN guard read on the host once per step
                  (monkeypatched here to measure what the host syncs cost)
  loader          align's synthetic loader: one batch built on the host and moved to the device

then a torch.profiler table of `align` (self CPU and device time per op, top 25).

    python benchmarks/gpu_step_profile.py [--dry-run] [--out DIR]     # on the GPU machine: --out "$OUT"
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402

from gpu_check import CAPTION, TINY_CFG, TINY_NAME  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int, dev) -> float:
    """Seconds per call of fn() over `steps` calls after `warmup`, synchronised at both ends."""
    for _ in range(warmup):
        fn()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return (time.perf_counter() - t) / steps


def open_clip_step(model_name: str, batch: dict, dev, dtype):
    """The baseline: open_clip_train's step (model -> ClipLoss -> backward -> AdamW), data on the device."""
    import open_clip
    from open_clip.loss import ClipLoss
    model = open_clip.create_model(model_name, device=dev)
    model.train()
    # open_clip_train/main.py: no weight decay for gains, biases, logit_scale and embeddings
    excl = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if excl(n, p)], "weight_decay": 0.0},
                             {"params": [p for n, p in named if not excl(n, p)], "weight_decay": 0.2}],
                            lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    loss = ClipLoss()
    img, txt = batch["image"], batch["text"]

    def step():
        with torch.autocast(dev.type, dtype=dtype):
            img_f, txt_f, scale = model(img, txt)[:3]       # [B, E], [B, E], exp'ed scalar
            total = loss(img_f, txt_f, scale)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
    return step


def align_engine(model_section: dict, b: int, precision: str, out_dir: str):
    from align.config import parse_recipe
    from align.train.setup import build_accelerator, build_engine
    r = parse_recipe({"output_dir": out_dir, "model": model_section,
                      "train": {"batch_size": b, "max_steps": 1000, "precision": precision, "lr": 5e-4,
                                "warmup_steps": 2}})
    acc = build_accelerator(r)
    eng = build_engine(r, acc, None)
    eng.model.train()
    return eng


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, a few steps")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.dry_run:
        import open_clip
        cfg_path = os.path.join(a.out, TINY_NAME + ".json")
        with open(cfg_path, "w") as f:
            json.dump(TINY_CFG, f)
        open_clip.add_model_config(cfg_path)
        cfg = dict(TINY_CFG)
        section, name, b, steps, warm = {"embed_dim": cfg.pop("embed_dim"), "open_clip": cfg}, TINY_NAME, 4, 3, 1
    else:
        section, name, b, steps, warm = {"open_clip": "ViT-B-32"}, "ViT-B-32", 256, 30, 10
    dtype = torch.bfloat16
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "model": name, "batch": b, "steps": steps, "warmup": warm}

    from align.data.stream.synthetic import SyntheticLoader
    from align.train import step as step_mod
    from align.losses import clip as clip_mod
    eng = align_engine(section, b, "bf16", os.path.join(a.out, "profile_run"))
    loader = SyntheticLoader(eng.core, b, samples_per_epoch=b * 1000, caption=CAPTION)
    it = iter(loader)
    host = next(it)
    dbatch = {k: v.to(dev) for k, v in host.items()}
    nomask = {k: v for k, v in dbatch.items() if k in ("image", "text")}

    res["loader_s"] = timed(lambda: {k: v.to(dev) for k, v in next(it).items()}, steps, warm, dev)
    res["align_s"] = timed(lambda: step_mod.train_step(eng, [dbatch]), steps, warm, dev)
    res["align_nomask_s"] = timed(lambda: step_mod.train_step(eng, [nomask]), steps, warm, dev)

    # the host syncs patched out: the all-valid check answered on the host, the finite check read once
    orig_compact, orig_finite = clip_mod.compact, step_mod.is_finite
    clip_mod.compact = lambda g: (g.tensors, g.start, g.stop)
    seen = {}

    def finite_once(loss):
        if id(loss) not in seen:
            seen.clear()
            seen[id(loss)] = bool(torch.isfinite(loss.detach()).all())
        return seen[id(loss)]
    step_mod.is_finite = finite_once
    res["align_nosync_s"] = timed(lambda: step_mod.train_step(eng, [dbatch]), steps, warm, dev)
    step_mod.is_finite = lambda loss: True
    res["align_noguard_s"] = timed(lambda: step_mod.train_step(eng, [dbatch]), steps, warm, dev)
    clip_mod.compact, step_mod.is_finite = orig_compact, orig_finite

    oc = open_clip_step(name, {"image": dbatch["image"], "text": dbatch["text"]}, dev, dtype)
    res["open_clip_s"] = timed(oc, steps, warm, dev)
    for k in [k for k in res if k.endswith("_s")]:
        res[k.replace("_s", "_samples_per_s")] = b / res[k]
    print(json.dumps(res, indent=1), flush=True)

    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    tables = []
    for label, fn in (("align", lambda: step_mod.train_step(eng, [dbatch])), ("open_clip", oc)):
        with profile(activities=acts) as prof:
            for _ in range(5):
                fn()
            sync(dev)
        ka = prof.key_averages()
        tables.append(f"## {label}: top 25 by self CPU time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=25))
        if dev.type == "cuda":
            tables.append(f"## {label}: top 15 by device time\n" + ka.table(sort_by="cuda_time_total", row_limit=15))
    with open(os.path.join(a.out, "gpu_step_profile.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "gpu_step_profile.txt"), "w") as f:
        f.write("\n\n".join(tables))
    print("\n\n".join(tables)[:6000])


if __name__ == "__main__":
    main()
