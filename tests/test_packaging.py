"""Packaging: every imported package is declared, every align/ package ships, and the wheel carries the
recipes and suites, so `align recipes` / `align demo` work after `pip install .` from any directory.

The wheel is built from a copy of the sources (a build writes build/ and *.egg-info next to pyproject.toml).
The slow test installs it into a scratch venv that reuses this venv's packages through a .pth file
(as .ci/run does) and runs the console script from another working directory.
"""
import ast
import functools
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

try:
    import tomllib
except ImportError:       # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
# import name -> distribution, for packages this venv may not have (optional extras)
NOT_INSTALLED = {"wandb": "wandb"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])


# first-party modules besides align and tests: the benchmark scripts, which import each other (and the
# GPU check's test imports them) with benchmarks/ on sys.path
# scripts that import each other by name (benchmarks/*.py, tools/*.py, and tools' own packages such as
# tools/mutations/): local modules, not distributions
SCRIPTS = {f[:-3] if f.endswith(".py") else f for d in ("benchmarks", "tools")
           for f in os.listdir(os.path.join(ROOT, d))
           if f.endswith(".py") or os.path.isfile(os.path.join(ROOT, d, f, "__init__.py"))}
# scripts that run in a peer's own environment, never in align's: their imports are that environment's
OTHER_ENV = {os.path.join("benchmarks", "clap_peer.py"): "LAION-CLAP's .clap_env (tools/make_clap_env.sh)"}


def _imports(folder: str) -> dict:
    """Top-level third-party modules imported anywhere under folder (module and function level) -> a file."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            if os.path.relpath(path, ROOT) in OTHER_ENV:
                continue
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("align", "tests") and top not in SCRIPTS:
                        out.setdefault(top, os.path.relpath(path, ROOT))
    return out


@functools.lru_cache(maxsize=None)
def _installed() -> dict:
    return md.packages_distributions()      # scans every installed distribution: once


def _dist(module: str) -> str:
    dists = _installed().get(module) or [NOT_INSTALLED.get(module, module)]
    return _norm(dists[0])


def _declared(*extras: str) -> set:
    proj = PYPROJECT["project"]
    reqs = list(proj["dependencies"])
    for e in extras:
        reqs += proj["optional-dependencies"][e]
    return {_req_name(r) for r in reqs}


def test_distribution_name_is_not_the_taken_align():
    assert PYPROJECT["project"]["name"] == "align-clip"
    assert PYPROJECT["project"]["scripts"] == {"align": "align.cli:main"}


def _doc_texts() -> dict:
    """What a user reads and copies: README.md, every recipe's header, align/'s error messages and docstrings."""
    paths = [os.path.join(ROOT, "README.md")]
    for folder in ("recipes", "align"):
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            paths += [os.path.join(d, f) for f in files if f.endswith((".yaml", ".py"))]
    return {os.path.relpath(p, ROOT): open(p, encoding="utf-8").read() for p in paths}


def test_every_pip_install_the_docs_show_names_this_distribution():
    """`pip install "align[hf]"` (two recipe headers and the README said so) installs `align` 0.1.1, an unrelated
    PyPI project: a requirement of ours is `align-clip[...]` or the checkout (`.`, `-e .`, `".[hf]"`)."""
    bad = []
    for name, text in _doc_texts().items():
        for args in re.findall(r"pip install([^\n`&;|()]*)", text):     # its arguments, up to the next command
            if any(a.strip("'\"").split("[")[0] == "align" for a in args.split()):
                bad.append(f"{name}: 'pip install{args.rstrip()}' installs PyPI's unrelated `align`")
    assert not bad, "\n".join(bad)


def test_the_readme_names_every_extra():
    """README's install paragraph lists the extras a user can ask for (`.[sweep]` was missing from it)."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    para = readme[readme.index("Extras:"):readme.index("\n\n", readme.index("Extras:"))]
    missing = [e for e in PYPROJECT["project"]["optional-dependencies"] if f"`.[{e}]`" not in para]
    assert not missing, f"README's Extras list misses: {missing}"


@pytest.mark.parametrize("folder,extras", [
    ("align", ("hf", "export", "wandb", "sweep")),  # the library: dependencies + its optional extras
    ("tests", ("dev",)),                           # the README's test command installs .[dev]
    ("benchmarks", ("dev",)),
    ("tools", ("dev",)),
])
def test_every_imported_package_is_declared(folder, extras):
    declared = _declared(*extras)
    missing = {m: f for m, f in _imports(folder).items() if _dist(m) not in declared}
    assert not missing, f"imported but not declared in pyproject.toml ({folder}): {missing}"


def test_library_needs_no_test_only_package():
    """align/ imports nothing that only the dev extra declares."""
    lib = _declared("hf", "export", "wandb", "sweep")
    dev_only = _declared("dev") - lib
    assert not {m for m in _imports("align") if _dist(m) in dev_only}


def test_every_align_package_is_listed():
    """pyproject lists packages explicitly (recipes/ is mapped to align.recipes): a new subpackage must be added."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "align"))
               if "__pycache__" not in d and any(f.endswith((".py", ".yaml")) for f in files)}
    assert on_disk | {"align.recipes"} == listed
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"align.recipes": "recipes"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("align", "recipes"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: use this venv's setuptools, offline and in seconds
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, text=True, timeout=300)
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_ships_recipes_suites_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in os.listdir(os.path.join(ROOT, "recipes")):
        assert f"align/recipes/{f}" in names
    for d, _, files in os.walk(os.path.join(ROOT, "align")):
        for f in files:
            if f.endswith((".py", ".yaml")):
                assert os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/") in names
    assert "align/bench/suites/demo.yaml" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: align-clip" in meta
    from align import __version__
    assert f"Version: {__version__}" in meta
    for dep in ("scipy", "braceexpand", "numpy", "pillow"):
        assert f"Requires-Dist: {dep}" in meta
    ep = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "align = align.cli:main" in ep


@pytest.mark.slow
def test_installed_wheel_runs_from_any_directory(wheel, tmp_path):
    """The wheel in a scratch venv (this venv's packages through a .pth): `align recipes`, `align demo --help`
    and `align bench suite demo` resolution work from an unrelated working directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_reuse_test_venv.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # --force-reinstall: an align_clip.egg-info in the checkout (an old `pip install -e .`) on PYTHONPATH made pip
    # call the wheel installed already and install nothing
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args):
        return subprocess.run([str(venv / "bin" / "align"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    out = run("recipes")
    assert out.returncode == 0, out.stderr
    assert {"demo", "bind", "clip-vit-b32"} <= {line.split()[0] for line in out.stdout.splitlines()}
    assert site in out.stdout                       # listed from the installed package, not this checkout
    assert run("demo", "--help").returncode == 0
    probe = subprocess.run([py, "-c", "import align.shipped as c, align.bench.suite as s; "
                            "print(c.resolve_recipe('demo')); print(s.load_suite('demo')[0]['dataset'])"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    recipe, dataset = probe.stdout.split()
    assert recipe.startswith(site) and dataset == str(elsewhere / "align_demo" / "data" / "val")
