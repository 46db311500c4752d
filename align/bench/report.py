"""Benchmark results: CLIP_benchmark-shaped dicts, JSON/CSV files and a Markdown comparison table.

A result is what `clip_benchmark eval` dumps,
    {"dataset", "model", "pretrained", "task", "metrics": {...}, "language": "en"}
plus align's extra fields (all optional): "benchmark" (registry name),
"index" (type, exact, params, approximate recall vs exact), "n" (counts of items,
queries, gallery), "skipped" (decode failures per modality), "errors" (first few
skip reasons), "problems" (issues found while indexing the dataset), "seconds" (wall seconds per stage
of the run -- encoding each modality, the class prompts, building the index, the search itself --
so a slow benchmark says where its time went; `align bench` adds the model load).
`task` uses CLIP_benchmark's names where they exist ("zeroshot_classification",
"zeroshot_retrieval") so `clip_benchmark build` can merge align's JSON files.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import time
from typing import Dict, List, Optional, Sequence

from align.errors import AlignError
from align.limits import changed_limits
from align.writes import write_text_whole

# what a full disk's line (align.writes) says is intact: a suite's finished results (a rerun keeps them)
KEPT = "the results already written are kept (with --skip-existing a rerun keeps them, not redoes them)"
BASE_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
# Metrics that are fractions of items, shown in % in tables (the runners' metric_keys name them). The others --
# counts (n_train, n_test, n_components), hyperparameters (reg, best_C), a correlation (mean_canonical_corr) --
# are shown as they are: 100 * n_train is no percentage.
FRACTION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_RECALL_AT = re.compile(r"recall@\d+$")


def is_fraction(metric: str) -> bool:
    """True for a fraction metric: acc1, acc5, mean_per_class_recall, *recall@k, and fusion rows' '<row>/acc1'."""
    name = metric.rsplit("/", 1)[-1]
    return name in FRACTION_METRICS or bool(_RECALL_AT.search(name))


def metric_text(metric: str, v) -> str:
    """A table cell: a fraction in % with 2 decimals, anything else as it is; '' for a missing or NaN value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{100 * v:.2f}" if is_fraction(metric) else _fmt(v)


class StageSeconds:
    """Wall seconds per named stage of one benchmark run: `with clock("search"): ...`; clock.seconds is
    the result's "seconds" field ({stage: s}, rounded to 0.1 ms; a stage timed twice adds up)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - t, 4)


def stage_text(seconds: Dict[str, float]) -> str:
    """'load model 2.1 s, encode image 40.3 s, ...' from a result's "seconds"."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.3g} s" for k, v in seconds.items())


def seconds_line(result: dict) -> str:
    """'time: load model 2.1 s, ...' from a result's "seconds" ('' when it has none)."""
    return f"time: {stage_text(result['seconds'])}" if result.get("seconds") else ""


def model_name(model) -> str:
    return str(getattr(model, "name", None) or type(model).__name__)


def model_pretrained(model) -> str:
    """`model.pretrained` when set, else the weights fingerprint (tells checkpoints of one architecture apart)."""
    p = getattr(model, "pretrained", None)
    if p:
        return str(p)
    from align.bench.embed import model_fingerprint

    try:
        return model_fingerprint(model)
    except AlignError:
        return ""


def make_result(*, dataset: str, model, task: str, metrics: Dict[str, float], pretrained: Optional[str] = None,
                **extra) -> dict:
    """A CLIP_benchmark-shaped result dict plus align's extra fields."""
    out = {"dataset": dataset, "model": model_name(model),
           "pretrained": pretrained if pretrained is not None else model_pretrained(model),
           "task": task, "metrics": {k: float(v) for k, v in metrics.items()}, "language": "en"}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def record_settings(result: dict, model, precision: str) -> dict:
    """The encoding settings that move a result's numbers (autocast precision, engine, and the media limits that
    differ from the defaults: other samples are skipped) written into it."""
    from align.bench.embed import model_limits
    result["precision"] = precision
    result["engine"] = getattr(model, "engine", "torch")
    changed = changed_limits(model_limits(model))
    if changed:
        result["limits"] = changed
    return result


def same_settings(result: dict, model, precision: str) -> Optional[str]:
    """None when an existing result was encoded as this run encodes (or does not say), else what differs. A
    result without `limits` was decoded within the defaults."""
    want = record_settings({}, model, precision)
    want.setdefault("limits", {})
    kept = dict(result, limits=result.get("limits") or {})
    diff = [f"{k} {kept[k]} (this run: {v})" for k, v in want.items() if k in kept and kept[k] != v]
    return ", ".join(diff) or None


