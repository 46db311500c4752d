"""Benchmark datasets: one in-memory index of items over several on-disk layouts.

A `BenchDataset` is a list of items. Each item has a key, an optional integer
label, optional captions (several per item) and, per modality, a handle to
its raw bytes (image or audio). Metadata (labels, captions) is read once when
the dataset is opened; pixels and waveforms are read and decoded only when
`load(i, modality)` is called, so a cached re-run touches no media.

Layouts (`open_dataset(path, type=...)`, explicit type names):
  wds          CLIP_benchmark's local webdataset layout: ROOT/{split}/{0..n-1}.tar,
               ROOT/{split}/nshards.txt, ROOT/classnames.txt,
               ROOT/zeroshot_classification_templates.txt (`align data shards --layout
               clip_benchmark` writes it). Shards are read as training reads them
               (`align.wds`: extensions per modality, key split, duplicates); label `cls`,
               captions `txt` (one per line).
  imagefolder  ROOT/<class>/**/<image>   (torchvision ImageFolder order: sorted classes, sorted files)
  audiofolder  ROOT/<class>/**/<audio>
  hf           a Hugging Face `datasets` save_to_disk folder (image and/or audio column,
               label and/or caption column), opened by `align.data.write.inputs`
  csv          a CSV/TSV with a path column (image or audio file, relative to the CSV)
               and a caption column; rows with the same path are one item with several
               captions; optional label column

A sample that cannot be decoded raises `SampleError` from `load`; the embedder
skips and counts it. Problems found while indexing (bad `cls`, missing files)
are listed in `dataset.problems`.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from align.templates import Templates, get_templates, load_classnames
from align.errors import ConfigError, DataError
from align.registry import Registry
from align.wds.format import FILE_EXTS, LABEL_EXT, MODALITIES, file_modality, group_samples, pick
from align.wds.reader import Oversize, index_members
from align.data.stream.faults import UNDECODABLE_AUDIO, UNDECODABLE_IMAGE
from align.limits import DEFAULT_LIMITS, MEMBER_TOO_LARGE, LimitExceeded, member_limiter


DATASET_TYPES: Registry = Registry("dataset")


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


def _read_file(path: str) -> bytes:
    """A media file's bytes, refused before reading when over data.limits.max_member_bytes (default) or not a
    regular file: a link to /dev/zero named x.wav has size 0 to stat and would be read until memory ran out."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
            raise SampleError(f"{path} is not a regular file ({kind})")
        size = st.st_size
        if size > DEFAULT_LIMITS.max_member_bytes:
            raise SampleError(f"{MEMBER_TOO_LARGE}: {size} bytes, over the limit of "
                              f"{DEFAULT_LIMITS.max_member_bytes}", MEMBER_TOO_LARGE)
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SampleError(f"cannot read {path}: {e.strerror or e}") from None


def decode_image(data: Union[bytes, str]):
    """bytes or path -> PIL RGB image (as webdataset's "pil" decoder: open, load, convert("RGB")), with
    training's decoder and size limits (align.media.image, align.limits defaults)."""
    from align.media.image import decode_image as decode

    raw = _read_file(data) if isinstance(data, str) else data
    try:
        return decode(raw)
    except LimitExceeded as e:
        raise SampleError(f"{e.reason}: {e.detail}", e.reason) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...)
        raise SampleError(f"cannot decode image: {type(e).__name__}: {e}", UNDECODABLE_IMAGE) from None


