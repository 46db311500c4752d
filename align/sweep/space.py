"""SPACE.yaml: dotted recipe keys mapped to the distributions a sweep draws them from.

    train.lr: {log_uniform: [1.0e-4, 3.0e-3]}          # float, drawn on a log scale
    train.weight_decay: {uniform: [0.0, 0.3]}           # float (optional step: 0.05)
    train.max_steps: {int: [100, 400], step: 50}        # int (optional step, or log: true)
    model.open_clip.vision_cfg.width: {choice: [64, 128]}
    data.augment: {choice: {none: null, blur: {image: [{type: blur}]}}}   # labelled values (any YAML)

A `choice` is a list of values, or a mapping label -> value. Optuna stores categorical values only as
null/bool/int/float/str, so a list entry that is a mapping or a list is stored under a short YAML label
(`{image: [{type: blur}]}`); labels are what the summary table and the plot show.

Checked against the recipe's own schema (align.config): a key must be a recipe key (`align train NAME
--help-keys`) or lie inside one of its free-form mappings (model.towers.audio.width,
model.open_clip.vision_cfg.width, data.augment.image) whose parent the recipe has; and the recipe, with
each end of the range (each choice) set, must still load -- and build its towers where the value changes
a tower's section (model.towers.*, model.open_clip.*, model.embed_dim): the recipe's schema leaves a tower's
options to the tower, which checks them when the model is built, so a typo such as
model.towers.audio.widht would otherwise pass here and fail every trial. Every bad key gives one line naming
the file and the key; all of them are reported together.
"""
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from align.config import apply_override, parse_recipe
from align.config_keys import recipe_keys
from align.errors import ConfigError
from align.yaml_files import read_yaml

DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")
OPTIONS = {"uniform": {"step"}, "log_uniform": set(), "int": {"step", "log"}, "choice": set()}
SCALARS = (type(None), bool, int, float, str)


@dataclass
class Param:
    """One tuned recipe key. For a choice, `values[i]` is what the recipe gets, `labels[i]` what Optuna stores."""
    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: Optional[float] = None
    log: bool = False
    values: List[Any] = field(default_factory=list)
    labels: List[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        """Draws (or, for a retried trial, reads back) the value from an optuna.Trial; returns the recipe value."""
        if self.kind == "choice":
            return self.value_of(trial.suggest_categorical(self.key, self.labels))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def value_of(self, stored: Any) -> Any:
        """Optuna's stored param -> the recipe value (a choice label -> its value)."""
        return self.values[self.labels.index(stored)] if self.kind == "choice" else stored

    def ends(self) -> List[Any]:
        """The values validation loads the recipe with: both ends of a range, every choice."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> dict:
        """The param as plain data (stored with the study: a rerun with another space is refused)."""
        if self.kind == "choice":
            return {"choice": [_label(v) for v in self.values]}
        d = {self.kind: [self.low, self.high]}
        d.update({k: v for k, v in (("step", self.step), ("log", self.log or None)) if v is not None})
        return d


def _label(value: Any) -> Any:
    """A choice value as Optuna can store it: scalars as they are, the rest as one line of YAML."""
    if isinstance(value, SCALARS):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()


def override(key: str, value: Any) -> str:
    """`KEY=VALUE` for `align train` (the value in YAML flow style, which apply_override reads back)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip().removesuffix('...').strip()}"


def parse_distribution(key: str, spec: Any) -> Param:
    """{log_uniform: [lo, hi]} -> Param; ConfigError (one line, no file) when the spec is malformed."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping like {{log_uniform: [1.0e-4, 3.0e-3]}}, got {spec!r}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        raise ConfigError(f"{key}: name one distribution of {', '.join(DISTRIBUTIONS)}, got {sorted(spec)}")
    kind = kinds[0]
    extra = sorted(set(spec) - {kind} - OPTIONS[kind])
    if extra:
        raise ConfigError(f"{key}: {kind} takes {', '.join(sorted(OPTIONS[kind])) or 'no options'}, "
                          f"not {', '.join(extra)}")
    if kind == "choice":
        return _choice(key, spec["choice"])
    bounds = spec[kind]
    if isinstance(bounds, (list, tuple)):
        bounds = [_number(b) for b in bounds]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(b is not None and math.isfinite(b)
                                                                   for b in bounds)):
        raise ConfigError(f"{key}: {kind} needs [low, high], two finite numbers; got {spec[kind]!r}")
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{key}: {kind} needs low < high, got [{low:g}, {high:g}]")
    step, log = _number(spec.get("step")), spec.get("log", kind == "log_uniform")
    if "step" in spec and (step is None or step <= 0):
        raise ConfigError(f"{key}: step must be a number > 0, got {spec['step']!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{key}: log must be true or false, got {log!r}")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer() and (step is None or float(step).is_integer())):
            raise ConfigError(f"{key}: int needs integer bounds and step, got {spec!r}")
        if log and step not in (None, 1):
            raise ConfigError(f"{key}: int with log: true draws every integer (no step)")
        low, high, step = int(low), int(high), None if step is None else int(step)
    if log and low <= 0:
        raise ConfigError(f"{key}: {kind} with a log scale needs low > 0, got {low:g}")
    return Param(key, "log_uniform" if kind == "log_uniform" else kind, low, high, step, bool(log))


def _number(v) -> Optional[float]:
    """A YAML number (PyYAML reads 1e-4, without a dot, as a string) -> float or int; None if not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _choice(key: str, choices: Any) -> Param:
    if isinstance(choices, dict):
        labels, values = [str(k) for k in choices], list(choices.values())
    elif isinstance(choices, list):
        values = list(choices)
        labels = [_label(v) for v in values]
    else:
        raise ConfigError(f"{key}: choice needs a list of values or a mapping label -> value, got {choices!r}")
    if not values:
        raise ConfigError(f"{key}: choice needs at least one value")
    if len(set(map(repr, labels))) != len(labels):
        raise ConfigError(f"{key}: choice lists a value twice: {labels}")
    return Param(key, "choice", values=values, labels=labels)


