"""Cross-modal retrieval recall@k on FAISS, with CLIP_benchmark's definitions.

Metric keys name the modality being RETRIEVED (the gallery), as CLIP_benchmark does:
  image_retrieval_recall@k  text -> image: every caption is a query; a hit when its own
                            item's image is in the top k
  text_retrieval_recall@k   image -> text: every image is a query; a hit when ANY of its
                            item's captions is in the top k
and likewise for other pairs: text -> audio = audio_retrieval_recall@k,
audio -> text = text_retrieval_recall@k, audio -> image = image_retrieval_recall@k,
image -> audio = audio_retrieval_recall@k. recall@k is the fraction of queries with a hit
(CLIP_benchmark: recall_at_k(...) > 0, averaged).

`retrieval` pairs rows by item (the dataset holds both modalities of each item).
`emergent_retrieval` needs no pairs: a hit is a retrieved item of the query's class
(labels matched by class name across two datasets, or by label within one).
Items that lack one of the two modalities are left out and counted.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from align.bench import BENCHMARKS
from align.bench.datasets import BenchDataset
from align.bench.embed import embed_dataset
from align.bench.figures import TOP_K, Side
from align.bench.index import (EXACT, build_index, describe_index, index_params_on, recall_against_exact, sample_rows,
                               search)
from align.bench.report import StageSeconds, make_result
from align.errors import ConfigError, DataError


def retrieval_hits(topk_ids: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray) -> np.ndarray:
    """bool [Q, k]: retrieved gallery row j (ids [Q, k], -1 = none) shares the query's group."""
    valid = topk_ids >= 0
    g = gallery_groups[np.where(valid, topk_ids, 0)]           # [Q, k]
    return valid & (g == np.asarray(query_groups)[:, None])


def recall_at_ks(topk_ids: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray,
                 ks: Sequence[int]) -> Dict[int, float]:
    """{k: fraction of queries with at least one same-group gallery row in their top k}."""
    hits = retrieval_hits(topk_ids, query_groups, gallery_groups)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def _direction(q_vecs, q_groups, g_vecs, g_groups, ks, index, index_params, recall_sample,
               clock: StageSeconds, where: str) -> Tuple[dict, dict, np.ndarray]:
    """Search queries [Q, D] against gallery [G, D]; returns ({k: recall}, index info, the top gallery rows
    [Q, min(max(ks), G)], best first). `where` ('text->image') names this direction's stages in clock."""
    with clock(f"index {where}"):
        idx = build_index(index, g_vecs, **(index_params or {}))
    kmax = max(ks)
    with clock(f"search {where}"):
        _, topk = search(idx, q_vecs, kmax)                     # [Q, min(kmax, G)]
    rec = recall_at_ks(topk, q_groups, g_groups, ks)
    info = {"params": describe_index(idx)}
    if index not in EXACT:
        rows = sample_rows(len(q_vecs), recall_sample)
        with clock(f"recall_vs_exact {where}"):
            info[f"recall_vs_exact@{kmax}"] = recall_against_exact(idx, g_vecs, q_vecs[rows], kmax)
    return rec, info, topk


def _encode(model, clock: StageSeconds, query, gallery, kw: dict):
    """Embeddings of the (dataset, modality) pairs query and gallery, each timed as encode_<modality>."""
    out = []
    for ds, mod in (query, gallery):
        with clock(f"encode_{mod}"):
            out.append(embed_dataset(model, ds, mod, **kw))
    return out


def _check_pair(query_modality: str, gallery_modality: str) -> None:
    if query_modality == gallery_modality:
        raise ConfigError(f"retrieval needs two different modalities, got {query_modality!r} twice")


def check_ks(ks) -> None:
    """ks: a non-empty list of positive integers (recall@k for each); else one line, not a TypeError from
    tuple(5) or a recall@0 of 0."""
    ok = isinstance(ks, (list, tuple)) and len(ks) > 0 and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)
    if not ok:
        raise ConfigError(f"'ks' must be a non-empty list of positive integers such as [1, 5, 10], got {ks!r}")


