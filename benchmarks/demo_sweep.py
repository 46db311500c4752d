"""Demo-recipe variants, scored zero-shot on val and on the held-out *selection* groups.

    python benchmarks/demo_sweep.py --data align_demo/data [--out /tmp/demo_sweep] [--jobs N] [NAME ...] [override ...]

Each NAME (default: all of VARIANTS) is `recipes/demo.yaml` with the variant's overrides, trained in its own
process, N at a time (default: all at once, for a machine with about 2 free cores per variant; `--jobs 1`
on 2 cores, where the samples/s are then the recipe's own).  Overrides after the names apply to every variant
(`train.max_steps=4` for a dry run).  Each variant prints one JSON line, and writes OUT/NAME.json:
training time, samples/s, final loss, and zero-shot acc1 of image and audio on `val` (voices and rendering
seen in training) and `selection` (voices never heard, digits drawn in another style: the groups that
choose).  The report groups (`heldout/`, other voices and another rendering) are never scored here: the
chosen recipe is reported on them by `align demo` alone, so its held-out figures are not biased by the
choice (benchmarks/RESULTS.md, issue 20 item 2 and issue 23 item 1).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

AUG_I = ("{type: affine, degrees: 10, translate: [0.2, 0.2], shear: 8, scale: [0.5, 1.05]}, {type: stroke}, "
         "{type: blur, sigma: [0.2, 1.3], p: 0.5}")
AUG_I_MILD = ("{type: affine, degrees: 10, translate: [0.15, 0.15], shear: 8, scale: [0.5, 1.0], p: 0.8}, "
              "{type: stroke}, {type: blur, sigma: [0.2, 1.3], p: 0.5}")
AUG_A = "{type: speed, factor: [0.85, 1.15]}, {type: gain}, {type: noise, snr_db: [15, 40], p: 0.5}"
V = "model.open_clip.vision_cfg"


def aug(image: str = AUG_I, audio: str = AUG_A) -> str:
    return f"data.augment={{image: [{image}], audio: [{audio}]}}"


def vit(patch: int = 4, width: int = 64, layers: int = 2, size: int = 32) -> list:
    """open_clip's ViT as the image tower (head width 32, MLP ratio 2: the demo's ViTs until 2026-12-04)."""
    return [f"{V}={{image_size: {size}, patch_size: {patch}, width: {width}, layers: {layers}, head_width: 32, "
            "mlp_ratio: 2.0}"]


def rn(width: int, size: int = 32) -> list:
    """open_clip's ModifiedResNet (one bottleneck per stage, attention pooling) as the image tower."""
    return [f"{V}={{image_size: {size}, layers: [1, 1, 1, 1], width: {width}}}"]


def steps(n: int, batch: int = 128) -> list:
    return [f"train.max_steps={n}", f"train.batch_size={batch}"]


# name -> overrides of recipes/demo.yaml (each sets the whole image tower, batch and steps it was run with; the
# variants before 2026-12-04 ran on the 16-core host with data.num_workers=2 added, on the demo data of version 2,
# scored on its heldout/ groups)
VARIANTS = {
    "noaug_p8_300": ["data.augment=null", *vit(8, 64, 2), *steps(300)],
    "aug_p8_600": [aug(), *vit(8, 64, 2), *steps(600)],
    "aug_p8_1000": [aug(), *vit(8, 64, 2), *steps(1000)],
    "aug_p4w64l2_600": [aug(), *vit(4, 64, 2), *steps(600)],
    "aug_p4w64l2_1000": [aug(), *vit(4, 64, 2), *steps(1000)],
    "aug_p4w96l3_800": [aug(), *vit(4, 96, 3), *steps(800)],
    "augmild_p4w64l2_800": [aug(AUG_I_MILD), *vit(4, 64, 2), *steps(800)],
    "aug_p4w64l2_lr2e-3_800": [aug(), *vit(4, 64, 2), "train.lr=2.0e-3", *steps(800)],
    "aug_p4w96l3_1000": [aug(), *vit(4, 96, 3), *steps(1000)],
    "aug_p4w96l3_1200": [aug(), *vit(4, 96, 3), *steps(1200)],
    "aug_p4w128l3_800": [aug(), *vit(4, 128, 3), *steps(800)],
    "aug_p4w128l4_1000": [aug(), *vit(4, 128, 4), *steps(1000)],
    "aug_p4w96l4_800": [aug(), *vit(4, 96, 4), *steps(800)],
    "aug_p4w96l3_800_seed1": [aug(), *vit(4, 96, 3), *steps(800), "seed=1"],
    "aug_p4w64l3_800": [aug(), *vit(4, 64, 3), *steps(800)],
    "aug_p4w128l3_1000": [aug(), *vit(4, 128, 3), *steps(1000)],
    "aug_p4w128l3_b64_1000": [aug(), *vit(4, 128, 3), *steps(1000, 64)],
    "aug_p4w128l3_b96_800": [aug(), *vit(4, 128, 3), *steps(800, 96)],
    "aug_p4w128l3_24px_b64_1200": [aug(), *vit(4, 128, 3, 24), *steps(1200, 64)],
    # 2026-12-04/05 (issue 23 item 1: the demo in <= 120 s), chosen on the selection groups, run with --jobs 1
    "vit_b64_1200": [*vit(4, 128, 3, 24), *steps(1200, 64)],     # the demo until 2026-12-04
    "vit_b64_600": [*vit(4, 128, 3, 24), *steps(600, 64)],
    "rn8_b64_800": [*rn(8), *steps(800, 64)],
    "rn16_b64_800": [*rn(16), *steps(800, 64)],
    "rn16_b64_600": [*rn(16), *steps(600, 64)],                  # recipes/demo.yaml since 2026-12-04
    "rn16_b64_500": [*rn(16), *steps(500, 64)],
    "rn16_b64_800_w2": [*rn(16), *steps(800, 64), "data.num_workers=2"],
    "rn16_b64_600_w2": [*rn(16), *steps(600, 64), "data.num_workers=2"],
    "rn16_b64_500_w2": [*rn(16), *steps(500, 64), "data.num_workers=2"],
    # shards drawn with replacement: one endless stream, no epoch boundary (issue 23 item 4, 2026-12-05)
    "rn16_b64_600_resampled": [*rn(16), *steps(600, 64), "data.resampled=true"],
}


