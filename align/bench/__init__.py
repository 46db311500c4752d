"""align benchmarks: zero-shot classification, retrieval and probes on FAISS.

`BENCHMARKS` maps explicit task names to suite runners:
  "zeroshot"            zeroshot.run_zeroshot
  "retrieval"           retrieval.run_retrieval
  "emergent_retrieval"  retrieval.run_emergent
  (probes.py may register "linear_probe", "cca", "fusion_probe").

Runner contract (what `suite.run_suite` calls):
    fn(model, entry: dict, *, dataset: BenchDataset, [gallery_dataset=..., train_dataset=...,]
       cache_dir, batch_size, device, num_workers, progress, pretrained) -> result dict
`entry` is the suite YAML entry; the suite has already opened `entry["dataset"]`
(and `gallery_dataset` / `train_dataset` when the entry names them). A runner may
set `fn.entry_keys = {...}`: the task-specific YAML keys it accepts (the suite
rejects others). The result is built with `report.make_result` (CLIP_benchmark shape).
"""
from align.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")

# Registration happens on import; BENCHMARKS must exist before these run.
from align.bench import retrieval, zeroshot  # noqa: E402,F401

try:  # probes.py registers its own runners when it provides them
    from align.bench import probes  # noqa: E402,F401
except ModuleNotFoundError as e:  # only a missing probes module is tolerated, not its broken imports
    if e.name != "align.bench.probes":
        raise

__all__ = ["BENCHMARKS"]