def _largest(pairs) -> tuple:
    """(rows, dim) of the largest gallery among pairs (the index's device must hold it)."""
    return max(len(p[4]) for p in pairs), pairs[0][4].shape[1]


def _score(pairs, ks, index, index_params, device, recall_sample, clock: StageSeconds):
    """pairs: [(query_mod, gallery_mod, q_vecs, q_groups, g_vecs, g_groups)] -> metrics, index info, counts, and
    the first pair's top gallery rows [Q, K] (its figure's). The index searches on `device` (the encoding's) when it
    can and the largest gallery fits (index_params_on)."""
    index_params = index_params_on(index, index_params, device, _largest(pairs))
    metrics, info, counts = {}, {"type": index, "exact": index in EXACT}, {}
    per_dir, first_top = {}, None
    for qm, gm, qv, qg, gv, gg in pairs:
        per_dir[(qm, gm)], info[f"{qm}->{gm}"], top = _direction(qv, qg, gv, gg, ks, index, index_params,
                                                                 recall_sample, clock, f"{qm}->{gm}")
        first_top = top if first_top is None else first_top
        counts[f"{qm}->{gm}"] = {"queries": int(len(qv)), "gallery": int(len(gv))}
    for k in ks:  # CLIP_benchmark's key order: per k, each direction
        for (qm, gm), rec in per_dir.items():
            metrics[f"{gm}_retrieval_recall@{k}"] = rec[k]
    return metrics, info, counts, first_top


def _figure(model, out_png: str, top: np.ndarray, pair: tuple, query: Side, gallery: Side, title: str,
            hit_means: str) -> None:
    """The retrieval figure (align.bench.figures) of the first direction `pair` from its search's top rows: the
    same hits the recall counted; only the shown items are loaded (within the model's media limits)."""
    from align.bench.embed import model_limits
    from align.bench.figures import drawn_or_said, retrieval_examples, write_retrieval_figure
    hits = retrieval_hits(top, pair[3], pair[5])                             # [Q, K]
    shown = retrieval_examples(top, hits)
    head = f"{title}: {pair[0]} -> {pair[1]}, {len(shown)} of {len(top)} queries (seeded) and their top {top.shape[1]}"
    drawn_or_said(out_png, write_retrieval_figure, shown, query, gallery, out_png, head, limits=model_limits(model),
                  hit_means=hit_means)


def retrieval(model, dataset: BenchDataset, *, query_modality: str = "text", gallery_modality: str = "image",
              ks: Sequence[int] = (1, 5, 10), both_directions: bool = True, index: str = "flat",
              index_params: Optional[dict] = None, cache_dir: Optional[str] = None, batch_size: int = 64,
              device=None, num_workers: int = 0, recall_sample: int = 1000, progress: bool = True,
              pretrained: Optional[str] = None, precision: Optional[str] = None,
              figure: Optional[str] = None) -> dict:
    """Paired retrieval query_modality -> gallery_modality (and back when both_directions). figure: a PNG path:
    a few queries and their top gallery items drawn there, marked right/wrong (align.bench.figures)."""
    _check_pair(query_modality, gallery_modality)
    check_ks(ks)
    kw = dict(cache_dir=cache_dir, batch_size=batch_size, device=device, num_workers=num_workers, progress=progress,
              precision=precision)
    clock = StageSeconds()
    q, g = _encode(model, clock, (dataset, query_modality), (dataset, gallery_modality), kw)
    common = np.intersect1d(q.ids, g.ids)                       # items that have both modalities
    if len(common) == 0:
        raise DataError(f"dataset {dataset.path!r}: no item has both {query_modality} and {gallery_modality}")
    qk, gk = np.isin(q.ids, common), np.isin(g.ids, common)
    a = (query_modality, gallery_modality, q.vectors[qk], q.ids[qk], g.vectors[gk], g.ids[gk])
    pairs = [a, (a[1], a[0], a[4], a[5], a[2], a[3])] if both_directions else [a]
    metrics, info, counts, top = _score(pairs, ks, index, index_params, device, recall_sample, clock)
    if figure:
        _figure(model, figure, top[:, :TOP_K], a, Side(dataset, query_modality, a[3]),
                Side(dataset, gallery_modality, a[5]), dataset.name, "the query's own item")
    n_items = {m: int(len(np.unique(e.ids))) for m, e in ((query_modality, q), (gallery_modality, g))}
    return make_result(
        dataset=dataset.name, model=model, task="zeroshot_retrieval", metrics=metrics, pretrained=pretrained,
        benchmark="retrieval", modalities=[query_modality, gallery_modality], index=info,
        n={"items": len(dataset), "paired_items": int(len(common)), "items_with": n_items, **counts},
        skipped={query_modality: q.skipped, gallery_modality: g.skipped},
        errors=(q.errors + g.errors) or None, problems=dataset.problems or None, seconds=clock.seconds)


