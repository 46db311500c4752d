"""Figures a person would rather look at than read: the training loss curve, and beside it the held-out metric. (A
zero-shot result's confusion matrix is align.bench.figures', which `align bench` and the demo report both draw.)"""
import json
import os
from typing import Optional

from align.writes import save_figure


# Points per curve at most: a 6-inch figure at 100 dpi is 600 pixels wide, so more points draw nothing more.
MAX_POINTS = 4000


def _rows(path: Optional[str]):
    """The JSON rows of a .jsonl file, one at a time (a line cut by a crash is passed over)."""
    if not path or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def curve(path: Optional[str], keys: tuple, max_points: int = MAX_POINTS) -> dict:
    """{"step": [...], key: [...] for each of `keys`} of the rows of a .jsonl file holding a number at every key,
    read one row at a time and thinned to at most max_points + 1, evenly over the run (every row while they fit;
    each time they fill max_points, every other point kept is dropped and from then on every 2nd, 4th, ... row
    is taken), the last row always kept, and "best": the row of the largest keys[0] (None without rows). A run
    of a million logged steps held every row as a dict here (~1.7 KB each) to draw 600 pixels."""
    cols = {k: [] for k in ("step",) + tuple(keys)}
    stride, n, last, best = 1, 0, None, None
    for row in _rows(path):
        if not all(isinstance(row.get(k), (int, float)) for k in cols):
            continue
        if best is None or row[keys[0]] > best[keys[0]]:
            best = {k: row[k] for k in cols}
        last = None
        if n % stride:
            last = row
        else:
            for k, v in cols.items():
                v.append(row[k])
            if len(cols["step"]) > max_points:
                cols = {k: v[::2] for k, v in cols.items()}
                stride *= 2
        n += 1
    if last is not None:
        for k, v in cols.items():
            v.append(last[k])
    return dict(cols, best=best)


def write_loss_plot(metrics_path: str, out_png: str, eval_path: Optional[str] = None,
                    metric: Optional[str] = None, intact: Optional[str] = None) -> Optional[str]:
    """Loss (and lr) against step from metrics.jsonl, as a PNG; with eval.jsonl rows holding `metric`, a
    second panel shows that held-out metric against step (train loss vs held-out, on one step axis). Each curve
    is read row by row and thinned to MAX_POINTS (curve). Written whole; a full disk is StorageError naming the
    PNG and `intact`, the run's final checkpoint."""
    rows = curve(metrics_path, ("loss", "lr"))
    if not rows["step"]:
        return None
    evals = curve(eval_path, (metric,)) if metric else {"step": []}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    evals = evals if evals["step"] else None
    fig, axes = plt.subplots(2 if evals else 1, 1, figsize=(6, 5.5 if evals else 3.5), sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.plot(rows["step"], rows["loss"], label="train loss")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(rows["step"], rows["lr"], color="tab:orange", alpha=0.5, label="lr")
    ax2.set_ylabel("lr", color="tab:orange")
    # one legend for the two y axes (which curve is which), above the panel where no curve runs
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2,
              frameon=False, fontsize=8, borderaxespad=0.2)
    ax.set_title("training loss" + (" and the held-out metric" if evals else ""), loc="left", fontsize=10)
    if evals:
        ev = axes[1][0]
        ev.plot(evals["step"], evals[metric], marker="o", color="tab:green")
        best = evals["best"]
        ev.annotate(f"best {best[metric]:.3f}", (best["step"], best[metric]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8)
        ev.set_ylabel(f"held-out\n{metric}", fontsize=8)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, out_png, intact=intact, dpi=100)
    return out_png