def decode_audio(data: Union[bytes, str]):
    """bytes or path -> (mono float32 wave [T], sample_rate); channels are averaged (training's decoder,
    align.media.audio, with the default limits: no NaN, sample rate and length checked from the header)."""
    from align.media.audio import decode_audio as decode

    raw = _read_file(data) if isinstance(data, str) else data
    try:
        return decode(raw, name="audio")
    except LimitExceeded as e:
        raise SampleError(f"{e.reason}: {e.detail}", e.reason) from None
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

    def load(self, i: int, modality: str):
        """Decoded media of item i: PIL image, or (wave, sr) for audio. Raises SampleError."""
        item = self.items[i]
        if modality not in item.media:
            raise SampleError(f"{self.name}: sample {item.key!r} has no {modality}")
        try:
            raw = self._raw(item.media[modality])
            return decode_image(raw) if modality == "image" else decode_audio(raw)
        except SampleError as e:
            raise SampleError(f"{self.name}: sample {item.key!r}: {e}", e.reason) from None

    def _raw(self, handle) -> Union[bytes, str]:
        return handle  # a file path

    def fingerprint(self) -> str:
        """Hash of the data files' names, sizes and mtimes plus the layout options."""
        if self._fp is None:
            blob = json.dumps({"kind": self.kind, "options": self._options,
                               "files": [_file_stat(f) for f in self._files]}, sort_keys=True, default=str)
            self._fp = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fp

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {len(self)} items, modalities {'/'.join(self.modalities)})"


# ------------------------------------------------------------------ webdataset
class WdsDataset(BenchDataset):
    kind = "wds"

    def _raw(self, handle) -> bytes:
        shard, offset, size = handle  # plain (uncompressed) tar: member data is a contiguous byte range
        if size > DEFAULT_LIMITS.max_member_bytes:
            raise SampleError(f"{MEMBER_TOO_LARGE}: {size} bytes, over the limit of "
                              f"{DEFAULT_LIMITS.max_member_bytes}", MEMBER_TOO_LARGE)
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as e:
            raise SampleError(f"cannot read {shard}: {e}") from None
        if len(data) != size:
            raise SampleError(f"{shard} is truncated")
        return data


def _wds_items(path: str, shard: str, problems: List[str]) -> List[Item]:
    """Items of one shard: media as byte ranges, labels and captions read now."""
    try:
        f = open(shard, "rb")
    except OSError as e:
        raise DataError(f"dataset {path!r}: shard {shard} cannot be opened as a plain tar: {e.strerror or e}") from None
    items, dups, ignored = [], [], []
    with f:
        try:
            members = ((name, (shard, offset, size, data)) for name, offset, size, data
                       in index_members(f, want=lambda n: n.lower().endswith((".cls", ".txt")),
                                              limits=member_limiter(DEFAULT_LIMITS)))
            for sample in group_samples(members, dups.append, ignored.append):
                it = Item(key=f"{os.path.basename(shard)}:{sample['__key__']}")
                for modality in ("image", "audio"):
                    ext = pick(sample, modality)
                    if ext is not None:
                        it.media[modality] = sample[ext][:3]
                big = [ext for ext in (LABEL_EXT, "txt") if isinstance(sample.get(ext, (0,) * 4)[3], Oversize)]
                if big:   # a caption or label over its limit: never read (align.wds.reader)
                    problems.append(f"{it.key}: {sample[big[0]][3].reason} ({big[0]}); sample skipped")
                    continue
                if LABEL_EXT in sample:
                    raw = sample[LABEL_EXT][3].decode("utf-8", "replace").strip()
                    try:
                        label = int(raw)
                    except ValueError:
                        problems.append(f"{it.key}: cls {raw[:20]!r} is not an integer")
                    else:   # -1 is "no label" here: a negative class index is said, then left out
                        it.label = label if label >= 0 else -1
                        if label < 0:
                            problems.append(f"{it.key}: cls {label} is negative; left unlabelled")
                if "txt" in sample:  # as CLIP_benchmark: str.splitlines
                    it.captions = sample["txt"][3].decode("utf-8", "replace").splitlines()
                items.append(it)
        except (tarfile.TarError, EOFError) as e:
            raise DataError(f"dataset {path!r}: shard {shard} is corrupt: {e}") from None
    if dups:
        problems.append(f"{shard}: {len(dups)} repeated files in a sample ignored (first: {dups[0]})")
    if ignored:
        problems.append(f"{shard}: {len(ignored)} files outside any sample ignored (no extension or a hidden name; "
                        f"first: {ignored[0]})")
    return items


