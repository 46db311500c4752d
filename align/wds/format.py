"""Member names and extensions of webdataset shards: the one key split and the one extension table.

A sample is a run of consecutive tar members sharing a *key*; each member's *extension* says what it
holds.  The split is webdataset's: `dir/s001.seg.png` -> key `dir/s001`, extension `seg.png` (the
key ends at the first dot of the file name).  Extensions are compared lower-cased.

`MODALITY_EXTS` lists, per modality, the extensions training decodes, in the order a sample's
member is picked when it has several (CLIP_benchmark's image order: webp, png, jpg, jpeg).  Every
other extension (`json`, anything unknown) is carried along and ignored by the decoders.
`FILE_EXTS` is a different table on purpose: the suffixes of *input files* (class folders, pairs
folders, CSV paths) that PIL / libsndfile can read; shard writing re-encodes them into the shard
extensions above.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, TypeVar

MODALITY_EXTS = {
    "image": ("webp", "png", "jpg", "jpeg"),
    "text": ("txt",),
    "audio": ("flac", "wav", "mp3", "ogg"),
}
MODALITIES = tuple(MODALITY_EXTS)   # ("image", "text", "audio"): the one list of align's modalities, in this order
LABEL_EXT = "cls"        # an integer class index, ASCII
META_EXT = "json"        # free-form metadata, never decoded for training
NEG_EXT = "neg.txt"      # hard-negative captions of the sample, one per line (HardNegativeClipLoss)

FILE_EXTS = {
    "image": ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"),
    "audio": ("flac", "wav", "ogg", "mp3", "opus", "aiff", "aif"),
    "text": ("txt",),
    "label": ("cls",),
}

def file_modality(name: str) -> str | None:
    """The modality of an input file by its suffix (`FILE_EXTS`), or None."""
    base = name.rsplit("/", 1)[-1]
    ext = base.rpartition(".")[2].lower() if "." in base else ""
    return next((m for m, exts in FILE_EXTS.items() if ext in exts), None)


_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^./]*)\.([^/]*)$")
_T = TypeVar("_T")


def is_metadata(name: str) -> bool:
    """webdataset's `__*__` metadata members (`__index__`, `dir/__meta__`): not samples, by convention."""
    base = name.rsplit("/", 1)[-1]
    return len(base) > 4 and base.startswith("__") and base.endswith("__")


def split_name(name: str) -> tuple[str, str] | None:
    """Member name -> (key, lower-cased extension), or None for a member that is not part of a sample
    (no extension, a name starting with '.', or webdataset's `__*__` metadata members)."""
    m = _KEY_EXT.match(name)
    if m is None:
        return None
    if is_metadata(name):
        return None
    key = m.group(1)
    return key, m.group(2).lower()


def check_key(key: str) -> None:
    """ValueError unless `key` reads back as itself after `split_name` (no '.' in its file name)."""
    if not key or split_name(f"{key}.x") != (key, "x"):
        raise ValueError(f"sample key {key!r} cannot be written: its file name part must be non-empty "
                         "and hold no '.' (the key ends at the first dot)")


def group_samples(members: Iterable[tuple[str, _T]],
                  on_duplicate: Callable[[str], None] | None = None,
                  on_ignored: Callable[[str], None] | None = None) -> Iterator[dict]:
    """(member name, value) in archive order -> {"__key__": key, ext: value, ...} per sample.

    A repeated extension within one sample is not a new sample: it is reported to on_duplicate(name)
    and dropped (the first one is kept).  A member that belongs to no sample (no extension, or a name
    starting with '.', such as `.DS_Store` or macOS's `._x.jpg`) is reported to on_ignored(name), so a
    reader can count it; webdataset's `__*__` metadata members are not reported.  When the member stream
    raises (a damaged tar), the sample being read is dropped unless the exception's `member` names a member
    of a *later* sample, which proves it complete; then it is yielded and the exception re-raised.
    """
    current: dict | None = None
    try:
        for name, value in members:
            split = split_name(name)
            if split is None:
                if on_ignored is not None and not is_metadata(name):
                    on_ignored(name)
                continue
            key, ext = split
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key}
            if ext in current:
                if on_duplicate is not None:
                    on_duplicate(name)
                continue
            current[ext] = value
    except Exception as exn:
        cut = getattr(exn, "member", None)
        if current is not None and cut is not None and (split_name(cut) or (None,))[0] != current["__key__"]:
            yield current
        raise
    if current is not None:
        yield current


def pick(sample: dict, modality: str) -> str | None:
    """The extension holding `modality` in a grouped sample (first in MODALITY_EXTS order), or None."""
    for ext in MODALITY_EXTS[modality]:
        if ext in sample:
            return ext
    return None
