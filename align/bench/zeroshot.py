"""Zero-shot classification (image or audio) with CLIP_benchmark's metric definitions.

Class vector c = mean over the class's prompts of the L2-normalised text
embeddings, renormalised (CLIP_benchmark `zero_shot_classifier`). Each sample's
top-k classes come from a FAISS inner-product search over the class vectors
[C, D]. Metrics (CLIP_benchmark `zeroshot_classification.evaluate`):
  acc1                   fraction of samples whose top-1 class is the label
  acc5                   fraction whose label is among the top 5 (only with >= 5 classes;
                         CLIP_benchmark writes NaN there, align leaves the key out)
  mean_per_class_recall  sklearn balanced_accuracy_score(label, top-1): the mean, over
                         classes present in the labels, of that class's top-1 recall
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from align.bench import BENCHMARKS
from align.bench.datasets import BenchDataset
from align.bench.embed import embed_dataset, embed_texts
from align.bench.index import (EXACT, build_index, describe_index, index_params_on, recall_against_exact, sample_rows,
                               search)
from align.bench.report import StageSeconds, make_result
from align.templates import BUILTIN_TEMPLATES, Templates, check_classnames, get_templates, prompts_for
from align.errors import ConfigError, DataError

DEFAULT_TEMPLATES = {"image": "openai_imagenet", "audio": "audio"}
# The result carries its [C, C] confusion counts up to this many classes (ImageNet's would be a million numbers).
MAX_CONFUSION_CLASSES = 100


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 [C, C] counts: row = the true class, column = the predicted (top-1) class. A prediction of -1 (an
    approximate index that found no class for the item) is in no column: it is left out (its row's sum falls short
    by it), never counted as class C-1 of the row above (nor a ValueError for a row-0 item)."""
    pred, labels = np.asarray(pred, np.int64), np.asarray(labels, np.int64)
    found = pred >= 0
    flat = labels[found] * n_classes + pred[found]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def zeroshot_metrics(topk_ids: np.ndarray, labels: np.ndarray, n_classes: int) -> Dict[str, float]:
    """topk_ids [N, k>=min(5,C)] predicted classes best first, labels [N] -> acc1, acc5, mean_per_class_recall."""
    labels = np.asarray(labels)
    pred = topk_ids[:, 0]
    out = {"acc1": float((pred == labels).mean())}
    if n_classes >= 5:
        out["acc5"] = float((topk_ids[:, :5] == labels[:, None]).any(axis=1).mean())
    # balanced accuracy: per-class recall over the classes that occur in labels, averaged
    recalls = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out


def class_vectors(model, classnames: List[str], templates: Templates, *, cache_dir: Optional[str] = None,
                  batch_size: int = 256, device=None, progress: bool = True,
                  precision: Optional[str] = None) -> np.ndarray:
    """[C, D] float32 zero-shot classifier: per class, mean of normalised prompt embeddings, renormalised."""
    per_class = [prompts_for(c, templates) for c in classnames]
    flat = [p for ps in per_class for p in ps]
    emb = torch.from_numpy(embed_texts(model, flat, cache_dir=cache_dir, batch_size=batch_size, device=device,
                                       progress=progress, desc="encode class prompts",
                                       precision=precision))                              # [P, D], normalised
    out, s = [], 0
    for ps in per_class:
        v = emb[s:s + len(ps)].mean(dim=0)      # [D]
        out.append(v / v.norm())
        s += len(ps)
    return torch.stack(out).numpy()             # [C, D]


def _resolve(dataset: BenchDataset, modality: str, classnames, templates):
    names = classnames if classnames is not None else dataset.classnames
    if isinstance(names, str):
        from align.templates import load_classnames

        names = load_classnames(names)
    if not names:
        raise DataError(f"dataset {dataset.path!r} has no class names: add classnames.txt or pass classnames")
    check_classnames(list(names), f"dataset {dataset.path!r}" if classnames is None else
                     f"classnames file {classnames!r}" if isinstance(classnames, str) else "classnames")
    if templates is None:
        templates = dataset.templates if dataset.templates is not None else DEFAULT_TEMPLATES[modality]
    name = templates if isinstance(templates, str) and templates in BUILTIN_TEMPLATES else None
    return list(names), get_templates(templates), name


