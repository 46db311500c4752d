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
               captions `txt` (one per line: \\n, \\r\\n or \\r; a U+2028 is inside a caption).
  imagefolder  ROOT/<class>/**/<image>   (torchvision ImageFolder order: sorted classes, sorted files)
  audiofolder  ROOT/<class>/**/<audio>
  hf           a Hugging Face `datasets` save_to_disk folder (image and/or audio column,
               label and/or caption column), opened by `align.data.write.inputs`
  csv          a CSV/TSV with a path column (image or audio file, relative to the CSV)
               and a caption column; rows with the same path are one item with several
               captions; optional label column

The hf and csv openers live in datasets_tables.py, the items, base class and decoders in dataset_items.py
(re-exported here). A sample that cannot be decoded raises `SampleError` from `load`; the embedder
skips and counts it. Problems found while indexing (bad `cls`, missing files)
are listed in `dataset.problems`.
"""
from __future__ import annotations

import inspect
import os
import tarfile
from typing import List, Optional, Sequence

from align.templates import get_templates
from align.errors import ConfigError, DataError
from align.registry import Registry
from align.text import split_lines
from align.wds.format import FILE_EXTS, LABEL_EXT, file_modality, group_samples, pick
from align.wds.reader import Oversize, index_members
from align.limits import DataLimits, member_limiter, option_hint
# what a dataset is (and what importers of this module use): items, the base class, the decoders
from align.bench.dataset_items import (BenchDataset, Item, SampleError, classnames_of,  # noqa: F401
                                       check_member_size, decode_audio, decode_image)
from align.bench.datasets_tables import open_csv, open_hf

DATASET_TYPES: Registry = Registry("dataset")
DATASET_TYPES.register("hf")(open_hf)          # the table layouts (datasets_tables.py)
DATASET_TYPES.register("csv")(open_csv)


# ------------------------------------------------------------------ webdataset
class WdsDataset(BenchDataset):
    kind = "wds"

    def _raw(self, handle, limits: Optional[DataLimits] = None) -> bytes:
        shard, offset, size = handle  # plain (uncompressed) tar: member data is a contiguous byte range
        check_member_size(size, limits)
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as e:
            raise SampleError(f"cannot read {shard}: {e}") from None
        if len(data) != size:
            raise SampleError(f"{shard} is truncated")
        return data


# the limit a caption or label member is read within when a set is opened (align.limits.member_limit)
_READ_AT_OPEN = {"txt": "max_text_bytes", LABEL_EXT: "max_member_bytes"}


def _wds_items(path: str, shard: str, problems: List[str], limits: Optional[DataLimits] = None) -> List[Item]:
    """Items of one shard: media as byte ranges, labels and captions read now (within `limits`, None: the
    defaults; media sizes are checked when read, against the limits the embedder passes)."""
    try:
        f = open(shard, "rb")
    except OSError as e:
        raise DataError(f"dataset {path!r}: shard {shard} cannot be opened as a plain tar: {e.strerror or e}") from None
    items, dups, ignored = [], [], []
    with f:
        try:
            members = ((name, (shard, offset, size, data)) for name, offset, size, data
                       in index_members(f, want=lambda n: n.lower().endswith((".cls", ".txt")),
                                              limits=member_limiter(limits)))
            for sample in group_samples(members, dups.append, ignored.append):
                it = Item(key=f"{os.path.basename(shard)}:{sample['__key__']}")
                for modality in ("image", "audio"):
                    ext = pick(sample, modality)
                    if ext is not None:
                        it.media[modality] = sample[ext][:3]
                big = [ext for ext in (LABEL_EXT, "txt") if isinstance(sample.get(ext, (0,) * 4)[3], Oversize)]
                if big:   # a caption or label over its limit: never read (align.wds.reader)
                    problems.append(f"{it.key}: {sample[big[0]][3].reason} ({big[0]}); sample skipped "
                                    f"({option_hint(_READ_AT_OPEN[big[0]])})")
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
                if "txt" in sample:  # as CLIP_benchmark, one caption per line; but a line ends at \n, \r\n, \r
                    # only (its str.splitlines also cuts at U+2028...: a caption `align data shards` wrote whole)
                    it.captions = split_lines(sample["txt"][3].decode("utf-8", "replace"))
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
def open_wds(path: str, *, split: str = "test", classnames=None, templates=None, name=None,
             limits: Optional[DataLimits] = None) -> WdsDataset:
    """CLIP_benchmark's local webdataset layout (see module docstring); limits: what a caption or label member
    may hold (None: the defaults)."""
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
        items += _wds_items(path, shard, problems, limits)
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
    return WdsDataset(path, items, name=name, classnames=classnames_of(classnames),
                      templates=get_templates(templates) if templates is not None else None,
                      problems=problems, files=shards + meta, options={"split": split})


def open_shard_files(shards: Sequence[str], *, name: Optional[str] = None,
                     limits: Optional[DataLimits] = None) -> WdsDataset:
    """Plain training shards (local uncompressed tars, no CLIP_benchmark layout files) as one dataset,
    items in shard order; keys are `shard basename:sample key`, captions the `txt` lines (limits: as open_wds)."""
    items: List[Item] = []
    problems: List[str] = []
    for shard in shards:
        items += _wds_items(shard, shard, problems, limits)
    items = [it for it in items if it.media or it.captions]
    return WdsDataset(name or (shards[0] if len(shards) == 1 else "shards"), items, name=name, problems=problems,
                      files=list(shards), options={"shards": len(shards)})


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
    problems = ([f"{ignored} files without a {modality} extension ({', '.join(FILE_EXTS[modality])}) ignored"]
                if ignored else [])
    names = classnames_of(classnames)
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


def open_dataset(path: str, type: str, limits: Optional[DataLimits] = None, **options) -> BenchDataset:
    """Open `path` with the layout registered as `type` (wds, imagefolder, audiofolder, hf, csv). limits: what
    the members read now (captions, labels of a wds set) may hold (None: the defaults; media are decoded later,
    within the limits the embedder passes)."""
    opener = DATASET_TYPES.get(type)
    params = set(inspect.signature(opener).parameters)
    allowed = params - {"path", "limits"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ConfigError(f"dataset {path!r}: option {bad[0]!r} is not valid for type {type!r}; "
                          f"valid: {', '.join(sorted(allowed))}")
    if not path:
        raise DataError("dataset path is empty")
    return opener(path, **options, **({"limits": limits} if "limits" in params and limits is not None else {}))
