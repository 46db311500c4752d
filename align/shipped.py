"""Files shipped with the package and found by name: recipes (`align train demo`) and benchmark suites
(`align bench suite demo`). One resolver for both, so both follow the same rules:

  - an existing file wins (a path, relative to the working directory);
  - else a bare name (no path separator) is looked up as NAME or NAME.yaml in the shipped folder;
  - else one line naming what was asked for and listing the shipped names.
"""
import os
from typing import List

from align.errors import ConfigError


def shipped_names(folder: str) -> List[str]:
    """The names of the YAML files in `folder` (without .yaml), sorted."""
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def resolve_shipped(name: str, folder: str, kind: str) -> str:
    """A path to an existing file, or the shipped `kind` (recipe, suite) called `name` in `folder`."""
    if os.path.isfile(name):
        return name
    cand = os.path.join(folder, name if name.endswith(".yaml") else name + ".yaml")
    if os.sep not in name and (os.altsep is None or os.altsep not in name) and os.path.isfile(cand):
        return cand
    raise ConfigError(f"{kind} not found: {name} (not a file, nor a shipped {kind}: "
                      f"{', '.join(shipped_names(folder))})")


# -- recipes -------------------------------------------------------------------------
_PKG = os.path.dirname(os.path.abspath(__file__))


def recipes_dir() -> str:
    """$ALIGN_RECIPES, else the recipes installed with the package (align/recipes: the repo's recipes/
    folder, shipped as package data), else those of a source checkout or editable install (recipes/)."""
    if os.environ.get("ALIGN_RECIPES"):
        return os.environ["ALIGN_RECIPES"]
    candidates = [os.path.join(_PKG, "recipes"), os.path.join(os.path.dirname(_PKG), "recipes")]
    for d in candidates:
        if os.path.isdir(d):
            return d
    raise ConfigError(f"no shipped recipes: neither {' nor '.join(candidates)} exists (a broken install? "
                      f"reinstall align-clip, or set ALIGN_RECIPES to a folder of recipes)")


def resolve_recipe(name: str) -> str:
    """A path, or the name of a shipped recipe (`demo` -> recipes/demo.yaml): align.shipped's rules."""
    return resolve_shipped(name, recipes_dir(), "recipe")


def shipped_recipes() -> List[str]:
    """Names of the shipped recipes (`align recipes`), sorted."""
    return shipped_names(recipes_dir())


def recipe_header(path: str) -> str:
    """The opening comment block of a recipe (what it trains, launch, runtime)."""
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
    return "\n".join(lines)
