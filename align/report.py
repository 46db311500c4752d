"""Val-set evaluation for training runs and `align demo`: every applicable task, one table, one picture.

`evaluate_model` runs zero-shot classification for each classifiable modality the model and
dataset share (image, audio) and retrieval for each modality pair (text<->image, text<->audio,
audio<->image), on FAISS through align.bench; it returns flat `{name: value}` metrics for logs.
`write_report` does the same, writing CLIP_benchmark-shaped JSONs, results.md and
retrieval.png (text queries with their top retrieved images) to a directory.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

# Retrieval pairs scored when both sides exist: (query, gallery); each is scored in both directions.
PAIRS = (("text", "image"), ("text", "audio"), ("audio", "image"))


def run_tasks(model, val_dir: str, tasks: Sequence[str] = ("zeroshot", "retrieval"), batch_size: int = 256,
              progress: bool = False, cache_dir: Optional[str] = None, by_class: bool = False) -> List[dict]:
    """-> CLIP_benchmark-shaped result dicts, with `modality` / `query`,`gallery` fields added.

    by_class: score every retrieval pair by class match (a hit is an item of the query's class)
    instead of by instance. Right for data whose captions are per class (the demo's): there, the
    instance R@1 of text->image is capped near 1/(items per caption), whatever the model.
    Audio<->image pairs have no shared caption and are always scored by class.
    """
    if cache_dir is None:     # encode each modality once across tasks
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            return run_tasks(model, val_dir, tasks, batch_size, progress, tmp, by_class)
    from align.bench.datasets import open_wds
    from align.bench.retrieval import emergent_retrieval, retrieval
    from align.bench.zeroshot import zeroshot_classification
    ds = open_wds(val_dir, split="test")
    have = [m for m in ds.modalities if m in model.modalities]
    kw = dict(batch_size=batch_size, progress=progress, cache_dir=cache_dir)
    results = []
    if "zeroshot" in tasks and "text" in have and ds.classnames:
        for m in ("image", "audio"):
            if m in have:
                r = zeroshot_classification(model, ds, modality=m, **kw)
                r["modality"] = m
                results.append(r)
    if "retrieval" in tasks:
        for q, g in PAIRS:
            if q in have and g in have:
                if by_class or "text" not in (q, g):
                    r = emergent_retrieval(model, ds, query_modality=q, gallery_modality=g, **kw)
                else:
                    r = retrieval(model, ds, query_modality=q, gallery_modality=g, **kw)
                r["query"], r["gallery"] = q, g
                results.append(r)
    return results


def flatten(results: Sequence[dict]) -> Dict[str, float]:
    """{"image/zeroshot/acc1": 0.93, "text-image/retrieval/image_retrieval_recall@1": ..., ...}"""
    flat = {}
    for r in results:
        where = r.get("modality") or f"{r.get('query')}-{r.get('gallery')}"
        task = {"zeroshot_classification": "zeroshot", "zeroshot_retrieval": "retrieval"}.get(r["task"], r["task"])
        for k, v in r["metrics"].items():
            if v == v:  # drop NaN (acc5 with < 5 classes)
                flat[f"{where}/{task}/{k}"] = float(v)
    return flat


def evaluate_model(model, val_dir: str, tasks: Sequence[str] = ("zeroshot", "retrieval"), batch_size: int = 256,
                   progress: bool = False) -> Dict[str, float]:
    return flatten(run_tasks(model, val_dir, tasks, batch_size=batch_size, progress=progress))


def write_report(model, val_dir: str, out_dir: str, progress: bool = True, by_class: bool = False) -> List[dict]:
    import tempfile
    from align.bench.report import result_filename, write_json, write_markdown
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:    # one cache: the figure reuses the tasks' image embeddings
        results = run_tasks(model, val_dir, progress=progress, cache_dir=cache, by_class=by_class)
        if "image" in model.modalities and "text" in model.modalities:
            retrieval_figure(model, val_dir, os.path.join(out_dir, "retrieval.png"), cache_dir=cache)
    for r in results:
        suffix = r.get("modality") or f"{r.get('query')}-{r.get('gallery')}"
        write_json(r, os.path.join(out_dir, result_filename(r).replace(".json", f"_{suffix}.json")))
    write_markdown(results, os.path.join(out_dir, "results.md"))
    return results


def table(results: Sequence[dict]) -> str:
    """Plain-text results table for the console."""
    rows = [("task", "modalities", "metric", "value")]
    for r in results:
        where = r.get("modality") or f"{r.get('query')}<->{r.get('gallery')}"
        task = r["task"].replace("zeroshot_", "")
        for k, v in r["metrics"].items():
            if v == v and not k.endswith("_n"):
                rows.append((task, where, k, f"{100 * v:.2f}"))
    rows = [(t.replace("emergent_retrieval", "retrieval (by class)"), *rest) for t, *rest in rows]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def print_table(results: Sequence[dict]) -> None:
    print(table(results))


def retrieval_figure(model, val_dir: str, out_png: str, n_queries: int = 5, k: int = 5,
                     cache_dir: Optional[str] = None) -> Optional[str]:
    """Text queries (one per class, from the zero-shot templates) and their top-k val images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from align.bench.datasets import open_wds
    from align.bench.embed import embed_dataset
    ds = open_wds(val_dir, split="test")
    if not ds.classnames:
        return None
    emb = embed_dataset(model, ds, "image", progress=False, cache_dir=cache_dir)
    names = ds.classnames[:n_queries]
    tmpl = ds.templates if isinstance(ds.templates, list) and ds.templates else ["a photo of a {c}."]
    queries = [tmpl[0].format(c=c) for c in names]                  # the dataset's first prompt template
    with torch.no_grad():
        q = model.encode_text(model.tokenize(queries)).cpu().numpy()
    top = np.argsort(-q @ emb.vectors.T, axis=1)[:, :k]            # [n_queries, k] rows of emb
    fig, axes = plt.subplots(len(queries), k, figsize=(1.6 * k, 1.7 * len(queries)))
    labels = ds.labels
    for i, text in enumerate(queries):
        for j in range(k):
            ax = axes[i, j]
            item = int(emb.ids[top[i, j]])
            ax.imshow(ds.load(item, "image"))
            ok = labels[item] == i
            ax.set_title("✓" if ok else "✗", color="green" if ok else "red", fontsize=9)
            ax.axis("off")
        axes[i, 0].text(-0.1, 0.5, text, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("text -> image retrieval on val (top 5)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png
