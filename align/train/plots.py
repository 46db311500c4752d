"""Figures a person would rather look at than read: the training loss curve."""
import json
import os
from typing import Optional


def write_loss_plot(metrics_path: str, out_png: str) -> Optional[str]:
    """Loss (and lr) against step from metrics.jsonl, as a PNG."""
    if not os.path.isfile(metrics_path):
        return None
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.5, label="lr")
    ax2.set_ylabel("lr")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
