"""Training throughput: align vs open_clip's own trainer on the same work.

Same open_clip architecture, batch size, precision and synthetic data; runs alternate
(align, open_clip, align, open_clip, ...) so machine drift hits both; start-up and final
checkpointing are excluded by timing only the steps after `--warmup` from each trainer's
own per-step log. open_clip_train runs from a separate environment (it needs
webdataset <= 0.2.86): build it with `bash tools/make_openclip_env.sh`.

    python benchmarks/throughput.py --model ViT-S-32 --batch-size 32 --steps 25 --repeats 2
Last line: `ratio=X` (align samples/s over open_clip samples/s, medians over repeats).

The data is open_clip's synthetic set on both sides: a constant image and the caption
"Dummy caption", padded to the context length.  align's text tower skips the padding after the
last end-of-text token (exact for causal text towers: same embeddings and gradients); open_clip
runs all context positions.  `--also-untrimmed` adds align runs with that off
(`model.towers.text.trim_padding=false`), which isolates the rest of the engine, and prints
`ratio_untrimmed=X` too.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_align(a, tmp, i, trim=True):
    out = os.path.join(tmp, f"align-{i}-{trim}")
    recipe = {
        "output_dir": out, "seed": i, "resume": "none",
        "model": {"open_clip": a.model, "towers": {"text": {"trim_padding": trim}}},
        "data": {"train": "synthetic", "synthetic_size": a.batch_size * (a.steps + 1), "num_workers": 0},
        "train": {"batch_size": a.batch_size, "max_steps": a.steps, "precision": a.precision, "lr": 5e-4,
                  "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, "num_threads": a.threads},
    }
    path = os.path.join(tmp, f"align-{i}-{trim}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    subprocess.run([sys.executable, "-m", "align.cli", "train", path, "--no-progress"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    # log_every=1: each row's samples_per_s covers exactly one step (data wait included).
    times = [a.batch_size / r["samples_per_s"] for r in rows if r["step"] > a.warmup]
    return a.batch_size * len(times) / sum(times)


def run_open_clip(a, tmp, i):
    logs = os.path.join(tmp, f"oc-{i}")
    cmd = [a.openclip_python, "-m", "open_clip_train.main", "--dataset-type", "synthetic",
           "--train-num-samples", str(a.batch_size * a.steps), "--batch-size", str(a.batch_size),
           "--model", a.model, "--epochs", "1", "--precision", {"fp32": "fp32", "bf16": "amp_bf16",
                                                                 "fp16": "amp"}[a.precision],
           "--workers", "0", "--log-every-n-steps", "1", "--save-frequency", "0", "--lr", "5e-4", "--warmup", "2",
           "--logs", logs, "--name", "bench", "--seed", str(i), "--report-to", ""]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise SystemExit(f"open_clip_train failed:\n{text[-3000:]}")
    # "Train Epoch: 0 [  64/ 800 ( 8%)] Data (t): 0.001 Batch (t): 1.234, 25.9/s, 25.9/s/gpu ..."
    steps = re.findall(r"Train Epoch: \d+ \[\s*(\d+)/.*?Batch \(t\): ([\d.]+)", text)
    times = [float(t) for n, t in steps if int(n) // a.batch_size > a.warmup]
    if not times:
        raise SystemExit(f"could not parse open_clip_train's log:\n{text[-2000:]}")
    return a.batch_size * len(times) / sum(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-S-32", help="open_clip architecture name")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from timing")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--openclip-python", default=os.path.join(ROOT, ".bench_env", "bin", "python"))
    ap.add_argument("--also-untrimmed", action="store_true",
                    help="also time align with text padding trimming off (isolates the rest of the engine)")
    a = ap.parse_args()
    if not os.path.exists(a.openclip_python):
        raise SystemExit(f"{a.openclip_python} missing: run `bash tools/make_openclip_env.sh` first")
    res = {"align": [], "align_untrimmed": [], "open_clip": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            res["align"].append(run_align(a, tmp, i))
            print(f"run {i}: align           {res['align'][-1]:8.2f} samples/s", flush=True)
            res["open_clip"].append(run_open_clip(a, tmp, i))
            print(f"run {i}: open_clip       {res['open_clip'][-1]:8.2f} samples/s", flush=True)
            if a.also_untrimmed:
                res["align_untrimmed"].append(run_align(a, tmp, i, trim=False))
                print(f"run {i}: align untrimmed {res['align_untrimmed'][-1]:8.2f} samples/s", flush=True)
    al, oc = statistics.median(res["align"]), statistics.median(res["open_clip"])
    print(f"model={a.model} batch={a.batch_size} precision={a.precision} steps={a.steps} (timed after "
          f"{a.warmup}) threads={a.threads}")
    print(f"align_samples_per_s={al:.2f} open_clip_samples_per_s={oc:.2f}")
    if a.also_untrimmed:
        un = statistics.median(res["align_untrimmed"])
        print(f"align_untrimmed_samples_per_s={un:.2f} ratio_untrimmed={un / oc:.3f}")
    print(f"ratio={al / oc:.3f}")


if __name__ == "__main__":
    main()
