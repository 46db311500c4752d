"""Figures of benchmark results, drawn beside their JSON: a person would rather look at them than read the numbers.

    zero-shot  the confusion matrix (row = true class, column = top-1 class, cells: row fractions), of every class
               up to MAX_CLASSES_SHOWN, else of the most-confused classes only (the title says how many of how many)
    retrieval  N_QUERIES queries (seeded, so a rerun shows the same ones; at least one whose top-1 is wrong when
               any is) and their top TOP_K gallery items, each marked right (✓) or wrong (✗) as the recall counts
               them; an image drawn as an image, a caption as wrapped text, an audio clip as a small log-mel

They are drawn from what the benchmark already computed (the top-1 classes, the top-k rows of its search): nothing
is encoded again, and only the shown items are loaded, a broken one as a placeholder naming why. matplotlib runs on
its Agg backend (no display). `align bench` (cli.py, suite.py) asks the runners for them; align.train.evaluate's
demo report draws its confusion matrices with write_confusion_plot.
"""
from __future__ import annotations

import os
import sys
import textwrap
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

MAX_CLASSES_SHOWN = 20      # a 20 x 20 heat map keeps its names and counts readable on a 9-inch figure
N_QUERIES = 6
TOP_K = 5
SEED = 0
DISPLAY_SECONDS = 10.0      # an audio cell shows the first 10 s of its clip


def figure_path(out_json: str) -> str:
    """The figure beside a result file: OUT.json -> OUT.png (another name: OUT + .png)."""
    return (out_json[:-5] if out_json.lower().endswith(".json") else out_json) + ".png"


def _save(fig, out_png: str, **kw) -> str:
    """fig as out_png, whole or not at all (align.writes: a full disk is one line naming the file, no half PNG
    under its name), its missing folders created (the result beside it is written after the runner returns)."""
    from align.errors import make_folder
    from align.writes import save_figure
    make_folder(os.path.dirname(os.path.abspath(out_png)), "figure's")
    save_figure(fig, out_png, kept="the results are kept", **kw)
    return out_png


@contextmanager
def figure_goes_with(figure: Optional[str]):
    """Around the write of the result `figure` was drawn for (drawn first, inside the runner): when that write
    fails (a full disk), the figure goes too. Left beside no result it showed results nobody has, and the rerun
    refused to draw over it ("exists")."""
    try:
        yield
    except BaseException:
        if figure:
            with suppress(OSError):
                os.remove(figure)
        raise


def drawn_or_said(out_png: str, draw: Callable[..., str], *args, **kw) -> Optional[str]:
    """draw(*args, **kw), which draws out_png; when drawing fails (a full disk, a matplotlib fault), one warning line
    naming the figure and None: the runner goes on and its result JSON is still written. A figure never costs the
    results of a long benchmark."""
    from align.errors import AlignError, printable
    try:
        return draw(*args, **kw)
    except Exception as e:       # noqa: BLE001 (any drawing fault: the figure is an extra, the numbers are not)
        why = str(e) if isinstance(e, AlignError) else f"{out_png}: {type(e).__name__}: {printable(e)}"
        print(f"align: warning: {why}; no figure (the results are not affected)", file=sys.stderr, flush=True)
        with suppress(OSError):  # a cut-short file, or the figure of the results --overwrite replaces: not theirs
            os.remove(out_png)
        return None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")        # no display needed (a server, a CI job); a backend already chosen is switched
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------- zero-shot: the confusion matrix
def _chosen_classes(true: np.ndarray, pred: np.ndarray, count: np.ndarray, n_classes: int,
                    max_classes: int) -> np.ndarray:
    """The classes to draw, sorted: all of them up to max_classes, else those of the largest off-diagonal cells
    (largest count first, then the lower cell), topped up with the classes of most items."""
    if n_classes <= max_classes:
        return np.arange(n_classes)
    off = true != pred
    order = np.lexsort((true[off] * n_classes + pred[off], -count[off]))
    chosen: dict = {}
    for a, b in zip(true[off][order], pred[off][order]):
        for c in (int(a), int(b)):
            if len(chosen) < max_classes:
                chosen.setdefault(c)
        if len(chosen) >= max_classes:
            break
    support = np.bincount(true, weights=count, minlength=n_classes)            # [C] items per true class
    for c in np.argsort(-support, kind="stable"):
        if len(chosen) >= max_classes:
            break
        chosen.setdefault(int(c))
    return np.array(sorted(chosen), dtype=np.int64)


