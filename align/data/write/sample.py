"""One shard-writing job's settings (`Job`) and one input row encoded as one sample's tar members (`encode_row`).

align.data.write.shards runs the job (workers, resume, stats); this module is what each worker does per row:
read the row's media (align.data.write.values), re-encode them (align.data.write.media: images -> jpg/webp/png,
audio -> mono FLAC), and lay out the members: captions -> `txt` (one per line), hard negatives -> `neg.txt`,
labels -> `cls`, the rest -> `json`. A row that cannot be used raises SkipRow with a short reason. A table with
image, text and audio columns is mixed: a row's empty cells leave those modalities out of its sample, and a row with
fewer than two left is skipped as "fewer than 2 modalities" (training's reason).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from align.data.stream.faults import EMPTY_CAPTION, FEW_MODALITIES
from align.data.write.inputs import COLUMN_KINDS, MODALITIES, Input, Row
from align.data.write.jobdir import CB_SPLIT
from align.data.write.media import encode_audio, encode_image
from align.data.write.values import SkipRow, jsonable, read_captions, read_label, read_media
from align.limits import JSON_TOO_LARGE, TEXT_TOO_LONG, DataLimits, as_limits
from align.text import json_utf8
from align.wds.format import NEG_EXT

@dataclass
class Job:
    """Everything a worker needs to write any shard of this job (picklable)."""

    inp: Input
    columns: Dict[str, str]          # modality -> column
    out_dir: Path
    settings: Dict[str, Any]         # the job.json content
    n_rows: int
    n_shards: int
    shard_size: int
    prefix: str
    image_size: Optional[int] = None
    resize_mode: str = "keep"
    image_format: str = "jpg"
    image_quality: int = 95
    sample_rate: int = 16000
    extra_cols: List[str] = field(default_factory=list)
    more_text_cols: List[str] = field(default_factory=list)  # text_col "a,b": captions of b join a's
    classes: Optional[List[str]] = None      # class names: labels are their indices
    string_labels: bool = False              # labels are names (-> index in classes), not integers
    layout: str = "shards"
    indices: Optional[Sequence[int]] = None  # the input rows of this output (None: all), in order
    skip_rows: Dict[int, Tuple[str, str]] = field(default_factory=dict)  # row -> (reason, detail)
    limits: Optional[DataLimits] = None      # data.limits: inputs past them are skipped (align.limits)
    neg_col: Optional[str] = None            # hard-negative captions -> the sample's neg.txt

    @property
    def mixed(self) -> bool:
        """All three of image/text/audio have a column: a row's empty cell leaves that modality out of its sample
        (one with fewer than two left is skipped); with two, an empty cell skips the row."""
        return all(m in self.columns for m in MODALITIES)

    def __post_init__(self):
        self.class_index = {c: i for i, c in enumerate(self.classes or [])}
        self.limits = as_limits(self.limits)

    @property
    def shard_dir(self) -> Path:
        return self.out_dir / CB_SPLIT if self.layout == "clip_benchmark" else self.out_dir

    def shard_name(self, idx: int) -> str:
        return str(idx) if self.layout == "clip_benchmark" else f"{self.prefix}-{idx:06d}"

    def rows(self, start: int, stop: int):
        """The rows at positions start..stop of this output."""
        if self.indices is None:
            yield from self.inp.rows(start, stop)
            return
        picked = [int(i) for i in self.indices[start:stop]]      # a list, or an int64 array (a held-out split)
        run = 0
        while run < len(picked):  # contiguous runs of input rows: one read each
            end = run + 1
            while end < len(picked) and picked[end] == picked[end - 1] + 1:
                end += 1
            yield from self.inp.rows(picked[run], picked[end - 1] + 1)
            run = end


def _negatives(value, base, limits) -> List[str]:
    """A row's hard-negative captions: newline-separated, a JSON list string, or a list; [] when none."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    try:
        return read_captions(value, base, limits)
    except SkipRow as s:     # an empty cell: no negatives, a normal sample; negatives that cannot be read (a lone
        if s.reason == EMPTY_CAPTION:       # surrogate, bytes not UTF-8) skip the row, as training skips such a
            return []                       # neg.txt (they were dropped without a word)
        raise SkipRow(s.reason, re.sub(r"^text:", f"{NEG_EXT}:", s.detail), s.source) from None


def _text_members(row: Row, value, base, job: Job, members: Dict[str, bytes], meta: Dict[str, Any]) -> None:
    """The row's captions -> members["txt"] (one per line; more caption columns join), its hard negatives ->
    members["neg.txt"]; SkipRow past data.limits.max_text_bytes."""
    caps = read_captions(value, base, job.limits)
    for col in job.more_text_cols:   # several caption columns: one caption drawn per visit
        try:
            caps += read_captions(row.values.get(col), base, job.limits)
        except SkipRow as s:        # an empty cell adds none; a caption no tokenizer reads skips the row
            if s.reason != EMPTY_CAPTION:
                raise SkipRow(s.reason, re.sub(r"^text:", f"{col}:", s.detail), s.source) from None
    members["txt"] = "\n".join(caps).encode("utf-8")
    if len(members["txt"]) > job.limits.max_text_bytes:   # training would skip it: so do we, now
        raise SkipRow(TEXT_TOO_LONG, f"text: {len(members['txt'])} bytes of captions, over "
                                     f"data.limits.max_text_bytes={job.limits.max_text_bytes}")
    meta["captions"] = len(caps)
    negs = _negatives(row.values.get(job.neg_col), base, job.limits) if job.neg_col else []
    if negs:
        members[NEG_EXT] = "\n".join(negs).encode("utf-8")
        meta["negatives"] = len(negs)


