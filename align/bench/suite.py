"""Run a YAML suite of benchmarks over several models; write JSON per result, a CSV and a Markdown table.

A suite is a YAML file, or the name of a suite shipped in align/bench/suites/ (`align bench suite demo`).
Relative paths in a suite file are relative to that file; in a shipped suite, to the working directory.

Suite YAML: a list of entries (or {"benchmarks": [entries], "models": [specs]}; models: are
align.bench.models specs, used when no models are passed in; a mapping's `limits: {max_audio_seconds: 120}` replaces
fields of that model's recipe's data.limits, and `--limit` then applies to every model). Each entry:
    dataset:   path (relative: see above)                                  required
    type:      wds | imagefolder | audiofolder | hf | csv                  required
    task:      zeroshot | retrieval | emergent_retrieval | (probes' names) required
    name:      label used in results (default: dataset folder name)
    split:     wds / hf split (default "test")
    classnames, templates: file path or built-in template set name
    options:   extra dataset options, e.g. {image_column: img, caption_column: text}
  task keys:
    zeroshot            modality (image|audio), index, index_params
    retrieval           query, gallery (modalities), ks, both_directions, index, index_params
    emergent_retrieval  as retrieval, plus gallery_dataset (+ gallery_type, gallery_split,
                        gallery_options, gallery_classnames) for a second, unpaired dataset
Example:
    - {dataset: data/esc50, type: audiofolder, task: zeroshot, modality: audio, templates: audio}
    - {dataset: data/coco_wds, type: wds, task: retrieval, query: text, gallery: image, index: hnsw}

Outputs in out_dir: one JSON per (entry, model) named like CLIP_benchmark's
'{dataset}_{pretrained}_{model}_{language}_{task}.json', beside it the same name with .png (zero-shot and
retrieval: align.bench.figures; plot=False / --no-plot: none); `results.csv`; `results.md`
(models side by side, then each model's mean over the datasets that share a task and metric). An existing
result JSON is never overwritten unless overwrite=True (--overwrite); skip_existing=True (--skip-existing)
reuses it. results.csv/.md are regenerated over every result JSON in out_dir: those of earlier runs (another
model run into the same --out) are kept and tabled beside this run's, listed in results.md with how they were
encoded (marked where not as this run), and counted in the summary line. A model without a modality an entry
needs is skipped for that entry (listed). An entry that fails on its data (an AlignError) or a model that cannot
load is a `fail:` line and the suite goes on; results.md lists them under "Not run", and the suite then ends in
an error naming the first.
"""
from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

from align.bench import BENCHMARKS
from align.bench.datasets import BenchDataset, open_dataset
from align.bench.embed import MissingModalityError, same_weights_prompts
from align.bench.figures import figure_goes_with, figure_path
from align.bench.models import resolve_specs
from align.bench.report import (markdown_table, model_name, model_pretrained, record_settings, result_filename,
                                result_files, same_settings, settings_text, stage_text, summary_line, write_csv,
                                write_json, write_markdown)
from align.templates import BUILTIN_TEMPLATES
from align.errors import AlignError, ConfigError, make_folder
from align.yaml_files import read_yaml
from align.shipped import resolve_shipped, shipped_names

COMMON_KEYS = {"dataset", "type", "task", "name", "split", "classnames", "templates", "options"}
AUX_DATASETS = ("gallery_dataset", "train_dataset")  # opened by the suite when a runner accepts them
CLIP_TASK_NAMES = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


def _resolve_path(p, base: str):
    if p is None or not isinstance(p, str) or os.path.isabs(p) or p in BUILTIN_TEMPLATES:
        return p
    return os.path.normpath(os.path.join(base, p))


SUITES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suites")   # shipped with the package


def shipped_suites() -> List[str]:
    return shipped_names(SUITES_DIR)


def resolve_suite(name: str) -> str:
    """A suite YAML path, or the name of a shipped suite (`demo` -> align/bench/suites/demo.yaml):
    align.shipped's rules, the same as recipes'."""
    return resolve_shipped(name, SUITES_DIR, "suite")


@dataclass
class Suite:
    """A parsed suite YAML: its benchmark entries (validated) and its `models:` (specs, maybe empty),
    relative paths of both resolved against `base` (the YAML's folder; a shipped suite's: the working dir)."""
    path: str
    entries: List[dict]
    models: List[Union[str, dict]]

    def model_specs(self) -> List[Union[str, dict]]:
        """`models`, or one line saying the suite lists none."""
        if not self.models:
            raise ConfigError(f"suite {self.path!r} lists no models: give --model (repeatable) or a top-level "
                              f"'models:' list")
        return self.models


