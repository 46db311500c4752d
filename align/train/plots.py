"""Figures a person would rather look at than read: the training loss curve, and beside it the held-out metric."""
import json
import os
from typing import Optional


def _rows(path: Optional[str]) -> list:
    if not path or not os.path.isfile(path):
        return []
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:          # a line cut by a crash
            pass
    return out


def write_loss_plot(metrics_path: str, out_png: str, eval_path: Optional[str] = None,
                    metric: Optional[str] = None) -> Optional[str]:
    """Loss (and lr) against step from metrics.jsonl, as a PNG; with eval.jsonl rows holding `metric`, a
    second panel shows that held-out metric against step (train loss vs held-out, on one step axis)."""
    rows = [r for r in _rows(metrics_path) if "loss" in r]
    if not rows:
        return None
    evals = [r for r in _rows(eval_path) if metric and isinstance(r.get(metric), (int, float))]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2 if evals else 1, 1, figsize=(6, 5.5 if evals else 3.5), sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.5, label="lr")
    ax2.set_ylabel("lr")
    ax.set_title("training loss" + (" and the held-out metric" if evals else ""))
    if evals:
        ev = axes[1][0]
        ev.plot([r["step"] for r in evals], [r[metric] for r in evals], marker="o", color="tab:green")
        best = max(evals, key=lambda r: r[metric])
        ev.annotate(f"best {best[metric]:.3f}", (best["step"], best[metric]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8)
        ev.set_ylabel(f"held-out\n{metric}", fontsize=8)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
