"""Training throughput: align vs open_clip's own trainer on the same work.

Same open_clip architecture, batch size, precision and synthetic data; runs alternate
(align, open_clip, align, open_clip, ...) so machine drift hits both; start-up and final
checkpointing are excluded by timing only the steps after `--warmup` from each trainer's
own per-step log. open_clip_train runs from a separate environment (it needs
webdataset <= 0.2.86): build it with `bash tools/make_openclip_env.sh`.

    python benchmarks/throughput.py --model ViT-Tiny ViT-S-32 --batch-size 32 --steps 25 --repeats 2
Last line per model: `ratio=X` (align samples/s over open_clip samples/s, medians over repeats).

`--model` takes open_clip names, JSON model configs, or the configs in benchmarks/configs/
(`ViT-Tiny`: timm's ViT-Ti/16 geometry, which open_clip does not ship).  A JSON config reaches
open_clip_train through `open_clip.add_model_config` in a small launcher (`-c` below), the
same public call a user makes to train their own architecture.

The data is open_clip's synthetic set on both sides: a constant image and one caption
(`--caption`, default a 17-word sentence; open_clip's own is "Dummy caption"), padded to the
context length.  open_clip_train takes the caption through the launcher, which sets
SyntheticDataset's `caption` argument.  align's text tower skips the padding after the
last end-of-text token (exact for causal text towers: same embeddings and gradients); open_clip
runs all context positions.  `--also-untrimmed` adds align runs with that off
(`model.towers.text.trim_padding=false`), which isolates the rest of the engine, and prints
`ratio_untrimmed=X` too.  open_clip's log also gives its data time per step ("Data (t)"),
printed as its data share.
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
CONFIGS = os.path.join(HERE, "configs")
CAPTION = "a close photo of a small brown dog running across the green grass of a sunny park"  # 17 words

# Runs open_clip_train.main with a model config registered and the synthetic caption set, through
# open_clip's public add_model_config and SyntheticDataset's own `caption` argument.
OC_LAUNCHER = """
import sys, open_clip, open_clip_train.data as d, open_clip_train.main as m
cfg, caption = sys.argv[1], sys.argv[2]
if cfg:
    open_clip.add_model_config(cfg)
base = d.SyntheticDataset.__init__
def init(self, *a, **k):
    k.setdefault("caption", caption)
    base(self, *a, **k)
d.SyntheticDataset.__init__ = init
m.main(sys.argv[3:])
"""


def model_source(model):
    """(name open_clip_train takes, config file or '', what align's model.open_clip takes)."""
    path = model if model.endswith(".json") else os.path.join(CONFIGS, model + ".json")
    if os.path.isfile(path):
        return os.path.splitext(os.path.basename(path))[0], os.path.abspath(path), os.path.abspath(path)
    return model, "", model


def run_align(a, model, tmp, i, trim=True):
    out = os.path.join(tmp, f"align-{i}-{trim}")
    recipe = {
        "output_dir": out, "seed": i, "resume": "none",
        "model": {"open_clip": model_source(model)[2], "towers": {"text": {"trim_padding": trim}}},
        "data": {"train": "synthetic", "synthetic_size": a.batch_size * (a.steps + 1), "num_workers": 0,
                 "synthetic_caption": a.caption},
        "train": {"batch_size": a.batch_size, "max_steps": a.steps, "precision": a.precision, "lr": 5e-4,
                  "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, "num_threads": a.threads,
                  "compile": a.compile},
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


def run_open_clip(a, model, tmp, i):
    """(samples/s, data share of the timed steps) from open_clip_train's own per-step log."""
    logs = os.path.join(tmp, f"oc-{i}")
    name, cfg, _ = model_source(model)
    cmd = [a.openclip_python, "-c", OC_LAUNCHER, cfg, a.caption, "--dataset-type", "synthetic",
           "--train-num-samples", str(a.batch_size * a.steps), "--batch-size", str(a.batch_size),
           "--model", name, "--epochs", "1", "--precision", {"fp32": "fp32", "bf16": "amp_bf16",
                                                                 "fp16": "amp"}[a.precision],
           "--workers", "0", "--log-every-n-steps", "1", "--save-frequency", "0", "--lr", "5e-4", "--warmup", "2",
           "--logs", logs, "--name", "bench", "--seed", str(i), "--report-to", ""]
    cmd += ["--torchcompile"] if a.compile else []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise SystemExit(f"open_clip_train failed:\n{text[-3000:]}")
    # "Train Epoch: 0 [  64/ 800 ( 8%)] Data (t): 0.001 Batch (t): 1.234, 25.9/s, 25.9/s/gpu ..."
    steps = re.findall(r"Train Epoch: \d+ \[\s*(\d+)/.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)", text)
    timed = [(float(d), float(t)) for n, d, t in steps if int(n) // a.batch_size > a.warmup]
    if not timed:
        raise SystemExit(f"could not parse open_clip_train's log:\n{text[-2000:]}")
    total = sum(t for _, t in timed)
    return a.batch_size * len(timed) / total, sum(d for d, _ in timed) / total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["ViT-Tiny", "ViT-S-32"],
                    help="open_clip names, JSON configs, or names of benchmarks/configs/*.json")
    ap.add_argument("--caption", default=CAPTION, help="the synthetic caption both trainers train on")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from timing")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--openclip-python", default=os.path.join(ROOT, ".bench_env", "bin", "python"))
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile on both sides (align train.compile, open_clip_train --torchcompile); "
                         "raise --warmup past the compiling steps")
    ap.add_argument("--also-untrimmed", action="store_true",
                    help="also time align with text padding trimming off (isolates the rest of the engine)")
    a = ap.parse_args()
    if not os.path.exists(a.openclip_python):
        raise SystemExit(f"{a.openclip_python} missing: run `bash tools/make_openclip_env.sh` first")
    print(f"caption ({len(a.caption.split())} words): {a.caption!r}; batch={a.batch_size} precision={a.precision} "
          f"steps={a.steps} (timed after {a.warmup}) threads={a.threads}", flush=True)
    table = []
    for model in a.model:
        res = {"align": [], "align_untrimmed": [], "open_clip": [], "oc_data": []}
        with tempfile.TemporaryDirectory() as tmp:
            # Alternate the two trainers so drift on the machine hits both.
            for i in range(a.repeats):
                res["align"].append(run_align(a, model, tmp, i))
                print(f"{model} run {i}: align           {res['align'][-1]:8.2f} samples/s", flush=True)
                sps, data = run_open_clip(a, model, tmp, i)
                res["open_clip"].append(sps)
                res["oc_data"].append(data)
                print(f"{model} run {i}: open_clip       {sps:8.2f} samples/s (data {data:.1%} of its step time)",
                      flush=True)
                if a.also_untrimmed:
                    res["align_untrimmed"].append(run_align(a, model, tmp, i, trim=False))
                    print(f"{model} run {i}: align untrimmed {res['align_untrimmed'][-1]:8.2f} samples/s", flush=True)
        al, oc = statistics.median(res["align"]), statistics.median(res["open_clip"])
        line = (f"model={model} align_samples_per_s={al:.2f} open_clip_samples_per_s={oc:.2f} "
                f"open_clip_data_share={statistics.median(res['oc_data']):.3f}")
        if a.also_untrimmed:
            un = statistics.median(res["align_untrimmed"])
            line += f" align_untrimmed_samples_per_s={un:.2f} ratio_untrimmed={un / oc:.3f}"
        table.append(f"{line} ratio={al / oc:.3f}")
        print(table[-1], flush=True)
    print("\n".join(["summary:"] + table))


if __name__ == "__main__":
    main()