def _class_groups(ds: BenchDataset, labels: np.ndarray, by_name: bool, vocab: dict) -> np.ndarray:
    """Per-row group id: the label itself, or an id of the normalised class name (shared vocab)."""
    if not by_name:
        return labels
    names = ds.classnames
    if labels.max(initial=-1) >= len(names):
        raise DataError(f"dataset {ds.path!r}: label {labels.max()} but only {len(names)} class names")
    return np.array([vocab.setdefault(names[l].strip().lower(), len(vocab)) if l >= 0 else -1 for l in labels],
                    dtype=np.int64)


def emergent_retrieval(model, dataset: BenchDataset, *, query_modality: str = "audio", gallery_modality: str = "image",
                       gallery_dataset: Optional[BenchDataset] = None, ks: Sequence[int] = (1, 5, 10),
                       both_directions: bool = True, index: str = "flat", index_params: Optional[dict] = None,
                       cache_dir: Optional[str] = None, batch_size: int = 64, device=None, num_workers: int = 0,
                       recall_sample: int = 1000, progress: bool = True, pretrained: Optional[str] = None,
                       precision: Optional[str] = None, figure: Optional[str] = None) -> dict:
    """Unpaired retrieval between two modalities scored by class match (recall@k by class). figure: as
    retrieval's, a hit being an item of the query's class."""
    _check_pair(query_modality, gallery_modality)
    check_ks(ks)
    gds = gallery_dataset if gallery_dataset is not None else dataset
    by_name = gds is not dataset
    if by_name:
        for ds in (dataset, gds):
            if not ds.classnames:
                raise DataError(f"dataset {ds.path!r} has no class names; emergent retrieval across two datasets "
                                f"matches labels by class name")
    kw = dict(cache_dir=cache_dir, batch_size=batch_size, device=device, num_workers=num_workers, progress=progress,
              precision=precision)
    clock = StageSeconds()
    q, g = _encode(model, clock, (dataset, query_modality), (gds, gallery_modality), kw)
    vocab: dict = {}
    qg = _class_groups(dataset, dataset.labels[q.ids], by_name, vocab)     # [Nq]
    gg = _class_groups(gds, gds.labels[g.ids], by_name, vocab)             # [Ng]
    qv, gv = q.vectors[qg >= 0], g.vectors[gg >= 0]
    q_ids, g_ids = q.ids[qg >= 0], g.ids[gg >= 0]                            # the item of each row kept
    qg, gg = qg[qg >= 0], gg[gg >= 0]
    if len(qg) == 0 or len(gg) == 0:
        which = query_modality if len(qg) == 0 else gallery_modality
        raise DataError(f"emergent retrieval on {dataset.path!r}: no labelled {which} items")
    # a query whose class has no item on the other side can never hit: leave it out and count it
    q_ok, g_ok = np.isin(qg, gg), np.isin(gg, qg)
    if not q_ok.any():
        raise DataError(f"emergent retrieval: no class is shared between {dataset.path!r} and {gds.path!r}")
    pairs = [(query_modality, gallery_modality, qv[q_ok], qg[q_ok], gv, gg)]
    if both_directions:
        pairs.append((gallery_modality, query_modality, gv[g_ok], gg[g_ok], qv, qg))
    metrics, info, counts, top = _score(pairs, ks, index, index_params, device, recall_sample, clock)
    name = dataset.name if gds is dataset else f"{dataset.name}+{gds.name}"
    if figure:
        _figure(model, figure, top[:, :TOP_K], pairs[0], Side(dataset, query_modality, q_ids[q_ok]),
                Side(gds, gallery_modality, g_ids), name, "an item of the query's class")
    return make_result(
        dataset=name, model=model, task="emergent_retrieval", metrics=metrics, pretrained=pretrained,
        benchmark="emergent_retrieval", modalities=[query_modality, gallery_modality], index=info,
        n={**counts, "classes_shared": int(len(np.intersect1d(qg, gg))),
           "queries_without_class_match": {query_modality: int((~q_ok).sum()), gallery_modality: int((~g_ok).sum())}},
        skipped={query_modality: q.skipped, gallery_modality: g.skipped},
        errors=(q.errors + g.errors) or None, problems=(dataset.problems + (gds.problems if by_name else [])) or None,
        seconds=clock.seconds)


