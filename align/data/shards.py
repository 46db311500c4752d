"""Write users' own paired data (image/text/audio/label) as WebDataset tar shards.

`write_shards(input, out_dir, ...)` reads a CSV/TSV/JSONL/Parquet file, a
folder of pairs or a Hugging Face dataset (see `shard_sources`), re-encodes
every sample (images -> RGB jpg/webp/png, optionally resized; audio -> mono
FLAC at `sample_rate`; captions -> `txt`, one per line; labels -> `cls`; the
rest -> `json`) and writes `DIR/{prefix}-{000000}.tar`.

Guarantees:
  * deterministic: input row r goes to shard r // shard_size; tar members
    have fixed mtime/uid/gid/names/mode, so the bytes do not depend on
    `workers` or on the machine;
  * atomic: a shard is written to `name.tar.tmp` and renamed; its done-record
    `DIR/.done/name.json` (that shard's stats) is written after the rename;
  * resumable: a rerun of the same job (settings in `DIR/.done/job.json`)
    keeps shards whose done-record matches and writes the rest;
  * nothing silently lost: a broken row is skipped, counted under a short
    reason in `stats.json` and listed in `skipped.jsonl`.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from align.data.audio_io import decode_audio, encode_flac, resample
from align.data.shard_sources import (MODALITIES, Row, SkipRow, Source, class_names, jsonable, open_source,
                                      read_captions, read_label, read_media, resolve_columns)
from align.errors import ConfigError, DataError

RESIZE_MODES = ("keep", "center_crop", "border", "longest")
IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
JOB_VERSION = 1
_MTIME = 0  # fixed tar member mtime: shards must not depend on when they were written


@dataclass
class _Job:
    """Everything a worker needs to write any shard of this job (picklable)."""

    source: Source
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
    classes: Optional[List[str]] = None      # class names when labels are strings

    def __post_init__(self):
        self.class_index = {c: i for i, c in enumerate(self.classes or [])}

    def shard_name(self, idx: int) -> str:
        return f"{self.prefix}-{idx:06d}"


def _resized(img, size: int, mode: str):
    """Resize an RGB PIL image: keep (shorter side = size), longest (longer side =
    size), center_crop (size x size), border (longer side = size, padded black)."""
    from PIL import Image
    w, h = img.size
    short = mode in ("keep", "center_crop")
    scale = size / (min(w, h) if short else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (w >= h) != short:
        nw = size   # exact on the side that defines the scale, despite rounding
    else:
        nh = size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if mode == "center_crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif mode == "border":
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        img = canvas
    return img


def _image(payload, name: Optional[str], job: _Job) -> Tuple[bytes, Dict[str, Any]]:
    from PIL import Image, ImageOps, UnidentifiedImageError
    shown = repr(name) if name else "bytes"
    if isinstance(payload, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(payload))
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)  # EXIF orientation; 5-8 swap width and height
            if orientation in (5, 6, 7, 8):
                w, h = h, w
            meta = {"width": w, "height": h, "mode": img.mode}
            if job.image_size and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target
                # (several times faster on large photos); the short side stays >= its target.
                short = job.image_size if job.resize_mode in ("keep", "center_crop") else \
                    max(1, round(min(w, h) * job.image_size / max(w, h)))
                img.draft("RGB", (short, short))
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
        except UnidentifiedImageError:
            raise SkipRow("image: cannot decode", f"image: cannot identify image file {shown}") from None
        except Exception as e:  # PIL plugins raise OSError, ValueError, SyntaxError, DecompressionBombError...
            raise SkipRow("image: cannot decode", f"image: cannot decode {shown} ({type(e).__name__}: {e})") from None
    else:
        img = payload
        meta = {"width": img.size[0], "height": img.size[1], "mode": img.mode}
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # flatten transparency onto white, not black
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if job.image_size:
        img = _resized(img, job.image_size, job.resize_mode)
    buf = io.BytesIO()
    fmt = IMAGE_FORMATS[job.image_format]
    if fmt == "PNG":
        img.save(buf, fmt, compress_level=6)
    else:
        img.save(buf, fmt, quality=job.image_quality)
    return buf.getvalue(), meta


def _audio(payload, name: Optional[str], job: _Job) -> Tuple[bytes, Dict[str, Any]]:
    shown = repr(name) if name else "bytes"
    if isinstance(payload, tuple):  # an already decoded datasets Audio array
        wave, sr = payload
        wave = wave.mean(axis=1) if wave.ndim == 2 else wave  # [T, C] -> [T]
        if wave.size == 0:
            raise SkipRow("audio: empty", f"audio: no samples in {shown}")
        if not np.isfinite(wave).all():
            raise SkipRow("audio: cannot decode", f"audio: NaN or infinite samples in {shown}")
    else:
        try:
            wave, sr = decode_audio(payload, name=shown)
        except DataError as e:  # names the file and what is wrong
            raise SkipRow("audio: cannot decode", f"audio: {e}") from None
    meta = {"duration": round(len(wave) / sr, 6), "sample_rate": int(sr)}
    return encode_flac(resample(wave, int(sr), job.sample_rate), job.sample_rate), meta


def _sample(row: Row, key: str, job: _Job) -> Tuple[List[Tuple[str, bytes]], set]:
    """One row -> tar members [(ext, bytes)] and the modalities it holds, or SkipRow."""
    if row.error:
        raise SkipRow(row.reason or "row: invalid", row.error)
    base = job.source.base_dir
    members: Dict[str, bytes] = {}
    meta: Dict[str, Any] = {"key": key, "source": {"row": row.index}}
    if row.key is not None:
        meta["source"]["key"] = row.key
    for mod in MODALITIES:
        if mod not in job.columns:
            continue
        value = row.values.get(job.columns[mod])
        if value is None and job.source.kind == "folder":
            raise SkipRow(f"{mod}: missing", f"{mod}: no file for stem {row.key!r}")
        if mod in ("image", "audio"):
            payload, name, path = read_media(value, base, mod)
            try:
                data, info = (_image if mod == "image" else _audio)(payload, name, job)
            except SkipRow as s:
                s.source = s.source or path
                raise
            members[job.image_format if mod == "image" else "flac"] = data
            if name:
                meta["source"][mod] = name
            meta[mod] = info
        elif mod == "text":
            caps = read_captions(value, base)
            for col in job.more_text_cols:   # several caption columns: one caption drawn per visit
                try:
                    caps += read_captions(row.values.get(col), base)
                except SkipRow:
                    pass
            members["txt"] = "\n".join(caps).encode("utf-8")
            meta["captions"] = len(caps)
        else:
            label = read_label(value, base)
            if job.classes is not None:  # string labels -> their index in the sorted class list
                meta["label_name"] = label
                label = str(job.class_index[label])
            members["cls"] = label.encode("utf-8")
            names = job.source.label_names.get(job.columns["label"])  # a datasets ClassLabel
            if names and label == "-1":  # datasets' "no label"
                raise SkipRow("label: missing", "label: -1 (no label)")
            if names and label.isdigit() and int(label) < len(names):
                meta["label_name"] = names[int(label)]
    extra = {}
    for col in job.extra_cols:
        try:
            extra[col] = jsonable(row.values.get(col))
        except (TypeError, ValueError):
            pass  # bytes, images, arrays: not metadata
    sidecar = row.values.get("__sidecar__")
    if sidecar is not None:
        try:
            obj = json.loads(Path(sidecar).read_text(encoding="utf-8"))
            extra.update(obj if isinstance(obj, dict) else {"json": obj})
        except (OSError, ValueError) as e:
            raise SkipRow("json: invalid", f"json: invalid sidecar {Path(sidecar).name!r} ({e})", str(sidecar)) from None
    if extra:
        meta["extra"] = extra
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode("utf-8")
    return list(members.items()), {m for m in job.columns}


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def _write_json_atomic(path: Path, obj: Any, lines: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if lines:
            for item in obj:
                f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------- shards


def _write_shard(job: _Job, idx: int, tick=None) -> Dict[str, Any]:
    """Write shard `idx` (rows idx*shard_size ...) atomically; return its done-record."""
    name = job.shard_name(idx)
    final = job.out_dir / f"{name}.tar"
    tmp = job.out_dir / f"{name}.tar.tmp"
    start = idx * job.shard_size
    stop = min(start + job.shard_size, job.n_rows)
    written, by_reason, mods, skipped = 0, Counter(), Counter(), []
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for row in job.source.rows(start, stop):
                key = f"{name}-{row.index - start:06d}"
                try:
                    members, have = _sample(row, key, job)
                except SkipRow as s:
                    by_reason[s.reason] += 1
                    skipped.append({"row": row.index, "key": row.key, "source": s.source or job.source.description,
                                    "reason": s.detail, "shard": name})
                else:
                    for ext, data in members:
                        _add_member(tf, f"{key}.{ext}", data)
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
    _write_json_atomic(job.out_dir / ".done" / f"{name}.json", record)
    return record


_WORKER_JOB: Optional[_Job] = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_shard(idx: int) -> Dict[str, Any]:
    assert _WORKER_JOB is not None
    return _write_shard(_WORKER_JOB, idx)


def _done_record(job: _Job, idx: int) -> Optional[Dict[str, Any]]:
    """The shard's done-record if its tar is there with the recorded size."""
    name = job.shard_name(idx)
    rec_path = job.out_dir / ".done" / f"{name}.json"
    tar = job.out_dir / f"{name}.tar"
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        if rec.get("bytes") == tar.stat().st_size and rec.get("rows") == min(job.shard_size, job.n_rows - idx * job.shard_size):
            return rec
    except (OSError, ValueError):
        pass
    return None


