"""Fuzzed corrupt shards through `align data inspect` and the training loader (issue 24, item 4).

Each shard (strategies in fuzz_shards.py) goes through `inspect_shard` and a training epoch of
`build_train_loader` over the same file.  The property:
- nothing raises (no crash, no traceback in the log);
- every sample is decoded or counted: trained + skipped-per-sample = samples read, in both paths, and
  both count the same reasons (inspect's `skipped` == the loader's);
- the good samples before the damage are trained (all but the one being read when it broke);
- memory stays bounded: the address space may grow by at most ADDRESS_HEADROOM_GB while fuzzing (an
  RLIMIT_AS, so an allocation sized from a header fails here even on a machine that would grant it, as
  a reader that trusted a 50 GB size field did), and the slow test reports ru_maxrss growth.

The fast suite runs a small derandomized sample; `pytest -m slow tests/data/stream/test_fuzz.py -s` runs
10,000 shards and prints the figures (benchmarks/RESULTS.md).
"""
import logging
import os
import resource
import time
from collections import Counter

import pytest

hypothesis = pytest.importorskip("hypothesis")   # dev extra: pip install -e .[dev]
from hypothesis import HealthCheck, given, settings  # noqa: E402

from align.data.stream.faults import not_samples  # noqa: E402
from align.data.stream.build import build_train_loader  # noqa: E402
from align.data.tools.inspect import inspect_shard  # noqa: E402
from tests.data.stream.fuzz_shards import fuzzed_shards, intact_good_keys  # noqa: E402
from tests.wds_helpers import TRANSFORMS  # noqa: E402

MODALITIES = ["image", "text", "audio"]
SLOW_SHARDS = int(os.environ.get("ALIGN_FUZZ_SHARDS", "10000"))
MEMORY_BOUND_MB = 2048    # peak RSS growth allowed over the slow run (what a node must spare for one reader)
ADDRESS_HEADROOM_GB = 3   # virtual memory the fuzzed readers may add to the process (RLIMIT_AS)


class _NoTracebacks(logging.Handler):
    """Fails the run on any log record that carries an exception (a traceback in the log)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bad = []

    def emit(self, record):
        if record.exc_info:
            self.bad.append(self.format(record))


def check_one(fuzzed, path, totals: Counter | None = None) -> None:
    path.write_bytes(fuzzed.data)
    info = inspect_shard(str(path), modalities=MODALITIES)
    loader = build_train_loader(str(path), transforms=TRANSFORMS, batch_size=3, modalities=MODALITIES,
                                num_workers=0, drop_last=False, shuffle_buffer=0, train=True)
    trained = [k for b in loader for k in b["__key__"]]
    per_sample = {r: n for r, n in info["skipped"].items() if not not_samples(r)}
    # every sample read is decoded (trained) or counted under a reason, and both paths agree on each
    assert len(trained) + sum(per_sample.values()) == info["samples"]
    assert dict(loader.skipped) == info["skipped"]
    assert loader.seen == info["seen"]
    # the good samples before the damage are trained
    missing = set(intact_good_keys(fuzzed)) - set(trained)
    assert not missing, f"good samples not trained: {sorted(missing)}; skipped {info['skipped']}"
    if totals is not None:
        totals["shards"] += 1
        totals["samples"] += info["samples"]
        totals["trained"] += len(trained)
        totals.update({f"reason: {r}": n for r, n in info["skipped"].items()})


@pytest.fixture
def bounded_memory():
    """RLIMIT_AS = the process's address space now + ADDRESS_HEADROOM_GB, restored afterwards."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + (ADDRESS_HEADROOM_GB << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def no_tracebacks():
    handler, log = _NoTracebacks(), logging.getLogger("align")
    log.addHandler(handler)
    level = logging.getLogger("align.data").level
    logging.getLogger("align.data").setLevel(logging.ERROR)   # one warning per skip: thousands of lines
    yield handler
    logging.getLogger("align.data").setLevel(level)
    log.removeHandler(handler)
    assert not handler.bad, handler.bad[0]


def test_fuzzed_shards_sample(tmp_path, no_tracebacks, bounded_memory):
    """The fast suite's share: a fixed (derandomized) sample of 100 fuzzed shards (a few seconds)."""
    @settings(max_examples=100, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzed_shards())
    def run(fuzzed):
        check_one(fuzzed, tmp_path / "f.tar")

    run()


@pytest.mark.slow
def test_fuzzed_shards_10000(tmp_path, no_tracebacks, bounded_memory):
    """>= 10,000 fuzzed shards: no crash, bounded memory, every sample decoded or counted (figures printed)."""
    totals: Counter = Counter()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=SLOW_SHARDS, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzed_shards())
    def run(fuzzed):
        check_one(fuzzed, tmp_path / "f.tar", totals)

    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"\nfuzz: {totals['shards']} shards tried, 0 crashes, {wall:.0f} s; peak RSS growth {growth_mb:.0f} MB "
          f"(bound {MEMORY_BOUND_MB} MB; base {base / 1024:.0f} MB; address space capped at +{ADDRESS_HEADROOM_GB} GB); "
          f"{totals['samples']} samples read, "
          f"{totals['trained']} trained")
    for k, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        if k.startswith("reason: "):
            print(f"  {k[8:]}: {n}")
    assert totals["shards"] >= SLOW_SHARDS
    assert growth_mb < MEMORY_BOUND_MB