ENTRY_KEYS = {"query", "gallery", "ks", "both_directions", "index", "index_params"}


def _entry_common(entry: dict, default_q: str, default_g: str) -> dict:
    return dict(query_modality=entry.get("query", default_q), gallery_modality=entry.get("gallery", default_g),
                ks=tuple(entry.get("ks", (1, 5, 10))), both_directions=bool(entry.get("both_directions", True)),
                index=entry.get("index", "flat"), index_params=entry.get("index_params"))


@BENCHMARKS.register("retrieval")
def run_retrieval(model, entry: dict, *, dataset: BenchDataset, gallery_dataset=None, **ctx) -> dict:
    """Suite adapter: entry keys query (text), gallery (image), ks, both_directions, index, index_params."""
    return retrieval(model, dataset, **_entry_common(entry, "text", "image"), **ctx)


@BENCHMARKS.register("emergent_retrieval")
def run_emergent(model, entry: dict, *, dataset: BenchDataset, gallery_dataset=None, **ctx) -> dict:
    """Suite adapter: like retrieval, plus gallery_dataset (optional second, unpaired dataset)."""
    return emergent_retrieval(model, dataset, gallery_dataset=gallery_dataset,
                              **_entry_common(entry, "audio", "image"), **ctx)


run_retrieval.entry_keys = ENTRY_KEYS
run_retrieval.draws_figure = run_emergent.draws_figure = True    # take figure= (a PNG path; suite.py draws it)
run_emergent.entry_keys = ENTRY_KEYS | {"gallery_dataset"}


def _check_entry(entry: dict) -> None:
    """The entry's values a suite checks when it loads (suite.check_entry), before any dataset is opened."""
    if "ks" in entry:
        check_ks(entry["ks"])


run_retrieval.check_entry = run_emergent.check_entry = _check_entry


def _metric_keys(entry: dict) -> list:
    """Metric names a run of `entry` produces (keys name the retrieved modality): config.py checks
    eval.best_metric with them."""
    q, g = entry.get("query", "text"), entry.get("gallery", "image")
    sides = [g, q] if entry.get("both_directions", True) else [g]
    return [f"{m}_retrieval_recall@{k}" for k in entry.get("ks", (1, 5, 10)) for m in sides]


run_retrieval.metric_keys = run_emergent.metric_keys = _metric_keys
