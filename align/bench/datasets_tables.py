"""Benchmark datasets from tables: a Hugging Face `save_to_disk` folder (`hf`) and a CSV/TSV of file paths and
captions (`csv`), registered in align.bench.datasets.DATASET_TYPES beside the shard and folder layouts (see that
module's docstring for what each layout reads). Metadata is read when the set is opened; media bytes on `load`.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List

from align.bench.dataset_items import BenchDataset, Item, SampleError, classnames_of
from align.errors import DataError
from align.templates import get_templates
from align.wds.format import file_modality


# ------------------------------------------------------------ Hugging Face disk
class HFDataset(BenchDataset):
    kind = "hf"

    def __init__(self, *args, hf=None, columns=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._hf, self._columns = hf, columns or {}
        self._views: Dict[str, Any] = {}

    def _raw(self, handle, limits=None):     # bytes are checked against limits when decoded
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
    return HFDataset(path, items, name=name, classnames=classnames_of(classnames),
                     templates=get_templates(templates) if templates is not None else None, problems=problems,
                     files=files, options={"split": split, "columns": cols, "label": label_col, "caption": cap_col},
                     hf=ds, columns=cols)


# ------------------------------------------------------------------------- CSV
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
        path, items, kind="csv", name=name, classnames=classnames_of(classnames),
        templates=get_templates(templates) if templates is not None else None,
        problems=problems, files=[path] + list(by_path), options={"sep": sep, "cols": [pcol, ccol, lcol]})