def check_key(key: str, recipe: dict) -> Optional[str]:
    """Why `key` is not a key the recipe schema can take (None when it is). recipe: the recipe as a dict."""
    keys = {k["key"]: k for k in recipe_keys()}
    if key in keys:
        if keys[key]["type"] == "section":
            inside = [k for k in keys if k.startswith(key + ".")][:3]
            return f"{key} is a section; tune a key inside it ({', '.join(inside)}, ...)"
        return None
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix not in keys:
            continue
        if "map[" not in keys[prefix]["type"]:            # a typed key or section: nothing lies inside it
            valid = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == prefix)
            return ("unknown recipe key" + (f"; valid keys in {prefix}: {', '.join(valid)}" if valid else
                                            f" ({prefix} is a {keys[prefix]['type']}, not a section)"))
        if len(parts) > i + 1:                       # deeper than one level: every level must be in the recipe
            for j in range(i, len(parts)):
                node = _lookup(recipe, ".".join(parts[:j]))
                if j == i and (node is _MISSING or node is None):   # the free-form key itself may be unset
                    continue
                if not isinstance(node, dict):
                    return (f"{'.'.join(parts[:j])} is not a mapping of this recipe "
                            f"({'missing' if node is _MISSING else repr(node)}), so {key} cannot be set")
        return None
    tops = sorted(k for k in keys if "." not in k)
    return f"unknown recipe key; recipe sections and keys: {', '.join(tops)}"


_MISSING = object()


def _lookup(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


def check_values(p: Param, recipe: dict) -> Optional[str]:
    """Why the recipe refuses one of `p`'s values (None when it loads, and builds the towers the value changes,
    with each of them)."""
    base = None
    for v in p.ends():
        data = copy.deepcopy(recipe)
        try:
            apply_override(data, override(p.key, v))
            r = parse_recipe(data)
            if p.key.startswith("model."):
                base = base or parse_recipe(copy.deepcopy(recipe))
                check_towers(r.model, base.model)
        except ConfigError as e:
            return f"the recipe refuses {p.key}={_label(v)}: {e}"
    return None


def check_towers(model, base) -> None:
    """Builds each tower of `model` (a parsed ModelConfig) whose section or embed_dim differs from `base`'s, the
    way the model is built (align.towers.build_tower), for the checks the recipe's schema leaves to the towers
    (unknown or bad options); ConfigError as the build gives it, or naming the tower when the library under it
    refuses (open_clip's vision_cfg takes no unknown key either: a TypeError). The rest is built by each trial."""
    from align.towers import build_tower
    for modality, cfg in model.towers.items():
        if cfg != base.towers.get(modality) or model.embed_dim != base.embed_dim:
            try:
                build_tower(cfg, modality, model.embed_dim)
            except ConfigError:
                raise
            except Exception as e:     # the tower's library refused its options: what every trial would hit
                raise ConfigError(f"model.towers.{modality}: {type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0]}") from None


def load_space(path: str, recipe: dict) -> List[Param]:
    """SPACE.yaml -> [Param], checked against `recipe` (a recipe dict, overrides applied); ConfigError with
    one line per bad key ("SPACE: KEY: what is wrong")."""
    raw = read_yaml(path)       # one line with the line and column; a key written twice refused
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a space maps recipe keys to distributions, e.g. "
                          f"train.lr: {{log_uniform: [1.0e-4, 3.0e-3]}}")
    params, bad = [], []
    for key, spec in raw.items():
        key = str(key)
        why = check_key(key, recipe)
        if why is None:
            try:
                p = parse_distribution(key, spec)
                why = check_values(p, recipe)
                params.append(p)
            except ConfigError as e:
                why = str(e).removeprefix(f"{key}: ")
        if why:
            bad.append(f"{path}: {key}: {why}")
    if bad:
        raise ConfigError("\n".join(bad))
    return params


def describe_space(params: List[Param]) -> Dict[str, dict]:
    return {p.key: p.describe() for p in params}
