"""`align embed`: embeddings of a whole corpus, one part per source shard, resumable and split across processes.

    align embed MODEL --data SHARDS_OR_EVAL_SET --out EMB/ [--dtype float16|float32]

`--data` is a shard pattern / list / folder of `.tar` files (what `data.train` takes, local files) or a
CLIP_benchmark-layout eval set (ROOT/{split}/nshards.txt). Each source shard becomes one *part*:

    EMB/manifest.json                   model, source shards and their root folder, part names, dtype, engine,
                                        precision, the media limits that differ from the defaults (identical
                                        from every process)
    EMB/parts/part-00007.image.npy      [N_image, D] float16|float32, rows L2-normalised
    EMB/parts/part-00007.text.npy       [N_text, D]  one row per caption
    EMB/parts/part-00007.parquet        one row per vector: key, caption, shard, modality, row (in that
                                        modality's .npy), media_offset/media_size (the member's byte range
                                        in the shard, -1 for text), part
    EMB/parts/part-00007.done.json      counts and each file's size and checksum (blake2b); written last, so
                                        a part without it (or whose files are not that size: cut short by a
                                        kill or a full disk; or whose bytes changed: a damaged disk) is redone
                                        by a rerun, and refused in one line naming the file when read

Under `accelerate launch --num_processes N` (or torchrun) process r embeds parts r, r+N, r+2N, ...;
every part is computed the same way whichever process does it, so the output equals one process's. Process 0
draws the one progress bar and prints the one end line, with the launch's totals
(align.retrieval.embed_summary.launch_totals).
Encoding reuses align.bench.embed (batched, skip-and-count broken samples).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import List, Optional, Sequence

import numpy as np

from align.bench.datasets import open_shard_files
from align.bench.embed import MissingModalityError, embed_dataset, model_fingerprint, model_limits
from align.bench.engine import with_engine
from align.data.stream.sources import expand_urls
from align.data.write.inputs import hash_file
from align.errors import ConfigError, DataError, make_folder, without_reprs
from align.limits import changed_limits
from align.retrieval.embed_summary import ORDER, EmbedSummary, dist_env
from align.writes import atomic_write, guard_write

MEDIA = ("image", "audio")
DTYPES = {"float16": np.float16, "float32": np.float32}
COLUMNS = ["key", "caption", "shard", "modality", "row", "media_offset", "media_size", "part"]


def source_shards(data: str, split: Optional[str] = None) -> List[str]:
    """A CLIP_benchmark eval set (ROOT/split/nshards.txt, split default test) -> its tars; else a local shard
    pattern/list/folder, where a split given is refused (it would select nothing)."""
    nfile = os.path.join(data, split or "test", "nshards.txt")
    split_dir = os.path.dirname(nfile)
    if os.path.isdir(data) and os.path.isfile(nfile):
        try:
            n = int(open(nfile).read().strip())
        except ValueError:
            raise DataError(f"{nfile} does not hold an integer") from None
        # absolute, as the pattern branch: `align serve` reads the media from these paths from any directory
        return [os.path.abspath(os.path.join(split_dir, f"{i}.tar")) for i in range(n)]
    if split is not None:
        raise ConfigError(f"--split {split}: {data} is not an eval set with that split (no {nfile}); --split "
                          f"selects a split of a CLIP_benchmark-layout eval set, shards are read whole")
    shards = expand_urls(data)
    for s in shards:
        if "://" in s or s.startswith("pipe:"):
            raise DataError(f"{s}: align embed reads local shards only (copy remote shards first)")
        if not os.path.isfile(s):
            raise DataError(f"{s}: no such shard")
    return [os.path.abspath(s) for s in shards]


def corpus_root(data: str, shards: List[str]) -> str:
    """The folder the corpus was embedded from (absolute): `data` when it is a folder holding every shard (an eval
    set's ROOT, a folder of shards), else the deepest folder holding every shard (a pattern or list). Each shard
    lies under it, so a path relative to it never leaves it: `align serve` answers with such paths, never the
    server's absolute ones."""
    paths = [os.path.abspath(s) for s in shards]
    top = os.path.abspath(data)
    if os.path.isdir(data) and all(os.path.commonpath([top, p]) == top for p in paths):
        return top
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else top


def part_name(i: int) -> str:
    return f"part-{i:05d}"


def _atomic(path: str, write) -> None:
    """write(f) into `path` whole or not at all (storage.atomic_write); a full disk is one line (StorageError)."""
    with guard_write(path, None, None, kept="the finished parts are kept (a rerun redoes only the others)"):
        atomic_write(path, write)


def _load_manifest(path: str) -> dict:
    """manifest.json as a dict; anything else is one line naming the file, not a JSONDecodeError."""
    try:
        with open(path, "rb") as f:
            man = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not an `align embed` manifest ({without_reprs(str(e), 'it')})") from None
    if not isinstance(man, dict) or not isinstance(man.get("parts", []), list):
        raise DataError(f"{path}: not an `align embed` manifest (not a JSON object with a list of parts)")
    return man


def check_out(out: str) -> None:
    """--out before the model loads: a file, or a folder whose manifest.json cannot be read, is refused."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out}: exists and is not a folder")
    path = os.path.join(out, "manifest.json")
    if os.path.isfile(path):
        _load_manifest(path)


def _check_manifest(out: str, manifest: dict) -> None:
    """A resumed run must be the same model, engine, precision, shards and dtype; otherwise the old parts would be
    mixed in."""
    path = os.path.join(out, "manifest.json")
    if os.path.isfile(path):
        old = _load_manifest(path)
        old.setdefault("engine", "torch")               # written before --engine existed
        old.setdefault("precision", "fp32")             # written before the manifest recorded it
        old.setdefault("limits", {})                    # written before it recorded them: the defaults
        for k in ("model_fingerprint", "engine", "precision", "limits", "shards", "dtype", "modalities"):
            if old.get(k) != manifest.get(k):
                raise ConfigError(f"{out}: holds embeddings of another run ({k} differs: {str(old.get(k))[:80]} vs "
                                  f"{str(manifest.get(k))[:80]}); use a new --out or delete it")
    _atomic(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _part_rows(ds, modality: str, ids: np.ndarray, shard: str, part: str) -> List[dict]:
    """One metadata row per vector of `modality` (ids: item index of each row)."""
    prefix = len(os.path.basename(shard)) + 1          # item keys are "<shard basename>:<sample key>"
    rows, seen = [], {}
    for r, i in enumerate(ids):
        it = ds.items[int(i)]
        if modality == "text":
            j = seen.get(int(i), 0)                     # the j-th caption of item i (one text row per caption)
            seen[int(i)] = j + 1
            caption, off, size = it.captions[j], -1, -1
        else:
            caption = (it.captions or [""])[0]
            _, off, size = it.media[modality]
        rows.append({"key": it.key[prefix:], "caption": caption, "shard": shard, "modality": modality, "row": r,
                     "media_offset": int(off), "media_size": int(size), "part": part})
    return rows


def embed_part(model, shard: str, out_dir: str, part: str, modalities: List[str], *, dtype: str,
               batch_size: int, device, num_workers: int, precision: Optional[str]) -> dict:
    """Embed every modality of one shard into out_dir/part.*; returns the part's counts (done.json)."""
    import pandas as pd

    try:
        ds = open_shard_files([shard], name=os.path.basename(shard), limits=model_limits(model))
    except DataError as e:
        if "has no items" not in str(e):
            raise
        ds = None                                       # an empty shard: an empty, finished part
    rows: List[dict] = []
    counts = {"part": part, "shard": shard, "items": len(ds) if ds else 0, "vectors": {}, "skipped": 0,
              "errors": []}
    for m in modalities:
        if ds is None or m not in ds.modalities:
            continue
        try:
            emb = embed_dataset(model, ds, m, batch_size=batch_size, device=device, num_workers=num_workers,
                                progress=False, precision=precision)
        except DataError as e:                          # every sample of this modality failed to decode
            counts["skipped"] += sum(1 for it in ds.items if m in it.media)
            counts["errors"].append(str(e))
            continue
        vec_path = os.path.join(out_dir, f"{part}.{m}.npy")
        _atomic(vec_path, lambda f: np.save(f, emb.vectors.astype(DTYPES[dtype])))
        rows += _part_rows(ds, m, emb.ids, shard, part)
        counts["vectors"][m] = int(len(emb.vectors))
        counts["skipped"] += emb.skipped
        counts["errors"] += emb.errors[:3]
    table = pd.DataFrame(rows, columns=COLUMNS)
    _atomic(os.path.join(out_dir, f"{part}.parquet"), lambda f: table.to_parquet(f, index=False))
    counts["files"] = {n: os.path.getsize(os.path.join(out_dir, n)) for n in part_files(part, counts["vectors"])}
    counts["blake2b"] = {n: file_hash(os.path.join(out_dir, n)) for n in counts["files"]}   # read back: page cache
    _atomic(os.path.join(out_dir, f"{part}.done.json"), lambda f: f.write(json.dumps(counts).encode()))
    return counts


def part_files(part: str, vectors: dict) -> List[str]:
    """The files of a finished part: its table and one .npy per embedded modality."""
    return [f"{part}.parquet"] + [f"{part}.{m}.npy" for m in vectors]


def file_hash(path: str) -> str:
    """blake2b (128 bits) of a file's bytes, read in 16 MB blocks (~1 GB/s on one core)."""
    return hash_file(path, hashlib.blake2b(digest_size=16), 1 << 24).hexdigest()


def part_damage(out_dir: str, part: str, counts: dict, verify: bool = False) -> Optional[str]:
    """None when the part's files have the sizes its done.json recorded (a done.json written before it
    recorded them: taken as it is), else one line naming the first file that differs. verify: also their
    checksums (a zero-filled block or a flipped bit keeps the size): reads every file, so only where the vectors
    are read anyway (`align index`, `align data filter`) and where a rerun decides what to redo."""
    for name, size in (counts.get("files") or {}).items():
        p = os.path.join(out_dir, name)
        got = os.path.getsize(p) if os.path.isfile(p) else None
        if got != size:
            return f"{p}: {'missing' if got is None else f'{got:,} bytes'}, {size:,} bytes when its part finished " \
                   f"(damaged or cut short)"
    for name, want in (counts.get("blake2b") or {}).items() if verify else ():
        p = os.path.join(out_dir, name)
        if file_hash(p) != want:
            return f"{p}: its bytes changed since its part finished (checksum differs: damaged)"
    return None


def part_done(out_dir: str, part: str, damage: Optional[list] = None, verify: bool = False) -> Optional[dict]:
    """The part's counts when it finished and its files are whole; else None (a rerun redoes it). damage: a
    list that gets the line naming a damaged file; verify: checksums too (part_damage)."""
    p = os.path.join(out_dir, f"{part}.done.json")
    if not (os.path.isfile(p) and os.path.isfile(os.path.join(out_dir, f"{part}.parquet"))):
        return None
    try:
        counts = json.load(open(p))
    except (OSError, ValueError):
        return None                                     # a damaged marker: redo the part
    problem = part_damage(out_dir, part, counts, verify) if isinstance(counts, dict) else "done.json is not an object"
    if problem:
        if damage is not None:
            damage.append(problem)
        return None
    return counts


def embed_corpus(model, data: str, out: str, *, modalities: Optional[List[str]] = None, dtype: str = "float16",
                 batch_size: int = 64, device=None, num_workers: int = 0, precision: Optional[str] = None,
                 split: Optional[str] = None, progress: bool = True, rank: Optional[int] = None,
                 world_size: Optional[int] = None, engine: str = "torch") -> EmbedSummary:
    """Embed every shard of `data` into `out` (see the module docstring); this process's share of the parts.
    engine: torch | onnxruntime (align.bench.engine: image/audio encoders run by onnxruntime on the CPU)."""
    from align.progress import progress as tqdm   # plain lines off a terminal

    model = with_engine(model, engine, str(device or "cpu"), precision or "fp32")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    r0, w0 = dist_env()
    rank, world = (r0 if rank is None else rank), (w0 if world_size is None else world_size)
    have = list(getattr(model, "modalities", []))
    mods = [m for m in ORDER if m in (modalities or have)]
    missing = [m for m in (modalities or []) if m not in have]
    if missing:
        raise MissingModalityError(f"model {getattr(model, 'name', '?')!r} cannot encode {missing[0]!r} "
                                   f"(its modalities: {', '.join(have)})")
    shards = source_shards(data, split)
    parts_dir = os.path.join(out, "parts")
    make_folder(parts_dir, "embeddings")
    manifest = {"model": getattr(model, "name", ""), "model_fingerprint": model_fingerprint(model),
                "data": data, "shards": shards, "parts": [part_name(i) for i in range(len(shards))],
                "dtype": dtype, "modalities": mods, "normalised": True,
                "engine": getattr(model, "engine", "torch"),  # torch | onnxruntime (align.bench.engine)
                "precision": precision or "fp32",             # autocast while encoding: other numbers
                "limits": changed_limits(model_limits(model)),  # other limits skip other samples
                "root": corpus_root(data, shards)}            # `align serve` answers paths relative to it
    _check_manifest(out, manifest)
    mine = [i for i in range(len(shards)) if i % world == rank]
    summary = EmbedSummary(parts=len(mine))
    t0 = time.perf_counter()
    # one bar for a launch: the processes would redraw theirs in turn on the one terminal line (each its own count)
    bar = tqdm(total=len(mine), desc="embed" if world == 1 else f"embed, process {rank}/{world}", unit="part",
               disable=not progress or rank != 0, dynamic_ncols=True)
    for i in mine:
        counts = part_done(parts_dir, part_name(i), verify=True)      # a damaged part is embedded again
        if counts is not None:
            summary.done_before += 1
        else:
            counts = embed_part(model, shards[i], parts_dir, part_name(i), mods, dtype=dtype,
                                batch_size=batch_size, device=device, num_workers=num_workers, precision=precision)
            summary.items += counts["items"]
            summary.skipped += counts["skipped"]
        for m, n in counts["vectors"].items():
            summary.vectors[m] = summary.vectors.get(m, 0) + n
        dt = time.perf_counter() - t0
        bar.set_postfix_str(f"{summary.items / dt if dt > 0 else 0:.1f} items/s", refresh=False)
        bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------ reading an EMB folder
def read_manifest(emb_dir: str) -> dict:
    path = os.path.join(emb_dir, "manifest.json")
    if not os.path.isfile(path):
        raise DataError(f"{emb_dir}: not an `align embed` output (no manifest.json)")
    return _load_manifest(path)


REDO_PART = "re-run `align embed` with the same arguments to redo its part"


def verify_parts(emb_dir: str) -> None:
    """Every finished part's files against the checksums its done.json recorded, each file read once: `align
    index` and `align data filter` call it before they read any modality's vectors. DataError naming the first
    damaged file (a rerun of `align embed` redoes that part)."""
    parts_dir, damage = os.path.join(emb_dir, "parts"), []
    for part in read_manifest(emb_dir)["parts"]:
        part_done(parts_dir, part, damage, verify=True)
        if damage:
            raise DataError(f"{damage[0]}; {REDO_PART}")


def _finished_parts(emb_dir: str, modality: str, allow_partial: bool = False) -> List[str]:
    """Paths (without suffix) of the finished parts holding `modality`, in order; unfinished parts are an error
    unless allow_partial, and no vectors at all is one."""
    man = read_manifest(emb_dir)
    parts_dir = os.path.join(emb_dir, "parts")
    found, unfinished, damage = [], [], []
    for part in man["parts"]:
        counts = part_done(parts_dir, part, damage)
        if counts is None:
            unfinished.append(part)
        elif modality in counts["vectors"]:
            found.append(os.path.join(parts_dir, part))
    if damage and not allow_partial:
        raise DataError(f"{damage[0]}; {REDO_PART}")
    if unfinished and not allow_partial:
        raise DataError(f"{emb_dir}: {len(unfinished)} part(s) not finished (first: {unfinished[0]}); "
                        f"re-run `align embed` with the same arguments to finish them")
    if not found:
        raise DataError(f"{emb_dir}: no {modality} embeddings (modalities embedded: "
                        f"{', '.join(man.get('modalities', []))})")
    return found


def _unit(x: np.ndarray) -> np.ndarray:
    """float32 rows re-normalised in place: float16 rows are unit-norm only to ~1e-3, and cosines (and exact
    copies' 1.0) should hold."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def read_part_rows(base: str, modality: str):
    """One part's rows of `modality` in vector order (by `row`), an arrow table: what load_rows and write_rows
    both take from each part."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(f"{base}.parquet")
    return t.filter(pc.equal(t["modality"], modality)).sort_by("row")


def _rows(bases: List[str], modality: str, columns: Optional[Sequence[str]] = None):
    import pandas as pd

    parts = (read_part_rows(base, modality) for base in bases)
    return pd.concat([(t.select(list(columns)) if columns else t).to_pandas() for t in parts], ignore_index=True)


def load_rows(emb_dir: str, modality: str, *, allow_partial: bool = False, columns: Optional[Sequence[str]] = None):
    """The row table (key, caption, shard, ...) of one modality's vectors, all parts in order; `columns`: only
    those (`align data filter` needs shard and key: ~0.5 KB a row less than every column)."""
    return _rows(_finished_parts(emb_dir, modality, allow_partial), modality, columns)


def write_rows(emb_dir: str, modality: str, path: str, *, allow_partial: bool = False) -> int:
    """load_rows' table written to the parquet file `path` part by part, one part's rows in memory at a time (what
    `align index` writes beside an index: load_rows held every row of the corpus, ~380 MB a million rows of keys,
    captions and shard paths, past any --max-memory); -> the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ints = ("row", "media_offset", "media_size")
    schema = pa.schema([(c, pa.int64() if c in ints else pa.large_string()) for c in COLUMNS])
    n = 0
    with pq.ParquetWriter(path, schema) as out:
        for base in _finished_parts(emb_dir, modality, allow_partial):
            t = read_part_rows(base, modality).select(COLUMNS).cast(schema)
            out.write_table(t)
            n += t.num_rows
    return n


def load_embeddings(emb_dir: str, modality: str, *, allow_partial: bool = False, verify: bool = True):
    """-> (vectors [N, D] float32, L2-normalised; rows DataFrame in the same order) of one modality, all parts
    in order. (EmbeddingParts reads the same vectors without holding them all.) verify: every part's checksums
    first (verify_parts; False where the caller has just done it)."""
    if verify:
        verify_parts(emb_dir)
    bases = _finished_parts(emb_dir, modality, allow_partial)
    x = np.concatenate([np.load(f"{base}.{modality}.npy").astype(np.float32) for base in bases])
    return _unit(x), _rows(bases, modality)


class EmbeddingParts:
    """One modality's vectors of an `align embed` output read part by part through memmaps, never all at once:
    what `align index` builds a compressed index from when the float32 vectors would pass its memory budget.

        parts.shape                  (N, D)
        parts.chunks(rows=65536)     yields (first row, float32 [m, D] L2-normalised), m <= rows (one part
                                     larger than rows comes whole), in row order
        parts.take(ids)              float32 [len(ids), D] L2-normalised rows at sorted ids
    The rows are load_embeddings' rows, in the same order and with the same values."""

    def __init__(self, emb_dir: str, modality: str, *, allow_partial: bool = False):
        self.paths = [f"{base}.{modality}.npy" for base in _finished_parts(emb_dir, modality, allow_partial)]
        shapes = [self._open(i).shape for i in range(len(self.paths))]     # headers only; no map is kept open
        self.starts = np.cumsum([0] + [sh[0] for sh in shapes])            # [parts + 1]
        self.shape = (int(self.starts[-1]), int(shapes[0][1]))

    def _open(self, i: int) -> np.ndarray:
        # mapped when read and released after: a corpus of many parts would otherwise hold one map per part
        # (Linux allows ~65k maps per process)
        return np.load(self.paths[i], mmap_mode="r")

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, rows: int = 65536):
        block, first = [], 0
        for i in range(len(self.paths)):
            if block and sum(len(b) for b in block) + int(self.starts[i + 1] - self.starts[i]) > rows:
                yield first, _unit(np.concatenate(block).astype(np.float32))
                block = []
            if not block:
                first = int(self.starts[i])
            block.append(np.asarray(self._open(i)))
        if block:
            yield first, _unit(np.concatenate(block).astype(np.float32))

    def take(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.shape[1]), np.float32)
        part = np.searchsorted(self.starts, ids, side="right") - 1           # the part each id lies in
        for p in np.unique(part):
            sel = part == p
            out[sel] = self._open(p)[ids[sel] - self.starts[p]]
        return _unit(out)


def embedded_modalities(emb_dir: str) -> List[str]:
    """Modalities with at least one vector in a finished part."""
    man = read_manifest(emb_dir)
    found = set()
    for part in man["parts"]:
        counts = part_done(os.path.join(emb_dir, "parts"), part)
        if counts:
            found |= set(counts["vectors"])
    return [m for m in ORDER if m in found]
