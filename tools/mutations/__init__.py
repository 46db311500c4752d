"""The mutation list of tools/mutate.py: (id, file, exact source snippet, replacement, tests that must catch it).

A snippet is text, not a line number, so the list survives edits elsewhere in a file; tools/mutate.py reports a
snippet that is missing or occurs more than once as STALE. Add one entry per switch or guard a test covers.
An entry whose catching test is marked `slow` says `slow=True`: tools/mutate.py then runs its tests without the
`-m "not slow"` filter (tests/test_mutation_list.py refuses a slow node id listed without it).

The list is split by the part of align a mutation plants its bug in, one module each (`PARTS`: the first prefix
of the entry's file that matches names its module; tests/test_mutation_list.py checks each entry is where this
says); MUTATIONS is their concatenation. Test ids that several entries name live in common.py.
"""
from . import bench, core, data, data_write, export, models, retrieval, train, train_run
from .common import Mutation  # noqa: F401

# file prefix -> the module whose list holds its mutations; anything else (CLI, config, sweep, ...) is `core`
PARTS = (*((f"align/train/{m}", "train_run") for m in ("checkpoint", "rundir", "storage", "manifest", "init_from",
                                                       "state", "guard")),
         ("align/train/", "train"), ("align/data/write/", "data_write"), ("align/data/", "data"),
         ("align/wds/", "data"), ("align/media/", "data"),
         ("align/bench/", "bench"), ("align/retrieval/", "retrieval"), ("align/export/", "export"),
         ("align/losses/", "models"), ("align/towers/", "models"), ("align/model", "models"))
LISTS = {"models": models, "data": data, "data_write": data_write, "train": train, "train_run": train_run,
         "bench": bench, "retrieval": retrieval, "export": export, "core": core}


def part_of(file: str) -> str:
    """The module (a key of LISTS) that lists the mutations of `file` (a path under the repo root)."""
    return next((part for prefix, part in PARTS if file.startswith(prefix)), "core")


MUTATIONS = [m for module in LISTS.values() for m in module.MUTATIONS]
