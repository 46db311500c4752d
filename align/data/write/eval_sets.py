"""Eval sets from users' own data: class lists, held-out groups, and CLIP_benchmark's metadata files.

Used by `align.data.write.shards.write_shards` for `layout="clip_benchmark"` and `val_groups_from`:

  * `resolve_classes`: the class list a label column's values index into (label names sorted, a
    datasets ClassLabel's names, integers 0..max, or the user's own class-names file);
  * `split_by_groups`: which input rows belong to held-out groups (speakers, writers, sites), by a
    column's value or by a field of a file name;
  * `trained_files` / `copied_files`: the held-out rows whose image or audio file a train row also names, or
    has a byte copy of under another path (skipped from val and counted);
  * `write_clip_benchmark_meta`: `test/nshards.txt`, `classnames.txt`,
    `zeroshot_classification_templates.txt` or `dataset_type.txt`, as CLIP_benchmark's
    `build_wds_dataset` and `align bench` read them.
"""
from __future__ import annotations

import array
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from align.data.stream.val_split import lookalike_groups, name_field
from align.data.write.inputs import Input, hash_file
from align.data.write.values import SkipRow, class_names, is_missing, read_label
from align.errors import ConfigError, DataError
from align.data.write.jobdir import KEPT
from align.writes import write_text_whole

GROUP_MISSING = "group: missing"


def parse_group_spec(spec: str, columns: Sequence[str]) -> Tuple[str, Optional[int]]:
    """'COL' -> (COL, None): the column's value is the group; 'COL:N' -> (COL, N): field N (0-based,
    negative from the end) of the file name in COL, split at '/', '_' and '-', extension dropped."""
    col, field = spec, None
    m = re.fullmatch(r"(.+):(-?\d+)", spec)
    if m and spec not in columns:
        col, field = m.group(1), int(m.group(2))
    if col not in columns:
        near = [str(c) for c in columns if str(c).strip() == col.strip()]   # a header with spaces reads the same
        raise DataError(f"val_groups_from {spec!r}: no column {col!r}; available columns: "
                        f"{', '.join(map(str, columns)) or '(none)'} (a file-name field is COL:N, e.g. audio:0)"
                        + (f"; the header has {near[0]!r}, with spaces: name it so or fix the header" if near else ""))
    return col, field


def group_value(value: Any, field: Optional[int], base_dir: Path) -> Optional[str]:
    """The group of one row's value: the value itself, or one field of the file name it holds."""
    if isinstance(value, dict):  # a datasets Image/Audio value
        value = value.get("path")
    if isinstance(value, Path):
        value = value.relative_to(base_dir).as_posix() if value.is_absolute() else value.as_posix()
    if is_missing(value) or isinstance(value, (bytes, bytearray, list)):
        return None
    text = str(value).strip()
    return text if field is None else name_field(text, field)


def split_by_groups(inp: Input, spec: str, groups: Sequence[str]
                    ) -> Tuple[np.ndarray, List[int], Dict[int, Tuple[str, str]], List[List[str]]]:
    """-> (train rows: int64 [n], 8 bytes a row where a list held 36; val rows; rows without a group value ->
    (reason, detail); look-alike group ids). Rows without a group stay in the train rows and are skipped there (a
    row of unknown group could belong to a held-out one). The look-alike ids are the sets that differ only by
    case, Unicode form or a number's spelling ('Alice' and 'alice'): separate groups, so `--val-groups alice`
    trains 'Alice'; held-out ones marked "(held out)" (val_split.lookalike_groups)."""
    col, field = parse_group_spec(spec, inp.columns)
    wanted = [str(g).strip() for g in groups if str(g).strip()]
    if not wanted:
        raise ConfigError("val_groups: give at least one group to hold out")
    # each row's group as a code into `index` (-1: none), read a chunk at a time: a list of every row's group
    # string held ~60 bytes a row (600 MB at 10M rows); this holds 4 and the distinct groups
    index: Dict[str, int] = {}
    codes = array.array("i", (-1 if g is None else index.setdefault(g, len(index))
                              for g in (group_value(v, field, inp.base_dir) for v in inp.iter_column(col))))
    found = set(index)
    absent = [g for g in wanted if g not in found]
    if absent:
        some = ", ".join(sorted(found)[:8]) + (", ..." if len(found) > 8 else "")
        raise DataError(f"val_groups {', '.join(absent)} not found in {spec!r} ({len(found)} groups: {some})")
    chosen = set(wanted)
    if found <= chosen:
        raise DataError(f"val_groups hold out every group of {spec!r}: nothing is left to train on")
    code = np.asarray(codes, dtype=np.int32)                       # [rows]
    held = np.isin(code, [index[g] for g in chosen])
    train, val = np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).tolist()
    none = f"{GROUP_MISSING}: no group in {spec!r}"
    missing = {i: (GROUP_MISSING, none) for i in np.flatnonzero(code < 0).tolist()}
    return train, val, missing, lookalike_groups({True: found & chosen, False: found - chosen})