def read_suite(name: str) -> Suite:
    """Parse and validate a suite YAML (a path or a shipped suite's name), once."""
    path = resolve_suite(name)
    doc = read_yaml(path)      # one line with the line and column (PyYAML's own message spans several)
    models = []
    if isinstance(doc, dict):
        extra = set(doc) - {"benchmarks", "models"}
        if extra:
            raise ConfigError(f"suite {path!r}: unknown top-level key {sorted(extra)[0]!r} "
                              f"(expected 'benchmarks', 'models')")
        models = doc.get("models") or []
        if not isinstance(models, list):
            raise ConfigError(f"suite {path!r}: 'models' must be a list")
        doc = doc.get("benchmarks")
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f"suite {path!r} must be a non-empty list of benchmark entries")
    base = os.path.dirname(os.path.abspath(path))
    if base == SUITES_DIR:       # a shipped suite names data the user made here (e.g. `align demo`'s align_demo/)
        base = os.getcwd()
    entries = [check_entry(e, f"suite {path!r} entry {i}", base) for i, e in enumerate(doc)]
    return Suite(path, entries, resolve_specs(models, base, f"suite {path!r}"))


def load_suite(name: str) -> List[dict]:
    """The benchmark entries of a suite (see read_suite)."""
    return read_suite(name).entries


def suite_models(name: str) -> List[Union[str, dict]]:
    """The `models:` list of a suite (strings or {model, pretrained, name}), paths resolved; refuses none."""
    return read_suite(name).model_specs()


def check_entry(e: dict, where: str = "benchmark", base: str = ".") -> dict:
    """Validate one entry's keys for its task; returns a copy with relative paths resolved against `base`."""
    if not isinstance(e, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(e).__name__}")
    for key in ("dataset", "type", "task"):
        if key not in e:
            raise ConfigError(f"{where} is missing required key {key!r}")
    runner = BENCHMARKS.get(e["task"])
    allowed = COMMON_KEYS | set(getattr(runner, "entry_keys", ()))
    for aux in AUX_DATASETS:
        if aux in allowed:
            p = aux[: -len("_dataset")]
            allowed |= {f"{p}_type", f"{p}_split", f"{p}_options", f"{p}_classnames"}
    bad = sorted(set(e) - allowed)
    if bad:
        raise ConfigError(f"{where}: key {bad[0]!r} is not valid for task {e['task']!r}; "
                          f"valid: {', '.join(sorted(allowed))}")
    if "options" in e and not isinstance(e["options"], dict):
        raise ConfigError(f"{where}: 'options' must be a mapping")
    try:
        getattr(runner, "check_entry", lambda entry: None)(e)   # the runner's own value checks (retrieval: ks)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    e = dict(e)
    for key in ("dataset", "classnames", "templates", "gallery_dataset", "train_dataset",
                "gallery_classnames", "train_classnames"):
        if key in e:
            e[key] = _resolve_path(e[key], base)
    e["_where"] = where
    return e


def _open_all(e: dict, limits=None):
    runner = BENCHMARKS.get(e["task"])
    aux = {a: _open(e, a[: -len("_dataset")], limits) for a in AUX_DATASETS
           if a in e and a in getattr(runner, "entry_keys", ())}
    return runner, _open(e, "", limits), aux


def run_entry(model, *, cache_dir: Optional[str] = None, batch_size: int = 64, device=None, num_workers: int = 0,
              progress: bool = True, pretrained: Optional[str] = None, out_path: Optional[str] = None,
              overwrite: bool = False, **entry) -> dict:
    """One benchmark from keyword arguments (the keys of a suite entry: dataset, type, task, ...).
    Writes the result JSON to out_path when given (refuses to replace an existing file unless overwrite)."""
    e = check_entry(entry, f"benchmark {entry.get('task', '?')} on {entry.get('dataset', '?')!r}")
    if out_path and os.path.exists(out_path) and not overwrite:
        raise AlignError(f"{out_path} exists; pass overwrite=True to replace it")
    runner, ds, aux = _open_all(e)
    r = runner(model, e, dataset=ds, **aux, cache_dir=cache_dir, batch_size=batch_size, device=device,
               num_workers=num_workers, progress=progress, pretrained=pretrained)
    if e.get("name"):
        r["dataset"] = e["name"]
    if out_path:
        write_json(r, out_path)
    if progress:
        print(summary_line(r))
    return r


