"""What a benchmark dataset is, whatever its layout: `Item`s (key, label, captions, a raw handle per modality),
`BenchDataset` (the items, class names, templates, problems found when opening, a fingerprint of its files) and
the decoders every layout's `load` uses (training's image and audio decoders and limits: the model's recipe's
`data.limits`, or the defaults, as the embedder passes them; a skip names the `--limit NAME=VALUE` option of the
commands that decode, not the recipe key). A sample that cannot be read raises `SampleError`, which the embedder
skips and counts. The layouts are in datasets.py (shards, folders)
and datasets_tables.py (HF, CSV).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from align.templates import Templates, load_classnames
from align.errors import DataError
from align.wds.format import MODALITIES
from align.data.stream.faults import UNDECODABLE_AUDIO, UNDECODABLE_IMAGE
from align.limits import MEMBER_TOO_LARGE, DataLimits, LimitExceeded, as_limits, option_hint


class SampleError(Exception):
    """One sample cannot be read or decoded (skipped and counted by the embedder).

    `reason`: the skip reason training and `align data inspect` count for the same input
    (align.data.stream.faults), or None for what only a benchmark layout has (a missing file)."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason


@dataclass
class Item:
    key: str                                     # sample key / file path, names the sample in messages
    label: int = -1                              # class index, -1 = none
    captions: Optional[List[str]] = None         # several captions per item
    media: Dict[str, Any] = field(default_factory=dict)  # modality -> raw handle (see each layout)


def check_member_size(size: int, limits: Optional[DataLimits] = None) -> None:
    """SampleError when a media member or file of `size` bytes is over limits.max_member_bytes."""
    limit = as_limits(limits).max_member_bytes
    if size > limit:
        raise SampleError(f"{MEMBER_TOO_LARGE}: {size} bytes, over max_member_bytes={limit} "
                          f"({option_hint('max_member_bytes')})", MEMBER_TOO_LARGE)


def _read_file(path: str, limits: Optional[DataLimits] = None) -> bytes:
    """A media file's bytes, refused before reading when over limits.max_member_bytes or not a regular file: a
    link to /dev/zero named x.wav has size 0 to stat and would be read until memory ran out."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
            raise SampleError(f"{path} is not a regular file ({kind})")
        check_member_size(st.st_size, limits)
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SampleError(f"cannot read {path}: {e.strerror or e}") from None


def _raw_bytes(data: Union[bytes, str], limits: Optional[DataLimits]) -> bytes:
    if isinstance(data, str):
        return _read_file(data, limits)
    check_member_size(len(data), limits)
    return data


def decode_image(data: Union[bytes, str], limits: Optional[DataLimits] = None):
    """bytes or path -> PIL RGB image (as webdataset's "pil" decoder: open, load, convert("RGB")), with
    training's decoder and size limits (align.media.image; limits: a DataLimits, None: the defaults)."""
    from align.media.image import decode_image as decode

    raw = _raw_bytes(data, limits)
    try:
        return decode(raw, as_limits(limits))
    except LimitExceeded as e:
        raise SampleError(e.with_option(), e.reason) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...)
        raise SampleError(f"cannot decode image: {type(e).__name__}: {e}", UNDECODABLE_IMAGE) from None


def decode_audio(data: Union[bytes, str], limits: Optional[DataLimits] = None):
    """bytes or path -> (mono float32 wave [T], sample_rate); channels are averaged (training's decoder,
    align.media.audio, with `limits` (None: the defaults): no NaN, sample rate and length checked from the
    header)."""
    from align.media.audio import decode_audio as decode

    raw = _raw_bytes(data, limits)
    try:
        return decode(raw, name="audio", limits=as_limits(limits))
    except LimitExceeded as e:
        raise SampleError(e.with_option(), e.reason) from None
    except DataError as e:
        raise SampleError(f"cannot decode audio: {e}", UNDECODABLE_AUDIO) from None


def _file_stat(path: str) -> list:
    try:
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.path.abspath(path), None, None]


class BenchDataset:
    """Items plus class names / templates. Subclasses implement `_raw(handle)` -> bytes or path."""

    kind = ""

    def __init__(self, path: str, items: List[Item], *, kind: Optional[str] = None, name: Optional[str] = None,
                 classnames: Optional[List[str]] = None, templates: Optional[Templates] = None,
                 problems: Optional[List[str]] = None, files: Sequence[str] = (), options: Optional[dict] = None):
        self.path = path
        self.kind = kind or self.kind
        self.name = name or os.path.basename(os.path.normpath(path))
        self.items = items
        self.classnames = classnames
        self.templates = templates
        self.problems = problems or []
        self._files = list(files)           # data files whose name/size/mtime make the fingerprint
        self._options = options or {}
        self._fp: Optional[str] = None
        if not items:
            raise DataError(f"dataset {path!r} ({self.kind}) has no items")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def modalities(self) -> List[str]:
        """Modalities present in at least one item, in MODALITIES order."""
        have = {m for it in self.items for m in it.media}
        if any(it.captions for it in self.items):
            have.add("text")
        return [m for m in MODALITIES if m in have]

    @property
    def labels(self) -> np.ndarray:  # [N] int64, -1 where unlabelled
        return np.array([it.label for it in self.items], dtype=np.int64)

    def load(self, i: int, modality: str, limits: Optional[DataLimits] = None):
        """Decoded media of item i: PIL image, or (wave, sr) for audio, within `limits` (a DataLimits: the model's
        recipe's, align.bench.embed.model_limits; None: the defaults). Raises SampleError."""
        item = self.items[i]
        if modality not in item.media:
            raise SampleError(f"{self.name}: sample {item.key!r} has no {modality}")
        try:
            raw = self._raw(item.media[modality], limits)
            return decode_image(raw, limits) if modality == "image" else decode_audio(raw, limits)
        except SampleError as e:
            raise SampleError(f"{self.name}: sample {item.key!r}: {e}", e.reason) from None

    def _raw(self, handle, limits: Optional[DataLimits] = None) -> Union[bytes, str]:
        return handle  # a file path (its size is checked against limits when it is read)

    def fingerprint(self) -> str:
        """Hash of the data files' names, sizes and mtimes plus the layout options."""
        if self._fp is None:
            blob = json.dumps({"kind": self.kind, "options": self._options,
                               "files": [_file_stat(f) for f in self._files]}, sort_keys=True, default=str)
            self._fp = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fp

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {len(self)} items, modalities {'/'.join(self.modalities)})"


def classnames_of(spec) -> Optional[List[str]]:
    """None, a list of names, or a .txt/.json file of names."""
    if spec is None or isinstance(spec, list):
        return spec
    return load_classnames(spec)
