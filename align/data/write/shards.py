"""Write users' own paired data (image/text/audio/label) as WebDataset tar shards.

`write_shards(input, out_dir, ...)` reads a CSV/TSV/JSONL/Parquet file, a
folder of pairs or a Hugging Face dataset (see align.data.write.inputs), re-encodes
every sample (images -> RGB jpg/webp/png, optionally resized; audio -> mono
FLAC at `sample_rate`; captions -> `txt`, one per line; hard-negative captions (neg_col) -> `neg.txt`;
labels -> `cls`; the
rest -> `json`) and writes `DIR/{prefix}-{000000}.tar`, or, with
`layout="clip_benchmark"`, CLIP_benchmark's wds layout (an eval set that
`data.val`, `align bench` and the `clip_benchmark` CLI read directly):

    DIR/test/0.tar, 1.tar, ...   DIR/test/nshards.txt
    DIR/classnames.txt           DIR/zeroshot_classification_templates.txt   (with a label column)
    DIR/dataset_type.txt ("retrieval")                                        (without: image/audio + captions)

`val_groups_from` + `val_groups` hold out whole groups (speakers, writers,
sites: a column's value, or a field of a file name): their rows become
`DIR/val` (clip_benchmark layout) and the rest `DIR/train` (shards), with one
class list for both.

Guarantees:
  * deterministic: input row r goes to shard r // shard_size; tar members
    have fixed mtime/uid/gid/names/mode, so the bytes do not depend on
    `workers` or on the machine;
  * atomic: a shard is written to `name.tar.tmp` and renamed; its done-record
    `DIR/.done/name.json` (that shard's stats) is written after the rename;
  * resumable: a rerun of the same job (settings in `DIR/.done/job.json`)
    keeps shards whose done-record matches and writes the rest;
  * nothing silently lost: a broken row is skipped, counted under a short
    reason in `stats.json` and listed in `skipped.jsonl`; writing no sample at
    all, or skipping more than `max_skip_frac` of the rows, is a DataError.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from align.data.write import eval_sets
from align.data.stream.faults import format_counts
from align.data.write.media import IMAGE_FORMATS, RESIZE_MODES
from align.data.write.inputs import COLUMN_KINDS, open_input, resolve_columns
from align.data.write.sample import Job, encode_row
from align.data.write.values import SkipRow
from align.errors import ConfigError, DataError
from align.limits import DEFAULT_LIMITS, as_limits
from align.runlock import RunLock
from align.data.write.jobdir import KEPT, prepare_dir, write_json_atomic
from align.wds.writer import SampleWriter
from align.writes import guard_write

LAYOUTS = ("shards", "clip_benchmark")
JOB_VERSION = 1


# ----------------------------------------------------------------- shards


def _write_shard(job: Job, idx: int, tick=None) -> Dict[str, Any]:
    """Write shard `idx` (rows idx*shard_size ...) atomically; return its done-record."""
    name = job.shard_name(idx)
    final = job.shard_dir / f"{name}.tar"
    tmp = job.shard_dir / f"{name}.tar.tmp"
    start = idx * job.shard_size
    stop = min(start + job.shard_size, job.n_rows)
    written, by_reason, mods, skipped = 0, Counter(), Counter(), []
    # a full disk: one line naming the shard (StorageError), its .tar.tmp removed; the finished shards stay
    with guard_write(str(final), None, None, kept=KEPT, partial=str(tmp)):
        with open(tmp, "wb") as f:
            with SampleWriter(f) as tar:
                for pos, row in enumerate(job.rows(start, stop)):
                    key = f"{name}-{pos:06d}"
                    try:
                        members, have = encode_row(row, key, job)
                    except SkipRow as s:
                        by_reason[s.reason] += 1
                        skipped.append({"row": row.index, "key": row.key, "source": s.source or job.inp.description,
                                        "reason": s.detail, "shard": name})
                    else:
                        tar.write(key, members)
                        written += 1
                        mods.update(have)
                    if tick is not None:
                        tick(1)
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, final)
    record = {"shard": f"{name}.tar", "rows": stop - start, "written": written, "skipped": len(skipped),
              "by_reason": dict(sorted(by_reason.items())), "modalities": dict(sorted(mods.items())),
              "bytes": final.stat().st_size, "skipped_rows": skipped}
    write_json_atomic(job.out_dir / ".done" / f"{name}.json", record)
    return record


_WORKER_JOB: Optional[Job] = None


def _init_worker(job: Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_shard(idx: int) -> Dict[str, Any]:
    assert _WORKER_JOB is not None
    return _write_shard(_WORKER_JOB, idx)


def _done_record(job: Job, idx: int) -> Optional[Dict[str, Any]]:
    """The shard's done-record if its tar is there with the recorded size."""
    name = job.shard_name(idx)
    rec_path = job.out_dir / ".done" / f"{name}.json"
    tar = job.shard_dir / f"{name}.tar"
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        rows = min(job.shard_size, job.n_rows - idx * job.shard_size)
        if rec.get("bytes") == tar.stat().st_size and rec.get("rows") == rows:
            return rec
    except (OSError, ValueError):
        pass
    return None