def confusion_view(true: np.ndarray, pred: np.ndarray, count: np.ndarray, names: Sequence[str],
                   max_classes: int = MAX_CLASSES_SHOWN) -> dict:
    """What the confusion figure draws, from sparse cells (true class, predicted class, count; a prediction of -1,
    no class found, is in no cell): {"classes": class ids shown, "names", "counts": [S, S] among them,
    "n_classes", "scored": items, "correct": top-1 right}. Never a dense [C, C] of all classes."""
    true, pred, count = (np.asarray(a, np.int64) for a in (true, pred, count))
    n = len(names)
    keep = _chosen_classes(true, pred, count, n, max_classes)
    pos = np.full(n, -1, np.int64)
    pos[keep] = np.arange(len(keep))
    inside = (pos[true] >= 0) & (pos[pred] >= 0)
    sub = np.zeros((len(keep), len(keep)), np.int64)                             # [S, S]
    np.add.at(sub, (pos[true[inside]], pos[pred[inside]]), count[inside])
    return {"classes": keep.tolist(), "names": [names[c] for c in keep], "counts": sub, "n_classes": n,
            "scored": int(count.sum()), "correct": int(count[true == pred].sum())}


def confusion_view_of(pred: np.ndarray, labels: np.ndarray, names: Sequence[str],
                      max_classes: int = MAX_CLASSES_SHOWN) -> dict:
    """confusion_view from each scored item's top-1 class pred [N] (-1: none found) and its label [N]; an item
    without a top-1 class still counts among those scored (a miss)."""
    pred, labels = np.asarray(pred, np.int64), np.asarray(labels, np.int64)
    found = pred >= 0
    cells, count = np.unique(labels[found] * len(names) + pred[found], return_counts=True)
    view = confusion_view(cells // len(names), cells % len(names), count, names, max_classes)
    view["scored"] = int(len(labels))
    return view


def write_confusion_figure(view: dict, out_png: str, title: str = "") -> str:
    """The heat map of a confusion_view (row fractions; each cell's count written in it); the title gives the
    top-1 accuracy over every class and, when only some classes are drawn, how many of how many."""
    plt = _pyplot()
    counts, names = view["counts"], view["names"]
    s = len(names)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)            # [S, S]; diagonal: recall
    side = min(12.0, 2.5 + 0.35 * s)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(s):
        for j in range(s):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(s), names, rotation=90, fontsize=7)
    ax.set_yticks(range(s), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = view["correct"] / max(view["scored"], 1)
    head = f"{title or 'zero-shot'}: top-1 {100 * acc:.2f} % of {view['scored']}"
    if s < view["n_classes"]:
        head += f"\nthe {s} most-confused of {view['n_classes']} classes"
    ax.set_title(head, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png, dpi=100)


def write_confusion_plot(result: dict, out_png: str, title: str = "") -> Optional[str]:
    """A zero-shot result's confusion counts ("confusion": classes, counts [C, C], row = true class) drawn by
    write_confusion_figure; None when the result has no counts (over align.bench.zeroshot's 100 classes)."""
    conf = result.get("confusion")
    if not conf:
        return None
    counts = np.asarray(conf["counts"], dtype=np.int64)                         # [C, C]
    true, pred = np.nonzero(counts)
    return write_confusion_figure(confusion_view(true, pred, counts[true, pred], list(conf["classes"])), out_png,
                                  title)


# ---------------------------------------------------------------- retrieval: queries and their top-k
@dataclass
class Side:
    """One side of a retrieval figure: the dataset its rows come from, their modality, and ids [rows] (the item
    of each embedding row; a text row is one caption, an item's captions in consecutive rows, in order)."""
    dataset: object
    modality: str
    ids: np.ndarray


def retrieval_examples(topk: np.ndarray, hits: np.ndarray, n_queries: int = N_QUERIES, k: int = TOP_K,
                       seed: int = SEED) -> List[dict]:
    """What the retrieval figure draws, from the benchmark's search: topk [Q, K] gallery rows best first (-1: none)
    and hits [Q, K] (the recall's right/wrong) -> [{"query": row, "shown": [(gallery row, hit), ...]}]: up to
    n_queries queries in a seeded random order; when none of them has a wrong top-1 and some query has, the last
    is replaced by the first such query of that order (the figure shows a failure when there is one)."""
    order = np.random.default_rng(seed).permutation(len(topk))
    chosen = [int(r) for r in order[:n_queries]]
    wrong = ~hits[:, 0] if hits.shape[1] else np.ones(len(topk), bool)
    if chosen and wrong.any() and not wrong[chosen].any():
        chosen[-1] = int(next(r for r in order if wrong[r]))
    return [{"query": r, "shown": [(int(g), bool(h)) for g, h in zip(topk[r, :k], hits[r, :k]) if g >= 0]}
            for r in chosen]


def caption_of(side: Side, row: int) -> str:
    """The caption of a text row: the (row - the item's first row)-th caption of its item."""
    item = side.ids[row]
    first = row
    while first > 0 and side.ids[first - 1] == item:
        first -= 1
    return side.dataset.items[int(item)].captions[row - first]


def log_mel_image(wave: np.ndarray, sr: int) -> np.ndarray:
    """A clip's first DISPLAY_SECONDS as a log-mel [64, frames] (align.towers.audio_features' front end at its
    default 16 kHz, 10 ms hop), for display only."""
    import torch
    from align.media.audio import resample
    from align.towers.audio_features import AudioFrontend, LogMel
    fe = AudioFrontend()
    w = resample(np.asarray(wave, np.float32), int(sr), fe.sample_rate) if sr != fe.sample_rate else wave
    w = np.asarray(w, np.float32)[: int(DISPLAY_SECONDS * fe.sample_rate)]
    with torch.no_grad():
        return LogMel(fe)(torch.from_numpy(np.ascontiguousarray(w))).numpy()


def query_name(side: Side, row: int) -> str:
    """What an image or audio query is, in a few words: its class name when the set has classes, else its item's
    first caption, cut to 24 characters; "" when neither (a wrong row is read by it). A text query shows itself."""
    if side.modality == "text":
        return ""
    item = side.dataset.items[int(side.ids[row])]
    names = side.dataset.classnames
    if names and item.label is not None and 0 <= int(item.label) < len(names):
        words = str(names[int(item.label)])
    else:
        words = item.captions[0] if item.captions else ""
    words = " ".join(str(words).split())
    return words if len(words) <= 24 else words[:23] + "…"


def load_cell(side: Side, row: int, limits=None) -> tuple:
    """(kind, what) of one shown row: ("image", PIL image), ("text", caption), ("audio", log-mel [M, T]), or
    ("broken", why) for an item that cannot be loaded now (its file changed since it was encoded, say)."""
    from align.bench.dataset_items import SampleError
    if side.modality == "text":
        return "text", caption_of(side, row)
    try:
        x = side.dataset.load(int(side.ids[row]), side.modality, limits)
        if side.modality == "audio":
            if len(x[0]) == 0:
                return "broken", "empty audio"
            return "audio", log_mel_image(*x)
        return "image", x
    except SampleError as e:
        return "broken", str(e)


def _draw_cell(ax, kind: str, what) -> None:
    if kind == "image":
        ax.imshow(what)
    elif kind == "audio":
        ax.imshow(what, origin="lower", aspect="auto", cmap="magma")
    else:       # a caption, or a placeholder saying why the item is not shown
        text = what if kind == "text" else f"cannot show: {what}"
        lines = textwrap.wrap(text, 22)[:7]
        ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=7, wrap=True,
                color="black" if kind == "text" else "tab:red", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def write_retrieval_figure(examples: List[dict], query: Side, gallery: Side, out_png: str, title: str,
                           limits=None, hit_means: str = "same item") -> str:
    """A grid: one row per example, its query then its shown gallery items, each titled ✓/✗ and its rank and
    framed green/red. Loads only the shown items (load_cell)."""
    plt = _pyplot()
    k = max([len(e["shown"]) for e in examples] + [1])
    fig, axes = plt.subplots(max(len(examples), 1), k + 1, figsize=(1.7 * (k + 1), 1.8 * max(len(examples), 1)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, e in enumerate(examples):
        ax = axes[i, 0]
        ax.axis("on")
        _draw_cell(ax, *load_cell(query, e["query"], limits))
        name = query_name(query, e["query"])
        ax.set_title(f"{query.modality} query" + (f"\n{name}" if name else ""), fontsize=8)
        for j, (row, hit) in enumerate(e["shown"]):
            ax = axes[i, j + 1]
            ax.axis("on")
            _draw_cell(ax, *load_cell(gallery, row, limits))
            color = "green" if hit else "red"
            ax.set_title(f"{'✓' if hit else '✗'} {j + 1}", color=color, fontsize=9)
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2)
    fig.suptitle(f"{title}\n✓: {hit_means}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png, dpi=90, bbox_inches="tight")


def check_figure_path(path: str, overwrite: bool) -> None:
    """A figure to write beside a result: refused, as the result itself, when a file is there and not overwrite."""
    from align.errors import AlignError
    if os.path.isdir(path):
        raise AlignError(f"{path} is a folder; the figure beside the result goes there: rename it, or --no-plot")
    if os.path.lexists(path) and not overwrite:
        raise AlignError(f"{path} exists (the figure beside the result); pass --overwrite to replace it, or "
                         f"--no-plot")
