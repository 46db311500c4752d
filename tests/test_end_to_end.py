"""End to end, small: demo shards -> train a tiny triple-tower model -> loss falls -> FAISS benchmarks.

The full `align demo` (about 1.5 minutes) is the slow test at the bottom (`pytest -m slow`).
"""
import json
import os

import pytest

from align.cli import main
from align.config import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [   # the demo's towers (recipes/demo.yaml), fewer and smaller steps at a higher lr (chance is 10 %: on 150
    # samples this ends at 87 % image, 96 % audio zero-shot acc1; 64 x 60 steps at lr 1e-3 took twice the time).
    # One torch thread, as the demo: two were at best 10 % faster, and up to 6x slower on 2 busy cores.
    "train.batch_size=32", "train.max_steps=60", "train.warmup_steps=5", "train.lr=2e-3", "train.log_every=5",
    "train.checkpoint_every=30", "train.num_threads=1", "data.num_workers=0", "data.shuffle_buffer=100",
    "data.augment=null",   # augmentation slows the first steps; its own tests: tests/data/stream/test_augment.py
]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from align.demo.data import build_demo
    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo(str(out), seed=0, limit=200, progress=False)     # 150 train, 50 val digits
    return str(out)


def test_train_then_benchmark(demo_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "demo", f"output_dir={run}", "resume=none", f"data.train={demo_data}/train",
            f"data.val={demo_data}/val", *TINY, "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-2:]) / 2
    assert last < 0.8 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert "image/zeroshot/acc1" in summary["metrics"] and "audio/zeroshot/acc1" in summary["metrics"]
    assert summary["metrics"]["image/zeroshot/acc1"] > 0.2          # chance is 0.1

    out = str(tmp_path / "zs.json")
    assert main(["bench", "zeroshot", "--model", run, "--dataset", f"{demo_data}/val", "--modality", "audio",
                 "--out", out]) == 0
    res = json.load(open(out))
    assert res["task"] == "zeroshot_classification" and set(res["metrics"]) >= {"acc1", "acc5",
                                                                                 "mean_per_class_recall"}
    out = str(tmp_path / "ret.json")
    assert main(["bench", "retrieval", "--model", run, "--dataset", f"{demo_data}/val", "--query", "text",
                 "--gallery", "image", "--out", out]) == 0
    res = json.load(open(out))
    assert "image_retrieval_recall@1" in res["metrics"] and "text_retrieval_recall@5" in res["metrics"]


@pytest.mark.parametrize("name,modalities", [("small-image-text", {"image", "text"}),
                                             ("small-audio-text", {"audio", "text"})])
def test_small_data_recipes_train_on_demo_data_with_data_train_alone(demo_data, tmp_path, monkeypatch, name,
                                                                      modalities):
    """Issue 11: the small-data recipes need nothing but data.train= (here capped at 2 steps of 16 for time)."""
    monkeypatch.chdir(tmp_path)                      # the recipe's own output_dir, runs/NAME, lands here
    assert main(["train", name, f"data.train={demo_data}/train", "train.max_steps=2", "train.batch_size=16",
                 "--no-progress"]) == 0
    run = tmp_path / "runs" / name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary["skipped"], summary     # skipped: {reason: count}
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows and all(r["loss"] == r["loss"] for r in rows)      # logged, and not NaN
    import align
    assert set(align.load(str(run)).modalities) == modalities
    r = load_recipe(os.path.join(ROOT, "recipes", f"{name}.yaml"))
    # Issue 20: a stage stays in a default only where it won on real unseen writers/speakers by more than the
    # seed spread (the headers' figures): it cost ~50 points on scans; on speech the mild stages won on both sets
    augment = {"small-image-text": None, "small-audio-text": {"audio": [
        {"type": "speed", "factor": [0.9, 1.1]}, {"type": "gain", "db": [-6, 6]},
        {"type": "spec_augment", "freq_masks": 2, "freq_width": 6, "time_masks": 2, "time_width": 8}]}}[name]
    assert r.data.augment == augment, r.data.augment
    # the text tower chosen on the selection speakers (header): the bag-of-words tower over the transformer
    if name == "small-audio-text":
        assert r.model.towers["text"] == {"type": "bow_text", "width": 64, "context_length": 24,
                                          "clean": "canonicalize"}, r.model.towers["text"]
    # the batch and steps chosen on the selection speakers / writers (headers): speech 32 x 4800, scans 64 x 1200
    assert (r.train.batch_size, r.train.max_steps) == {"small-image-text": (64, 1200),
                                                       "small-audio-text": (32, 4800)}[name]


@pytest.mark.slow
def test_full_demo(tmp_path):
    """The README's first command: trains the demo recipe and meets its accuracy targets."""
    from align.demo.run import run_demo
    out = run_demo(out=str(tmp_path / "demo"), progress=False)
    acc = {r["modality"]: r["metrics"]["acc1"] for r in out["results"] if r.get("modality")}
    assert acc["image"] >= 0.85 and acc["audio"] >= 0.85, acc
    # Held-out report groups (unseen voices, another rendering): the target is 90 %; the runs of the
    # recipe gave 91.0-97.1 % (RESULTS.md), so 88 % leaves room for run-to-run noise and still catches a regression.
    held = {r["modality"]: r["metrics"]["acc1"] for r in out["heldout"] if r.get("modality")}
    assert held["image"] >= 0.88 and held["audio"] >= 0.88, held
    import json
    assert json.load(open(tmp_path / "demo" / "report" / "timing.json")) == out["timing"]
    # its wall time is a benchmark figure (benchmarks/RESULTS.md), not a test
