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
