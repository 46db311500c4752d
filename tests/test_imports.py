"""No import cycle inside align: the modules' imports, parsed with `ast`, form a DAG.

Two graphs are checked:
- module level (what runs on import: top-level statements and class bodies): must be a DAG;
- every level, function-level (lazy) imports included: must be a DAG too, so a lazy import never hides a
  cycle that would appear the day someone moves it to the top of the file.
One edge kind is left out of both, on purpose: a submodule importing its own package (`align.bench.zeroshot`
does `from align.bench import BENCHMARKS`). Python always starts a package's __init__ before its
submodules, and the registry packages (towers, bench) define their registry first and import the submodules
that register into it last; that is the registry idiom, not a cycle between two modules.
`align.cli` and `align.demo` must not import each other at any level.
"""
import ast
import functools
import os
from types import MappingProxyType

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "align")


def _modules() -> dict:
    """module name -> file path, for every .py under align/."""
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


MODULES = _modules()


def _is_pkg(name: str) -> bool:
    return MODULES.get(name, "").endswith("__init__.py")


def _targets(node, importer: str):
    """align modules an Import/ImportFrom node loads (resolving relative imports and `from pkg import submodule`)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = importer.split(".")
            parts = parts[: len(parts) - node.level + (1 if _is_pkg(importer) else 0)]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for n in names:
        while n and n not in MODULES:     # `import align.x.y` also runs align.x: keep the deepest known module
            n = n.rpartition(".")[0]
        if n.startswith("align"):
            out.add(n)
            parts = n.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts)))   # its packages run first
    return out


@functools.lru_cache(maxsize=None)
def _tree(path: str) -> ast.Module:
    """A module's syntax tree, parsed once for both graphs (parsing all of align is most of this file's time)."""
    return ast.parse(open(path).read(), path)


def _imports(path: str, name: str, module_level_only: bool):
    tree = _tree(path)
    found = set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not (module_level_only and fn):
                found.update(_targets(child, name))
            visit(child, fn)

    visit(tree, False)
    # drop self and own ancestor packages (the registry idiom, see the module docstring)
    return frozenset(t for t in found if t != name and not name.startswith(t + "."))


@functools.lru_cache(maxsize=None)
def _graph(module_level_only: bool) -> MappingProxyType:
    """module -> the align modules it imports; built once per level and shared by the tests (read-only)."""
    return MappingProxyType({m: _imports(p, m, module_level_only) for m, p in MODULES.items()})


def _find_cycle(graph: dict):
    """A cycle as a list of modules, or None (iterative DFS, white/grey/black)."""
    state = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
                path.append(nxt)
    return None


def test_the_parser_sees_imports():
    g = _graph(module_level_only=False)
    assert "align.demo.run" in g["align.cli"]                 # lazy import inside cmd_demo
    assert "align.demo.run" not in _graph(module_level_only=True)["align.cli"]
    assert "align.bench.zeroshot" in g["align.bench"]         # `from align.bench import retrieval, zeroshot`
    assert "align.bench" not in g["align.bench.zeroshot"]     # own package: left out by design
    assert {"align.config", "align.train.setup", "align.train.feed"} <= g["align.train.loop"]
    assert "align.train.evaluate" in g["align.train.feed"]               # lazy import inside fit_val_tasks
    assert "align.train.evaluate" not in _graph(module_level_only=True)["align.train.feed"]
    assert "align.towers" in g["align.towers.base"] or "align.towers.base" in g["align.towers"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "all-levels"])
def test_no_import_cycle(module_level_only):
    cycle = _find_cycle(_graph(module_level_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cli_and_demo_do_not_import_each_other():
    g = _graph(module_level_only=False)
    demo = {m for m in MODULES if m == "align.demo" or m.startswith("align.demo.")}
    assert not any(t == "align.cli" for m in demo for t in g[m]), "align.demo imports align.cli"
    # the CLI starts the demo lazily (cmd_demo) but nothing in align.demo reaches back into the CLI
    reach, todo = set(), list(demo)
    while todo:
        m = todo.pop()
        for t in g[m]:
            if t not in reach:
                reach.add(t)
                todo.append(t)
    assert "align.cli" not in reach
