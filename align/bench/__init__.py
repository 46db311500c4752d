"""align benchmarks: zero-shot classification, retrieval and probes on FAISS.

`BENCHMARKS` maps explicit task names to suite runners:
  "zeroshot"            zeroshot.run_zeroshot
  "retrieval"           retrieval.run_retrieval
  "emergent_retrieval"  retrieval.run_emergent
  "linear_probe", "fusion_probe", "cca_retrieval"   probe_tasks.py (on top of probes.py)

Runner contract (what `suite.run_suite` calls):
    fn(model, entry: dict, *, dataset: BenchDataset, [gallery_dataset=..., train_dataset=...,]
       cache_dir, batch_size, device, num_workers, progress, pretrained) -> result dict
`entry` is the suite YAML entry; the suite has already opened `entry["dataset"]`
(and `gallery_dataset` / `train_dataset` when the entry names them). A runner may
set `fn.entry_keys = {...}`: the task-specific YAML keys it accepts (the suite
rejects others), and `fn.check_entry = lambda entry: None` raising ConfigError for a bad value (checked when
the suite loads, before any dataset is opened). The result is built with `report.make_result` (CLIP_benchmark shape).
A runner may also set `fn.metric_keys = lambda entry: [...]`: the metric names a run of
`entry` produces; recipes' `eval.best_metric` is checked against them at load (align.train.evaluate).
A runner that sets `fn.draws_figure = True` takes `figure=` (a PNG path) and draws its result there
(figures.py); `align bench` and its suites pass it beside each JSON.
Every task here can run during training: `eval.tasks` names them (align.train.evaluate.eval_entries).
Modules:
  zeroshot      zero-shot classification (image or audio)
  retrieval     cross-modal and emergent retrieval recall@k
  probes        linear probe, CCA baseline, fusion probe (the numerics); probe_tasks: their suite runners
  datasets      benchmark datasets over several on-disk layouts (wds, folders; datasets_tables: HF, CSV;
                dataset_items: the items, the base class and the decoders)
  embed         batched, disk-cached encoding
  engine        --engine torch | onnxruntime: media encoders run by onnxruntime on the CPU
  index         FAISS indexes by type name; exact: exact top-k (bf16 scoring + float64 re-rank)
  models        the model factory (`align.load`, `align bench --model`): align runs, open_clip models
  report        result dicts, JSON/CSV files, the Markdown table
  figures       each result's PNG: the zero-shot confusion matrix, retrieval queries and their top items
  suite         YAML suites of benchmarks over several models
  cli           `align bench` argument parsing
"""
from align.registry import Registry

__all__ = ["BENCHMARKS"]


def _import_runners() -> None:
    """The runner modules, each registering itself as it runs (`from align.bench import BENCHMARKS` finds the
    registry defined). Imported on the registry's first lookup, not here: they import torch, and this package is
    also imported for its argument parsers (align.bench.cli), which every `align` command builds -- `align
    --help` and `align recipes` need no torch (~2 s of their start on a 2-core machine)."""
    from align.bench import probe_tasks, retrieval, zeroshot  # noqa: F401  (+ linear_probe, fusion_probe, cca)


BENCHMARKS = Registry("benchmark", load=_import_runners)
