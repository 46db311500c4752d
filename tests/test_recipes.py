"""Every shipped recipe parses, opens with its header comment, and builds its model; the commands its header gives
(`$ ...` lines) parse with the CLI's own parser and name recipes, overrides and extras that exist; README's table
of recipes lists exactly the shipped ones."""
import glob
import os
import re
import shlex

import pytest

from align.shipped import recipe_header
from align.config import load_recipe

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))
NAMES = [os.path.basename(p)[:-5] for p in RECIPES]
REQUIRED = {"demo", "clip-vit-b32", "siglip-vit-b16", "audio-text", "bind", "lit-minilm"}


def test_required_recipes_ship():
    assert REQUIRED <= set(NAMES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_parses_and_documents_itself(path):
    r = load_recipe(path)
    head = recipe_header(path).lower()
    assert "launch" in head and "expected" in head, "header must say launch command and expected result"
    assert len(r.model.towers) >= 2


def header_commands(head: str):
    """The shell commands of a recipe header: each line whose text starts with '$ ' (a trailing backslash
    continues it on the next line), split as a shell splits it, a trailing '# ...' comment dropped."""
    cmds, cur = [], None
    for line in head.splitlines():
        text = line.strip()
        if cur is None and not text.startswith("$ "):
            continue
        cur = (cur or "") + " " + (text[2:] if cur is None else text)
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        cmds.append(shlex.split(cur, comments=True))
        cur = None
    assert cur is None, f"a command ends in a backslash with nothing after it: {cur}"
    return cmds


def _extras():
    """The extras pyproject.toml declares (the names before ' = [' in [project.optional-dependencies])."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, re.M))


def check_command(argv, name):
    """One header command: the one line it would fail with, or None; an `align train` of recipe `name` -> 'trains'."""
    from align.cli import build_parser
    from align.shipped import resolve_recipe
    if argv[:2] == ["pip", "install"]:
        for pkg in argv[2:]:
            m = re.fullmatch(r"align-clip\[([\w,]+)\]", pkg)
            if pkg.split("[")[0] == "align" or (m and not set(m.group(1).split(",")) <= _extras()):
                return f"{pkg}: not an extra of align-clip ({sorted(_extras())}; `align` on PyPI is another project)"
        return None
    if argv[0] == "python":
        return None if os.path.isfile(os.path.join(ROOT, argv[1])) else f"{argv[1]}: no such script"
    if argv[:2] == ["accelerate", "launch"]:
        assert "-m" in argv and argv[argv.index("-m") + 1] == "align.cli", argv
        argv = ["align"] + argv[argv.index("-m") + 2:]
    if argv[0] != "align":
        return f"{argv[0]}: not a command a recipe header may give"
    try:
        a, extra = build_parser().parse_known_args(argv[1:])
    except SystemExit:
        return f"{' '.join(argv)}: align's parser refuses it"
    if extra and not (hasattr(a, "overrides") and all("=" in e and not e.startswith("-") for e in extra)):
        return f"unrecognized arguments: {extra}"
    if a.cmd in ("train", "demo"):
        recipe = a.recipe if a.cmd == "train" else "demo"
        if recipe not in NAMES:
            return f"{recipe}: not a shipped recipe ({NAMES})"
        load_recipe(resolve_recipe(recipe), list(a.overrides) + list(extra))    # an unknown key: ConfigError
        return "trains" if recipe == name else None
    return None


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.basename(p))
def test_header_commands_parse_and_train_this_recipe(path):
    name = os.path.basename(path)[:-5]
    head = recipe_header(path)
    results = [check_command(argv, name) for argv in header_commands(head)]
    assert [r for r in results if r not in (None, "trains")] == []
    assert "trains" in results, f"{name}: no `$ align train {name} ...` (or `$ align demo`) line in its header"
    expected = next(l for l in head.splitlines() if l.startswith("Expected"))
    rest = head[head.index(expected):]
    assert "RESULTS.md" in rest or "not measured" in expected, f"{name}: Expected cites no measured figure"


def test_header_commands_are_checked():
    """The checker refuses what drifted before: an unknown recipe, an unknown key, an option align lacks."""
    assert header_commands("Launch:\n  $ align train demo \\\n    train.lr=0.1   # note\nExpected") == [
        ["align", "train", "demo", "train.lr=0.1"]]
    assert check_command(["align", "train", "demo"], "demo") == "trains"
    assert "not a shipped recipe" in check_command(["align", "train", "no-such-recipe"], "demo")
    assert "parser refuses" in check_command(["align", "export", "run"], "demo")          # --out is required
    assert "not an extra" in check_command(["pip", "install", "align-clip[nope]"], "demo")
    from align.errors import ConfigError
    with pytest.raises(ConfigError):
        check_command(["align", "train", "demo", "train.no_such_key=1"], "demo")


def test_readme_table_lists_the_shipped_recipes():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("| recipe | trains |")
    rows = re.findall(r"^\| `([\w-]+)` \|", text[start:text.index("\n\n", start)], re.M)
    assert sorted(rows) == sorted(NAMES)


@pytest.mark.parametrize("name", ["demo", "bind"])
def test_cpu_recipes_build_their_models(name):
    from align.model import build_model
    r = load_recipe(os.path.join(ROOT, "recipes", f"{name}.yaml"))
    m = build_model(r.model)
    assert set(m.modalities) == {"image", "text", "audio"}


def test_bind_never_pairs_audio_with_image():
    r = load_recipe(os.path.join(ROOT, "recipes", "bind.yaml"))
    assert all(set(p) != {"audio", "image"} for p in r.loss.pairs)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.basename(p))
def test_a_wholly_locked_hf_text_tower_caches_its_outputs(path):
    """A locked Hugging Face text tower without unlocked layers gives the same output for the same caption
    (cache_texts is exact), and its forward is most of a step's time: the small LiT recipes cached, lit-minilm did
    not (80 distinct demo captions encoded again at every step)."""
    for name, t in load_recipe(path).model.towers.items():
        if t.get("type") == "hf" and t.get("lock") and not t.get("unlocked_layers"):
            assert t.get("cache_texts", 0) > 0, f"{os.path.basename(path)}: towers.{name} sets no cache_texts"