def _media_members(value, mod: str, job: Job, members: Dict[str, bytes], meta: Dict[str, Any]) -> None:
    """The row's image or audio value -> members["jpg"|...|"flac"] and its info in meta; SkipRow when unusable."""
    payload, name, path = read_media(value, job.inp.base_dir, mod, job.limits)
    try:
        data, info, ext = encode_image(payload, name, job) if mod == "image" else \
            (*encode_audio(payload, name, job), "flac")
    except SkipRow as s:
        s.source = s.source or path
        raise
    members[ext] = data
    if name:
        meta["source"][mod] = name
    meta[mod] = info


def encode_row(row: Row, key: str, job: Job) -> Tuple[Dict[str, bytes], set]:
    """One row -> tar members {ext: bytes} and the modalities it holds, or SkipRow."""
    if row.error:
        raise SkipRow(row.reason or "row: invalid", row.error)
    if row.index in job.skip_rows:
        raise SkipRow(*job.skip_rows[row.index])
    base = job.inp.base_dir
    members: Dict[str, bytes] = {}
    meta: Dict[str, Any] = {"key": key, "source": {"row": row.index}}
    if row.key is not None:
        meta["source"]["key"] = row.key
    mixed = job.mixed
    absent: List[str] = []          # a mixed table's empty cells: the sample is made of the others
    for mod in COLUMN_KINDS:
        if mod not in job.columns:
            continue
        value = row.values.get(job.columns[mod])
        try:
            if value is None and job.inp.kind == "folder":
                raise SkipRow(f"{mod}: missing", f"{mod}: no file for stem {row.key!r}")
            if mod in ("image", "audio"):
                _media_members(value, mod, job, members, meta)
            elif mod == "text":
                _text_members(row, value, base, job, members, meta)
        except SkipRow as s:
            if not (mixed and s.reason in (f"{mod}: missing", EMPTY_CAPTION)):
                raise
            absent.append(mod)
            continue
        if mod == "label":
            label = read_label(value, base)
            if job.string_labels:  # label names -> their index in the class list
                if label not in job.class_index:
                    raise SkipRow("label: not in classnames", f"label: {label!r} is not in the class names")
                meta["label_name"] = label
                label = str(job.class_index[label])
            members["cls"] = label.encode("utf-8")
            names = job.inp.label_names.get(job.columns["label"])  # a datasets ClassLabel
            if names and label == "-1":  # datasets' "no label"
                raise SkipRow("label: missing", "label: -1 (no label)")
            if not job.string_labels and job.classes is not None:
                if not re.fullmatch(r"\d+", label) or int(label) >= len(job.classes):
                    raise SkipRow("label: not in classnames",
                                  f"label: {label!r} is not an index into the {len(job.classes)} class names")
                meta["label_name"] = job.classes[int(label)]
    have = {m for m in job.columns if m not in absent}
    if mixed and len(have & set(MODALITIES)) < 2:
        only = "+".join(m for m in MODALITIES if m in have) or "nothing"
        raise SkipRow(FEW_MODALITIES, f"{'/'.join(absent)}: missing; only {only} left, and a sample needs two of "
                                      "image/text/audio")
    extra = {}
    for col in job.extra_cols:
        try:
            extra[col] = jsonable(row.values.get(col))
        except (TypeError, ValueError):
            pass  # bytes, images, arrays: not metadata
    sidecar = row.values.get("__sidecar__")
    if sidecar is not None:
        try:
            if Path(sidecar).stat().st_size > job.limits.max_json_bytes:
                raise SkipRow(JSON_TOO_LARGE, f"json: sidecar {Path(sidecar).name!r} is over "
                                              f"data.limits.max_json_bytes={job.limits.max_json_bytes}", str(sidecar))
            obj = json.loads(Path(sidecar).read_text(encoding="utf-8"))
            extra.update(obj if isinstance(obj, dict) else {"json": obj})
        except (OSError, ValueError) as e:
            raise SkipRow("json: invalid", f"json: invalid sidecar {Path(sidecar).name!r} ({e})",
                          str(sidecar)) from None
    if extra:
        meta["extra"] = extra
    members["json"] = json_utf8(json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                                           allow_nan=False)).encode("utf-8")
    if len(members["json"]) > job.limits.max_json_bytes:
        raise SkipRow(JSON_TOO_LARGE, f"json: the sample's metadata is {len(members['json'])} bytes, over "
                                      f"data.limits.max_json_bytes={job.limits.max_json_bytes}")
    return members, have
