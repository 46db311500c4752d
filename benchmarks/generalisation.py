"""Generalisation to a speaker never heard: spoken digits by eSpeak NG and flite voices, one flite voice held out.

    python benchmarks/generalisation.py [--heldout slt | --heldout all] [--flite awb rms kal] [--per-voice 150]
                                        [--steps N] [--out /tmp/align_generalisation] [override ...]

flite (Debian's `flite` package) speaks with voices built from recordings of real people (awb, rms, slt
at 16 kHz; kal at 8 kHz, which also exercises the front end's resampling).  eSpeak NG's voices are all
formant synthesis.  The training set has every digit name (zero .. nine) spoken by the demo's training
eSpeak voices and by the `--flite` voices, each at several speaking rates, with free-form captions
("someone saying seven.", "the spoken number 7.", ...).  `recipes/small-audio-text.yaml` is trained on it
(overrides after the options are passed to the recipe), then scored zero-shot (CLIP_benchmark layout) on

    seen     new renditions (other rates) by the training voices
    heldout  every digit by the `--heldout` flite voice, at several rates: never heard in training

and prints one row per held-out voice plus a JSON summary (goal: heldout acc1 >= 90 %).  `--heldout all`
leaves each flite voice out in turn (four runs); slt is the only female flite voice, so holding it out
asks the model for a voice higher than any real voice it trained on.  flite is installed with
apt-get when it is missing and this runs as root; otherwise the script stops with one line saying how.
The default test suite never needs flite.

On real sets built by `benchmarks/real_sets.py` (people's scans or voices, split by writer / speaker into
train / selection / report groups; the split is in BUILT/split.json and printed):

    python benchmarks/generalisation.py --built BUILT --recipe small-image-text [--seeds 0 1]
                                        [--variants default noaug] [--out DIR] [override ...]

trains RECIPE (a shipped recipe's name, e.g. small-image-text-lit for the locked pretrained text tower, or a
recipe file) on BUILT/train once per seed and variant (`default`: the recipe as shipped; `noaug`: the same
with data.augment=null; a finished run dir under --out/NAME is reused, NAME the recipe file's stem) and prints
zero-shot acc1 on the selection groups and on the report groups, one row per run, then each variant's mean
and seed spread (max - min). Choose by the selection column only; the report column is for reporting.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from align.demo.data import CLASSNAMES

CAPTIONS = ["someone saying {word}.", "the spoken number {num}.", "a recording of the word {word}.",
            "a voice says {word}.", "{word}, spoken aloud.", "the digit {num}, said out loud."]
TEMPLATES = ["a recording of someone saying {c}.", "the spoken word {c}.", "a voice saying the number {c}."]
ESPEAK_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en+m1", "en-us+f1", "en-gb-x-rp+f2",
                 "en+klatt"]
STRETCH = (0.8, 1.25)          # flite duration_stretch (slower .. faster speech)


def ensure_flite() -> str:
    path = shutil.which("flite")
    if path:
        return path
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print("flite is missing: apt-get install -y flite ...", flush=True)
        r = subprocess.run(["apt-get", "install", "-y", "flite"], capture_output=True, text=True)
        if r.returncode == 0 and shutil.which("flite"):
            return shutil.which("flite")
    sys.exit("generalisation.py needs the flite speech synthesiser: install it with "
             "`sudo apt-get install -y flite` (Debian/Ubuntu) and run again")


def flite_say(flite: str, text: str, voice: str, stretch: float) -> tuple:
    """(float32 wave, sample_rate) of `text` spoken by a flite voice."""
    import soundfile as sf
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([flite, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", text,
                        "-o", f.name], check=True, capture_output=True)
        wave, sr = sf.read(f.name, dtype="float32")
    return wave, int(sr)


def espeak_say(text: str, voice: str, rate: int, pitch: int, seed: int) -> tuple:
    from align.demo.espeak import synthesize
    return synthesize(text, voice=voice, rate=rate, pitch=pitch, sample_rate=16000, seed=seed)


def shards(directory: str, name=lambda i: f"{i}.tar"):
    """align's numbered shard writer (256 samples per tar) into a new directory."""
    from align.wds.writer import NumberedShards
    os.makedirs(directory, exist_ok=True)
    return NumberedShards(directory, name, 256)


def add(w, key: str, wave, sr: int, caption: str, label: int) -> None:
    """One spoken digit: flac + caption + class label."""
    from align.media.audio import encode_flac
    w.write(key, {"cls": str(label), "flac": encode_flac(wave, sr), "txt": caption})


