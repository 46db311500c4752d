"""Suite runners for the embedding probes: "linear_probe", "fusion_probe", "cca_retrieval".

They embed a labelled `train_dataset` and the evaluated `dataset` with the model (cached like
every other task), then hand the arrays to `align.bench.probes`:

    - {dataset: val/, train_dataset: train/, type: wds, task: linear_probe, modality: image}
    - {dataset: val/, train_dataset: train/, type: wds, task: fusion_probe, modalities: [image, audio]}
    - {dataset: val/, train_dataset: train/, type: wds, task: cca_retrieval, query: audio, gallery: image}

`cca_retrieval` fits classic CCA on the train split's paired embeddings of two modalities and
scores retrieval on the evaluated split: a linear-alignment reference row beside the model's own
retrieval numbers.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from align.bench import BENCHMARKS
from align.bench.embed import embed_dataset
from align.bench.probes import FUSION_METHODS, cca_retrieval, fusion_report, linear_probe
from align.bench.report import make_result
from align.errors import DataError


def _per_item(model, ds, modality: str, ctx: dict) -> Dict[int, np.ndarray]:
    """item index -> one embedding (text: the item's first caption)."""
    emb = embed_dataset(model, ds, modality, **_embed_kw(ctx))
    out: Dict[int, np.ndarray] = {}
    for vec, i in zip(emb.vectors, emb.ids):
        out.setdefault(int(i), vec)
    return out


def _embed_kw(ctx: dict) -> dict:
    keys = ("cache_dir", "batch_size", "device", "num_workers", "progress", "precision")
    return {k: ctx[k] for k in keys if k in ctx}


def _aligned(model, ds, modalities: Sequence[str], ctx: dict, need_label: bool = True):
    """Items having every modality (and a label): ({modality: [N, D]}, labels [N])."""
    per = {m: _per_item(model, ds, m, ctx) for m in modalities}
    labels = ds.labels
    keep = sorted(set.intersection(*(set(p) for p in per.values())))
    if need_label:
        keep = [i for i in keep if labels[i] >= 0]
    if not keep:
        raise DataError(f"dataset {ds.name!r}: no item has {' + '.join(modalities)}"
                        + (" and a label" if need_label else ""))
    return {m: np.stack([per[m][i] for i in keep]) for m in modalities}, labels[keep]


def _train_labels(train_ds, test_ds, yte: np.ndarray) -> np.ndarray:
    """The test split's labels in the train split's numbering, matched by class name (trimmed, lower case) when
    both datasets name their classes: two image folders with different class folders (val/ lacking one of
    train/'s) number the same class differently. Labels stay as they are when either has no class names."""
    tn, sn = train_ds.classnames, test_ds.classnames
    if not tn or not sn or list(tn) == list(sn):
        return yte
    index: Dict[str, int] = {}
    for i, name in enumerate(tn):
        index.setdefault(str(name).strip().lower(), i)
    out = np.empty_like(yte)
    for j, label in enumerate(yte):
        name = sn[label] if 0 <= label < len(sn) else None
        if name is None or str(name).strip().lower() not in index:
            raise DataError(f"dataset {test_ds.path!r}: class {name!r} (label {int(label)}) is not a class of the "
                            f"train dataset {train_ds.path!r} ({len(tn)} classes: {', '.join(map(str, tn[:5]))}"
                            f"{', ...' if len(tn) > 5 else ''})")
        out[j] = index[str(name).strip().lower()]
    return out


def _numeric(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float, np.floating, np.integer))
            and not isinstance(v, bool)}


@BENCHMARKS.register("linear_probe")
def run_linear_probe(model, entry: dict, *, dataset, train_dataset, **ctx) -> dict:
    m = entry.get("modality", "image")
    tr, ytr = _aligned(model, train_dataset, [m], ctx)
    te, yte = _aligned(model, dataset, [m], ctx)
    yte = _train_labels(train_dataset, dataset, yte)
    res = linear_probe(tr[m], ytr, te[m], yte, seed=entry.get("seed", 0), progress=ctx.get("progress", True))
    keep = {k: res[k] for k in ("acc1", "acc5", "mean_per_class_recall", "best_C") if k in res}
    return make_result(dataset=dataset.name, model=model, task="linear_probe", metrics=_numeric(keep),
                       pretrained=ctx.get("pretrained"), modality=m, n={"train": len(ytr), "test": len(yte)})


run_linear_probe.entry_keys = {"modality", "train_dataset", "seed"}


def _fusion_params(entry: dict) -> Tuple[List[str], List[str]]:
    """A fusion_probe entry's modalities and fusion methods (defaults: image + audio, every method)."""
    return list(entry.get("modalities", ["image", "audio"])), list(entry.get("methods", FUSION_METHODS))


@BENCHMARKS.register("fusion_probe")
def run_fusion_probe(model, entry: dict, *, dataset, train_dataset, **ctx) -> dict:
    mods, methods = _fusion_params(entry)
    tr, ytr = _aligned(model, train_dataset, mods, ctx)
    te, yte = _aligned(model, dataset, mods, ctx)
    yte = _train_labels(train_dataset, dataset, yte)
    rows = fusion_report(tr, ytr, te, yte, methods=methods, progress=ctx.get("progress", True),
                         seed=entry.get("seed", 0))
    metrics = {}
    for row in rows:   # one row per single modality and per fusion method
        metrics[f"{row['row']}/acc1"] = float(row["acc1"])
    return make_result(dataset=dataset.name, model=model, task="fusion_probe", metrics=metrics,
                       pretrained=ctx.get("pretrained"), modalities=mods)


run_fusion_probe.entry_keys = {"modalities", "methods", "train_dataset", "seed"}


@BENCHMARKS.register("cca_retrieval")
def run_cca_retrieval(model, entry: dict, *, dataset, train_dataset, **ctx) -> dict:
    q, g = entry.get("query", "audio"), entry.get("gallery", "image")
    tr, _ = _aligned(model, train_dataset, [q, g], ctx, need_label=False)
    te, _ = _aligned(model, dataset, [q, g], ctx, need_label=False)
    n = int(entry.get("n_components", min(tr[q].shape[1], tr[g].shape[1], len(tr[q]) - 1)))
    res = cca_retrieval(tr[q], tr[g], te[q], te[g], n_components=n, name_a=q, name_b=g)
    return make_result(dataset=dataset.name, model=model, task="cca_retrieval", metrics=_numeric(res),
                       pretrained=ctx.get("pretrained"), query=q, gallery=g, n_components=n)


run_cca_retrieval.entry_keys = {"query", "gallery", "n_components", "train_dataset"}

# Metric names a run of `entry` produces: config.py checks eval.best_metric with them.
run_linear_probe.metric_keys = lambda entry: ["acc1", "acc5", "mean_per_class_recall", "best_C"]
def _fusion_metric_keys(entry: dict) -> List[str]:
    mods, methods = _fusion_params(entry)      # rows of probes.fusion_report: each modality, then each method
    return [f"{row}/acc1" for row in [*mods, *(f"{'+'.join(mods)} ({m})" for m in methods)]]


run_fusion_probe.metric_keys = _fusion_metric_keys
run_cca_retrieval.metric_keys = lambda entry: [
    *(f"{m}_retrieval_recall@{k}" for k in (1, 5, 10)
      for m in (entry.get("gallery", "image"), entry.get("query", "audio"))),
    "mean_canonical_corr", "n_components", "reg", "n_train", "n_test"]