def _prepare_dir(out: Path, settings: Dict[str, Any], overwrite: bool) -> None:
    """Create `out`, or accept it as a previous run of this job, or refuse it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / ".done" / "job.json"
    previous = None
    if job_path.is_file():
        try:
            previous = json.loads(job_path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    if previous == settings and not overwrite:
        return  # resume
    if any(out.iterdir()) and not overwrite:
        if previous is None:
            raise DataError(f"output {out} is not empty and holds no previous run of this job "
                            "(no .done/job.json); choose an empty directory or pass overwrite=True")
        diff = [k for k in sorted(set(settings) | set(previous)) if settings.get(k) != previous.get(k)]
        raise DataError(f"output {out} holds a run with other settings ({', '.join(diff)} differ: "
                        + "; ".join(f"{k}: was {previous.get(k)!r}, now {settings.get(k)!r}" for k in diff[:3])
                        + "); choose another directory or pass overwrite=True")
    if any(out.iterdir()):
        # overwrite=True: remove only what a shard job writes, never the user's other files.
        prefixes = {settings["prefix"], (previous or {}).get("prefix") or settings["prefix"]}
        for p in out.iterdir():
            if p.name in ("stats.json", "skipped.jsonl", "classes.json") or any(
                    re.fullmatch(re.escape(px) + r"-\d+\.tar(\.tmp)?", p.name) for px in prefixes):
                p.unlink()
        shutil.rmtree(out / ".done", ignore_errors=True)
    (out / ".done").mkdir(exist_ok=True)
    _write_json_atomic(job_path, settings)


def write_shards(input: Any, out_dir, *, image_col=None, text_col=None, audio_col=None, label_col=None,
                 image_size: Optional[int] = None, resize_mode: str = "keep", image_format: str = "jpg",
                 image_quality: int = 95, sample_rate: int = 16000, shard_size: int = 1000,
                 prefix: str = "shard", workers: int = 1, split: Optional[str] = None,
                 progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Write `input` as `out_dir/{prefix}-NNNNNN.tar` shards; return the stats
    (also in out_dir/stats.json) plus `pattern`, a brace pattern of the shards.
    A *_col of None auto-detects the column, False leaves the modality out.
    String labels become class indices (names in out_dir/classes.json)."""
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"resize_mode {resize_mode!r} unknown; valid: {', '.join(RESIZE_MODES)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format {image_format!r} unknown; valid: jpg, webp, png")
    image_format = "jpg" if image_format == "jpeg" else image_format
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
    out = Path(out_dir).expanduser()
    source = open_source(input, split=split, exclude=out.resolve())
    if source.kind == "folder" and Path(source.base_dir).resolve() == out.resolve():
        raise DataError(f"output folder {out} is the input folder; write the shards elsewhere")
    more_text = []
    if isinstance(text_col, str) and "," in text_col:   # --text-col a,b: several caption columns
        text_col, *more_text = [c.strip() for c in text_col.split(",") if c.strip()] or [None]
        for col in more_text:
            if col not in source.columns:
                raise DataError(f"{source.description}: no column {col!r} for text; "
                                f"available columns: {', '.join(map(str, source.columns))}")
    columns = resolve_columns(source, {"image": image_col, "text": text_col, "audio": audio_col, "label": label_col})
    n_rows = len(source)
    if n_rows == 0:
        raise DataError(f"input {source.description} has no rows")
    local = isinstance(input, (str, os.PathLike)) and Path(os.fspath(input)).expanduser().exists()
    settings = {"version": JOB_VERSION,
                "input": str(Path(os.fspath(input)).expanduser().resolve()) if local else source.description, "input_kind": source.kind,
                "fingerprint": source.fingerprint(), "rows": n_rows, "columns": columns,
                "image_size": image_size, "resize_mode": resize_mode, "image_format": image_format,
                "image_quality": image_quality, "sample_rate": sample_rate, "shard_size": shard_size,
                "prefix": prefix, "split": split}
    if more_text:
        settings["more_text_cols"] = more_text
    classes = None
    if "label" in columns and not source.label_names.get(columns["label"]):
        classes = class_names(source.column(columns["label"]), source.base_dir)
    _prepare_dir(out, settings, overwrite)
    job = _Job(classes=classes, source=source, columns=columns, out_dir=out, settings=settings, n_rows=n_rows,
               n_shards=math.ceil(n_rows / shard_size), shard_size=shard_size, prefix=prefix,
               image_size=image_size, resize_mode=resize_mode, image_format=image_format,
               image_quality=image_quality, sample_rate=sample_rate,
               extra_cols=[c for c in source.columns if c not in columns.values() and c not in more_text],
               more_text_cols=more_text)
    for p in out.glob(f"{prefix}-*.tar.tmp"):  # left by an interrupted run
        p.unlink()
    records: Dict[int, Dict[str, Any]] = {}
    for idx in range(job.n_shards):
        rec = _done_record(job, idx)
        if rec is not None:
            records[idx] = rec
    pending = [i for i in range(job.n_shards) if i not in records]

    from tqdm.auto import tqdm
    done_rows = sum(r["rows"] for r in records.values())
    with tqdm(total=n_rows, initial=done_rows, unit="sample", desc=f"shards -> {out}", disable=not progress) as bar:
        n_proc = min(workers, len(pending))
        if n_proc <= 1:
            for idx in pending:
                records[idx] = _write_shard(job, idx, tick=bar.update)
        else:
            # spawn, not fork: the parent may hold pyarrow/torch threads.
            with ProcessPoolExecutor(n_proc, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(job,)) as pool:
                futures = {pool.submit(_worker_shard, idx): idx for idx in pending}
                try:
                    for fut in as_completed(futures):
                        records[futures[fut]] = fut.result()
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
             "modalities": {m: mods.get(m, 0) for m in MODALITIES}, "shards": job.n_shards}
    _write_json_atomic(out / "skipped.jsonl", [s for r in ordered for s in r["skipped_rows"]], lines=True)
    if classes is not None:
        _write_json_atomic(out / "classes.json", classes)
    _write_json_atomic(out / "stats.json", stats)
    last = job.n_shards - 1
    pattern = str(out / (f"{prefix}-{{000000..{last:06d}}}.tar" if last else f"{prefix}-000000.tar"))
    return dict(stats, pattern=pattern)


def summary_line(stats: Dict[str, Any]) -> str:
    """One line for the CLI: written/skipped counts, top reasons, where."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats["by_reason"].items(), key=lambda kv: -kv[1])[:3])
    mods = "+".join(m for m, n in stats["modalities"].items() if n)
    return (f"wrote {stats['written']} {mods} samples in {stats['shards']} shards"
            f"{' to ' + stats['pattern'] if 'pattern' in stats else ''}; skipped {stats['skipped']}"
            + (f" ({reasons}; see skipped.jsonl)" if reasons else ""))