@DATASET_TYPES.register("wds")
def open_wds(path: str, *, split: str = "test", classnames=None, templates=None, name=None) -> WdsDataset:
    """CLIP_benchmark's local webdataset layout (see module docstring)."""
    nshards_file = os.path.join(path, split, "nshards.txt")
    if not os.path.isdir(path):
        raise DataError(f"dataset {path!r} does not exist (expected a CLIP_benchmark wds folder)")
    try:
        nshards = int(open(nshards_file).read().strip())
    except FileNotFoundError:
        raise DataError(f"dataset {path!r}: {nshards_file} is missing (split {split!r})") from None
    except ValueError:
        raise DataError(f"dataset {path!r}: {nshards_file} does not hold an integer") from None
    type_file = os.path.join(path, "dataset_type.txt")
    if os.path.isfile(type_file) and open(type_file).read().strip().lower() == "multilabel":
        raise DataError(f"dataset {path!r}: multilabel wds datasets are not supported")
    items: List[Item] = []
    problems: List[str] = []
    shards = [os.path.join(path, split, f"{i}.tar") for i in range(nshards)]
    for shard in shards:
        items += _wds_items(path, shard, problems)
    empty = [it.key for it in items if not (it.media or it.captions)]
    if empty:
        problems.append(f"{len(empty)} samples with no image, audio or txt skipped (first: {empty[0]})")
        items = [it for it in items if it.media or it.captions]
    if classnames is None and os.path.isfile(os.path.join(path, "classnames.txt")):
        classnames = os.path.join(path, "classnames.txt")
    tfile = os.path.join(path, "zeroshot_classification_templates.txt")
    if templates is None and os.path.isfile(tfile):
        templates = tfile
    meta = [f for f in (type_file, nshards_file) if os.path.isfile(f)]
    return WdsDataset(path, items, name=name, classnames=_classnames(classnames),
                      templates=get_templates(templates) if templates is not None else None,
                      problems=problems, files=shards + meta, options={"split": split})


def open_shard_files(shards: Sequence[str], *, name: Optional[str] = None) -> WdsDataset:
    """Plain training shards (local uncompressed tars, no CLIP_benchmark layout files) as one dataset,
    items in shard order; keys are `shard basename:sample key`, captions the `txt` lines."""
    items: List[Item] = []
    problems: List[str] = []
    for shard in shards:
        items += _wds_items(shard, shard, problems)
    items = [it for it in items if it.media or it.captions]
    return WdsDataset(name or (shards[0] if len(shards) == 1 else "shards"), items, name=name, problems=problems,
                      files=list(shards), options={"shards": len(shards)})


def _classnames(spec) -> Optional[List[str]]:
    """None, a list of names, or a .txt/.json file of names."""
    if spec is None or isinstance(spec, list):
        return spec
    return load_classnames(spec)


# ---------------------------------------------------------------- class folders
def _open_folder(path: str, modality: str, kind: str, classnames, templates, name):
    if not os.path.isdir(path):
        raise DataError(f"dataset {path!r} does not exist (expected a folder of class folders)")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"dataset {path!r} has no class folders")
    items, files, ignored = [], [], 0
    for label, cls in enumerate(classes):
        # torchvision ImageFolder order: os.walk(followlinks=True), sorted dirs and file names
        for root, dirs, fnames in sorted(os.walk(os.path.join(path, cls), followlinks=True)):
            for fname in sorted(fnames):
                if fname.startswith("."):
                    continue
                if file_modality(fname) != modality:
                    ignored += 1
                    continue
                fpath = os.path.join(root, fname)
                items.append(Item(key=os.path.relpath(fpath, path), label=label, media={modality: fpath}))
                files.append(fpath)
    problems = [f"{ignored} files without a {modality} extension ({', '.join(FILE_EXTS[modality])}) ignored"] if ignored else []
    names = _classnames(classnames)
    if names is not None and len(names) != len(classes):
        raise DataError(f"dataset {path!r} has {len(classes)} class folders but the class names list "
                        f"has {len(names)} entries")
    return BenchDataset(path, items, kind=kind, name=name, classnames=names or classes,
                   templates=get_templates(templates) if templates is not None else None,
                   problems=problems, files=files, options={})


