"""Errors that align reports to users as one clear line (no traceback).

Anything raised as `AlignError` is caught by the CLI and printed as
`align: error: <message>`; the message must name the file, key or sample
and say what is wrong.
"""
import re

_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")
# C0 and C1 controls, and the Unicode bidirectional controls (LRM/RLM, embeddings and overrides, isolates): a key
# with U+202E RIGHT-TO-LEFT OVERRIDE prints "gpj.exe" reversed as "exe.jpg" (the "Trojan Source" trick). Also the
# line and paragraph separators U+2028/U+2029 (a terminal or log viewer breaks the one line there) and lone
# surrogates (a file name that is not UTF-8, read with surrogateescape: print fails on them with UnicodeEncodeError)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text) -> str:
    """`text` with its control characters written as escapes (ESC as \\x1b, a newline as \\n, U+2028 as \\u2028, a
    lone surrogate as \\udcff): keys, captions and member names come from the data, and printed raw an ESC sequence
    clears the screen, retitles the terminal or writes the clipboard (OSC 52)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def without_reprs(text: str, name: str = "the bytes given") -> str:
    """A library's error text with Python object reprs replaced by `name`: PIL and libsndfile name an
    in-memory file "<_io.BytesIO object at 0x7f...>", which tells a user nothing."""
    return _OBJECT_REPR.sub(name, text)


class AlignError(Exception):
    """A user-facing error: bad recipe, bad path, bad sample, refused file."""


def make_folder(path, what: str = "output", shown=None) -> None:
    """os.makedirs(path, exist_ok=True), or one AlignError line naming the folder (or `shown`: the --out a
    temporary folder is built for) and why not (a read-only place, no permission, a file on the way): an --out
    that cannot be written is never a bare traceback."""
    import os
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        why = "a file is on the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise AlignError(f"{shown or path}: cannot create the {what} folder ({why})") from None


class ConfigError(AlignError):
    """A recipe key is unknown, mistyped, or missing."""


class DataError(AlignError):
    """A dataset path, shard pattern or sample cannot be used."""


class SourceUnavailable(DataError):
    """A remote data source stayed unreachable for the whole retry budget (align.data.stream.remote).
    `align train` saves a checkpoint and the CLI exits with status 75 (rerun to resume)."""
