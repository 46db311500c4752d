"""tools/mutations.py, the list tools/mutate.py plants: every entry must still apply (its snippet found exactly once
in its file) and name test files that exist, so a code edit that orphans an entry fails here, not at release time."""
import importlib.util
import os
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mutations():
    spec = importlib.util.spec_from_file_location("align_tool_mutations", os.path.join(ROOT, "tools", "mutations.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MUTATIONS


def test_every_mutation_still_applies_once_and_names_existing_tests():
    muts = _mutations()
    assert len(muts) > 100
    dup = [i for i, c in Counter(m.id for m in muts).items() if c > 1]
    assert not dup, f"mutation ids listed twice: {dup}"
    stale, missing = [], []
    for m in muts:
        with open(os.path.join(ROOT, m.file), encoding="utf-8") as f:
            n = f.read().count(m.snippet)
        if n != 1:
            stale.append(f"{m.id}: snippet found {n} times in {m.file}")
        missing += [f"{m.id}: {t}" for t in m.tests if not os.path.exists(os.path.join(ROOT, t.split("::")[0]))]
    assert not stale, "stale mutations (update tools/mutations.py): " + "; ".join(stale)
    assert not missing, "mutations naming missing tests: " + "; ".join(missing)