@DATASET_TYPES.register("imagefolder")
def open_imagefolder(path: str, *, classnames=None, templates=None, name=None) -> BenchDataset:
    """ROOT/<class>/**/<image file>; labels follow sorted class folder names."""
    return _open_folder(path, "image", "imagefolder", classnames, templates, name)


@DATASET_TYPES.register("audiofolder")
def open_audiofolder(path: str, *, classnames=None, templates=None, name=None) -> BenchDataset:
    """ROOT/<class>/**/<audio file>; labels follow sorted class folder names."""
    return _open_folder(path, "audio", "audiofolder", classnames, templates, name)


# ------------------------------------------------------------ Hugging Face disk
class HFDataset(BenchDataset):
    kind = "hf"

    def __init__(self, *args, hf=None, columns=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._hf, self._columns = hf, columns or {}
        self._views: Dict[str, Any] = {}

    def _raw(self, handle):
        modality, row = handle
        col = self._columns[modality]
        if modality not in self._views:  # one-column view: reading a row must not decode the other columns
            self._views[modality] = self._hf.select_columns([col])
        value = self._views[modality][row][col]
        if isinstance(value, dict):  # Image/Audio feature with decode=False: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):
            return value if os.path.isabs(value) else os.path.join(self.path, value)
        raise SampleError(f"column {self._columns[modality]!r} holds {type(value).__name__}, not bytes or a path")


def _pick_column(names, kinds, explicit, kind, candidates, what, path):
    """An explicit column, else the first column typed as `kind` (Image, Audio, ClassLabel), else a name."""
    if explicit is not None:
        if explicit not in names:
            raise DataError(f"dataset {path!r}: {what} column {explicit!r} not found; columns: {', '.join(names)}")
        return explicit
    for n in names:
        if kind is not None and kinds.get(n) == kind:
            return n
    for c in candidates:
        if c in names:
            return c
    return None


@DATASET_TYPES.register("hf")
def open_hf(path: str, *, split: str = "test", image_column=None, audio_column=None, label_column=None,
            caption_column=None, classnames=None, templates=None, name=None) -> HFDataset:
    """A `datasets.save_to_disk` folder (Dataset or DatasetDict; `split` picks from a DatasetDict with
    several splits), opened as `align data shards` opens it (Image/Audio columns left undecoded:
    decoding failures are skipped and counted here, and datasets' audio decoding needs torchcodec)."""
    from align.data.write.inputs import open_hf_folder

    if not os.path.isdir(path):
        raise DataError(f"dataset {path!r} does not exist (expected a Hugging Face save_to_disk folder)")
    src = open_hf_folder(path, split, only_split_ok=True)
    ds, names, kinds = src.ds, list(src.columns), src.kinds
    cols = {
        "image": _pick_column(names, kinds, image_column, "image", ("image", "img"), "image", path),
        "audio": _pick_column(names, kinds, audio_column, "audio", ("audio",), "audio", path),
    }
    cols = {m: c for m, c in cols.items() if c is not None}
    label_col = _pick_column(names, kinds, label_column, "label", ("label", "labels", "class", "cls"), "label", path)
    cap_col = _pick_column(names, kinds, caption_column, None, ("caption", "captions", "text", "sentences"),
                           "caption", path)
    if not cols:
        raise DataError(f"dataset {path!r} has no image or audio column; columns: {', '.join(names)}")
    labels = list(ds[label_col]) if label_col else [None] * len(ds)
    caps = list(ds[cap_col]) if cap_col else [None] * len(ds)
    items, problems = [], []
    for row in range(len(ds)):
        it = Item(key=f"row {row}", media={m: (m, row) for m in cols})
        if labels[row] is not None:
            try:
                it.label = int(labels[row])
            except (TypeError, ValueError):
                problems.append(f"row {row}: label {labels[row]!r} is not an integer")
        c = caps[row]
        if c is not None:
            it.captions = [c] if isinstance(c, str) else [str(x) for x in c]
        items.append(it)
    if classnames is None and label_col in src.label_names:
        classnames = list(src.label_names[label_col])
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
    return HFDataset(path, items, name=name, classnames=_classnames(classnames),
                     templates=get_templates(templates) if templates is not None else None, problems=problems,
                     files=files, options={"split": split, "columns": cols, "label": label_col, "caption": cap_col},
                     hf=ds, columns=cols)


# ------------------------------------------------------------------------- CSV
@DATASET_TYPES.register("csv")
def open_csv(path: str, *, path_column=None, caption_column=None, label_column=None, sep=None,
             classnames=None, templates=None, name=None) -> BenchDataset:
    """CSV/TSV of file path + caption (+ optional label); rows sharing a path form one item."""
    if not os.path.isfile(path):
        raise DataError(f"dataset {path!r} does not exist (expected a CSV file)")
    sep = sep or ("\t" if path.endswith(".tsv") else ",")
    # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark, which utf-8 kept in the first column's name
    # ("\ufefffilepath": no path column); `align data shards` reads the same file without it
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f, delimiter=sep)
            header = reader.fieldnames or []
            rows = list(reader)
        except UnicodeDecodeError as e:        # one line naming the file, not a traceback
            raise DataError(f"dataset {path!r}: not UTF-8 text ({e.reason}, byte 0x{e.object[e.start]:02x}); "
                            f"save it as UTF-8") from None
    if not rows:
        raise DataError(f"dataset {path!r} has no rows")

    def col(explicit, candidates, what, required):
        if explicit is not None and explicit not in header:
            raise DataError(f"dataset {path!r}: {what} column {explicit!r} not in header {header}")
        found = explicit or next((c for c in candidates if c in header), None)
        if found is None and required:
            raise DataError(f"dataset {path!r}: no {what} column (tried {', '.join(candidates)}); "
                            f"header: {header}")
        return found

    pcol = col(path_column, ("filepath", "path", "file", "filename", "image", "audio"), "path", True)
    ccol = col(caption_column, ("caption", "text", "title", "captions"), "caption", False)
    lcol = col(label_column, ("label", "class", "cls"), "label", False)
    base = os.path.dirname(os.path.abspath(path))
    by_path: Dict[str, Item] = {}
    problems: List[str] = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        rel = (row.get(pcol) or "").strip()
        if not rel:
            problems.append(f"line {n}: empty {pcol!r}")
            continue
        fpath = rel if os.path.isabs(rel) else os.path.join(base, rel)
        it = by_path.get(fpath)
        if it is None:
            modality = file_modality(rel)
            modality = modality if modality in ("image", "audio") else None
            if modality is None:
                problems.append(f"line {n}: {rel!r} is neither an image nor an audio file")
                continue
            it = by_path[fpath] = Item(key=rel, media={modality: fpath}, captions=[] if ccol else None)
        if ccol and row.get(ccol) is not None:
            if row[ccol].strip():
                it.captions.append(row[ccol])
            else:       # not a caption to retrieve by: "" was scored as a text query like any other
                problems.append(f"line {n}: empty caption for {rel!r} skipped")
        if lcol and row.get(lcol) not in (None, ""):
            try:
                it.label = int(row[lcol])
            except ValueError:
                problems.append(f"line {n}: label {row[lcol]!r} is not an integer")
    items = list(by_path.values())
    return BenchDataset(
        path, items, kind="csv", name=name, classnames=_classnames(classnames),
        templates=get_templates(templates) if templates is not None else None,
        problems=problems, files=[path] + list(by_path), options={"sep": sep, "cols": [pcol, ccol, lcol]})


def open_dataset(path: str, type: str, **options) -> BenchDataset:
    """Open `path` with the layout registered as `type` (wds, imagefolder, audiofolder, hf, csv)."""
    opener = DATASET_TYPES.get(type)
    allowed = set(inspect.signature(opener).parameters) - {"path"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ConfigError(f"dataset {path!r}: option {bad[0]!r} is not valid for type {type!r}; "
                          f"valid: {', '.join(sorted(allowed))}")
    if not path:
        raise DataError("dataset path is empty")
    return opener(path, **options)
