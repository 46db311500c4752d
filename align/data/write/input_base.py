"""What every input of align.data.write.inputs is: an `Input` (an ordered, re-openable list of rows) of `Row`s, and
`hash_file` (a file's content fingerprint). Apart so the table reader (align.data.write.table_input) and the other
inputs (align.data.write.inputs) share them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional


@dataclass
class Row:
    """One input row. `error` is set when the row itself cannot be parsed."""

    index: int                      # position in input order (0-based)
    key: Optional[str]              # the input's own key (folder stem), if any
    values: Dict[str, Any]          # column -> raw value
    error: Optional[str] = None     # e.g. "row: invalid JSON on line 7 of x.jsonl (...)"
    reason: Optional[str] = None    # the error's short category, e.g. "row: invalid JSON"


def hash_file(path, h, block: int = 1 << 20):
    """`h` (a hashlib object) fed a file's bytes, read in blocks of `block` bytes; returned. OSError as open's."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h


class Input:
    """Base class: `columns`, `kinds` (column -> 'image'/'audio'/'label' hints
    from typed inputs), `base_dir` for relative paths, `__len__`, `rows()`."""

    kind = ""

    def __init__(self, description: str, base_dir: Path):
        self.description = description
        self.base_dir = base_dir
        self.columns: List[str] = []
        self.kinds: Dict[str, str] = {}
        self.label_names: Dict[str, List[str]] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A content fingerprint, stored with the job so a resume on changed input is refused."""
        raise NotImplementedError

    def rows(self, start: int, stop: int) -> Iterator[Row]:
        raise NotImplementedError

    def column(self, col: str) -> List[Any]:
        """All values of one column (used to collect class names before writing)."""
        return [r.values.get(col) for r in self.rows(0, len(self))]

    def iter_column(self, col: str) -> Iterator[Any]:
        """The values of one column in row order, one at a time where the input is read in chunks (TableInput):
        class names and the largest label need no list of them."""
        return iter(self.column(col))

    # Loaded data is dropped when pickled for a worker process; it re-opens lazily.
    _lazy: tuple = ()

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in self._lazy:
            state[name] = None
        return state