def run_one(name: str, data: str, out: str, extra: list) -> dict:
    import torch
    torch.set_num_threads(1)
    import align
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    from align.train.evaluate import evaluate_model
    from align.train.loop import train
    run = os.path.join(out, "runs", name)
    shutil.rmtree(run, ignore_errors=True)      # a fresh run (align refuses resume=none into a run dir with checkpoints)
    ov = [f"output_dir={run}", "seed=0", f"data.train={data}/train", f"data.val={data}/val", "resume=none",
          "eval.tasks=[zeroshot]", "train.checkpoint_every=100000", *VARIANTS[name], *extra]
    t0 = time.time()
    summary = train(load_recipe(resolve_recipe("demo"), ov), progress=False)
    r = {"name": name, "overrides": VARIANTS[name] + extra, "train_s": round(time.time() - t0, 1),
         "samples_per_s": summary.get("samples_per_s"), "final_loss": summary.get("final_loss")}
    model = align.load(run)
    for split in ("val", "selection"):
        flat = evaluate_model(model, os.path.join(data, split), tasks=("zeroshot",))
        r[split] = {k: round(v, 4) for k, v in flat.items() if k.endswith("acc1")}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="align_demo/data", help="the demo dataset (align demo builds it)")
    ap.add_argument("--out", default="/tmp/demo_sweep")
    ap.add_argument("--jobs", type=int, default=0, help="variants trained at once (default: all)")
    ap.add_argument("--one", help=argparse.SUPPRESS)     # the child process of one variant
    ap.add_argument("items", nargs="*", help="variant names, then recipe overrides for all of them")
    a = ap.parse_args()
    extra = [x for x in a.items if "=" in x]
    names = [x for x in a.items if "=" not in x] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    os.makedirs(a.out, exist_ok=True)
    if a.one:
        r = run_one(a.one, a.data, a.out, extra)
        print(json.dumps(r), flush=True)
        with open(os.path.join(a.out, a.one + ".json"), "w") as f:
            json.dump(r, f, indent=1)
        return
    print(f"{'variant':28s} {'train s':>8s} {'samp/s':>7s} {'loss':>6s} {'val img':>8s} {'val aud':>8s} "
          f"{'sel img':>8s} {'sel aud':>8s}", flush=True)
    jobs = a.jobs if a.jobs > 0 else len(names)
    for i in range(0, len(names), jobs):
        procs = {n: subprocess.Popen([sys.executable, __file__, "--data", a.data, "--out", a.out, "--one", n, *extra],
                                     stdout=open(os.path.join(a.out, n + ".log"), "w"), stderr=subprocess.STDOUT)
                 for n in names[i:i + jobs]}
        for n, p in procs.items():
            if p.wait() != 0:
                print(f"{n:28s} failed (exit {p.returncode}); see {os.path.join(a.out, n + '.log')}")
                continue
            r = json.load(open(os.path.join(a.out, n + ".json")))
            v, h = r["val"], r["selection"]
            print(f"{n:28s} {r['train_s']:8.1f} {r['samples_per_s'] or 0:7.1f} {r['final_loss']:6.3f} "
                  f"{100 * v['image/zeroshot/acc1']:7.2f}% {100 * v['audio/zeroshot/acc1']:7.2f}% "
                  f"{100 * h['image/zeroshot/acc1']:7.2f}% {100 * h['audio/zeroshot/acc1']:7.2f}%", flush=True)


if __name__ == "__main__":
    main()
