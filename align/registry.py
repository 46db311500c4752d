"""Small registries keyed by explicit type names.

Towers, losses, data stages and benchmarks register themselves under a
`type` string that recipes name exactly. Nothing is looked up by a
substring of a model name.
"""
from typing import Callable, Dict, Generic, TypeVar

from align.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping with a clear error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} type {name!r}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self):
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
