"""Typed conversion of a recipe's YAML into its dataclasses (align.config's schema): each value checked against
its field's type hint and the bounds in its metadata (`_num(5e-4, ge=0)` in align.config), an unknown key named
with the closest valid one. Every mistake is a ConfigError naming the dotted key; nothing here knows the recipe's
sections, so the schema and its cross-field checks stay in align.config.
"""
import dataclasses
import difflib
import math
import typing
from typing import Any, Dict, List, Literal, Optional, Union

from align.errors import ConfigError


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:                 # Optional[X]: X's own, more specific message
            return _convert(value, options[0], key)
        # A mapping or list can only mean the option of that shape: report its own error (e.g. the
        # unknown key `url` of a data.train source) rather than "expected a string or a list".
        shaped = [a for a in options if _shape(a) == _shape_of(value)] if _shape_of(value) else []
        if len(shaped) == 1:
            return _convert(value, shaped[0], key)
        for a in options:
            try:
                return _convert(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_tname(a) for a in options)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return to_dataclass(tp, value, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):          # PyYAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp}")


def _shape(tp) -> Optional[str]:
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Dict):
        return "mapping"
    if typing.get_origin(tp) in (list, List):
        return "list"
    return None


def _shape_of(value) -> Optional[str]:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else None


def _check_bounds(value, f: dataclasses.Field, key: str) -> None:
    """Bounds from _num(...) metadata; None (unset optional) is always fine."""
    bounds = f.metadata.get("bounds") if f.metadata else None
    if not bounds or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):     # .inf passes `> 0`; NaN passes nothing
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    ok = {"ge": value >= bounds.get("ge", value), "gt": "gt" not in bounds or value > bounds["gt"],
          "le": value <= bounds.get("le", value), "lt": "lt" not in bounds or value < bounds["lt"]}
    if not all(ok.values()):
        words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        want = " and ".join(f"{words[k]} {v}" for k, v in bounds.items())
        raise ConfigError(f"{key}: must be {want}, got {value!r}")


def _tname(tp) -> str:
    if typing.get_origin(tp) in (list, List):
        return "a list"
    if typing.get_origin(tp) in (dict, Dict):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", None) or str(tp).replace("typing.", ""))


def to_dataclass(cls, data: dict, prefix: str):
    """`data` (a mapping read from YAML) as an instance of the dataclass `cls`; prefix: the dotted key of `data`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        raise ConfigError(f"unknown key {where!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; valid keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
            _check_bounds(kwargs[name], f, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)