def result_filename(result: dict) -> str:
    """CLIP_benchmark's default '{dataset}_{pretrained}_{model}_{language}_{task}.json', path-safe."""
    def slug(s):
        return "".join(c if c.isalnum() or c in "-.+@" else "_" for c in str(s)) or "none"

    return "_".join(slug(result[k]) for k in ("dataset", "pretrained", "model", "language", "task")) + ".json"


def check_out_file(path: str, overwrite: bool = False) -> None:
    """A result file to write, checked before the work: not a folder, not an existing file unless overwrite,
    and its missing folders creatable (the nearest existing one is a writable folder). One line otherwise."""
    if os.path.isdir(path):
        raise AlignError(f"--out {path} is a folder; give a file name, e.g. {os.path.join(path, 'result.json')}")
    if os.path.lexists(path) and not overwrite:
        raise AlignError(f"--out {path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise AlignError(f"--out {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AlignError(f"--out {path}: cannot write in {parent} (permission denied)")


def write_json(result: dict, path: str, kept: str = KEPT) -> None:
    """The result as JSON at path, creating its missing folders; a failure is one line naming the file. Whole or
    not at all (align.writes): a full disk left an empty or cut result under its name, which a rerun refused
    ("exists") or `--skip-existing` failed to read; now StorageError (exit 74) and no file."""
    text = json.dumps(result, indent=1)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text_whole(path, text, kept)
    except OSError as e:
        raise AlignError(f"{path}: cannot write the result: {e.strerror or e}") from None


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def metrics_seen(results: Sequence[dict]) -> List[str]:
    """The metric names present in `results`, in first-seen order (the CSV's columns). Not to be confused
    with align.train.evaluate.metric_keys: the names a set of eval tasks *will* produce."""
    keys: List[str] = []
    for r in results:
        for k in r.get("metrics", {}):
            if k not in keys:
                keys.append(k)
    return keys


def write_csv(results: Sequence[dict], path: str) -> None:
    """One row per result: dataset, model, pretrained, task, benchmark, index, then every metric seen."""
    keys = metrics_seen(results)
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["dataset", "model", "pretrained", "task", "modalities", "benchmark", "index"] + keys)
    for r in results:
        idx = r.get("index", {}).get("type", "") if isinstance(r.get("index"), dict) else ""
        w.writerow([r["dataset"], r["model"], r["pretrained"], r["task"], setting(r), r.get("benchmark", ""), idx]
                   + [_fmt(r["metrics"].get(k)) for k in keys])
    write_text_whole(path, f.getvalue(), KEPT)


def _labels(results: Sequence[dict]) -> Dict[tuple, str]:
    """Column label per (model, pretrained): the model name, plus `pretrained` (a file's name) where names
    collide, plus a column number where even that collides (two checkpoints both called model.pt)."""
    pairs = list(dict.fromkeys((r["model"], r["pretrained"]) for r in results))
    names = [m for m, _ in pairs]

    def short(p) -> str:
        s = str(p)
        return (os.path.basename(s.rstrip("/")) or s)[:24]

    out = {(m, p): (m if names.count(m) == 1 else f"{m} ({short(p)})") for m, p in pairs}
    labels = list(out.values())
    return {k: (v if labels.count(v) == 1 else f"{v} #{i + 1}") for i, (k, v) in enumerate(out.items())}


def setting(result: dict) -> str:
    """What a result is about beyond its task: 'image', 'audio', 'text->image', 'audio->image', ..."""
    if result.get("modality"):
        return str(result["modality"])
    mods = result.get("modalities")
    if isinstance(mods, (list, tuple)) and len(mods) == 2:
        return f"{mods[0]}->{mods[1]}"
    if isinstance(mods, (list, tuple)):
        return "+".join(map(str, mods))
    return ""


def markdown_table(results: Sequence[dict]) -> str:
    """Models side by side: one row per (dataset, task, setting, metric), one column per model; fractions in %
    (is_fraction), counts and hyperparameters as they are. A model's second result for one (dataset, task,
    setting) -- two suite entries on one dataset with other templates or another index -- gets rows of its own,
    the dataset cell marked '#2' (then '#3'), not the first result's cells overwritten."""
    labels = _labels(results)
    cols = list(labels.values())
    table: Dict[tuple, Dict[str, float]] = {}
    seen: Dict[tuple, int] = {}
    for r in results:
        col, where = labels[(r["model"], r["pretrained"])], (r["dataset"], r["task"], setting(r))
        n = seen[(where, col)] = seen.get((where, col), 0) + 1
        ds = r["dataset"] if n == 1 else f"{r['dataset']} #{n}"
        for k, v in r.get("metrics", {}).items():
            table.setdefault((ds, r["task"], where[2], k), {})[col] = v
    lines = ["| dataset | task | modalities | metric | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---:|" * len(cols)]
    for (ds, task, where, k), vals in table.items():
        cells = [metric_text(k, vals.get(c)) for c in cols]
        lines.append(f"| {ds} | {task} | {where} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_table(results: Sequence[dict]) -> str:
    """Each model's mean over datasets (in %), one row per (task, modalities, fraction metric) that two or more
    datasets report; '' when there is no such row. A model without a result on every one of those datasets (a
    failed or skipped entry) gets '-': a mean over fewer sets would not compare with the others. A dataset's
    second result (#2 in markdown_table) does not enter the mean: each dataset counts once."""
    labels = _labels(results)
    cols = list(labels.values())
    groups: Dict[tuple, Dict[str, Dict[str, float]]] = {}   # (task, setting, metric) -> dataset -> column -> value
    for r in results:
        col = labels[(r["model"], r["pretrained"])]
        for k, v in r.get("metrics", {}).items():
            if is_fraction(k) and isinstance(v, (int, float)):
                groups.setdefault((r["task"], setting(r), k), {}).setdefault(r["dataset"], {}).setdefault(col, v)
    lines = []
    for (task, where, k), by_ds in groups.items():
        if len(by_ds) < 2:
            continue
        cells = [metric_text(k, sum(d[c] for d in by_ds.values()) / len(by_ds))
                 if all(c in d for d in by_ds.values()) else "-" for c in cols]
        lines.append(f"| {task} | {where} | {k} | {len(by_ds)} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| task | modalities | metric | datasets | " + " | ".join(cols) + " |",
                      "|---|---|---|---:|" + "---:|" * len(cols)] + lines) + "\n"


def settings_text(result: dict) -> str:
    """How a result was encoded (record_settings), in words: 'precision fp32, engine torch[, limits {...}]'."""
    limits = result.get("limits") or {}
    return (f"precision {result.get('precision', 'fp32')}, engine {result.get('engine', 'torch')}"
            + (f", limits {json.dumps(limits, sort_keys=True)}" if limits else ""))


def earlier_text(results: Sequence[dict], earlier: Sequence[dict]) -> str:
    """results.md's list of the results an earlier run left in the folder: per model column, how many and how
    they were encoded, marked where that is not how this run encoded (a table must not mix them unsaid)."""
    labels = _labels(list(results) + list(earlier))
    now = {settings_text(r) for r in results}
    groups: Dict[tuple, List[str]] = {}
    for r in earlier:
        groups.setdefault((labels[(r["model"], r["pretrained"])], settings_text(r)), []).append(r["dataset"])
    lines = []
    for (col, how), sets in groups.items():
        other = f" -- NOT as this run encoded ({' / '.join(sorted(now))})" if now and how not in now else ""
        lines.append(f"- {col}: {len(sets)} result(s) ({', '.join(dict.fromkeys(sets))}), {how}{other}\n")
    return "".join(lines)


def write_markdown(results: Sequence[dict], path: str, failed: Sequence[str] = (),
                   earlier: Sequence[dict] = ()) -> None:
    """results.md: the table of every result, the mean over datasets where two or more share a metric, the
    results of earlier runs in the folder that the tables include (`earlier`: named, with how they were encoded)
    and the entries that did not run (`failed`: one line each, as the suite printed them)."""
    every = list(results) + list(earlier)
    text = ("Accuracies and recalls in % (CLIP_benchmark definitions); counts and hyperparameters as they "
            "are.\n\n" + markdown_table(every))
    means = mean_table(every)
    if means:
        text += "\n## Mean over datasets\n\n" + means
    if earlier:
        text += ("\n## Results of earlier runs in this folder (in the tables above)\n\n"
                 + earlier_text(results, earlier))
    if failed:
        text += "\n## Not run\n\n" + "".join(f"- {line}\n" for line in failed)
    write_text_whole(path, text, KEPT)


def summary_line(result: dict) -> str:
    """One line for the console: dataset, model, task and the headline metrics."""
    m = result["metrics"]
    head = [k for k in ("acc1", "acc5", "mean_per_class_recall") if k in m] or \
        [k for k in m if k.endswith("@1") or k.endswith("@5")][:4] or list(m)[:4]
    vals = ", ".join(f"{k}={metric_text(k, m[k]) or m[k]}" for k in head)      # NaN shows as nan
    return f"{result['dataset']} | {result['model']} | {result['task']}: {vals}"


def result_files(out_dir: str) -> List[tuple]:
    """(file name, result) for every result JSON in out_dir, by name (files lacking CLIP_benchmark's keys are
    ignored)."""
    out = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".json"):
            try:
                r = json.load(open(os.path.join(out_dir, name)))
            except (OSError, ValueError):
                continue
            if isinstance(r, dict) and all(k in r for k in BASE_KEYS):
                out.append((name, r))
    return out


def load_results(out_dir: str) -> List[dict]:
    """Every result JSON in out_dir (files lacking CLIP_benchmark's keys are ignored)."""
    return [r for _, r in result_files(out_dir)]
