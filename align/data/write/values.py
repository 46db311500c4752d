"""Readers of one raw input value (align.data.write): a row's media (path, bytes, a `datasets` Image/Audio dict)
-> bytes, its captions -> a list of strings, its label -> a class name; `SkipRow(reason, detail)` when a row
cannot be used (counted by reason in the shard writer's report, never silently lost). The inputs that hold
the rows are in align.data.write.inputs.
"""
from __future__ import annotations

import math
import re
import stat
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from align.data.stream.faults import EMPTY_CAPTION, UNDECODABLE_TEXT
from align.limits import DataLimits, MEMBER_TOO_LARGE, TEXT_TOO_LONG, as_limits
from align.text import first_surrogate, lone_surrogate, split_lines


def is_missing(value: Any) -> bool:
    """None, NaN or an empty string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


class SkipRow(Exception):
    """A row cannot become a sample. `reason` is the short category counted in
    stats.json; `detail` the full line for skipped.jsonl; `source` the file."""

    def __init__(self, reason: str, detail: str, source: Optional[str] = None):
        super().__init__(detail)
        self.reason, self.detail, self.source = reason, detail, source


def _read_file(path: Path, limit: int, reason: str, what: str, shown: str) -> bytes:
    """The bytes of the regular file at `path`; SkipRow when it is missing, unreadable, not a regular file (a
    device, a pipe, a folder: /dev/zero or a FIFO named in a table would otherwise fill memory or block forever)
    or larger than `limit` bytes. At most limit + 1 bytes are read, so a file that grows after the size check
    cannot exceed the limit either."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SkipRow(f"{what}: file not found", f"{what}: file not found {shown!r}", str(path)) from None
    except OSError as e:
        raise SkipRow(f"{what}: cannot read file", f"{what}: cannot read {shown!r} ({e.strerror})", str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        raise SkipRow(f"{what}: not a regular file", f"{what}: {shown!r} is {kind}, not a regular file", str(path))
    if st.st_size > limit:
        raise SkipRow(reason, f"{what}: {shown!r} is {st.st_size} bytes, over the limit of {limit}", str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise SkipRow(f"{what}: cannot read file", f"{what}: cannot read {shown!r} ({e.strerror})", str(path)) from None
    if len(data) > limit:
        raise SkipRow(reason, f"{what}: {shown!r} is over the limit of {limit} bytes", str(path))
    return data


def _check_bytes(data, limits: DataLimits, mod: str) -> None:
    if len(data) > limits.max_member_bytes:
        raise SkipRow(MEMBER_TOO_LARGE, f"{mod}: {len(data)} bytes, over data.limits.max_member_bytes="
                                        f"{limits.max_member_bytes}")


def read_media(value: Any, base_dir: Path, mod: str,
               limits: Optional[DataLimits] = None) -> Tuple[Any, Optional[str], Optional[str]]:
    """Raw column value -> (payload, shown name, resolved path). payload is bytes,
    a PIL image, or (array [T] or [T, C], sample_rate) for decoded audio.  A file larger than
    limits.max_member_bytes is not read (SkipRow "member too large")."""
    limits = as_limits(limits)
    if isinstance(value, dict):  # datasets Image/Audio feature or a parquet struct
        raw = value.get("bytes")
        if isinstance(raw, (bytes, bytearray, memoryview)) and len(raw):
            _check_bytes(raw, limits, mod)
            return bytes(raw), value.get("path") or None, None
        if not is_missing(raw) and not isinstance(raw, (bytes, bytearray, memoryview)):
            # JSON has no bytes type: base64 text or a list of numbers is refused rather than guessed at
            raise SkipRow(f"{mod}: unsupported value", f"{mod}: the 'bytes' field holds {type(raw).__name__}, "
                                                       "not bytes (base64 text is not decoded)")
        if value.get("array") is not None and mod == "audio":
            sr = value.get("sampling_rate") or value.get("sample_rate")
            if not sr:
                raise SkipRow("audio: unsupported value", "audio: decoded array without sampling_rate")
            return (np.asarray(value["array"]), int(sr)), value.get("path"), None   # dtype kept: int PCM is scaled
        value = value.get("path")
    if is_missing(value):
        raise SkipRow(f"{mod}: missing", f"{mod}: no value")
    if isinstance(value, (bytes, bytearray, memoryview)):
        _check_bytes(value, limits, mod)
        return bytes(value), None, None
    if mod == "image" and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        return value, None, None
    if isinstance(value, (str, Path)):
        text = str(value) if isinstance(value, str) else value.relative_to(base_dir).as_posix()
        if re.match(r"^[a-z][a-z0-9+.-]*://", text):
            raise SkipRow(f"{mod}: URL not supported", f"{mod}: URLs are not read, download first: {text!r}")
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        return _read_file(path, limits.max_member_bytes, MEMBER_TOO_LARGE, mod, text), text, str(path)
    raise SkipRow(f"{mod}: unsupported value", f"{mod}: unsupported value of type {type(value).__name__}")


def read_captions(value: Any, base_dir: Path, limits: Optional[DataLimits] = None) -> List[str]:
    """A caption string (newline-separated: \\n, \\r\\n or \\r, align.text.split_lines; a U+2028 stays inside its
    caption), list of captions, or .txt Path -> captions.
    A .txt file over limits.max_text_bytes is not read (SkipRow "caption too long"); a caption holding a lone
    surrogate (a JSON "\\ud800" escape) is SkipRow "undecodable text", as training skips it."""
    if isinstance(value, Path):
        name = value.relative_to(base_dir).as_posix()
        value = _read_file(value, as_limits(limits).max_text_bytes, TEXT_TOO_LONG, "text", name)
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SkipRow(UNDECODABLE_TEXT, f"text: not UTF-8 ({e.reason} at byte {e.start})") from None
    if is_missing(value):
        items: List[Any] = []
    elif isinstance(value, str):
        items = split_lines(value)
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = [line for v in value if not is_missing(v) for line in split_lines(str(v))]
    else:
        items = [str(value)]
    caps = [c.strip() for c in items if c.strip()]
    if not caps:
        raise SkipRow(EMPTY_CAPTION, "text: empty caption")
    i, bad = first_surrogate(caps)
    if bad:
        raise SkipRow(UNDECODABLE_TEXT, f"text: {bad} (caption {i + 1} of {len(caps)})")
    return caps


def read_label(value: Any, base_dir: Path) -> str:
    if isinstance(value, Path):
        data = _read_file(value, as_limits(None).max_text_bytes, TEXT_TOO_LONG, "label", value.name)
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipRow("label: cannot read file", f"label: {value.name!r} is not UTF-8 ({e.reason})") from None
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if is_missing(value) or isinstance(value, (list, dict, bytes)):
        raise SkipRow("label: missing", "label: no value")
    label = str(value).strip()
    bad = lone_surrogate(label)
    if bad:                 # a class name no tokenizer reads (a JSON "\ud800"): its zero-shot prompts would fail
        raise SkipRow(UNDECODABLE_TEXT, f"label: {bad}")
    return label


def class_names(values: Iterable[Any], base_dir: Path) -> Optional[List[str]]:
    """Labels that are all integers stay as they are (None). Otherwise the sorted
    distinct label strings are the classes: `cls` holds the index into them,
    because shard readers expect `cls` to be an integer."""
    names = set()
    for v in values:
        try:
            names.add(read_label(v, base_dir))
        except SkipRow:
            continue  # counted when the row is written
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return None
    return sorted(names)


def jsonable(value: Any) -> Any:
    """value -> JSON-safe copy, or raise TypeError/ValueError if it is not."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(type(value).__name__)
