"""The demo with an RNN tower swapped in: held-out zero-shot accuracy and training samples/s against the
Transformer towers of recipes/demo.yaml.

    python benchmarks/rnn_towers.py [--out /tmp/rnn_towers] [--nice 10] [NAME ...] [override ...]
    python benchmarks/rnn_towers.py --towers-only      # forward+backward of each tower alone (seconds)

NAME (default: all of VARIANTS, in order) is `align demo` with the variant's overrides, run one after another
in its own process (`align demo --no-progress --out OUT/NAME`; the data is built once, in OUT/data, and
linked into each run).  Overrides after the names apply to every variant (`train.max_steps=4` for a dry run).
Each run's OUT/NAME/report/timing.json gives training samples/s and zero-shot acc1 on val and on the held-out
groups; the script prints one Markdown table of them.  Time figures depend on the machine's load: run the
variants on the same machine under the same load (this script runs them back to back for that reason).
--towers-only times each tower's forward+backward alone (batch 64, 1 thread, the towers interleaved, median
of the repeats), which a shared machine disturbs less than whole runs.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# The demo's text tower is an open_clip transformer (width 64, 1 layer, 16 tokens); its audio tower an
# AST-style transformer (width 64, 2 layers) over 1 s of 64-bin log-mel.  The RNNs are sized alike.
RNN_TEXT = "{type: rnn_text, width: 64, hidden: 64, layers: 1, cell: gru, pooling: mean, context_length: 16}"
RNN_AUDIO = "{type: rnn_audio, clip_seconds: 1.0, n_mels: 64, hidden: 64, layers: 2, cell: gru, frame_stack: 2}"
VARIANTS = {
    "transformer": [],
    "rnn_text": [f"model.towers.text={RNN_TEXT}"],
    "rnn_audio": [f"model.towers.audio={RNN_AUDIO}"],
}
COLS = ("train_samples_per_s", "train_s", "image_zeroshot_acc1_heldout", "audio_zeroshot_acc1_heldout",
        "image_zeroshot_acc1", "audio_zeroshot_acc1")


def run(name: str, out: str, extra: list, nice: int) -> dict:
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "data")
    if not os.path.exists(data):                    # one data build shared by every variant
        os.symlink(os.path.abspath(os.path.join(out, "data")), data)
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "align.cli", "demo", "--no-progress", "--out", d,
           *VARIANTS[name], *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{name}: align demo exited {rc}; see {out}/{name}.log")
    with open(os.path.join(d, "report", "timing.json")) as f:
        res = json.load(f)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def table(results: dict) -> str:
    head = "| variant | train samples/s | train s | held-out image | held-out audio | val image | val audio |"
    rows = [head, "|" + "---|" * 7]
    for name, r in results.items():
        cells = [f"{r.get(c, float('nan')):.1f}" if c.startswith("train") else
                 (f"{100 * r[c]:.2f} %" if c in r else "-") for c in COLS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def towers_only(repeats: int = 7, batch: int = 64) -> None:
    import statistics

    import torch
    import yaml

    from align.config import load_recipe
    from align.shipped import resolve_recipe
    from align.model import build_model
    torch.set_num_threads(1)
    demo = load_recipe(resolve_recipe("demo")).model
    towers = {"text: open_clip transformer": build_model(demo).towers["text"],
              "audio: AST transformer": build_model(demo).towers["audio"]}
    from align.towers import build_tower
    towers["text: rnn_text"] = build_tower(yaml.safe_load(RNN_TEXT), "text", demo.embed_dim)
    towers["audio: rnn_audio"] = build_tower(yaml.safe_load(RNN_AUDIO), "audio", demo.embed_dim)
    inputs = {k: (t.tokenize(["a handwritten seven."] * batch) if k.startswith("text") else t.dummy_input(batch))
              for k, t in towers.items()}
    times = {k: [] for k in towers}
    for r in range(repeats + 1):
        for k, t in towers.items():
            t0 = time.perf_counter()
            t.train()(inputs[k]).sum().backward()
            if r:                                            # the first round warms up
                times[k].append(time.perf_counter() - t0)
    print("| tower | forward+backward, batch 64 (ms) | samples/s |\n|---|---|---|")
    for k, v in times.items():
        ms = 1000 * statistics.median(v)
        print(f"| {k} | {ms:.1f} | {batch / ms * 1000:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/rnn_towers", help="output folder (default: /tmp/rnn_towers)")
    p.add_argument("--nice", type=int, default=10, help="niceness of each run (default: 10)")
    p.add_argument("--towers-only", action="store_true", help="time each tower alone instead of whole demo runs")
    p.add_argument("rest", nargs="*", help="variant names, then recipe overrides (key=value)")
    a = p.parse_args()
    if a.towers_only:
        towers_only()
        return
    names = [x for x in a.rest if "=" not in x] or list(VARIANTS)
    extra = [x for x in a.rest if "=" in x]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    os.makedirs(a.out, exist_ok=True)
    if not os.path.isfile(os.path.join(a.out, "data", "demo.json")):
        subprocess.run(["nice", "-n", str(a.nice), sys.executable, "-m", "align.cli", "data", "demo", "--out",
                        os.path.join(a.out, "data")], check=True, stdout=subprocess.DEVNULL)
    results = {}
    for name in names:
        results[name] = run(name, a.out, extra, a.nice)
        print(json.dumps({name: results[name]}), flush=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
