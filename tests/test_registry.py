"""align.registry: lookups by exact names, and a lazily filled registry that no thread sees half-filled."""
import threading
import time

import pytest

from align.errors import ConfigError
from align.registry import Registry


def test_unknown_names_are_one_line_listing_the_valid_ones():
    reg = Registry("tower")
    reg.register("vit")(object)
    with pytest.raises(ConfigError, match=r"^unknown tower type 'vit_b'; valid: vit$"):
        reg.get("vit_b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("vit")(object)


def test_a_lazy_registry_is_whole_for_every_thread_that_looks_first():
    """Two threads look the registry up at once while its load (an import, here a slow stand-in guarded by a
    lock, as Python's module lock guards a module being run) is still registering."""
    lock, calls = threading.Lock(), []

    def load():                                   # what `from pkg import runners` does: run once, others wait
        with lock:
            if not calls:
                calls.append(1)
                reg.register("a")(1)
                time.sleep(0.2)
                reg.register("b")(2)
    reg = Registry("benchmark", load=load)
    seen, start = [], threading.Barrier(3)

    def look():
        start.wait()
        seen.append(reg.names())
    threads = [threading.Thread(target=look) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert seen == [["a", "b"]] * 3 and calls == [1]


def test_benchmarks_first_looked_up_from_two_threads_at_once_is_whole_in_both(fresh_align_bench):
    """align.bench.BENCHMARKS in a fresh interpreter (its runners not yet imported: torch takes seconds), first
    looked up by two threads together: both see every task (before, the second saw an empty registry). The
    interpreter (tests/conftest.py) is shared with tests/test_cli.py, whose parsers it builds first."""
    loaded, seen = fresh_align_bench
    assert loaded == "[]", loaded                  # no runner (they import torch) imported before the threads look
    names = ["cca_retrieval", "emergent_retrieval", "fusion_probe", "linear_probe", "retrieval", "zeroshot"]
    assert seen == str([names, names]), seen
