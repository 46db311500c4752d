"""Probe runners through a suite: linear probe, fusion probe and the CCA reference row."""
import json
import os

import numpy as np

from align.bench import BENCHMARKS
from align.bench.probes import linear_probe
from align.bench.suite import run_suite
from tests.bench.conftest import FakeModel, classification_wds

SUITE = """
- {dataset: test, train_dataset: train, type: wds, train_type: wds, task: linear_probe, modality: image}
- {dataset: test, train_dataset: train, type: wds, train_type: wds, task: fusion_probe, modalities: [image, audio],
   methods: [concat]}
- {dataset: test, train_dataset: train, type: wds, train_type: wds, task: cca_retrieval, query: audio,
   gallery: image, n_components: 4}
"""


def test_probe_runners(tmp_path):
    assert {"linear_probe", "fusion_probe", "cca_retrieval"} <= set(BENCHMARKS.names())
    classification_wds(tmp_path / "train", n=60, n_classes=3, seed=1, audio=True)
    classification_wds(tmp_path / "test", n=30, n_classes=3, seed=2, audio=True)
    (tmp_path / "suite.yaml").write_text(SUITE)
    model = FakeModel(name="fake")
    results = run_suite(str(tmp_path / "suite.yaml"), [model], str(tmp_path / "out"), progress=False)
    by_task = {r["task"]: r for r in results}
    lp = by_task["linear_probe"]["metrics"]
    assert 0.0 <= lp["acc1"] <= 1.0 and lp["best_C"] > 0
    fp = by_task["fusion_probe"]["metrics"]
    assert {"image/acc1", "audio/acc1", "image+audio (concat)/acc1"} <= set(fp)
    cca = by_task["cca_retrieval"]["metrics"]
    assert {"image_retrieval_recall@1", "audio_retrieval_recall@10"} <= set(cca)
    assert all(os.path.isfile(p) for p in [tmp_path / "out" / "results.csv", tmp_path / "out" / "results.md"])


def test_linear_probe_runner_equals_direct_call(tmp_path):
    """The runner's acc1 equals linear_probe on the same embeddings computed by hand."""
    from align.bench.datasets import open_wds
    from align.bench.embed import embed_dataset
    classification_wds(tmp_path / "train", n=60, n_classes=3, seed=1)
    classification_wds(tmp_path / "test", n=30, n_classes=3, seed=2)
    model = FakeModel(name="fake")
    tr, te = open_wds(str(tmp_path / "train")), open_wds(str(tmp_path / "test"))
    etr, ete = embed_dataset(model, tr, "image", progress=False), embed_dataset(model, te, "image", progress=False)
    ref = linear_probe(etr.vectors, tr.labels[etr.ids], ete.vectors, te.labels[ete.ids], progress=False)
    got = BENCHMARKS.get("linear_probe")(model, {"modality": "image"}, dataset=te, train_dataset=tr,
                                         progress=False)
    assert np.isclose(got["metrics"]["acc1"], ref["acc1"]) and np.isclose(got["metrics"]["best_C"], ref["best_C"])


def _embeddings(model, ds, mods):
    """Per-modality embeddings of the items that have all `mods`, in item order, with labels."""
    from align.bench.embed import embed_dataset
    embs = {m: embed_dataset(model, ds, m, progress=False) for m in mods}
    common = sorted(set.intersection(*(set(int(i) for i in e.ids) for e in embs.values())))
    out = {}
    for m, e in embs.items():
        row = {int(i): r for r, i in enumerate(e.ids)}
        out[m] = e.vectors[[row[i] for i in common]]
    return out, ds.labels[common]


def test_fusion_and_cca_runners_equal_direct_calls(tmp_path):
    """The suite runners of fusion_probe and cca_retrieval report exactly what the probe functions give on
    embeddings computed here (so they pair the right rows and pass the right options)."""
    from align.bench.datasets import open_wds
    from align.bench.probes import cca_retrieval, fusion_report
    classification_wds(tmp_path / "train", n=60, n_classes=3, seed=1, audio=True)
    classification_wds(tmp_path / "test", n=30, n_classes=3, seed=2, audio=True)
    model = FakeModel(name="fake")
    tr, te = open_wds(str(tmp_path / "train")), open_wds(str(tmp_path / "test"))
    etr, ytr = _embeddings(model, tr, ["image", "audio"])
    ete, yte = _embeddings(model, te, ["image", "audio"])

    rows = fusion_report(etr, ytr, ete, yte, methods=["concat"], progress=False, seed=0)
    got = BENCHMARKS.get("fusion_probe")(model, {"modalities": ["image", "audio"], "methods": ["concat"]},
                                         dataset=te, train_dataset=tr, progress=False)["metrics"]
    assert got == {f"{r['row']}/acc1": r["acc1"] for r in rows}

    ref = cca_retrieval(etr["audio"], etr["image"], ete["audio"], ete["image"], n_components=4,
                        name_a="audio", name_b="image")
    got = BENCHMARKS.get("cca_retrieval")(model, {"query": "audio", "gallery": "image", "n_components": 4},
                                          dataset=te, train_dataset=tr, progress=False)["metrics"]
    recalls = [k for k in ref if "_recall@" in k]
    assert len(recalls) == 6 and {k: got[k] for k in recalls} == {k: ref[k] for k in recalls}
    assert got["mean_canonical_corr"] == ref["mean_canonical_corr"]


def _colour_folders(root, split, classes, n, rng):
    """An image folder whose classes are solid colours with noise: linearly separable for FakeModel."""
    from PIL import Image
    colour = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fish": (0, 0, 255)}
    for c in classes:
        os.makedirs(root / split / c)
        for j in range(n):
            a = np.array(colour[c])[None, None] * 0.8 + rng.integers(0, 50, (8, 8, 3))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / split / c / f"{j}.png")


def test_probes_match_the_test_classes_to_the_train_classes_by_name(tmp_path):
    """val/ lacks train/'s 'dog' folder, so its 'fish' is label 1 there and 2 in train/. Before: labels were matched
    by number (val fish scored as train dog): acc1 0.5 on colours any probe separates; now 1.0. A val class train/
    lacks is one line naming it."""
    import pytest
    from align.bench.datasets import open_imagefolder
    from align.errors import DataError
    rng = np.random.default_rng(0)
    _colour_folders(tmp_path, "train", ["cat", "dog", "fish"], 6, rng)
    _colour_folders(tmp_path, "val", ["cat", "fish"], 4, rng)
    tr, va = open_imagefolder(str(tmp_path / "train")), open_imagefolder(str(tmp_path / "val"))
    model = FakeModel(name="fake")
    lp = BENCHMARKS.get("linear_probe")(model, {"modality": "image"}, dataset=va, train_dataset=tr, progress=False)
    fp = BENCHMARKS.get("fusion_probe")(model, {"modalities": ["image"], "methods": ["concat"]}, dataset=va,
                                        train_dataset=tr, progress=False)
    assert lp["metrics"]["acc1"] == 1.0 and fp["metrics"]["image/acc1"] == 1.0
    _colour_folders(tmp_path, "train2", ["cat", "dog"], 2, rng)
    with pytest.raises(DataError, match=r"val': class 'fish' \(label 1\) is not a class of the train dataset "
                                        r".*train2' \(2 classes: cat, dog\)"):
        BENCHMARKS.get("linear_probe")(model, {"modality": "image"}, dataset=va,
                                       train_dataset=open_imagefolder(str(tmp_path / "train2")), progress=False)
