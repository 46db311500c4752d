"""`align bench zeroshot` against the clip_benchmark CLI on the same model, data and machine (issue 23 item 2).

    python benchmarks/zeroshot_speed.py --work /tmp/zs_speed [--items 10000] [--classes 100] [--px 256]
        [--model small|tiny] [--repeats 2] [--workers N] [--cb-workers N] [--precision fp32] [--engine torch]

What it does, once: writes N synthetic JPEGs (benchmarks/gpu_check.py's images: a random 8x8 colour grid
upsampled to PX, plus noise) in C classes with 10 templates as a CLIP_benchmark webdataset (align's shard
writer), trains the chosen open_clip model one step with `align train` so that it is an ordinary run, and
exports it with `align export --format open_clip`. Then, per repeat, in alternating order, each as a fresh
process timed from start to exit (model load included):
  - align: `align bench zeroshot --model EXPORT --dataset DS` with its defaults (decode workers sized to
    the machine) plus --batch-size B;
  - clip_benchmark: `clip_benchmark eval --model local-dir:EXPORT --dataset wds/NAME ...` (through
    tools/clip_benchmark_compat.py) with the same batch size, --num_workers set to the count align chose,
    and --no_amp when --precision fp32 (clip_benchmark's default amp is bf16 autocast on CPU).
Both must report the same acc1 (same model, same images, same templates); the script says if they differ.
Prints one RESULT line per run, align's STAGES (the result's "seconds": open dataset, load model, encode
images, encode class prompts, index, search; the rest is start-up) and a ratio line (median wall time of
clip_benchmark / align).

Models: `small` (open_clip ViT, 64 px input, patch 8, width 192, 6 layers; text width 192, 6 layers; ~5 M
parameters per tower: cheap enough on 2 CPU cores that the costs besides the forward pass show) and `tiny`
(gpu_check.py's dry-run model, 32 px). Each is written as an open_clip config into WORK and registered
there, so clip_benchmark loads the same architecture from the export.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from gpu_check import SIZES, TINY_CFG, Ctx, PartLog, child_env, part_data, run_cmd  # noqa: E402
from gpu_check_bench import COMPAT, make_model, pycoco_stub_dir  # noqa: E402

MODELS = {
    "tiny": TINY_CFG,
    "small": {"embed_dim": 192,
              "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 6, "head_width": 64},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 6}},
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the data, the model and the results")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--px", type=int, default=256, help="stored image size (the model's transform resizes)")
    p.add_argument("--model", default="small", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None,
                   help="decode workers for both (default: align's own default, given to clip_benchmark too)")
    p.add_argument("--cb-workers", type=int, default=None,
                   help="clip_benchmark's --num_workers (default: the same as align's; its CLI's own default is 4)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"],
                   help="align bench --engine (onnxruntime: the image tower in onnxruntime on the CPU)")
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args(argv)


def setup(a):
    """Data and model (reused when WORK already has them) -> (ctx, dataset dir, export dir)."""
    ns = argparse.Namespace(dry_run=False, out=a.work, work=a.work, budget=3600.0, openclip_python="")
    ctx = Ctx(ns)
    ctx.s = dict(SIZES["gpu"], model=f"zs-{a.model}", zs_items=a.items, zs_classes=a.classes, zs_px=a.px,
                 zs_train_batch=8, precision="fp32")
    cfg = MODELS[a.model]                # the `model:` section, as gpu_check.py's dry run writes it
    ctx.model_recipe = lambda: {"embed_dim": cfg["embed_dim"],
                                "open_clip": {k: v for k, v in cfg.items() if k != "embed_dim"}}
    ds = ctx.path("zs", "synthetic10k")
    stamp = ctx.path("zs", "made.json")
    want = {"items": a.items, "classes": a.classes, "px": a.px}
    if not (os.path.exists(stamp) and json.load(open(stamp)) == want):
        log = PartLog(ctx, "data")
        part_data(ctx, log)
        print(f"data: {json.dumps(log.data['result'])}", flush=True)
        json.dump(want, open(stamp, "w"))
    export = ctx.path("zs_export")
    mstamp = ctx.path("zs_export_model.txt")
    if not (os.path.exists(mstamp) and open(mstamp).read() == a.model):
        log = PartLog(ctx, "model")
        make_model(ctx, log)
        open(mstamp, "w").write(a.model)
    return ctx, ds, export


def run_align(ctx, a, ds, export, tag):
    out = ctx.path(f"align_{tag}.json")
    cmd = [ctx.python, "-m", "align.cli", "bench", "zeroshot", "--model", export, "--dataset", ds, "--out", out,
           "--device", "cpu", "--precision", a.precision, "--batch-size", str(a.batch_size), "--engine", a.engine]
    if a.workers is not None:
        cmd += ["--num-workers", str(a.workers)]
    rc, log, sec = run_cmd(cmd, 3600, env=child_env(ctx))
    if rc != 0:
        raise SystemExit(f"align bench failed (rc {rc}):\n{log[-3000:]}")
    workers = next((int(w.split()[0]) for w in log.split(", ") if "decode worker" in w), None)
    res = json.load(open(out))
    stages = res.get("seconds", {})
    print(f"STAGES {tag}: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
          + f"; outside them (interpreter, imports, writing) {sec - sum(stages.values()):.2f} s", flush=True)
    return sec, res["metrics"], workers


def run_cb(ctx, a, ds, export, workers, tag):
    name = os.path.basename(ds)
    out_tmpl = ctx.path(f"cb_{tag}_" + "{dataset}_{task}.json")
    cmd = [ctx.python, COMPAT, "eval", "--model", f"local-dir:{export}", "--pretrained", "",
           "--dataset", f"wds/{name}", "--dataset_root", os.path.join(os.path.dirname(ds), "{dataset}"),
           "--task", "zeroshot_classification", "--num_workers", str(workers), "--batch_size", str(a.batch_size),
           "--output", out_tmpl, "--quiet"] + (["--no_amp"] if a.precision == "fp32" else [])
    env = child_env(ctx)
    if run_cmd([ctx.python, "-c", "import pycocoevalcap"], 60, env=env)[0] != 0:
        env = dict(env, PYTHONPATH=env["PYTHONPATH"] + os.pathsep + pycoco_stub_dir(ctx))
    rc, log, sec = run_cmd(cmd, 3600, env=env, cwd=ctx.work)
    path = ctx.path(f"cb_{tag}_{name}_zeroshot_classification.json")
    if rc != 0 or not os.path.exists(path):
        raise SystemExit(f"clip_benchmark failed (rc {rc}):\n{log[-3000:]}")
    return sec, json.load(open(path))["metrics"]


def main(argv=None):
    a = parse(argv)
    os.makedirs(a.work, exist_ok=True)
    ctx, ds, export = setup(a)
    load = os.getloadavg()
    print(f"zeroshot_speed: model {a.model}, {a.items} items x {a.classes} classes x 10 templates, {a.px} px, "
          f"batch {a.batch_size}, {a.precision}, align engine {a.engine}, cpus {os.cpu_count()}, "
          f"load {load[0]:.1f}", flush=True)
    walls = {"align": [], "clip_benchmark": []}
    workers = a.workers
    for r in range(a.repeats):
        order = ("align", "clip_benchmark") if r % 2 == 0 else ("clip_benchmark", "align")
        if workers is None:                      # align first once, to learn its default worker count
            order = ("align", "clip_benchmark")
        for who in order:
            if who == "align":
                sec, m, w = run_align(ctx, a, ds, export, r)
                workers = w if workers is None else workers
            else:
                w = workers if a.cb_workers is None else a.cb_workers
                sec, m = run_cb(ctx, a, ds, export, w, r)
            walls[who].append(sec)
            print(f"RESULT run={r} who={who} wall_s={sec:.2f} workers={w} acc1={m['acc1']:.4f} "
                  f"acc5={m['acc5']:.4f} load={os.getloadavg()[0]:.1f}", flush=True)
            if who == "align":
                acc_align = m["acc1"]
            else:
                acc_cb = m["acc1"]
        if abs(acc_align - acc_cb) > 1e-6:
            print(f"WARNING: acc1 differs: align {acc_align} clip_benchmark {acc_cb}", flush=True)
    ma, mc = statistics.median(walls["align"]), statistics.median(walls["clip_benchmark"])
    print(f"RATIO clip_benchmark/align wall = {mc / ma:.2f} (median align {ma:.1f} s, clip_benchmark {mc:.1f} s, "
          f"{a.repeats} repeat(s))", flush=True)


if __name__ == "__main__":
    main()