def zeroshot_classification(model, dataset: BenchDataset, *, modality: str = "image", classnames=None,
                            templates=None, index: str = "flat", index_params: Optional[dict] = None,
                            cache_dir: Optional[str] = None, batch_size: int = 64, device=None,
                            num_workers: int = 0, recall_sample: int = 1000, progress: bool = True,
                            pretrained: Optional[str] = None, precision: Optional[str] = None,
                            figure: Optional[str] = None) -> dict:
    """Zero-shot classify `dataset`'s `modality` items; returns a CLIP_benchmark-shaped result dict.
    figure: a PNG path: the confusion matrix (align.bench.figures) drawn there from the top-1 classes."""
    if modality not in DEFAULT_TEMPLATES:
        raise ConfigError(f"zero-shot classification needs modality image or audio, got {modality!r}")
    names, tmpl, tmpl_name = _resolve(dataset, modality, classnames, templates)
    clock = StageSeconds()
    with clock(f"encode_{modality}"):
        emb = embed_dataset(model, dataset, modality, cache_dir=cache_dir, batch_size=batch_size, device=device,
                            num_workers=num_workers, progress=progress, precision=precision)
    labels = dataset.labels[emb.ids]                       # [N]
    keep = labels >= 0
    if not keep.any():
        raise DataError(f"dataset {dataset.path!r}: no {modality} item has a label")
    if labels.max() >= len(names):
        bad = int(np.flatnonzero(labels >= len(names))[0])
        raise DataError(f"dataset {dataset.path!r}: sample {dataset.items[emb.ids[bad]].key!r} has label "
                        f"{labels[bad]} but there are only {len(names)} class names")
    x, labels = emb.vectors[keep], labels[keep]            # [N, D], [N]
    with clock("encode_prompts"):
        classes = class_vectors(model, names, tmpl, cache_dir=cache_dir, device=device, progress=progress,
                                precision=precision)                                             # [C, D]
    k = min(5, len(names))
    with clock("index"):
        idx = build_index(index, classes, **index_params_on(index, index_params, device))
    with clock("search"):
        _, topk = search(idx, x, k)                        # [N, k] class ids, best first
    metrics = zeroshot_metrics(topk, labels, len(names))      # a -1 (no class found: ivf, hnsw) is a miss
    confusion = None
    if len(names) <= MAX_CONFUSION_CLASSES:     # which classes are taken for which: a report draws it (plots.py)
        confusion = {"classes": names, "counts": confusion_matrix(topk[:, 0], labels, len(names)).tolist()}
    info = {"type": index, "exact": index in EXACT, "params": describe_index(idx)}
    if index not in EXACT:
        rows = sample_rows(len(x), recall_sample)
        with clock("recall_vs_exact"):
            info[f"recall_vs_exact@{k}"] = recall_against_exact(idx, classes, x[rows], k)
    if figure:
        from align.bench.figures import confusion_view_of, drawn_or_said, write_confusion_figure
        drawn_or_said(figure, write_confusion_figure, confusion_view_of(topk[:, 0], labels, names), figure,
                      title=f"{dataset.name}: {modality} zero-shot")
    return make_result(
        dataset=dataset.name, model=model, task="zeroshot_classification", metrics=metrics, pretrained=pretrained,
        benchmark="zeroshot", modality=modality, index=info,
        n={"items": len(dataset), "scored": int(len(x)), "unlabelled": int((~keep).sum()), "classes": len(names),
           "templates": len(tmpl)},
        templates=tmpl_name, confusion=confusion, skipped={modality: emb.skipped}, errors=emb.errors or None,
        problems=dataset.problems or None, seconds=clock.seconds)


ENTRY_KEYS = {"modality", "classnames", "templates", "index", "index_params"}


@BENCHMARKS.register("zeroshot")
def run_zeroshot(model, entry: dict, *, dataset: BenchDataset, **ctx) -> dict:
    """Suite adapter: entry keys modality (image|audio), classnames, templates, index, index_params."""
    return zeroshot_classification(model, dataset, modality=entry.get("modality", "image"),
                                   classnames=entry.get("classnames"), templates=entry.get("templates"),
                                   index=entry.get("index", "flat"), index_params=entry.get("index_params"), **ctx)


run_zeroshot.entry_keys = ENTRY_KEYS
run_zeroshot.draws_figure = True        # takes figure= (a PNG path): `align bench suite` draws beside each JSON
# Metric names a run of `entry` produces (acc5 only with >= 5 classes): config.py checks eval.best_metric with them.
run_zeroshot.metric_keys = lambda entry: ["acc1", "acc5", "mean_per_class_recall"]
