"""Caption text rules every layer shares: where a line of a text file ends, and text no tokenizer can read.

- `split_lines(text)`: the lines of a captions file, table cell or list file, ended by \\n, \\r\\n or \\r only.
  `str.splitlines` also ends a line at U+2028, U+2029, U+0085, \\x0b, \\x0c and \\x1c-\\x1e: characters inside one
  caption (a line separator pasted from a web page or a PDF), which it cut into two captions.
- `lone_surrogate(text)`: "" or "lone surrogate at position N" (N counts code points from 0, as Python's codecs
  do). Half of a UTF-16 pair (a JSON "\\ud800" escape, a name decoded with surrogateescape) is no character: UTF-8
  cannot hold it, the Hugging Face tokenizers fail on it with a TypeError and open_clip's turn it into U+FFFD, so
  every text path refuses it the same way (a caption: the sample is skipped and counted; a typed text: one line).
- `first_surrogate(texts)`: (index, that phrase) of the first text holding one, or (-1, "").
- `refuse_surrogates(texts, what)`: DataError naming the first text of `texts` that holds one (the text towers'
  `tokenize` and `align.model.text_list`).
- `json_utf8(json_text)`: JSON written with ensure_ascii=False, each lone surrogate as its \\uXXXX escape, so UTF-8
  can hold it (a key or path from a file name that is not UTF-8, read with surrogateescape) and it loads back as it was.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

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


def json_utf8(json_text: str) -> str:
    """`json_text` (json.dumps with ensure_ascii=False) with every surrogate code point written as its JSON escape:
    other text stays readable, and the result encodes to UTF-8 (a surrogate can only stand inside a JSON string)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def first_surrogate(texts: Sequence[str]) -> Tuple[int, str]:
    """(i, "lone surrogate at position N") of the first text of `texts` (non-strings passed over) that holds one,
    else (-1, ""): each caller names the text its own way (texts[i], caption i + 1 of n)."""
    for i, t in enumerate(texts):
        bad = lone_surrogate(t) if isinstance(t, str) else ""
        if bad:
            return i, bad
    return -1, ""


def refuse_surrogates(texts: Sequence[str], what: str = "tokenize") -> None:
    """DataError "WHAT: texts[i]: lone surrogate at position N (...)" for the first such text of `texts`."""
    i, bad = first_surrogate(texts)
    if bad:
        raise DataError(f"{what}: texts[{i}]: {bad} ({WHY})")
