"""align's `small-audio-text` against LAION-CLAP's own trainer, from scratch, on the same real speakers and captions.

    bash tools/make_clap_env.sh                      # .clap_env: laion_clap==1.1.7 (its numpy<2), torch
    python benchmarks/real_sets.py bengali --recordings BENGALI_REPO --out BUILT
    python benchmarks/clap_compare.py subset --built BUILT --samples 1280 --out OUT      # OUT/train.csv
    python benchmarks/clap_compare.py clap  --built BUILT --out OUT [--epochs 1] [--lr 5e-4] [--amodel PANN-6]
    python benchmarks/clap_compare.py align --built BUILT --out OUT [--epochs 1] [override ...]
    python benchmarks/clap_compare.py table --out OUT

subset: a seeded draw of --samples rows of BUILT/train.csv (all rows: --samples 0), the training set of both sides.
clap:   LAION-CLAP 1.1.7's trainer (laion_clap/training/main.py via benchmarks/clap_peer.py, in .clap_env) on
        OUT/train.csv written as its webdataset layout (48 kHz flac + json {"text": caption}, sizes.json): --amodel
        (PANN-6, its smallest audio model), tmodel "transformer" (the CLIP BPE shipped in the wheel; no download),
        --epochs over the subset, batch 32, AdamW at --lr (its default for these models, 5e-4), wd 0.2 (its
        default), warm-up a tenth of the steps (its default, 10,000 steps, is longer than the run), fp32, clips cut
        / padded to --max-len samples (1 s at 48 kHz: the clips' length; its own 10 s padding costs 10x).
align:  `align train small-audio-text` on the same OUT/train.csv, the same samples seen (--epochs x the subset,
        batch 32), warm-up a tenth of the steps unless the subset is the whole set and --epochs gives the recipe's
        own 4800 steps; scored with `align bench zeroshot`.
Both are scored zero-shot on BUILT/report (and BUILT/selection) with the same class prompts (BUILT/templates.json,
the CLIP recipe: prompts averaged per class) and print their training wall time. Choices are made on the
selection speakers only; report is for reporting. The runs are far apart in cost: see RESULTS.md, "LAION-CLAP's
trainer on the same real speech".
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 32
CLAP_SECONDS = 1.0


def run(cmd: list, log: Path) -> float:
    """Run cmd with its output appended to log; its wall time in seconds. A failure stops with one line."""
    start = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"{cmd[0]} ... {cmd[2] if len(cmd) > 2 else ''} failed (exit {rc}): see {log}")
    return time.time() - start


def subset(a) -> None:
    with open(Path(a.built) / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n = len(rows) if a.samples <= 0 else min(a.samples, len(rows))
    take = sorted(np.random.default_rng(a.seed).permutation(len(rows))[:n].tolist())
    Path(a.out).mkdir(parents=True, exist_ok=True)
    with open(Path(a.out) / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[i] for i in take)
    groups = {rows[i]["group"] for i in take}
    print(f"{n} of {len(rows)} training clips, {len(groups)} of {len({r['group'] for r in rows})} speakers "
          f"-> {Path(a.out) / 'train.csv'}")


def train_rows(out: str) -> int:
    path = Path(out) / "train.csv"
    if not path.is_file():
        sys.exit(f"{path}: no such file (run `clap_compare.py subset --out {out}` first)")
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def steps_of(a) -> int:
    return math.ceil(train_rows(a.out) * a.epochs / BATCH)


def save(out: str, name: str, result: dict) -> None:
    """Write OUT/result-NAME.json; a run reused (not trained now) keeps the wall time its first result had."""
    path = Path(out) / f"result-{name}.json"
    if result["train_wall_s"] is None and path.is_file():
        result["train_wall_s"] = json.loads(path.read_text()).get("train_wall_s")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


def clap(a) -> None:
    py, peer, out = Path(a.env) / "bin" / "python", HERE / "clap_peer.py", Path(a.out).resolve()
    if not py.is_file():
        sys.exit(f"{py}: no such interpreter (build it: bash tools/make_clap_env.sh {a.env})")
    max_len = int(CLAP_SECONDS * 48000)
    lr = f"{a.lr:.0e}".replace("e-0", "e-")
    name = f"{a.amodel.lower().replace('-', '')}-lr{lr}{f'-e{a.epochs}' if a.epochs != 1 else ''}-seed{a.seed}"
    log = out / "clap.log"
    data = out / "clap_data" / "bengali" / "train"
    if not (data / "sizes.json").is_file():
        run([py, peer, "shards", "--csv", out / "train.csv", "--out", data], log)
    ckpt = out / "clap_logs" / name / "checkpoints" / f"epoch_{a.epochs}.pt"
    wall = None
    if not ckpt.is_file():
        wall = run([py, peer, "train", "--max-len", max_len, "--", "--datasetpath", out / "clap_data",
                    "--datasetnames", "bengali", "--datasetinfos", "train", "--dataset-type", "webdataset",
                    "--amodel", a.amodel, "--tmodel", "transformer", "--precision", "fp32", "--batch-size", BATCH,
                    "--epochs", a.epochs, "--workers", 1, "--warmup", max(1, steps_of(a) // 10), "--lr", a.lr,
                    "--wd", 0.2, "--report-to", "", "--logs", out / "clap_logs", "--name", name, "--seed", a.seed,
                    "--no-eval", "--save-frequency", a.epochs], log)
    result = {"side": "laion_clap 1.1.7", "name": name, "samples_seen": steps_of(a) * BATCH, "train_wall_s": wall}
    for split in a.splits:
        js = out / f"{name}-{split}.json"
        if not js.is_file():
            run([py, peer, "zeroshot", "--ckpt", ckpt, "--amodel", a.amodel, "--csv",
                 Path(a.built) / f"{split}.csv",
                 "--classnames", Path(a.built) / "classnames.txt", "--templates", Path(a.built) / split /
                 "zeroshot_classification_templates.txt", "--max-len", max_len, "--out", js], log)
        result[split] = json.loads(js.read_text())["acc1"]
    save(a.out, name, result)


def align_side(a) -> None:
    out = Path(a.out).resolve()
    steps = steps_of(a)
    name = f"align-small-audio-text-e{a.epochs}-seed{a.seed}"
    run_dir, log = out / "align_runs" / name, out / "align.log"
    cli = [sys.executable, "-m", "align.cli"]
    over = [f"data.train={out / 'train.csv'}", f"output_dir={run_dir}", f"seed={a.seed}", "eval.tasks=[]",
            f"train.max_steps={steps}", f"data.shards_cache={out / 'align_shards'}"]
    if steps != 4800:
        over.append(f"train.warmup_steps={max(1, steps // 10)}")
    wall = None
    if not (run_dir / "summary.json").is_file():
        wall = run([*cli, "train", "small-audio-text", *over, *a.overrides], log)
    result = {"side": "align small-audio-text", "name": name, "samples_seen": steps * BATCH, "train_wall_s": wall,
              "overrides": over + a.overrides}
    for split in a.splits:
        js = out / f"{name}-{split}.json"
        run([*cli, "bench", "zeroshot", "--model", run_dir, "--dataset", Path(a.built) / split, "--modality",
             "audio", "--out", js, "--overwrite"], log)
        result[split] = next(v for k, v in flat(json.loads(js.read_text())).items() if k.endswith("acc1"))
    save(a.out, name, result)


def flat(d: dict, pre: str = "") -> dict:
    got = {}
    for k, v in d.items():
        got.update(flat(v, f"{pre}{k}/") if isinstance(v, dict) else {f"{pre}{k}": v})
    return got


def table(a) -> None:
    print("| side | run | samples seen | train wall (s, shared machine) | selection acc1 | report acc1 |")
    print("|---|---|---|---|---|---|")
    for p in sorted(Path(a.out).glob("result-*.json")):
        r = json.loads(p.read_text())
        cells = [f"{100 * r[s]:.1f} %" if isinstance(r.get(s), float) else "-" for s in ("selection", "report")]
        wall = f"{r['train_wall_s']:.0f}" if r.get("train_wall_s") else "-"
        print(f"| {r['side']} | {r['name']} | {r['samples_seen']} | {wall} | {cells[0]} | {cells[1]} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    parsers = {"subset": sub.add_parser("subset", help="OUT/train.csv: a seeded draw of BUILT/train.csv"),
               "clap": sub.add_parser("clap", help="train and score LAION-CLAP's side on OUT/train.csv"),
               "align": sub.add_parser("align", help="train and score align's side on OUT/train.csv"),
               "table": sub.add_parser("table", help="the results under OUT as a Markdown table")}
    for name, q in parsers.items():
        q.add_argument("--out", required=True, help="folder of the subset, the runs and result-*.json")
        if name != "table":
            q.add_argument("--built", required=True, help="benchmarks/real_sets.py's output folder")
            q.add_argument("--seed", type=int, default=0, help="seeds the draw (subset) or the training run")
        if name in ("clap", "align"):
            q.add_argument("--epochs", type=int, default=1, help="passes over OUT/train.csv (samples seen: "
                                                                 "epochs x rows, batch 32)")
            q.add_argument("--splits", nargs="+", default=["selection", "report"], help="BUILT's splits scored")
    parsers["subset"].add_argument("--samples", type=int, default=1280, help="rows drawn (0: all)")
    parsers["clap"].add_argument("--env", default=".clap_env", help="tools/make_clap_env.sh's venv")
    parsers["clap"].add_argument("--amodel", default="PANN-6", help="laion_clap model config (audio model)")
    parsers["clap"].add_argument("--lr", type=float, default=5e-4)
    parsers["align"].add_argument("overrides", nargs="*", help="recipe overrides (key=value)")
    a = ap.parse_args(argv)
    if getattr(a, "built", None) and not (Path(a.built) / "train.csv").is_file():
        ap.error(f"--built {a.built}: no train.csv there (build it with benchmarks/real_sets.py)")
    {"subset": subset, "clap": clap, "align": align_side, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