def _lean(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A shard's done-record without its skipped rows, which stay in its .done file until skipped.jsonl is
    written (_skipped_rows): every shard's were held to the end, one dict per skipped input row."""
    return {k: v for k, v in rec.items() if k != "skipped_rows"}


def _skipped_rows(job: Job):
    """Every shard's skipped rows in shard order, read from its .done record one shard at a time."""
    for idx in range(job.n_shards):
        rec = json.loads((job.out_dir / ".done" / f"{job.shard_name(idx)}.json").read_text(encoding="utf-8"))
        yield from rec.get("skipped_rows", [])


def _check_options(*, resize_mode, image_format, layout, val_groups_from, val_groups, max_skip_frac, image_size,
                   image_quality, sample_rate, shard_size, workers, prefix) -> str:
    """One-line ConfigError for the first bad option of write_shards; returns image_format ('jpeg' -> 'jpg')."""
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"resize_mode {resize_mode!r} unknown; valid: {', '.join(RESIZE_MODES)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format {image_format!r} unknown; valid: jpg, webp, png, source")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} unknown; valid: {', '.join(LAYOUTS)}")
    if (val_groups_from is None) != (not val_groups):
        raise ConfigError("val_groups_from and val_groups go together: the column (or COL:N file-name field) "
                          "holding each row's group, and the groups to hold out")
    if max_skip_frac is not None and not (isinstance(max_skip_frac, (int, float)) and 0 <= max_skip_frac <= 1):
        raise ConfigError(f"max_skip_frac must be a number in [0, 1], got {max_skip_frac!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}")
    if image_size is None and resize_mode != "keep":
        raise ConfigError(f"resize_mode {resize_mode!r} needs image_size")
    for name, v, lo in (("image_quality", image_quality, 1), ("sample_rate", sample_rate, 1),
                        ("shard_size", shard_size, 1), ("workers", workers, 1)):
        if not isinstance(v, int) or v < lo or (name == "image_quality" and v > 100):
            raise ConfigError(f"{name} must be an integer >= {lo}" + (" and <= 100" if name == "image_quality" else "")
                              + f", got {v!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix or ""):
        raise ConfigError(f"prefix {prefix!r} may hold only letters, digits, '_' and '-' (a '.' would split keys)")
    return "jpg" if image_format == "jpeg" else image_format


def _zeroshot_templates(templates, columns: Dict[str, str]) -> list:
    """The eval set's zero-shot templates (default: photo for images, audio otherwise), a plain list."""
    from align.templates import get_templates

    tmpl = get_templates(templates if templates is not None else "photo" if "image" in columns else "audio")
    if not isinstance(tmpl, list):
        raise DataError("templates: class-specific prompts (a JSON dict) cannot be written as "
                        "zeroshot_classification_templates.txt; give a list of templates")
    return tmpl


def write_shards(input: Any, out_dir, *, image_col=None, text_col=None, audio_col=None, label_col=None,
                 image_size: Optional[int] = None, resize_mode: str = "keep", image_format: str = "jpg",
                 image_quality: int = 95, sample_rate: int = 16000, shard_size: int = 1000,
                 prefix: str = "shard", workers: int = 1, split: Optional[str] = None,
                 progress: bool = True, overwrite: bool = False, layout: str = "shards", classnames=None,
                 templates=None, val_groups_from: Optional[str] = None, val_groups: Optional[List[str]] = None,
                 max_skip_frac: Optional[float] = None, limits=None, follow_links: bool = False,
                 neg_col: Optional[str] = None) -> Dict[str, Any]:
    """Write `input` as `out_dir/{prefix}-NNNNNN.tar` shards (or CLIP_benchmark's layout, see the module
    docstring); return the stats (also in out_dir/stats.json) plus `pattern`, a brace pattern of the
    shards. A *_col of None auto-detects the column, False leaves the modality out. String labels
    become class indices (names in out_dir/classes.json, or the order of `classnames`).
    val_groups_from/val_groups: rows of those groups -> out_dir/val (clip_benchmark layout), the rest
    -> out_dir/train; the stats are train's, with val's under "val".
    Raises DataError after writing when no sample was written, or more than max_skip_frac of the
    rows were skipped.  limits: data.limits (align.limits.DataLimits or a mapping): inputs past them are
    skipped under the reasons training counts.  follow_links: read linked files and folders that lead
    out of an input folder (default: such rows are skipped as "link out of the input folder").
    neg_col: a column of hard-negative captions (newline-separated, a JSON list or a list) written as each
    sample's neg.txt (rows without any get none)."""
    image_format = _check_options(resize_mode=resize_mode, image_format=image_format, layout=layout,
                                  val_groups_from=val_groups_from, val_groups=val_groups, max_skip_frac=max_skip_frac,
                                  image_size=image_size, image_quality=image_quality, sample_rate=sample_rate,
                                  shard_size=shard_size, workers=workers, prefix=prefix)
    out = Path(out_dir).expanduser()
    limits = as_limits(limits)
    inp = open_input(input, split=split, exclude=out.resolve(), follow_links=follow_links)
    if inp.kind == "folder" and Path(inp.base_dir).resolve() == out.resolve():
        raise DataError(f"output folder {out} is the input folder; write the shards elsewhere")
    text_col, more_text = _split_text_col(inp, text_col)
    columns = resolve_columns(inp, {"image": image_col, "text": text_col, "audio": audio_col, "label": label_col})
    _check_sample_rate(columns, sample_rate, limits)
    _check_neg_col(inp, neg_col, columns)
    n_rows = len(inp)
    if n_rows == 0:
        raise DataError(f"input {inp.description} has no rows")
    eval_set = layout == "clip_benchmark" or val_groups_from is not None
    if eval_set and "label" not in columns and "text" not in columns:
        raise DataError("an eval set (clip_benchmark layout) needs a label column (zero-shot classification) "
                        "or a text column (retrieval); name it with label_col / text_col")
    classes, string_labels, tmpl = _eval_classes(inp, columns, classnames, templates, eval_set)
    local = isinstance(input, (str, os.PathLike)) and Path(os.fspath(input)).expanduser().exists()
    settings = {"version": JOB_VERSION,
                "input": str(Path(os.fspath(input)).expanduser().resolve()) if local else inp.description,
                "input_kind": inp.kind,
                "fingerprint": inp.fingerprint(), "rows": n_rows, "columns": columns,
                "image_size": image_size, "resize_mode": resize_mode, "image_format": image_format,
                "image_quality": image_quality, "sample_rate": sample_rate, "shard_size": shard_size,
                "prefix": prefix, "split": split}
    # optional settings only when set: the job.json of earlier runs stays valid for resuming
    settings.update({k: v for k, v in (("more_text_cols", more_text),
                                       ("limits", dataclasses.asdict(limits) if limits != DEFAULT_LIMITS else None),
                                       ("follow_links", follow_links or None), ("neg_col", neg_col)) if v})
    if classnames is not None or eval_set:
        settings.update(classes=classes, templates=tmpl, layout=layout)
    common = dict(inp=inp, columns=columns, shard_size=shard_size, prefix=prefix, image_size=image_size,
                  resize_mode=resize_mode, image_format=image_format, image_quality=image_quality,
                  sample_rate=sample_rate, more_text_cols=more_text, neg_col=neg_col,
                  extra_cols=[c for c in inp.columns if c not in columns.values() and c not in more_text
                              and c != neg_col],
                  classes=classes, string_labels=string_labels, limits=limits)
    if val_groups_from is None:
        parts = [("", Job(out_dir=out, settings=settings, n_rows=n_rows, n_shards=math.ceil(n_rows / shard_size),
                           layout=layout, **common))]
    else:
        parts, lookalike, copies = _held_out_parts(out, settings, common, val_groups_from, val_groups)
    results = _write_parts(out, parts, overwrite, workers, progress, tmpl)
    _check_skips([(job.out_dir, results[name]) for name, job in parts], max_skip_frac)
    for st in results.values():
        del st["rows"]
    stats = dict(results[parts[0][0]])
    if len(results) > 1:
        stats["val"] = results["val"]
        stats["lookalike_groups"] = lookalike
        if copies:
            stats["copies_of_trained"] = copies
    return stats


def _write_parts(out: Path, parts, overwrite: bool, workers: int, progress: bool, tmpl) -> Dict[str, Dict[str, Any]]:
    """Each (name, job) of `parts` written under `out`, holding out's lock; -> {name: that part's stats}."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    # One writer per --out (align.runlock): a second job on it is refused in one line, changing no file.
    with RunLock(out, what="shard job (align data shards)"):
        return {name: _write_part(job, overwrite, workers, progress, tmpl) for name, job in parts}


def _eval_classes(inp, columns, classnames, templates, eval_set):
    """(class names or None, whether labels are strings, zero-shot templates of an eval set or None)."""
    classes, string_labels = eval_sets.resolve_classes(inp, columns.get("label"), classnames)
    if eval_set and "label" in columns and classes is None:
        classes = eval_sets.integer_classes(inp, columns["label"])
    tmpl = _zeroshot_templates(templates, columns) if eval_set and "label" in columns else None
    return classes, string_labels, tmpl


def _split_text_col(inp, text_col):
    """--text-col a,b: several caption columns -> (first, [the others]), each checked to exist."""
    if not (isinstance(text_col, str) and "," in text_col):
        return text_col, []
    text_col, *more_text = [c.strip() for c in text_col.split(",") if c.strip()] or [None]
    for col in more_text:
        if col not in inp.columns:
            raise DataError(f"{inp.description}: no column {col!r} for text; "
                            f"available columns: {', '.join(map(str, inp.columns))}")
    return text_col, more_text


def _held_out_parts(out: Path, settings: dict, common: dict, val_groups_from: str, val_groups: List[str]):
    """write_shards' two jobs for held-out groups: out/train (the other rows; rows without a group skipped) and
    out/val (clip_benchmark layout; rows whose file a train row also names, or a copy of it, skipped); -> ([(name,
    Job)], the look-alike group ids, {"count", "example": [val file, train file]} of the copies or None)."""
    inp, shard_size = common["inp"], common["shard_size"]
    train_rows, val_rows, no_group, lookalike = eval_sets.split_by_groups(inp, val_groups_from, val_groups)
    also_trained = eval_sets.trained_files(inp, common["columns"], train_rows, val_rows)   # skipped, counted
    copies, example = eval_sets.copied_files(inp, common["columns"], train_rows,      # the same bytes, another path
                                             [i for i in val_rows if i not in also_trained],
                                             common["limits"].max_member_bytes)
    held = dict(settings, val_groups_from=val_groups_from, val_groups=sorted(val_groups))
    parts = [(name, Job(out_dir=out / name, settings=dict(held, part=name), n_rows=len(rows),
                        n_shards=math.ceil(len(rows) / shard_size), layout=lay, indices=rows, skip_rows=skips,
                        **common))
             for name, rows, lay, skips in (("train", train_rows, "shards", no_group),
                                            ("val", val_rows, "clip_benchmark", {**also_trained, **copies}))]
    return parts, lookalike, {"count": len(copies), "example": example} if copies else None


def _check_sample_rate(columns: dict, sample_rate: int, limits) -> None:
    """An audio input's --sample-rate inside data.limits: 500 Hz wrote shards whose every clip training skips,
    700 kHz ended in the FLAC encoder's traceback."""
    if "audio" in columns and not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise ConfigError(f"sample_rate {sample_rate} Hz is outside data.limits.min_sample_rate..max_sample_rate "
                          f"({limits.min_sample_rate}..{limits.max_sample_rate}): training would skip every clip")


def _check_neg_col(inp, neg_col, columns) -> None:
    if neg_col is not None and (neg_col not in inp.columns or "text" not in columns):
        raise DataError(f"{inp.description}: --neg-col {neg_col!r}: " + (
            "hard negatives are captions; the input needs a text column" if neg_col in inp.columns else
            f"no such column; available columns: {', '.join(map(str, inp.columns))}"))


def _check_skips(parts: List[Tuple[Path, Dict[str, Any]]], max_skip_frac: Optional[float]) -> None:
    """DataError when an output got no sample, or more than max_skip_frac of all rows were skipped."""
    for out, st in parts:
        if st["written"] == 0:
            raise DataError(f"wrote no sample to {out}: all {st['rows']} rows were skipped "
                            f"({format_counts(st['by_reason'], 3)}); "
                            f"see {out / 'skipped.jsonl'}")
    skipped, rows = sum(st["skipped"] for _, st in parts), sum(st["rows"] for _, st in parts)
    if max_skip_frac is not None and skipped > max_skip_frac * rows:
        by_reason: Counter = Counter()
        for _, st in parts:
            by_reason.update(st["by_reason"])
        where = " and ".join(str(out / "skipped.jsonl") for out, st in parts if st["skipped"])
        raise DataError(f"skipped {skipped} of {rows} rows ({skipped / rows:.1%}), more than max_skip_frac "
                        f"{max_skip_frac} ({format_counts(by_reason, 3)}); see {where}")


def _write_part(job: Job, overwrite: bool, workers: int, progress: bool, templates) -> Dict[str, Any]:
    """Write (or resume) one output folder; its stats, also in its stats.json."""
    out, n_rows = job.out_dir, job.n_rows
    if n_rows == 0:
        raise DataError(f"no input row goes to {out}")
    prepare_dir(out, job.settings, overwrite)
    job.shard_dir.mkdir(exist_ok=True)
    for p in job.shard_dir.glob("*.tar.tmp"):  # left by an interrupted run
        p.unlink()
    records: Dict[int, Dict[str, Any]] = {}
    for idx in range(job.n_shards):
        rec = _done_record(job, idx)
        if rec is not None:
            records[idx] = _lean(rec)
    pending = [i for i in range(job.n_shards) if i not in records]

    from align.progress import progress as tqdm   # plain lines off a terminal
    done_rows = sum(r["rows"] for r in records.values())
    with tqdm(total=n_rows, initial=done_rows, unit="sample", desc=f"shards -> {out}", disable=not progress) as bar:
        n_proc = min(workers, len(pending))
        if n_proc <= 1:
            for idx in pending:
                records[idx] = _lean(_write_shard(job, idx, tick=bar.update))
        else:
            # spawn, not fork: the parent may hold pyarrow/torch threads.
            with ProcessPoolExecutor(n_proc, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(job,)) as pool:
                futures = {pool.submit(_worker_shard, idx): idx for idx in pending}
                try:
                    for fut in as_completed(futures):
                        records[futures[fut]] = _lean(fut.result())
                        bar.update(records[futures[fut]]["rows"])
                except BrokenProcessPool:
                    raise DataError(f"a shard-writing worker process died (out of memory, or write_shards(workers="
                                    f"{workers}) called from a script without `if __name__ == \"__main__\":`); "
                                    f"rerun to resume in {out}") from None
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise

    ordered = [records[i] for i in range(job.n_shards)]
    by_reason, mods = Counter(), Counter()
    for r in ordered:
        by_reason.update(r["by_reason"])
        mods.update(r["modalities"])
    stats = {"written": sum(r["written"] for r in ordered), "skipped": sum(r["skipped"] for r in ordered),
             "by_reason": dict(sorted(by_reason.items())),
             "modalities": {m: mods.get(m, 0) for m in COLUMN_KINDS}, "shards": job.n_shards}
    write_json_atomic(out / "skipped.jsonl", _skipped_rows(job), lines=True)
    if job.classes is not None and job.layout == "shards":
        write_json_atomic(out / "classes.json", job.classes)
    write_json_atomic(out / "stats.json", stats)
    last = job.n_shards - 1
    if job.layout == "clip_benchmark":
        eval_sets.write_clip_benchmark_meta(out, job.n_shards, job.classes if "label" in job.columns else None,
                                            templates)
        pattern = str(job.shard_dir / (f"{{0..{last}}}.tar" if last else "0.tar"))
    else:
        pattern = str(out / (f"{job.prefix}-{{000000..{last:06d}}}.tar" if last else f"{job.prefix}-000000.tar"))
    return dict(stats, pattern=pattern, rows=n_rows)


def summary_line(stats: Dict[str, Any]) -> str:
    """One line for the CLI: written/skipped counts, top reasons, where (train and val when split)."""
    def one(st: Dict[str, Any]) -> str:
        reasons = format_counts(st["by_reason"], 3)
        mods = "+".join(m for m, n in st["modalities"].items() if n)
        return (f"wrote {st['written']} {mods} samples in {st['shards']} shards"
                f"{' to ' + st['pattern'] if 'pattern' in st else ''}; skipped {st['skipped']}"
                + (f" ({reasons}; see skipped.jsonl)" if reasons else ""))
    if "val" in stats:
        same = "; ".join(", ".join(map(repr, ids)) for ids in stats.get("lookalike_groups") or [])
        return ("train: " + one(stats) + "; val: " + one(stats["val"])
                + (f"; warning: group values {same} differ only by case, Unicode form or a number's spelling and "
                   "are separate groups (make them one spelling, or name all of them in --val-groups)" if same else "")
                + _copies_warning(stats.get("copies_of_trained")))
    return one(stats)


def _copies_warning(copies: Optional[Dict[str, Any]]) -> str:
    if not copies:
        return ""
    held, trained = copies["example"]
    return (f"; warning: {copies['count']} val rows' image/audio files have the same bytes as a train row's file "
            f"under another name (e.g. {held} and {trained}): left out of val, which would score items trained on")
