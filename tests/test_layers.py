"""The import layers of align hold: every import (function-level lazy imports included) runs down the table.

    cli      align.cli, align.cli_data
      |
    app      align.train  align.bench  align.export  align.demo  align.api  align.sweep  align.config
      |      (siblings import each other only through APP_SHARED)
    core     align.data (stream, write, tools)      model: align.model, align.towers, align.losses,
      |                                                    align.open_clip_files
      |      (data and model do not import each other)
    format   align.media (audio/image primitives)   align.wds (the shard format: imports nothing else from align)
      |
    base     align (package), align.errors, align.registry, align.templates, align.shipped, align.limits

A group may import its own modules and the groups listed for it in ALLOWED, nothing else. `align.config`
sits at the app layer, not at the base: it checks recipe names against the registries of towers, losses,
augment stages and benchmarks, so it imports (lazily) from the layers below and from bench; nothing below
the app layer reads a recipe. The one upward edge is `align.load` in align/__init__.py: a lazy import of
the model factory (align.bench.models.load_model), allowed in EXCEPTIONS and checked to stay lazy.

A second rule: no module imports another module's private name (`from align.x import _y`, or
`align.x._y` / `mod._y` on an imported align module).

The import parsing is tests/test_imports.py's (same module list, same relative-import resolution).
"""
import ast

from tests.test_imports import MODULES, _is_pkg, _imports

# group -> package prefixes (a module belongs to the group of its longest matching prefix)
GROUPS = {
    "base": ["align", "align.errors", "align.registry", "align.templates", "align.shipped", "align.limits",
             "align.progress", "align.runlock", "align.yaml_files", "align.text", "align.hub",
             "align.writes"],
    "wds": ["align.wds"],
    "media": ["align.media"],
    "data": ["align.data"],
    "model": ["align.model", "align.towers", "align.losses", "align.open_clip_files"],
    "train": ["align.train"],
    "bench": ["align.bench"],
    "export": ["align.export"],
    "demo": ["align.demo"],
    "retrieval": ["align.retrieval"],
    "api": ["align.api"],
    "sweep": ["align.sweep"],
    "config": ["align.config", "align.config_keys", "align.config_types"],
    "cli": ["align.cli", "align.cli_data", "align.__main__"],
}
LAYER = {"base": 0, "wds": 1, "media": 1, "data": 2, "model": 2,
         "train": 3, "bench": 3, "export": 3, "demo": 3, "retrieval": 3, "api": 3, "sweep": 3, "config": 3,
         "cli": 4}
BELOW_APP = {"data", "model", "wds", "media", "base"}
APP = {g for g, n in LAYER.items() if n == 3}
# group -> the groups it may import (its own group always)
ALLOWED = {
    "base": set(),
    "wds": set(),                       # the shard format stands alone: no align import at all
    "media": {"base"},
    "data": {"wds", "media", "base"},
    "model": {"wds", "media", "base"},
    **{g: BELOW_APP for g in APP},
    "cli": set(GROUPS),
}
# what an app group may import from another app group: the run's checkpoints and files, the val-set
# evaluation, the model loader, the recipe, the training entry point, the full-disk line, and the benchmark runners
APP_SHARED = {
    "align.api",                        # align.api.load: an align run, checkpoint or export
    "align.config",                     # the recipe
    "align.config_keys",                # the recipe key reference (sweep spaces check their keys)
    "align.train",                      # `from align.train import train` (the package's lazy entry point)
    "align.train.checkpoint",           # checkpoint files
    "align.train.rundir",               # the names of a run dir's files
    "align.train.evaluate",             # val-set evaluation and its metric names
    "align.train.init_from",            # starting weights (also WiSE-FT's, in align.export)
    "align.bench",                      # the BENCHMARKS registry of runners
    "align.bench.models",               # the model factory (align.load, align bench --model)
    "align.bench.datasets",             # eval sets for the runners
    "align.bench.embed",                # batched, cached encoding (also align.retrieval's)
    "align.bench.engine",               # --engine torch | onnxruntime (also align embed's and filter's)
    "align.bench.index",                # the FAISS index registry (align.retrieval builds on it)
    "align.bench.cli",                  # check_device: one --device rule for bench and retrieval commands
    "align.bench.report",               # result files and tables
    "align.bench.figures",              # result figures (the demo report's confusion matrices)
}
# (importer, imported) -> why; must be a function-level (lazy) import
EXCEPTIONS = {
    ("align", "align.bench.models"): "align.load() is the model factory's public face",
    ("align", "align.bench"): "its package runs first when align.load imports align.bench.models",
    ("align", "align.retrieval.embed"): "align.embed() is the corpus embedder's public face",
    ("align", "align.retrieval.search"): "align.Index (lazy module __getattr__) is the search index's public face",
    ("align", "align.retrieval"): "its package runs first when align.embed / align.Index import its modules",
}


