"""A small student distilled from the demo's model against the same student trained alone, at equal steps:
held-out zero-shot image accuracy (digits drawn in a style never seen in training) of both.

    python benchmarks/distill.py --teacher RUN --data DEMO_DATA [--out /tmp/distill] [--steps 300] [--nice 10]

RUN: a trained `align demo` run (its image and text towers are the teacher; recipes/demo.yaml); DEMO_DATA: the
demo data folder (train/, heldout/) that `align demo` builds. The student is recipes/demo.yaml's image-text
half made smaller (ViT width 64 x 1 layer, text width 32 x 1 layer, embed 64, ~1/4 of the teacher's image
tower), same image size and tokenizer (the online teacher embeds the student's own augmented inputs). Both
variants run `align train` in their own process, one after the other, with the same seed, data order and
augmentation; `distilled` adds loss.type=distill_clip with loss.distill={teacher: RUN, weight: W}.
Prints one Markdown table: image zero-shot acc1 on the held-out groups (the run's own final eval) and on val
(digits drawn as in training; scored after the run), final loss, training samples/s. `--score-only` rescores
runs already in OUT.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

STUDENT = {
    "embed_dim": 64,
    "open_clip": {
        "vision_cfg": {"image_size": 24, "patch_size": 4, "width": 64, "layers": 1, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "mlp_ratio": 2.0}},
}
IMAGE_AUGMENT = [   # recipes/demo.yaml's image stages
    {"type": "affine", "degrees": 10, "translate": [0.2, 0.2], "shear": 8, "scale": [0.5, 1.05]},
    {"type": "stroke"},
    {"type": "blur", "sigma": [0.2, 1.3], "p": 0.5},
]


def recipe(out: str, name: str, data: str, steps: int, teacher, weight: float) -> str:
    r = {
        "output_dir": os.path.join(out, name), "seed": 0, "resume": "none", "model": STUDENT,
        "loss": {"type": "clip", "pairs": [["image", "text"]]},
        "data": {"train": os.path.join(data, "train"), "val": os.path.join(data, "heldout"), "num_workers": 1,
                 "shuffle_buffer": 500, "augment": {"image": IMAGE_AUGMENT}},
        "train": {"batch_size": 64, "max_steps": steps, "num_threads": 1, "lr": 1.0e-3, "weight_decay": 0.1,
                  "warmup_steps": 30, "log_every": 50, "checkpoint_every": 0},
        "eval": {"every": 0, "tasks": ["zeroshot"]},
    }
    if teacher:
        r["loss"].update(type="distill_clip", distill={"teacher": os.path.abspath(teacher), "weight": weight})
    path = os.path.join(out, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(r, f, sort_keys=False)
    return path


def run(path: str, name: str, out: str, nice: int) -> dict:
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "align.cli", "train", path, "--no-progress"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{name}: align train exited {rc}; see {out}/{name}.log")
    with open(os.path.join(out, name, "summary.json")) as f:
        s = json.load(f)
    return {"heldout_image_acc1": s["metrics"]["image/zeroshot/acc1"], "final_loss": s["final_loss"],
            "samples_per_s": s["samples_per_s"], "wall_s": round(time.perf_counter() - t0, 1)}


def val_acc1(run_dir: str, val: str) -> float:
    """Image zero-shot acc1 of a run's final model on a CLIP_benchmark-layout folder."""
    import align
    from align.train.evaluate import flatten, run_tasks
    return flatten(run_tasks(align.load(run_dir), val, tasks=["zeroshot"]))["image/zeroshot/acc1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the demo run (align demo's OUT/run)")
    ap.add_argument("--data", required=True, help="the demo data folder (align demo's OUT/data)")
    ap.add_argument("--out", default="/tmp/distill", help="runs, recipes and logs go here")
    ap.add_argument("--steps", type=int, default=300, help="training steps of each variant")
    ap.add_argument("--weight", type=float, default=1.0, help="loss.distill.weight")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the runs")
    ap.add_argument("--score-only", action="store_true", help="rescore the runs already in OUT (no training)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res = {}
    for name, teacher in (("alone", None), ("distilled", a.teacher)):
        path = recipe(a.out, name, a.data, a.steps, teacher, a.weight)
        if a.score_only:
            with open(os.path.join(a.out, name, "summary.json")) as f:
                s = json.load(f)
            res[name] = {"heldout_image_acc1": s["metrics"]["image/zeroshot/acc1"], "final_loss": s["final_loss"],
                         "samples_per_s": s["samples_per_s"]}
        else:
            shutil.rmtree(os.path.join(a.out, name), ignore_errors=True)    # a fresh run (align refuses resume=none
            res[name] = run(path, name, a.out, a.nice)                     # into a run dir with checkpoints)
        res[name]["val_image_acc1"] = val_acc1(os.path.join(a.out, name), os.path.join(a.data, "val"))
        print(name, json.dumps(res[name]), flush=True)
    print(f"\n| student ({a.steps} steps x 64) | held-out image zero-shot acc1 | val image zero-shot acc1 | "
          "final loss | train samples/s |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {100 * r['heldout_image_acc1']:.2f} % | {100 * r['val_image_acc1']:.2f} % | "
              f"{r['final_loss']:.3f} | {r['samples_per_s']:.0f} |")


if __name__ == "__main__":
    main()