def _open(entry: dict, prefix: str = "", limits=None) -> BenchDataset:
    """Open entry[dataset] (prefix "") or entry[{prefix}_dataset] with its type/split/options/classnames (limits:
    what its captions and labels may hold, read now for every model; media are decoded within each model's)."""
    k = (lambda s: f"{prefix}_{s}") if prefix else (lambda s: s)
    path = entry[k("dataset")]
    dtype = entry.get(k("type"), entry["type"])
    opts = dict(entry.get(k("options")) or {})
    if "limits" in opts:
        raise ConfigError(f"{entry['_where']}: {k('options')}: 'limits' is no dataset option; limits belong to a "
                          f"model (models: [{{model: ..., limits: {{max_audio_seconds: 120}}}}]) or to --limit")
    if entry.get(k("split")) is not None:
        opts["split"] = entry[k("split")]
    if entry.get(k("classnames")) is not None:
        opts["classnames"] = entry[k("classnames")]
    if not prefix:
        if entry.get("templates") is not None:
            opts["templates"] = entry["templates"]
        if entry.get("name"):
            opts["name"] = entry["name"]
    try:
        return open_dataset(path, dtype, limits=limits, **opts)
    except AlignError as e:
        raise type(e)(f"{entry['_where']}: {e}") from None


def _is_spec(m) -> bool:
    """A model to load (a path / 'open_clip:ARCH' string or a {model, pretrained, name} mapping), not a model."""
    return isinstance(m, (str, dict))


def _task_name(task: str) -> str:
    return CLIP_TASK_NAMES.get(task, task)


def _unique_name(fname: str, where: str, written: set) -> str:
    """fname, or fname with the entry's number (then a count) when this run already wrote it: two entries with
    one dataset name and task, or one model given twice, keep every result instead of replacing one."""
    if fname not in written:
        return fname
    stem, n = f"{fname[:-5]}_{where.rsplit(' ', 1)[-1]}", 2
    out = f"{stem}.json"
    while out in written:
        out, n = f"{stem}_{n}.json", n + 1
    return out


def _model_entries(model, pretrained, opened, out_dir: str, results: list, skipped: list, failed: list,
                   written: set, overwrite: bool, skip_existing: bool, run_kw: dict, plot: bool = True) -> None:
    """run_suite's entries for one model: results (and written file names, skipped and failed entries) appended.
    An entry that fails on its data or settings (an AlignError: no image decodes, no labels, NaN embeddings) is
    one `fail:` line and the next entry runs: one bad set must not cost the hours the others take. plot: a runner
    that draws (`draws_figure`) writes its figure beside the JSON (OUT.json -> OUT.png; never over a file there
    unless overwrite)."""
    mname = model_name(model)
    pre = pretrained if pretrained is not None else model_pretrained(model)
    for e, runner, ds, aux in opened:
        probe = {"dataset": ds.name, "pretrained": pre, "model": mname, "language": "en",
                 "task": _task_name(e["task"])}
        fname = _unique_name(result_filename(probe), e["_where"], written)
        path = os.path.join(out_dir, fname)
        if os.path.exists(path) and not overwrite:
            if skip_existing:
                kept = json.load(open(path))
                differs = same_settings(kept, model, run_kw["precision"])
                if differs:       # kept beside new ones, it would mix two encodings in one table
                    raise AlignError(f"{path}: --skip-existing keeps a result encoded with {differs}; rerun it "
                                     f"with --overwrite or with the same settings")
                results.append(kept)
                written.add(fname)
                continue
            raise AlignError(f"{path} exists; pass --overwrite (overwrite=True) to replace it or --skip-existing "
                             f"(skip_existing=True) to keep it")
        figure = {}
        if plot and getattr(runner, "draws_figure", False):     # the runner draws beside its JSON (figures.py)
            figure["figure"] = figure_path(path)
            if os.path.lexists(figure["figure"]) and not overwrite:
                raise AlignError(f"{figure['figure']} exists (the figure beside {fname}); pass --overwrite "
                                 f"(overwrite=True) to replace it or --no-plot (plot=False)")
        try:
            r = runner(model, e, dataset=ds, **aux, **run_kw, pretrained=pre, **figure)
        except MissingModalityError as err:
            skipped.append(f"{e['_where']} ({e['task']} on {ds.name}) for {mname}: {err}")
            print(f"skip: {skipped[-1]}")
            continue
        except AlignError as err:
            failed.append(f"{e['_where']} ({e['task']} on {ds.name}) for {mname}: {err}")
            print(f"fail: {failed[-1]}")
            continue
        if e.get("name"):
            r["dataset"] = e["name"]
        record_settings(r, model, run_kw["precision"])
        with figure_goes_with(figure.get("figure")):
            write_json(r, path)
        written.add(fname)
        results.append(r)
        if run_kw["progress"]:
            print(summary_line(r) + (f" ({stage_text(r['seconds'])})" if r.get("seconds") else ""))


