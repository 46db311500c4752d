"""Val-set evaluation for training runs and `align demo`: any registered benchmark, one table, one picture.

`eval.tasks` names tasks of the benchmark registry (align.bench BENCHMARKS: zeroshot, retrieval,
emergent_retrieval, linear_probe, fusion_probe, cca_retrieval, ...). `eval_entries` expands each name
into suite entries over the modalities the model and val set share, from what the runner accepts
(its `entry_keys`): one entry per classifiable modality (image, audio) for a `modality` task, one per
modality pair (text<->image, text<->audio, audio<->image) for a `query`/`gallery` task, one over all
non-text modalities for a `modalities` task; a task that takes a `train_dataset` (the probes) trains on
the val set's `train` split. `evaluate_model` runs them on FAISS through align.bench and returns flat
`{WHERE/TASK/METRIC: value}` metrics for logs (e.g. `image/zeroshot/acc1`); `metric_keys` lists those
names without running anything, so config.py can check `eval.best_metric` at load. `write_report`
does the same, writing CLIP_benchmark-shaped JSONs, results.md, retrieval.png and confusion_<modality>.png
(zero-shot) to a directory.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from align.writes import save_figure

# Retrieval pairs scored when both sides exist: (query, gallery); each is scored in both directions.
PAIRS = (("text", "image"), ("text", "audio"), ("audio", "image"))
KEPT = "the results already written are kept"   # a full disk's line (align.writes) in a report's folder
CLASSIFIABLE = ("image", "audio")       # modalities a `modality` task (zeroshot, linear_probe) scores
DEFAULT_TASKS = ("zeroshot", "retrieval")


def eval_entries(tasks: Sequence[str], modalities: Sequence[str], *, by_class: bool = False,
                 prompts: bool = True) -> List[dict]:
    """Task names -> suite entries (task + its modality keys) over `modalities` (those the val set has
    and the model encodes).

    by_class: score every retrieval pair by class match (emergent_retrieval: a hit is an item of the
    query's class) instead of by instance. Right for data whose captions are per class (the demo's):
    there, the instance R@1 of text->image is capped near 1/(items per caption), whatever the model.
    Audio<->image pairs have no shared caption and are always scored by class.
    prompts: whether class prompts can be built (the model has a text tower and the val set class names);
    without them, tasks that take `templates` (zeroshot) get no entry.
    """
    from align.bench import BENCHMARKS
    mods = set(modalities)
    out = []
    for task in tasks:
        keys = getattr(BENCHMARKS.get(task), "entry_keys", set())
        if "modality" in keys:
            for m in CLASSIFIABLE:
                if m in mods and (prompts or "templates" not in keys):
                    out.append({"task": task, "modality": m})
        elif "query" in keys and "gallery" in keys:
            for q, g in PAIRS:
                if q in mods and g in mods:
                    t = "emergent_retrieval" if task == "retrieval" and (by_class or "text" not in (q, g)) else task
                    out.append({"task": t, "query": q, "gallery": g})
        elif "modalities" in keys:
            fused = [m for m in CLASSIFIABLE if m in mods]
            if len(fused) >= 2:
                out.append({"task": task, "modalities": fused})
        else:
            out.append({"task": task})
    return out


def entry_where(e: dict) -> str:
    """The WHERE of a flat metric name: `image`, `text-image`, `image+audio`."""
    if "modality" in e:
        return e["modality"]
    if "query" in e:
        return f"{e['query']}-{e['gallery']}"
    return "+".join(e.get("modalities", ())) or "val"


def metric_keys(tasks: Sequence[str], modalities: Sequence[str], prompts: Optional[bool] = None) -> List[str]:
    """Every flat metric name evaluating `tasks` can produce for a model with `modalities` (on a val set
    holding all of them; prompts: see eval_entries, default: a text tower is among `modalities`). A runner
    without a `metric_keys(entry)` attribute gives `WHERE/TASK/*`."""
    from align.bench import BENCHMARKS
    out = []
    for e in eval_entries(tasks, modalities, prompts="text" in modalities if prompts is None else prompts):
        names = getattr(BENCHMARKS.get(e["task"]), "metric_keys", lambda entry: ["*"])
        out += [f"{entry_where(e)}/{e['task']}/{k}" for k in names(e)]
    return out


def check_val_set(val_dir: str, tasks: Sequence[str], modalities: Sequence[str],
                  best_metric: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """Before training -> (the tasks of `tasks` with something to score on `val_dir` (CLIP_benchmark layout) for
    a model with `modalities`, the others): a task with nothing to score is left out while another has something
    (a recipe's [zeroshot, retrieval] on a labelled val set without captions; the run says so in one line), as
    data.val_split does. One DataError line when none has, when a probe finds no `train` split, or when
    `best_metric` is not among the names this val set can produce."""
    import fnmatch
    from align.bench import BENCHMARKS
    from align.bench.datasets import open_wds
    from align.errors import DataError
    ds = open_wds(val_dir, split="test")
    have = [m for m in ds.modalities if m in modalities]
    prompts = bool(ds.classnames) and "text" in modalities
    keep = [t for t in tasks if eval_entries([t], have, prompts=prompts)]
    if not keep:
        raise DataError(f"eval.tasks: {', '.join(map(repr, tasks))} {'has' if len(tasks) == 1 else 'have'} nothing "
                        f"to score on data.val={val_dir!r} (val items have {', '.join(ds.modalities) or 'nothing'}; "
                        f"class names: {'yes' if ds.classnames else 'no'})")
    if best_metric is not None:
        keys = metric_keys(keep, have, prompts=prompts)
        if not any(fnmatch.fnmatchcase(best_metric, k) for k in keys):
            raise DataError(f"eval.best_metric: {best_metric!r} cannot come out of data.val={val_dir!r} (val items "
                            f"have {', '.join(ds.modalities) or 'nothing'}); it gives: {', '.join(keys) or 'nothing'}")
    for task in keep:
        if "train_dataset" in getattr(BENCHMARKS.get(task), "entry_keys", ()) and \
                not os.path.isfile(os.path.join(val_dir, "train", "nshards.txt")):
            raise DataError(f"eval.tasks: {task!r} fits on the val set's train split, but "
                            f"{os.path.join(val_dir, 'train', 'nshards.txt')} is missing")
    return keep, [t for t in tasks if t not in keep]


def run_tasks(model, val_dir: str, tasks: Sequence[str] = DEFAULT_TASKS, batch_size: int = 256,
              progress: bool = False, cache_dir: Optional[str] = None, by_class: bool = False) -> List[dict]:
    """-> CLIP_benchmark-shaped result dicts, each with the flat-name prefix `eval_key` (WHERE/TASK)
    and `modality` or `query`,`gallery` fields added. by_class: see eval_entries."""
    if cache_dir is None:     # encode each modality once across tasks
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            return run_tasks(model, val_dir, tasks, batch_size, progress, tmp, by_class)
    from align.bench import BENCHMARKS
    from align.bench.datasets import open_wds
    ds = open_wds(val_dir, split="test")
    have = [m for m in ds.modalities if m in model.modalities]
    ctx = dict(cache_dir=cache_dir, batch_size=batch_size, device=None, num_workers=0, progress=progress,
               pretrained=None)
    train_ds, results = None, []
    for e in eval_entries(tasks, have, by_class=by_class, prompts=bool(ds.classnames) and "text" in model.modalities):
        runner = BENCHMARKS.get(e["task"])
        aux = {}
        if "train_dataset" in getattr(runner, "entry_keys", ()):   # probes: fit on the val set's train split
            train_ds = train_ds or open_wds(val_dir, split="train")
            aux["train_dataset"] = train_ds
        r = runner(model, dict(e), dataset=ds, **aux, **ctx)
        r.update({k: e[k] for k in ("modality", "query", "gallery") if k in e})
        r["eval_key"] = f"{entry_where(e)}/{e['task']}"
        results.append(r)
    return results


def flatten(results: Sequence[dict]) -> Dict[str, float]:
    """{"image/zeroshot/acc1": 0.93, "text-image/retrieval/image_retrieval_recall@1": ..., ...}"""
    flat = {}
    for r in results:
        prefix = r.get("eval_key")
        if prefix is None:    # a result not made by run_tasks
            where = r.get("modality") or f"{r.get('query')}-{r.get('gallery')}"
            task = {"zeroshot_classification": "zeroshot", "zeroshot_retrieval": "retrieval"}.get(r["task"], r["task"])
            prefix = f"{where}/{task}"
        for k, v in r["metrics"].items():
            if v == v:  # drop NaN (acc5 with < 5 classes)
                flat[f"{prefix}/{k}"] = float(v)
    return flat


def evaluate_model(model, val_dir: str, tasks: Sequence[str] = DEFAULT_TASKS, batch_size: int = 256,
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
    from align.bench.figures import write_confusion_plot
    for r in results:
        suffix = r["eval_key"].split("/")[0]
        write_json(r, os.path.join(out_dir, result_filename(r).replace(".json", f"_{suffix}.json")), kept=KEPT)
        if r["task"] == "zeroshot_classification":
            write_confusion_plot(r, os.path.join(out_dir, f"confusion_{suffix}.png"),
                                 title=f"{r['dataset']}: {suffix} zero-shot")
    write_markdown(results, os.path.join(out_dir, "results.md"))
    return results


def table(columns: Dict[str, Sequence[dict]]) -> str:
    """Console table: task, modalities, metric, then one column per named result set (percent; blank where
    a set lacks the metric). Rows follow the first set, e.g. {"val": ..., "held-out": ...}."""
    flats = {name: flatten(results) for name, results in columns.items()}
    rows = [("task", "modalities", "metric", *flats)]
    for key in next(iter(flats.values()), {}):
        where, task, metric = key.split("/", 2)
        if metric.endswith("_n"):
            continue
        task = task.replace("emergent_retrieval", "retrieval (by class)")
        rows.append((task, where.replace("-", "<->"), metric,
                     *("" if key not in f else f"{100 * f[key]:.2f}" for f in flats.values())))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def retrieval_figure(model, val_dir: str, out_png: str, n_queries: int = 5, k: int = 5,
                     cache_dir: Optional[str] = None) -> Optional[str]:
    """Text queries (one per class, from the zero-shot templates) and their top-k images of the set at val_dir
    (the title names it: the demo draws val and heldout)."""
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
    k = min(k, len(emb.vectors))                                     # a set of fewer than k images shows them all
    top = np.argsort(-q @ emb.vectors.T, axis=1)[:, :k]            # [n_queries, k] rows of emb
    # squeeze=False: axes stays [rows, k] with one class or k == 1 (a 1-D array of axes failed at axes[i, j])
    fig, axes = plt.subplots(len(queries), k, figsize=(1.6 * k, 1.7 * len(queries)), squeeze=False)
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
    fig.suptitle(f"text -> image retrieval on {os.path.basename(os.path.normpath(val_dir))} (top {k})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png, kept=KEPT, dpi=90, bbox_inches="tight")
    return out_png
