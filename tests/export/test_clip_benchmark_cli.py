"""CLIP_benchmark's CLI, run as a subprocess on an exported model, gives align's own benchmark numbers.

A tiny model is trained a few steps, exported in open_clip format, and evaluated by
`clip_benchmark eval --model local-dir:DIR --pretrained ''` on CLIP_benchmark-layout
webdatasets (zero-shot classification and retrieval); align's `zeroshot_classification`
and `retrieval` score the trained run on the same folders. Metrics must agree within 1e-6.

The CLI goes through tools/clip_benchmark_compat.py, which only fixes CLIP_benchmark 1.6.2's
`float(ndarray)` call that numpy >= 2.4 rejects (see that file) and then calls the CLI's main().
`--no_amp`: on CPU, CLIP_benchmark's default autocast would run the model in bfloat16.
One CLI call runs both tasks (`--task auto`): CLIP_benchmark picks zeroshot_retrieval for a
dataset named flickr8k and zeroshot_classification otherwise; importing it costs ~10 s of CPU.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import align
from align.bench.datasets import open_dataset
from align.bench.retrieval import retrieval
from align.bench.zeroshot import zeroshot_classification
from align.config import parse_recipe
from align.export import export
from align.train.loop import train
from tests.bench.conftest import classification_wds, retrieval_wds

COMPAT = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "clip_benchmark_compat.py")

pytest.importorskip("clip_benchmark")


@pytest.mark.slow
def test_clip_benchmark_cli_matches_align(tmp_path, tiny_recipe):
    threads = torch.get_num_threads()
    try:
        train(parse_recipe(dict(tiny_recipe, train=dict(tiny_recipe["train"], max_steps=4))), progress=False)
    finally:
        torch.set_num_threads(threads)
    run = tiny_recipe["output_dir"]
    out = str(tmp_path / "export")
    export(run, out, fmt="open_clip", progress=False)

    root = tmp_path / "ds"
    classification_wds(root / "cls", n=40, n_classes=6, per_shard=16)
    retrieval_wds(root / "flickr8k", n=24, caps=(1, 3), per_shard=10)
    cmd = [sys.executable, COMPAT, "eval", "--model", f"local-dir:{out}", "--pretrained", "",
           "--dataset", "wds/cls", "wds/flickr8k", "--dataset_root", str(root / "{dataset}"),
           "--task", "auto", "--recall_k", "1", "5", "10", "--no_amp", "--num_workers", "0",
           "--batch_size", "16", "--output", str(tmp_path / "{dataset}_{task}.json"), "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    cls = json.load(open(tmp_path / "cls_zeroshot_classification.json"))
    ret = json.load(open(tmp_path / "flickr8k_zeroshot_retrieval.json"))
    assert cls["model"] == f"local-dir:{out}" and ret["task"] == "zeroshot_retrieval"

    model = align.load(run)       # align's side: the trained run itself, not the export
    ours = zeroshot_classification(model, open_dataset(str(root / "cls"), "wds"), progress=False)["metrics"]
    assert set(ours) == set(cls["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    for k, v in cls["metrics"].items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    assert 0 < cls["metrics"]["acc1"] < 1 and cls["metrics"]["acc5"] < 1     # non-degenerate

    ours = retrieval(model, open_dataset(str(root / "flickr8k"), "wds"), ks=(1, 5, 10), progress=False)["metrics"]
    assert set(ours) == set(ret["metrics"]) and len(ours) == 6
    for k, v in ret["metrics"].items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    assert ret["metrics"]["image_retrieval_recall@1"] < ret["metrics"]["image_retrieval_recall@10"] < 1