def _earlier_note(results: List[dict], earlier: List[dict]) -> str:
    """The summary's words on results an earlier run left in --out, which results.csv/.md take in beside this
    run's (one column per model): how many, of which models, and whether they were encoded otherwise."""
    if not earlier:
        return ""
    models = ", ".join(dict.fromkeys(str(r["model"]) for r in earlier))
    now = {settings_text(r) for r in results}
    other = sum(1 for r in earlier if now and settings_text(r) not in now)
    return (f"; the tables also hold {len(earlier)} result(s) of earlier runs in that folder ({models})"
            + (f", {other} of them encoded otherwise (listed in results.md)" if other else ""))


def check_out_dir(out_dir: str) -> None:
    """The suite's output folder: missing (created later) or a folder; a file there is one line, not a
    FileExistsError from makedirs after the datasets were opened."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a folder (a suite writes a folder of results)")


def run_suite(suite_yaml_path: str, models: Sequence[Union[object, str]], out_dir: str, *,
              load_fn: Optional[Callable[[str], object]] = None, cache_dir: Optional[str] = None,
              batch_size: int = 64, device=None, num_workers: int = 0, precision: str = "fp32",
              overwrite: bool = False, skip_existing: bool = False, progress: bool = True,
              limits=None, show_table: bool = False, plot: bool = True) -> List[dict]:
    """Run every suite entry for every model; returns the result dicts (also written to out_dir).
    precision: autocast while encoding (fp32 | bf16 | fp16). limits: the align.limits.DataLimits the sets'
    captions and labels are read within when opened (None: the defaults); each model's media are decoded within
    its own (`model.data_limits`: its recipe's, a `models:` entry's `limits:`, `--limit`). show_table: print
    results.md's table before the summary line (`align bench suite`). plot: each zero-shot and retrieval result's
    figure beside its JSON (align.bench.figures; `--no-plot`: none)."""
    check_out_dir(out_dir)
    suite = read_suite(suite_yaml_path)
    entries = suite.entries
    if not models:  # the suite's own models: list (align.bench.models specs)
        models = suite.model_specs()
    if any(_is_spec(m) for m in models) and load_fn is None:
        raise ConfigError("run_suite: models given as paths need load_fn (e.g. align.load)")
    # open every dataset first: a bad path fails in seconds, not after hours of encoding
    opened = [(e, *_open_all(e, limits)) for e in entries]
    make_folder(out_dir, "suite's results")
    results, skipped, failed, written = [], [], [], set()
    run_kw = dict(cache_dir=cache_dir, batch_size=batch_size, device=device, num_workers=num_workers,
                  precision=precision, progress=progress)
    for m in models:
        try:
            model, pretrained = (load_fn(m), m if isinstance(m, str) else None) if _is_spec(m) else (m, None)
        except AlignError as err:          # a model that cannot load: its entries are not run, the next model is
            failed.append(f"model {m!r}: {err} ({len(opened)} entries not run)")
            print(f"fail: {failed[-1]}")
            continue
        with same_weights_prompts():       # one model's weights throughout: its class prompts encoded once
            _model_entries(model, pretrained, opened, out_dir, results, skipped, failed, written, overwrite,
                           skip_existing, run_kw, plot)
        if _is_spec(m):
            del model
            gc.collect()
    earlier = [r for name, r in result_files(out_dir) if name not in written]   # other runs' results, kept
    write_csv(results + earlier, os.path.join(out_dir, "results.csv"))
    write_markdown(results, os.path.join(out_dir, "results.md"), failed, earlier)
    if show_table:
        print(markdown_table(results + earlier))
    print(f"suite: {len(results)} results for {len(models)} model(s) in {out_dir} (results.csv, results.md)"
          + (f"; {len(skipped)} skipped (model lacks a modality)" if skipped else "")
          + (f"; {len(failed)} failed" if failed else "") + _earlier_note(results, earlier))
    if failed:     # the finished results are written; the run still ends in an error, naming the first failure
        raise AlignError(f"suite: {len(failed)} failed (listed under 'Not run' in "
                         f"{os.path.join(out_dir, 'results.md')}); first: {failed[0]}")
    return results
