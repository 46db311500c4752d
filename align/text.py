"""Caption text rules every layer shares: where a line of a text file ends, and text no tokenizer can read.

- `split_lines(text)`: the lines of a captions file, table cell or list file, ended by \\n, \\r\\n or \\r only.
  `str.splitlines` also ends a line at U+2028, U+2029, U+0085, \\x0b, \\x0c and \\x1c-\\x1e: characters inside one
  caption (a line separator pasted from a web page or a PDF), which it cut into two captions.
- `lone_surrogate(text)`: "" or "lone surrogate at position N" (N counts code points from 0, as Python's codecs
  do). Half of a UTF-16 pair (a JSON "\\ud800" escape, a name decoded with surrogateescape) is no character: UTF-8
  cannot hold it, the Hugging Face tokenizers fail on it with a TypeError and open_clip's turn it into U+FFFD, so
  every text path refuses it the same way (a caption: the sample is skipped and counted; a typed text: one line).
- `refuse_surrogates(texts, what)`: DataError naming the first text of `texts` that holds one (the text towers'
  `tokenize` and `align.model.text_list`).
"""
from __future__ import annotations

import re
from typing import List, Sequence

from align.errors import DataError

_LINE_END = re.compile("\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
WHY = "half of a UTF-16 pair, not a character: no tokenizer reads it"


def split_lines(text: str) -> List[str]:
    """`text` cut at \\n, \\r\\n and \\r (nothing else), as str.splitlines cuts: no last empty line after a final
    line end ("a\\n" -> ["a"], "" -> [])."""
    lines = _LINE_END.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def lone_surrogate(text: str) -> str:
    """"lone surrogate at position N" for the first surrogate code point in `text`, or ""."""
    m = _SURROGATE.search(text)
    return f"lone surrogate at position {m.start()}" if m else ""


def refuse_surrogates(texts: Sequence[str], what: str = "tokenize") -> None:
    """DataError "WHAT: texts[i]: lone surrogate at position N (...)" for the first such text of `texts`."""
    for i, t in enumerate(texts):
        bad = lone_surrogate(t) if isinstance(t, str) else ""
        if bad:
            raise DataError(f"{what}: texts[{i}]: {bad} ({WHY})")
