"""The recipe key reference (`align train NAME --help-keys`, `align sweep` spaces): every key of a recipe, its
type as a recipe writer reads it, its default and its help, read from the dataclasses in align.config that
validate recipes, so the reference cannot drift from what is accepted."""
import dataclasses
import typing
from typing import Any, Dict, List, Literal, Union

from align.config import Recipe, SourceConfig


def type_name(tp) -> str:
    """A field's type as a recipe writer reads it: int, number, list[str], map[str, any], fp32|bf16|fp16, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        opts = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(opts) + (" | null" if type(None) in args else "")
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (list, List):
        return f"list[{type_name(args[0])}]"
    if origin in (dict, Dict):
        return f"map[{type_name(args[0])}, {type_name(args[1])}]"
    if dataclasses.is_dataclass(tp):
        return "section" if tp is not SourceConfig else "{urls, weight}"
    return {str: "str", int: "int", float: "number", bool: "bool", Any: "any"}.get(tp, str(tp))


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
        return None if dataclasses.is_dataclass(v) else v
    return dataclasses.MISSING


def recipe_keys(cls=None, prefix: str = "") -> List[dict]:
    """Every recipe key, from the same dataclasses that validate recipes: [{key, type, default, help}, ...].

    Sections come before their keys; a dataclass inside a list (data.train's sources) is listed as KEY[].FIELD.
    default is dataclasses.MISSING for a required key; help is the field's metadata["help"] ("" if none)."""
    cls = cls or Recipe
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        out.append({"key": key, "type": type_name(tp), "default": _default(f),
                    "help": (f.metadata or {}).get("help", "")})
        if dataclasses.is_dataclass(tp):
            out += recipe_keys(tp, key + ".")
        for inner in _nested_dataclasses(tp):
            out += recipe_keys(inner, key + "[].")
    return out


def _nested_dataclasses(tp) -> List[type]:
    """Dataclasses anywhere inside a list/union type (not the type itself): data.train -> [SourceConfig]."""
    found = []
    for a in typing.get_args(tp):
        for d in ([a] if dataclasses.is_dataclass(a) else _nested_dataclasses(a)):
            if d not in found:
                found.append(d)
    return found
