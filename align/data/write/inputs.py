"""Input readers for `align.data.write.shards.write_shards`: users' own paired data.

An *input* (`Input`, opened by `open_input`) is an ordered, re-openable list of rows. Each row is a
dict column -> raw value (a path, raw bytes, a `datasets` Image/Audio dict, a caption, a label).
Inputs are picklable without their loaded data, so each shard-writing worker process re-opens the
input once and reads only the rows of the shards it writes (`rows(start, stop)`). ("Sources" are
the read side's: the shard lists training streams, align.data.stream.sources.)

Supported inputs:
  * a CSV / TSV / JSONL / Parquet file (paths are relative to its folder; read in chunks, never whole:
    align.data.write.table_input);
  * a folder of pairs `x.jpg` + `x.txt` [+ `x.flac`/wav/ogg/mp3] [+ `x.cls`]
    [+ `x.json` extra metadata], matched by relative stem, recursive, sorted;
  * a Hugging Face `datasets` dataset: a `save_to_disk` folder, a Hub name, the folder a Hub download
    of one leaves (its Parquet / CSV / JSON data files, read by `datasets` locally), or a `datasets.Dataset`
    object.

Also here: `resolve_columns` (auto-detects which column holds which modality). The readers that turn one
raw value into bytes, captions or a label, raising `SkipRow`, are in align.data.write.values.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from align.data.write.input_base import Input, Row, hash_file  # noqa: F401  (also imported from here)
from align.data.write.table_input import TableInput
from align.errors import DataError
from align.wds.format import MODALITIES, file_modality  # file_modality: folder-of-pairs suffixes

COLUMN_KINDS = (*MODALITIES, "label")   # what an input column can hold

# Column names tried, in order, when a modality's column is not given.
AUTO_COLUMNS = {
    "image": ("image", "img", "jpg", "jpeg", "png", "webp", "image_path", "img_path",
              "image_file", "filepath", "file_path", "path", "file", "filename"),
    "text": ("text", "caption", "captions", "txt", "sentence", "sentences", "description"),
    "audio": ("audio", "wav", "flac", "mp3", "ogg", "audio_path", "audio_file", "sound"),
    "label": ("label", "labels", "cls", "class", "class_id", "target"),
}

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                   ".parquet": "parquet", ".pq": "parquet"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


LINK_OUTSIDE = "link out of the input folder"   # a row reason (align data shards --follow-links reads them)
_LINKED_FOLDER = "linked folder"                 # the one entry of a group that stands for a linked folder


class FolderInput(Input):
    """A folder of pairs matched by relative stem: `a/x.jpg` + `a/x.txt` -> row 'a/x'.

    A linked file that leads out of the folder is not read unless follow_links: its row is skipped and
    counted as LINK_OUTSIDE (a folder shared by others must not make the shards copy, say,
    ~/.ssh/id_rsa into a caption); linked folders are entered only with follow_links.
    """

    kind = "folder"

    def __init__(self, root: Path, exclude: Optional[Path] = None, follow_links: bool = False):
        # Absolute (not resolved: links stay links): a row's values are root / rel, and a relative one is
        # joined to base_dir once more when read (`align data shards voices/` looked for voices/voices/x.wav)
        # and named its group by the folder (`audio:0` gave "voices" for every file).
        given, root = str(root), Path(os.path.abspath(root))
        super().__init__(given, root)
        self.root = root
        self.follow_links = follow_links
        real_root = root.resolve()
        self.outside: set = set()          # relative paths of files reached through a link out of root
        by_stem: Dict[str, Dict[str, List[str]]] = {}
        listing = []
        visited = set()
        # Without follow_links, linked folders are not entered (os.walk's default) and a linked file
        # outside root is listed but its row skipped; with it, both are read, each folder once.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
            d = Path(dirpath)
            if follow_links:
                real = d.resolve()
                if real in visited:        # a link loop, or a folder reached twice through links
                    dirnames[:] = []
                    continue
                visited.add(real)
            # Hidden folders and the output folder (when nested inside) are not input.
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                                 and (exclude is None or (d / n).resolve() != exclude))
            for n in dirnames if not follow_links else ():
                # A linked folder out of root is not entered: one row for it, skipped and counted, so its
                # files are not lost without a word (one that leads inside root is read at its own path).
                if (d / n).is_symlink() and not _inside((d / n).resolve(), real_root):
                    rel = (d / n).relative_to(root).as_posix()
                    by_stem.setdefault(rel, {})[_LINKED_FOLDER] = [rel]
                    listing.append(f"{rel}\t->\t{os.readlink(d / n)}\n")
            for name in sorted(filenames):
                p = d / name
                if not follow_links and p.is_symlink() and not _inside(p.resolve(), real_root):
                    self.outside.add(p.relative_to(root).as_posix())
                suffix = p.suffix.lower()
                mod = file_modality(name)
                if mod is None and suffix != ".json":
                    continue
                rel = p.relative_to(root).as_posix()
                stem = rel[: len(rel) - len(p.suffix)]
                by_stem.setdefault(stem, {}).setdefault(mod or "json", []).append(rel)
                try:                       # the size and modification time: a caption edited in place to
                    st = p.stat()          # another of the same length is another input (rsync's quick check)
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:            # a dangling link: its row says "file not found" when read
                    size, mtime = -1, 0
                listing.append(f"{rel}\t{size}\t{mtime}\n")
        # A stem with only a .json sidecar is not a sample.
        self.groups = [(s, g) for s, g in sorted(by_stem.items()) if set(g) - {"json"}]
        self.columns = [m for m in COLUMN_KINDS if any(m in g for _, g in self.groups)]
        self.kinds = {m: m for m in self.columns}
        self._fp = hashlib.sha256("".join(sorted(listing)).encode("utf-8", "surrogateescape")).hexdigest()

    def __len__(self) -> int:
        return len(self.groups)

    def fingerprint(self) -> str:
        return self._fp

    def rows(self, start: int, stop: int) -> Iterator[Row]:
        for i in range(start, min(stop, len(self.groups))):
            stem, group = self.groups[i]
            values: Dict[str, Any] = {}
            error = reason = None
            if _LINKED_FOLDER in group:
                yield Row(i, stem, values, f"folder: {stem} is a link out of the input folder, not entered "
                                           "(--follow-links reads it)", LINK_OUTSIDE)
                continue
            for mod in self.columns:
                files = group.get(mod, [])
                if len(files) > 1:
                    error = f"{mod}: several files for stem {stem!r} ({', '.join(files)})"
                    reason = f"{mod}: several files"
                if any(f in self.outside for f in files):
                    error = f"{mod}: {files[0]} is a link out of the input folder (--follow-links reads it)"
                    reason = LINK_OUTSIDE
                # Path (not str) marks a file to read, also for text and label.
                values[mod] = self.root / files[0] if files else None
            for rel in group.get("json", [])[:1]:
                values["__sidecar__"] = self.root / rel
                if rel in self.outside:
                    error, reason = f"json: {rel} is a link out of the input folder (--follow-links reads it)", \
                        LINK_OUTSIDE
            yield Row(i, stem, values, error, reason)


class HFInput(Input):
    """A `datasets.Dataset` (save_to_disk folder, Hub name or object). Image and
    Audio features are read undecoded ({'bytes', 'path'}) and decoded by us."""

    kind = "hf"

    def __init__(self, ds, description: str, base_dir: Path):
        super().__init__(description, base_dir)
        import datasets
        for col, feat in ds.features.items():
            if isinstance(feat, datasets.Image):
                self.kinds[col] = "image"
                ds = ds.cast_column(col, datasets.Image(decode=False))
            elif isinstance(feat, datasets.Audio):
                self.kinds[col] = "audio"
                ds = ds.cast_column(col, datasets.Audio(decode=False))
            elif isinstance(feat, datasets.ClassLabel):
                self.kinds[col] = "label"
                self.label_names[col] = list(feat.names)
        self.ds = ds  # memory-mapped Arrow: pickles by file name
        self.columns = list(ds.column_names)

    def __len__(self) -> int:
        return len(self.ds)

    def fingerprint(self) -> str:
        return str(getattr(self.ds, "_fingerprint", "")) or "unknown"

    def rows(self, start: int, stop: int) -> Iterator[Row]:
        stop = min(stop, len(self.ds))
        if stop <= start:
            return
        for i, values in enumerate(self.ds.select(range(start, stop)), start):
            yield Row(i, str(i), dict(values))

    def column(self, col: str) -> List[Any]:
        return list(self.ds[col])


def _pick_split(dd, split: Optional[str], where: str):
    names = list(dd.keys())
    if split is None:
        if len(names) == 1:
            return dd[names[0]], names[0]
        raise DataError(f"{where} has splits {', '.join(names)}; choose one with split=")
    if split not in dd:
        raise DataError(f"{where} has no split {split!r}; available: {', '.join(names)}")
    return dd[split], split


def is_hf_folder(path: Path) -> bool:
    """Whether `path` is a `datasets` save_to_disk folder (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_hf_folder(path: Path, split: Optional[str], only_split_ok: bool = False) -> HFInput:
    """A `save_to_disk` folder as an HFInput (Image/Audio columns undecoded). `split` picks from a
    DatasetDict; only_split_ok: a DatasetDict with one split gives it whatever `split` says."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist (expected a Hugging Face save_to_disk folder)")
    if not is_hf_folder(path):
        raise DataError(f"{path} is not a Hugging Face save_to_disk folder (no dataset_dict.json or state.json)")
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises assorted errors for damaged folders
        raise DataError(f"cannot load Hugging Face dataset folder {path}: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if only_split_ok and len(ds) == 1:
            split = next(iter(ds))
        ds, split = _pick_split(ds, split, str(path))
    return HFInput(ds, str(path), path)


DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".jsonl", ".json")   # what `datasets` infers a folder's
#                                                                                  data files from


def holds_data_files(path: Path) -> bool:
    """Whether a folder (hidden folders left out: a --local-dir download's .cache/) holds a data file `datasets`
    reads; asked of a folder with no pair of files in it, as a Hub download of a dataset leaves it."""
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        if any(n.lower().endswith(DATA_FILE_SUFFIXES) for n in filenames):
            return True
    return False


def open_hub_download(path: Path, split: Optional[str]) -> HFInput:
    """A Hugging Face dataset as its Hub download leaves it (`huggingface-cli download --repo-type dataset ORG/NAME
    --local-dir DIR`, or its snapshot in the Hugging Face cache): `datasets.load_dataset(DIR)` finds its data files
    and splits there (README.md's configs, data/train-*.parquet, ...), with no network."""
    import datasets
    try:
        ds = datasets.load_dataset(str(path), split=split)
    except Exception as e:  # noqa: BLE001  no split of that name, unreadable files: one line
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(f"cannot read {path} as a Hugging Face dataset's download (its data files): "
                        f"{type(e).__name__}: {msg}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds, split = _pick_split(ds, split, f"the Hugging Face dataset in {path}")
    return HFInput(ds, str(path) + (f"[{split}]" if split else ""), path)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def open_input(input: Any, split: Optional[str] = None, exclude: Optional[Path] = None,
                follow_links: bool = False) -> Input:
    """Open `input` (path, Hub name or `datasets.Dataset`) as an Input, or raise DataError."""
    import sys
    datasets = sys.modules.get("datasets")  # a Dataset object implies datasets is imported; importing it is slow
    if datasets is not None and isinstance(input, (datasets.Dataset, datasets.DatasetDict)):
        ds = input
        if isinstance(ds, datasets.DatasetDict):
            ds, split = _pick_split(ds, split, "the given DatasetDict")
        return HFInput(ds, f"<datasets.Dataset {ds._fingerprint}>", Path.cwd())
    path = Path(os.fspath(input)).expanduser()
    if path.is_file():
        fmt = TABLE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unsupported input type {path.suffix!r}; use CSV, TSV, JSONL, Parquet, "
                            "a folder of pairs or a Hugging Face dataset")
        return TableInput(path, fmt)
    if path.is_dir():
        if is_hf_folder(path):
            return open_hf_folder(path, split)
        folder = FolderInput(path, exclude, follow_links=follow_links)
        if not len(folder) and holds_data_files(path):
            return open_hub_download(path, split)
        return folder
    text = str(input)
    if path.suffix.lower() in TABLE_SUFFIXES or not _HUB_NAME.match(text):
        raise DataError(f"input not found: {text}")
    import datasets
    from align.hub import hub_offline, hub_unreachable
    host = hub_unreachable()      # a compute node: huggingface_hub would retry ~20 s before any answer
    try:
        with hub_offline() if host else contextlib.nullcontext():      # the cache's copy, if any, at once
            ds = datasets.load_dataset(text, split=split)
    except Exception as e:  # offline, unknown name, gated: all reported the same way
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = (f"{host} does not answer and it is not in the Hugging Face cache; download it where a network is and "
               "give its folder" if host else "Hub load failed, are you offline?")
        raise DataError(f"cannot load Hugging Face dataset {text!r} (no such local path; {why}): "
                        f"{type(e).__name__}: {msg}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds, split = _pick_split(ds, split, f"Hugging Face dataset {text!r}")
    return HFInput(ds, f"{text}" + (f"[{split}]" if split else ""), Path.cwd())


def resolve_columns(inp: Input, given: Dict[str, Any]) -> Dict[str, str]:
    """Map modality -> column. `given[m]` is a column name, None (auto-detect) or
    False (do not use). Needs two modalities, or one plus a label."""
    cols = inp.columns
    lower = {c.lower(): c for c in reversed(cols)}
    out: Dict[str, str] = {}
    for mod in COLUMN_KINDS:
        want = given.get(mod)
        if want is False or want == "":
            continue
        if want is not None:
            if want not in cols:
                raise DataError(f"{inp.description}: no column {want!r} for {mod}; "
                                f"available columns: {', '.join(map(str, cols)) or '(none)'}")
            out[mod] = want
            continue
        typed = [c for c in cols if inp.kinds.get(c) == mod and c not in out.values()]
        named = [lower[n] for n in AUTO_COLUMNS[mod] if n in lower and lower[n] not in out.values()]
        # Typed features win over names; a column typed as another modality is never guessed.
        named = [c for c in named if inp.kinds.get(c, mod) == mod]
        if typed or named:
            # a typed column with a known name first (`image` over `thumb` when both hold image files)
            out[mod] = next((c for c in named if c in typed), (typed or named)[0])
    media = [m for m in MODALITIES if m in out]
    if len(media) < 2 and not (media and "label" in out):
        found = ", ".join(f"{m}={c!r}" for m, c in out.items()) or "none"
        tars = list(Path(inp.base_dir).glob("*.tar")) if isinstance(inp, FolderInput) and not cols else []
        if tars:       # `align data shards SHARDS/`: the folder holds webdataset shards, not pairs
            raise DataError(f"{inp.description}: holds {len(tars)} .tar file(s) and no pairs: webdataset shards "
                            "already? `align data inspect` checks them and data.train takes the folder as it is")
        raise DataError(f"{inp.description}: need two of image/text/audio, or one plus a label "
                        f"(found {found}); available columns: {', '.join(map(str, cols)) or '(none)'}; "
                        "name them with image_col/text_col/audio_col/label_col")
    return out