def group_of(module: str) -> str:
    best, found = -1, None
    for g, prefixes in GROUPS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best and (p != "align" or module == "align"):
                best, found = len(p), g
    return found


def allowed(importer: str, imported: str) -> bool:
    gi, gt = group_of(importer), group_of(imported)
    if gi == gt or gt in ALLOWED[gi]:
        return True
    if gi in APP and gt in APP:
        return imported in APP_SHARED
    return (importer, imported) in EXCEPTIONS


def layer_violations(graph: dict) -> list:
    """One line per import that breaks the table, sorted."""
    out = []
    for m, targets in graph.items():
        for t in sorted(targets):
            if not allowed(m, t):
                out.append(f"{m} ({group_of(m)}) imports {t} ({group_of(t)})")
    return sorted(out)


def _base(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    parts = parts[: len(parts) - node.level + (1 if _is_pkg(importer) else 0)]
    return ".".join(parts + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(module: str, source: str) -> list:
    """`from align.x import _y` and `<align module>._y` in a module's source (its own names excepted)."""
    tree = ast.parse(source)
    out, bound = [], {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("align"):
                    bound[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(n, ast.ImportFrom):
            base = _base(n, module)
            if not (base == "align" or base.startswith("align.")) or base == module:
                continue
            for a in n.names:
                if _private(a.name):
                    out.append((n.lineno, f"{module}:{n.lineno} imports {base}.{a.name}"))
                elif f"{base}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{base}.{a.name}"
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr):
            v = n.value
            while isinstance(v, ast.Attribute):
                v = v.value
            if isinstance(v, ast.Name) and v.id in bound:
                out.append((n.lineno, f"{module}:{n.lineno} uses {ast.unparse(n)}"))
    return [line for _, line in sorted(out)]


def test_every_module_has_a_group():
    assert [m for m in MODULES if group_of(m) is None] == []
    assert group_of("align") == "base" and group_of("align.api") == "api"
    assert group_of("align.data.stream.loader") == "data" and group_of("align.towers.audio") == "model"


def test_the_table_catches_what_it_should():
    g = {"align.wds.format": {"align.errors"}, "align.towers.audio": {"align.data.stream.loader"},
         "align.data.write.shards": {"align.bench.templates"}, "align.train.loop": {"align.bench.zeroshot"},
         "align.bench.datasets": {"align.data.write.inputs", "align.train.checkpoint"}, "align": {"align.api"}}
    assert layer_violations(g) == [
        "align (base) imports align.api (api)",
        "align.data.write.shards (data) imports align.bench.templates (bench)",
        "align.towers.audio (model) imports align.data.stream.loader (data)",
        "align.train.loop (train) imports align.bench.zeroshot (bench)",
        "align.wds.format (wds) imports align.errors (base)"]
    src = "from align.api import _find\nimport align.x as m\nfrom align.data import write\nm._y()\nwrite._z\n"
    assert private_imports("align.train.init_from", src) == [
        "align.train.init_from:1 imports align.api._find", "align.train.init_from:4 uses m._y",
        "align.train.init_from:5 uses write._z"]


def test_imports_run_down_the_layers():
    graph = {m: _imports(p, m, module_level_only=False) for m, p in MODULES.items()}
    bad = layer_violations(graph)
    assert not bad, "imports against the layer table (tests/test_layers.py):\n" + "\n".join(bad)


def test_the_exceptions_are_lazy_and_used():
    top = {m: _imports(p, m, module_level_only=True) for m, p in MODULES.items()}
    every = {m: _imports(p, m, module_level_only=False) for m, p in MODULES.items()}
    for importer, imported in EXCEPTIONS:
        assert imported in every[importer], f"unused exception {importer} -> {imported}: remove it"
        assert imported not in top[importer], f"{importer} imports {imported} at module level"


def test_no_module_imports_a_private_name_of_another():
    bad = [line for m, p in sorted(MODULES.items()) for line in private_imports(m, open(p).read())]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_every_package_docstring_names_its_modules():
    """Each package's __init__ docstring lists its modules and subpackages (README "Layout" gives the tree)."""
    import os
    missing = []
    for pkg, path in sorted(MODULES.items()):
        if not path.endswith("__init__.py") or pkg == "align":
            continue
        doc = ast.get_docstring(ast.parse(open(path).read())) or ""
        words = set(doc.replace("/", " ").replace(",", " ").replace("(", " ").replace(")", " ").split())
        folder = os.path.dirname(path)
        for name in sorted(os.listdir(folder)):
            stem = name[:-3] if name.endswith(".py") else name
            is_mod = name.endswith(".py") and name != "__init__.py"
            is_pkg = os.path.isfile(os.path.join(folder, name, "__init__.py"))
            if (is_mod or is_pkg) and not words & {stem, f"{stem}:", f"{stem}.py"}:
                missing.append(f"{pkg}: its docstring does not name {stem}")
    assert not missing, "\n".join(missing)


def test_the_readme_draws_this_table():
    """README's layer picture names every group's packages and every APP_SHARED module."""
    import os
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    start = readme.index("Imports run one way")
    block = readme[start:readme.index("```", readme.index("```", start) + 3)]
    want = {p.rpartition(".")[2] for prefixes in GROUPS.values() for p in prefixes if p != "align"}
    want |= {m if m.count(".") == 1 else m.partition(".")[2] for m in APP_SHARED}
    assert sorted(w for w in want if w not in block) == []


def _layout_tree():
    """README "Layout" tree: {path it names: its description}, paths built from the indentation (2 per level)."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    start = readme.index("```", readme.index("\n## Layout")) + 3
    entries, stack = {}, []
    for line in readme[start:readme.index("```", start)].strip("\n").splitlines():
        head = line[:26]
        if not head.strip():                      # a continuation of the entry above
            entries[path] += " " + line.strip()
            continue
        depth, name = (len(head) - len(head.lstrip())) // 2, head.split()[0]
        stack[depth:] = [name.rstrip("/")]
        path = "/".join(stack) + ("/" if name.endswith("/") else "")
        entries[path] = line[26:].strip()
    return root, entries


def test_the_readme_layout_names_every_package_and_module_and_only_files_that_exist():
    """The tree left out the whole `sweep/` package and modules of others (train's dataworkers, hooks, teacher;
    losses' distill; stream's keys, pack, val_split, ...): every folder and file it names exists, every align/
    package and top-level module has its line, and each package's line names each of its modules."""
    import os
    import re
    root, entries = _layout_tree()
    wrong = [f"README Layout names {p}, which does not exist" for p in entries
             if not os.path.exists(os.path.join(root, p))]
    for d, dirs, files in os.walk(os.path.join(root, "align")):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        rel = os.path.relpath(d, root).replace(os.sep, "/")
        if rel == "align":
            wrong += [f"README Layout has no line for align/{f}" for f in files
                      if f.endswith(".py") and f != "__init__.py" and f"align/{f}" not in entries]
            continue
        if rel + "/" not in entries:
            wrong.append(f"README Layout has no line for {rel}/")
            continue
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", entries[rel + "/"]))
        wrong += [f"README Layout's {rel}/ does not name its module {f[:-3]}" for f in files
                  if f.endswith(".py") and f != "__init__.py" and f[:-3] not in words]
    assert not wrong, "\n".join(wrong)


def test_the_readme_layout_names_every_align_command():
    """cli.py's line left out `align checkpoints`: every command and `align data` subcommand is on the line of
    the module that parses it (cli.py, cli_data.py, or retrieval/ for embed, index, search, serve, data filter)."""
    import argparse
    import re
    from align.cli import build_parser
    _, entries = _layout_tree()

    def commands(parser):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return sub.choices

    def named(*paths):
        return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(entries[p] for p in paths)))

    top = commands(build_parser())
    missing = sorted(set(top) - named("align/cli.py", "align/retrieval/"))
    data = set(commands(top["data"])) - named("align/cli_data.py", "align/retrieval/")
    missing += [f"data {c}" for c in sorted(data)]
    assert not missing, f"README Layout names no module for: {missing}"


def test_tests_readme_lists_every_test_folder():
    """tests/README.md's list of the folders that mirror align/ left out tests/retrieval/."""
    import os
    import re
    from braceexpand import braceexpand
    here = os.path.dirname(os.path.abspath(__file__))
    intro = open(os.path.join(here, "README.md"), encoding="utf-8").read().split("\n\n")[1]
    listed = {p.strip("/") for m in re.findall(r"`tests/([\w{},/]+/)`", intro) for p in braceexpand(m)}
    folders = {os.path.relpath(d, here).replace(os.sep, "/") for d, dirs, files in os.walk(here)
               if d != here and "__pycache__" not in d and any(f.startswith("test_") for f in files)}
    assert not folders - listed, f"tests/README.md does not list: {sorted(folders - listed)}"
