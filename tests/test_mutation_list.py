"""tools/mutations/, the list tools/mutate.py plants: every entry must still apply (its snippet found exactly once
in its file) and name test files that exist, so a code edit that orphans an entry fails here, not at release time;
an entry whose listed test is marked slow must say slow=True, or tools/mutate.py would deselect it."""
import ast
import functools
import importlib.util
import os
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package():
    """tools/mutations (a package of one list per part of align), imported under its own name."""
    path = os.path.join(ROOT, "tools", "mutations", "__init__.py")
    spec = importlib.util.spec_from_file_location("align_tool_mutations", path,
                                                  submodule_search_locations=[os.path.dirname(path)])
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod          # its modules import `.common` relative to it
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


def _mutations():
    return _package().MUTATIONS


def test_each_entry_is_listed_in_the_module_of_the_part_of_align_it_mutates():
    """tools/mutations/train.py lists align/train's mutations, data.py align/data's, ...: a new entry put in
    another part's list fails here, so each list stays the one place to look for a module's mutations."""
    pkg = _package()
    assert sum(len(m.MUTATIONS) for m in pkg.LISTS.values()) == len(pkg.MUTATIONS)
    misplaced = [f"{m.id} ({m.file}) in {name}.py, belongs in {pkg.part_of(m.file)}.py"
                 for name, module in pkg.LISTS.items() for m in module.MUTATIONS if pkg.part_of(m.file) != name]
    assert not misplaced, "; ".join(misplaced)
    assert pkg.part_of("align/train/loop.py") == "train" and pkg.part_of("align/cli.py") == "core"


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
    assert not stale, "stale mutations (update tools/mutations/): " + "; ".join(stale)
    assert not missing, "mutations naming missing tests: " + "; ".join(missing)


def _slow_tests(path: str) -> frozenset:
    """Names of the test functions in `path` marked `@pytest.mark.slow` (every one if the module sets pytestmark)."""
    return _slow_tests_in(open(path, encoding="utf-8").read())


@functools.lru_cache(maxsize=None)
def _slow_tests_in(source: str) -> frozenset:
    """_slow_tests of a file's text, parsed once (the entries name about 1,000 tests in about 150 files)."""
    tree = ast.parse(source)
    is_slow = lambda d: "pytest.mark.slow" in ast.unparse(d.func if isinstance(d, ast.Call) else d)  # noqa: E731
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                      and "pytest.mark.slow" in ast.unparse(n.value) for n in tree.body)
    return frozenset(n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")
                     and (module_slow or any(is_slow(d) for d in n.decorator_list)))


def test_an_entry_whose_listed_test_is_slow_says_slow_true():
    wrong = []
    for m in _mutations():
        for t in m.tests:
            path, _, name = t.partition("::")
            if name and not m.slow and name.split("[")[0] in _slow_tests(os.path.join(ROOT, path)):
                wrong.append(f"{m.id}: {t}")
    assert not wrong, "these entries list a slow test without slow=True (mutate.py would deselect it): " + \
        "; ".join(wrong)


def test_the_slow_test_finder_reads_decorators_and_pytestmark(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text("import pytest\n\n@pytest.mark.slow\ndef test_a():\n    pass\n\n\n"
                 "@pytest.mark.parametrize('x', [1])\ndef test_b(x):\n    pass\n\n\n"
                 "class TestC:\n    @pytest.mark.slow()\n    def test_c(self):\n        pass\n")
    assert _slow_tests(str(f)) == {"test_a", "test_c"}
    f.write_text("import pytest\npytestmark = [pytest.mark.slow]\n\ndef test_a():\n    pass\n")
    assert _slow_tests(str(f)) == {"test_a"}


def test_mutate_runs_a_slow_entrys_tests_without_the_marker_filter(monkeypatch):
    import subprocess
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        spec = importlib.util.spec_from_file_location("align_tool_mutate", os.path.join(ROOT, "tools", "mutate.py"))
        mutate = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mutate)
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    cmds = []
    monkeypatch.setattr(mutate.subprocess, "run", lambda cmd, **kw: cmds.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1))
    assert mutate.run_tests("/x", ["tests/a.py"], 5) == "fail"
    assert mutate.run_tests("/x", ["tests/a.py"], 5, slow=True) == "fail"
    assert cmds[0][-3:] == ["-m", "not slow", "tests/a.py"]
    assert "not slow" not in cmds[1] and cmds[1][-1] == "tests/a.py"
