"""Small registries keyed by explicit type names.

Towers, losses, data stages and benchmarks register themselves under a
`type` string that recipes name exactly. Nothing is looked up by a
substring of a model name.

A registry may take a `load` function that imports the modules which fill it: it runs on the first lookup, not
when the registry is defined, so a package can publish its registry without importing torch (align.bench).
A second thread's first lookup runs it too and Python's per-module import locks make it wait until every such
module has finished registering, so no thread sees the registry half-filled.
"""
from typing import Callable, Dict, Generic, Optional, TypeVar

from align.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping with a clear error for unknown names."""

    def __init__(self, kind: str, load: Optional[Callable[[], None]] = None):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._load = load                 # imports the modules that register into it, on the first lookup

    def _loaded(self) -> Dict[str, T]:
        if self._load is not None:
            self._load()                  # an import another thread is running: waits for it to finish
            self._load = None
        return self._items

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        items = self._loaded()
        if name not in items:
            raise ConfigError(f"unknown {self.kind} type {name!r}; valid: {', '.join(sorted(items))}")
        return items[name]

    def names(self):
        return sorted(self._loaded())

    def __contains__(self, name: str) -> bool:
        return name in self._loaded()