def build(out: str, flite: str, train_flite, heldout: str, per_voice: int, seed: int) -> dict:
    from tqdm.auto import tqdm
    rng = np.random.default_rng(seed)
    train_w = shards(os.path.join(out, "train"), name=lambda i: f"train-{i:06d}.tar")
    seen_w, held_w = shards(os.path.join(out, "seen", "test")), shards(os.path.join(out, "heldout", "test"))
    jobs = []   # (split, engine, voice)
    for v in ESPEAK_VOICES:
        jobs += [("train", "espeak", v)] * per_voice + [("seen", "espeak", v)] * max(1, per_voice // 5)
    for v in train_flite:
        jobs += [("train", "flite", v)] * per_voice + [("seen", "flite", v)] * max(1, per_voice // 5)
    jobs += [("heldout", "flite", heldout)] * per_voice
    train_rows = []
    for i, (split, engine, voice) in enumerate(tqdm(jobs, desc="synthesising", unit="clip")):
        label = int(rng.integers(10))
        word = CLASSNAMES[label]
        if engine == "flite":
            wave, sr = flite_say(flite, word, voice, float(rng.uniform(*STRETCH)))
        else:
            wave, sr = espeak_say(word, voice, int(rng.integers(130, 211)), int(rng.integers(30, 71)), i)
        caption = CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(word=word, num=label)
        row = (f"{engine}-{voice.replace('+', '_')}-{i:05d}", wave, sr, caption, label)
        if split == "train":
            train_rows.append(row)
        else:
            add(seen_w if split == "seen" else held_w, *row)
    for j in rng.permutation(len(train_rows)):      # shuffled so every shard mixes voices
        add(train_w, *train_rows[j])
    for w in (train_w, seen_w, held_w):
        w.close()
    from align.data.write.eval_sets import write_clip_benchmark_meta   # CLIP_benchmark's "wds/" layout
    for split, w in (("seen", seen_w), ("heldout", held_w)):
        write_clip_benchmark_meta(Path(out) / split, len(w.names), CLASSNAMES, TEMPLATES)
    return {"train": sum(train_w.sizes), "seen": sum(seen_w.sizes), "heldout": sum(held_w.sizes),
            "train_pattern": os.path.join(out, "train", f"train-{{000000..{len(train_w.names) - 1:06d}}}.tar")}


FLITE_VOICES = ["awb", "rms", "slt", "kal"]


def run_one(a, flite: str, heldout: str, train_flite) -> dict:
    """Build the data with `heldout` left out, train small-audio-text, score seen and held-out voices."""
    import align
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    from align.train.evaluate import evaluate_model
    from align.train.loop import train
    out = os.path.join(a.out, f"heldout-{heldout}")
    t0 = time.perf_counter()
    data_dir = os.path.join(out, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    counts = build(data_dir, flite, train_flite, heldout, a.per_voice, a.seed)
    t_data = time.perf_counter() - t0
    run_dir = os.path.join(out, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe = load_recipe(resolve_recipe("small-audio-text"), [
        f"data.train={counts['train_pattern']}", f"output_dir={run_dir}",
        *([f"train.max_steps={a.steps}"] if a.steps else []),
        f"seed={a.seed}", "resume=none", "eval.tasks=[]", *a.overrides])
    t1 = time.perf_counter()
    summary = train(recipe, progress=True)
    t_train = time.perf_counter() - t1
    model = align.load(run_dir)
    result = {"heldout_voice": heldout, "train_flite": list(train_flite), "train_espeak": ESPEAK_VOICES,
              "counts": counts, "steps": recipe.train.max_steps, "data_s": round(t_data, 1),
              "train_s": round(t_train, 1), "train_samples_per_s": round(summary.get("samples_per_s", 0), 1),
              "overrides": a.overrides}
    for split in ("seen", "heldout"):
        acc = evaluate_model(model, os.path.join(data_dir, split), tasks=("zeroshot",)).get("audio/zeroshot/acc1")
        result[f"acc1_{split}"] = round(acc, 4)
    return result


VARIANTS = {"default": [], "noaug": ["data.augment=null"]}


def recipe_name(recipe: str) -> str:
    """Run-folder / result-file name of a recipe given by name or path: `recipes/x.yaml` -> `x`."""
    return Path(recipe).name[:-5] if recipe.endswith(".yaml") else Path(recipe).name


def run_built(a) -> dict:
    """Train a.recipe on a.built/train per seed x variant; score a.built/selection and a.built/report."""
    import align
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    from align.train.evaluate import evaluate_model
    from align.train.loop import train
    split = json.loads((Path(a.built) / "split.json").read_text())
    print(f"groups (seed {split['seed']}): " + ", ".join(f"{k} {v}" for k, v in split["n_groups"].items())
          + "; samples: " + ", ".join(f"{k} {v}" for k, v in split["samples"].items()))
    rows, name = [], recipe_name(a.recipe)
    for variant in a.variants:
        for seed in a.seeds:
            run_dir = os.path.join(a.out, name, f"{variant}-seed{seed}")
            overrides = [f"data.train={os.path.join(a.built, 'train')}", f"output_dir={run_dir}", f"seed={seed}",
                         "eval.tasks=[]", *([f"train.max_steps={a.steps}"] if a.steps else []),
                         *VARIANTS[variant], *a.overrides]
            if not os.path.exists(os.path.join(run_dir, "summary.json")):     # a finished run is reused, an
                train(load_recipe(resolve_recipe(a.recipe), [*overrides, "resume=auto"]), progress=True)  # interrupted one continued
            model, row = align.load(run_dir), {"variant": variant, "seed": seed, "run_dir": run_dir}
            for part in ("selection", "report"):
                res = evaluate_model(model, os.path.join(a.built, part), tasks=("zeroshot",))
                row[part] = round(next(v for k, v in res.items() if k.endswith("zeroshot/acc1")), 4)
            rows.append(row)
            print(f"{name} {variant:8s} seed {seed}: selection acc1 {100 * row['selection']:5.1f} %  "
                  f"report acc1 {100 * row['report']:5.1f} %", flush=True)
    means = {}
    for variant in a.variants:
        got = [r for r in rows if r["variant"] == variant]
        means[variant] = {p: {"mean": round(float(np.mean([r[p] for r in got])), 4),
                              "spread": round(float(np.ptp([r[p] for r in got])), 4)} for p in ("selection", "report")}
        m = means[variant]
        print(f"{name} {variant:8s} over seeds {a.seeds}: selection {100 * m['selection']['mean']:.1f} % "
              f"(spread {100 * m['selection']['spread']:.1f}), report {100 * m['report']['mean']:.1f} % "
              f"(spread {100 * m['report']['spread']:.1f})")
    summary = {"built": os.path.abspath(a.built), "recipe": a.recipe, "split": {k: split[k] for k in
               ("seed", "fracs", "n_groups", "samples")}, "rows": rows, "means": means}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"result-{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--built", default=None, help="a real set from benchmarks/real_sets.py (train/ selection/ "
                    "report/ split.json): train --recipe on it and score the selection and report groups")
    ap.add_argument("--recipe", default="small-audio-text", help="recipe for --built (default small-audio-text)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds for --built (default 0 1)")
    ap.add_argument("--variants", nargs="+", default=["default", "noaug"], choices=sorted(VARIANTS),
                    help="for --built: default (recipe as shipped) and/or noaug (data.augment=null)")
    ap.add_argument("--heldout", nargs="+", default=["slt"],
                    help="flite voice(s) to hold out, one training run each (default slt; `all`: every voice "
                         "in turn, trained on the other three)")
    ap.add_argument("--flite", nargs="+", default=None,
                    help="flite voices to train on (default: every flite voice but the held-out one)")
    ap.add_argument("--per-voice", type=int, default=150, help="training clips per voice")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's max_steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "align_generalisation"))
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.batch_size=64")
    a = ap.parse_args(argv)
    if a.built and not os.path.isfile(os.path.join(a.built, "split.json")):
        ap.error(f"--built {a.built}: no split.json there (build the set first with benchmarks/real_sets.py)")
    if a.built:
        print(json.dumps(run_built(a)))
        return
    heldouts = FLITE_VOICES if a.heldout == ["all"] else a.heldout
    for h in heldouts:
        if h not in FLITE_VOICES:
            sys.exit(f"--heldout {h}: not a flite voice ({', '.join(FLITE_VOICES)})")
        if a.flite and h in a.flite:
            sys.exit(f"--heldout {h} is also in --flite; a held-out voice must not be trained on")
    flite = ensure_flite()
    rows = [run_one(a, flite, h, a.flite or [v for v in FLITE_VOICES if v != h]) for h in heldouts]
    print(f"{'held-out voice':15s} {'trained on (flite + 8 eSpeak)':30s} {'seen acc1':>10s} {'held-out acc1':>14s}")
    for r in rows:
        print(f"{r['heldout_voice']:15s} {' '.join(r['train_flite']):30s} {100 * r['acc1_seen']:9.1f}% "
              f"{100 * r['acc1_heldout']:13.1f}%")
    mean = sum(r["acc1_heldout"] for r in rows) / len(rows)
    print(f"held-out voices: mean zero-shot acc1 {100 * mean:.1f} % over {len(rows)} voice(s) (goal >= 90 %)")
    summary = {"rows": rows, "mean_acc1_heldout": round(mean, 4)}
    print(json.dumps(summary))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