FILE_ALSO_TRAINED = "file also in a train row"
FILE_COPY_TRAINED = "file content also in a train row"
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _file_of(v: Any, base_dir: Path) -> Optional[str]:
    """The file a row's image/audio value names, as the table resolves it (relative to its folder, normalised);
    None for a missing value, bytes, a dict or a URL."""
    if is_missing(v) or not isinstance(v, (str, Path)) or _URL.match(str(v).strip()):
        return None
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(str(v).strip())))


def _shown(v: Any, base_dir: Path) -> str:
    """A row's file as the user named it (a folder's file relative to the folder)."""
    if isinstance(v, Path) and v.is_absolute():
        try:
            return v.relative_to(base_dir).as_posix()
        except ValueError:
            return str(v)
    return str(v).strip()


def trained_files(inp: Input, columns: Dict[str, str], train_rows: Sequence[int], val_rows: Sequence[int]
                  ) -> Dict[int, Tuple[str, str]]:
    """Val rows of a table whose image or audio file a train row also names (one file under two groups: the
    held-out figure would include an item trained on) -> {row: (reason, detail)}, skipped from val and counted.
    Paths compare as the table resolves them (relative to its folder, normalised). Folders cannot repeat a file,
    and a Hugging Face column is not read here (it would decode every image)."""
    if inp.kind in ("folder", "hf"):
        return {}
    out: Dict[int, Tuple[str, str]] = {}
    for col in (c for m, c in columns.items() if m in ("image", "audio")):
        # the val rows' files first, then one pass over the train rows asking each of them (a set of every train
        # row's file and a list of the column, as before, held ~100 bytes a row)
        held = {i: v for i, v in _values_at(inp, col, val_rows)}
        files = {_file_of(v, inp.base_dir) for v in held.values()} - {None}
        trained = {f for _, v in _values_at(inp, col, train_rows) for f in (_file_of(v, inp.base_dir),) if f in files}
        for i in val_rows:
            f = _file_of(held[i], inp.base_dir)
            if f is not None and f in trained and i not in out:
                out[i] = (FILE_ALSO_TRAINED, f"{FILE_ALSO_TRAINED}: {held[i]} (another group) is trained on")
    return out


def _values_at(inp: Input, col: str, rows: Sequence[int]) -> Iterator[Tuple[int, Any]]:
    """(row, value) of column `col` at `rows`, in row order, the column read a chunk at a time."""
    want = np.zeros(len(inp), dtype=bool)                          # [rows of the input]
    want[np.asarray(rows, dtype=np.int64)] = True
    return ((i, v) for i, v in enumerate(inp.iter_column(col)) if i < len(want) and want[i])


def _media_files(inp: Input, columns: Dict[str, str], rows: Sequence[int],
                 keep=lambda f: True) -> Dict[int, List[Tuple[str, str]]]:
    """{row: [(resolved file, as named), ...]} of the image/audio files `rows` name (only files `keep` takes)."""
    out: Dict[int, List[Tuple[str, str]]] = {}
    for col in (c for m, c in columns.items() if m in ("image", "audio")):
        for i, v in _values_at(inp, col, rows):
            f = _file_of(v, inp.base_dir)
            if f is not None and keep(f):
                out.setdefault(i, []).append((f, _shown(v, inp.base_dir)))
    return out


def _size(path: str, limit: int) -> Optional[int]:
    """A regular file's size; None when it cannot be read or is over `limit` (the writer skips its row)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size <= limit else None


def _digest(path: str) -> Optional[bytes]:
    """blake2b (128 bits) of a file's bytes; None when it cannot be read."""
    try:
        return hash_file(path, hashlib.blake2b(digest_size=16)).digest()
    except OSError:
        return None


