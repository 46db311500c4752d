"""The end of a sweep: one row per trial (number, state, value, params, run dir) as a console table,
DIR/sweep.csv and DIR/sweep.md, and DIR/sweep.png, the metric against each parameter (DIR: the study's own
folder, OUT/STUDY, so that another study in the same --out keeps its own)."""
import csv
import io
import math
import os
from typing import List, Optional

from align.sweep.space import Param
from align.writes import save_figure, write_text_whole

CSV, MARKDOWN, PLOT = "sweep.csv", "sweep.md", "sweep.png"
KEPT = "the trials are kept in the study (the same command again writes only this summary)"   # a full disk's line


def trial_rows(study, params: List[Param]) -> List[dict]:
    """Every trial of the study but those not started (WAITING): a pruned trial's value is its last
    intermediate value, at `step`; a failed one has none."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state == "WAITING":
            continue
        step, value = None, t.value
        if t.intermediate_values:
            last = max(t.intermediate_values)
            step = last
            if value is None and state == "PRUNED":
                value = t.intermediate_values[last]
        rows.append({"trial": t.number, "state": state, "value": value, "step": step,
                     "retry_of": t.system_attrs.get("failed_trial"),
                     **{p.key: t.params.get(p.key) for p in params},
                     "run_dir": t.user_attrs.get("run_dir", "")})
    return rows


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: List[dict], metric: str) -> List[str]:
    """The console table, one line per trial, columns aligned."""
    if not rows:
        return ["(no trial ran)"]
    cols = [c for c in rows[0] if c != "retry_of"]
    head = [metric if c == "value" else c for c in cols]
    cells = [[fmt(r[c]) + (f" (retry of {r['retry_of']})" if c == "trial" and r["retry_of"] is not None else "")
              for c in cols] for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)), "  ".join("-" * x for x in w)]
    return out + ["  ".join(c[i].ljust(w[i]) for i in range(len(cols))) for c in cells]


def write_tables(rows: List[dict], metric: str, out_dir: str) -> List[str]:
    """DIR/sweep.csv and DIR/sweep.md; returns their paths."""
    csv_path, md_path = os.path.join(out_dir, CSV), os.path.join(out_dir, MARKDOWN)
    cols = list(rows[0]) if rows else ["trial", "state", "value", "step", "retry_of", "run_dir"]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    md = [f"Sweep: {metric} on the held-out set (data.val or data.val_split; higher is better); pruned trials: "
          f"the last intermediate value.\n\n",
          "| " + " | ".join(metric if c == "value" else c for c in cols) + " |\n", "|" + "---|" * len(cols) + "\n"]
    md += ["| " + " | ".join(fmt(r[c]).replace("|", "\\|") for c in cols) + " |\n" for r in rows]
    # each whole (align.writes): a full disk is one line naming the file; the trials stay in the study
    write_text_whole(csv_path, f.getvalue(), KEPT)
    write_text_whole(md_path, "".join(md), KEPT)
    return [csv_path, md_path]


def write_plot(rows: List[dict], params: List[Param], metric: str, out_png: str,
               best: Optional[int] = None) -> Optional[str]:
    """One panel per parameter: the metric of each finished trial against the parameter's value (log axis for
    log-scale ranges, one slot per label for choices); pruned trials grey at their last value, the best red."""
    done = [r for r in rows if r["value"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
    if not done or not params:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(params)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 3.2 * math.ceil(n / cols)), squeeze=False)
    for ax, p in zip(axes.flat, params):
        for state, style in (("COMPLETE", dict(color="tab:blue", marker="o")),
                             ("PRUNED", dict(color="0.6", marker="x"))):
            pts = [r for r in done if r["state"] == state and _has(r, p)]
            xs = [p.labels.index(r[p.key]) if p.kind == "choice" else r[p.key] for r in pts]
            ax.scatter(xs, [r["value"] for r in pts], label=state.lower(), s=30, linestyle="None", **style)
        for r in done:
            if r["trial"] == best and _has(r, p):
                x = p.labels.index(r[p.key]) if p.kind == "choice" else r[p.key]
                ax.scatter([x], [r["value"]], color="tab:red", marker="*", s=160, label="best", zorder=3)
        if p.kind == "choice":
            ax.set_xticks(range(len(p.labels)))
            ax.set_xticklabels([_short(lb) for lb in p.labels], rotation=20, fontsize=7)
        elif p.log:
            ax.set_xscale("log")
            ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=20)
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"sweep: {metric} on the held-out set against each setting ({len(done)} trials)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png, KEPT, dpi=90, bbox_inches="tight")    # bbox_inches: the title is wider than a panel
    return out_png


def _has(row: dict, p: Param) -> bool:
    """Whether the trial has a value for p (a choice's value may be null itself)."""
    return row.get(p.key) in p.labels if p.kind == "choice" else row.get(p.key) is not None


def _short(label, n: int = 24) -> str:
    s = "null" if label is None else str(label)
    return s if len(s) <= n else s[:n - 1] + "…"