def copied_files(inp: Input, columns: Dict[str, str], train_rows: Sequence[int], val_rows: Sequence[int],
                 limit: int) -> Tuple[Dict[int, Tuple[str, str]], Optional[List[str]]]:
    """Val rows whose image or audio file has the same bytes as a train row's file under another path (a file
    copied, one recording filed under two speakers: the held-out figure would include an item trained on)
    -> ({row: (reason, detail)}, [val file, train file] of the first, or None); skipped from val and counted
    like `trained_files`' rows, which the caller leaves out of `val_rows`. Files over `limit` bytes (the writer
    skips them) and a Hugging Face column (bytes inside the dataset) are not compared."""
    if inp.kind == "hf" or not val_rows:
        return {}, None
    held = _media_files(inp, columns, val_rows)
    held_files = {f for files in held.values() for f, _ in files}
    # Sizes first (one stat per val file, and per train row's file): a file whose size no file on the other side
    # has cannot be a copy, so only the files of a size found on both sides are read and hashed; hashing all of
    # them would read the whole dataset here and once more when the shards are written. The train rows are read
    # in one pass that keeps only such files (and the val files' own paths, trained_files' case); a dict of every
    # train row's file, as before, held ~150 bytes a row.
    sizes = {f: _size(f, limit) for f in held_files}
    held_sizes = set(sizes.values()) - {None}

    def can_be_a_copy(f: str) -> bool:
        n = sizes[f] if f in sizes else _size(f, limit)
        if n in held_sizes:
            sizes[f] = n
        return n in held_sizes or f in held_files

    trained = _media_files(inp, columns, train_rows, keep=can_be_a_copy)
    train_files = {f: shown for files in trained.values() for f, shown in files}
    both = held_sizes & {sizes[f] for f in train_files} - {None}
    digests = {f: _digest(f) for f, n in sizes.items() if n in both}
    by_digest: Dict[bytes, str] = {}
    for f in sorted(train_files):
        if digests.get(f) is not None:
            by_digest.setdefault(digests[f], f)
    out: Dict[int, Tuple[str, str]] = {}
    example = None
    for i in val_rows:
        for f, shown in held.get(i, []):
            twin = by_digest.get(digests.get(f)) if f not in train_files else None   # same path: trained_files
            if twin is not None and i not in out:
                out[i] = (FILE_COPY_TRAINED, f"{FILE_COPY_TRAINED}: {shown} has the same bytes as "
                                             f"{train_files[twin]} (another group), which is trained on")
                example = example or [shown, train_files[twin]]
    return out, example


def resolve_classes(inp: Input, label_col: Optional[str], classnames: Any = None
                    ) -> Tuple[Optional[List[str]], bool]:
    """-> (class names or None, whether labels are names to look up in them).

    classnames: None, a list, or a .txt/.json file.  Without it: the sorted label names for string
    labels, a ClassLabel's names, or None for integer labels (see `integer_classes`)."""
    if label_col is None:
        return None, False
    given = _load_names(classnames) if classnames is not None else None
    hf_names = inp.label_names.get(label_col)
    if hf_names:
        return (given or list(hf_names)), False
    names = class_names(inp.iter_column(label_col), inp.base_dir)  # None: all integers
    if names is None:
        return given, False
    if given is not None:
        return given, True
    return names, True


def integer_classes(inp: Input, label_col: str) -> List[str]:
    """'0'..'max' for integer labels that came without names (the names are the numbers)."""
    top = -1
    for v in inp.iter_column(label_col):
        try:
            top = max(top, int(read_label(v, inp.base_dir)))
        except (SkipRow, ValueError):
            continue
    if top < 0:
        raise DataError(f"label column {label_col!r} holds no non-negative integer label")
    return [str(i) for i in range(top + 1)]


def _load_names(spec: Any) -> List[str]:
    if isinstance(spec, (list, tuple)):
        names = [str(n) for n in spec]
    else:
        from align.templates import load_classnames

        names = load_classnames(str(spec))
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"classnames: {dup!r} is listed twice")
    return names


def write_clip_benchmark_meta(out: Path, n_shards: int, classes: Optional[List[str]],
                              templates: Optional[List[str]]) -> None:
    """CLIP_benchmark's files next to out/test/*.tar: classification with classes, else retrieval."""
    _write_text(out / "test" / "nshards.txt", f"{n_shards}\n")
    if classes is not None:
        bad = [c for c in classes if "\n" in c or "\r" in c or not c.strip()]   # the line ends templates read
        if bad:
            raise DataError(f"class name {bad[0]!r} cannot be written one per line in classnames.txt")
        _write_text(out / "classnames.txt", "\n".join(classes) + "\n")
        _write_text(out / "zeroshot_classification_templates.txt", "\n".join(templates or []) + "\n")
    else:
        _write_text(out / "dataset_type.txt", "retrieval\n")


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all; a full disk is one line naming the file (StorageError), no temporary file left."""
    write_text_whole(path, text, KEPT)
