"""`align index`: a FAISS index per embedded modality, chosen from the corpus size and a memory/latency budget.

    align index EMB/ --out INDEX/ [--max-memory 4GB] [--max-latency-ms 10] [--kind flat_faiss|ivf|hnsw|ivfpq]

The choice (`choose_index`), in order:
  flat_faiss  exact inner product, when the vectors fit the memory budget and one query's full scan
              (N*D*4 bytes read at ~SCAN_BYTES_PER_MS) fits the latency budget;
  ivf         IVF-Flat when the float32 vectors still fit the memory budget;
  ivfpq       IVF-PQ otherwise, with as many sub-quantizer bytes per vector as the budget allows.
The index types come from align.bench.index's registry. Approximate indexes are then tuned on a
held-aside query sample: nprobe (IVF) or efSearch (HNSW) grows until recall@10 against exact search
reaches `target_recall` (0.95) or the measured p50 latency passes the budget. Queries are the vectors of
another embedded modality when there is one (the cross-modal queries the index will serve, e.g. captions
for the image index), else a random sample of the corpus.

IVF-PQ's compressed codes alone do not reach 0.95 (synthetic 10M x 512, PQ64: 0.31; benchmarks/RESULTS.md),
so an ivfpq index is re-ranked (unless refine=False / --no-refine): a float16 copy of the vectors is
written to disk beside it (vectors.f16.npy, 2*N*D bytes, read through a memmap only at the candidates'
rows, so it is not held in memory), the search takes k*F candidates from IVF-PQ and re-scores them
with those rows, and F grows through REFINE (4, 16, 64, 256) until the tuned recall reaches the target.

An ivfpq index is built without holding the vectors (align.retrieval.embed.EmbeddingParts: the parts are
memmapped and read in chunks of ~65k rows): it trains on the same random sample build_index draws, adds chunk
by chunk, writes the float16 copy and computes the exact top-k for the recall check chunk by chunk
(exact_topk_chunks), so the memory budget also bounds the build. The other kinds hold the float32 vectors
in the index anyway and load them whole.

    INDEX/index.json                 modalities, model, source EMB folder, corpus root; written first with
                                     "complete": false and again when every modality is built (a killed
                                     build is refused when read, and the same command rebuilds it)
    INDEX/<modality>/index.faiss     faiss.write_index
    INDEX/<modality>/settings.json   kind, parameters, why, recall@10, latency, build seconds, memory
    INDEX/<modality>/rows.parquet    row metadata (key, caption, shard, byte range, ...) in index id order
    INDEX/<modality>/vectors.f16.npy ivfpq only: the float16 vectors for the re-rank (settings "refine": F)
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import List, Optional, Tuple

import faiss
import numpy as np

from align.bench.index import (INDEXES, Refined, build_index, create_index, default_nlist, default_pq_m,
                               describe_index, exact_topk, exact_topk_chunks, topk_recall, training_rows)
from align.errors import ConfigError, DataError, make_folder
from align.retrieval.embed import (EmbeddingParts, corpus_root, embedded_modalities, read_manifest, verify_parts,
                                     write_rows)
from align.writes import atomic_write, guard_write

SCAN_BYTES_PER_MS = 5e6        # one core streams ~5 GB/s of float32 in a flat inner-product scan
TARGET_RECALL = 0.95
PROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EF_SEARCH = (16, 32, 64, 128, 256, 512)
REFINE = (4, 16, 64, 256)      # ivfpq re-rank: candidates = k * F (10M x 512, PQ64: F=30 gave 0.88)
STORE = "vectors.f16.npy"
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text) -> int:
    """'4GB', '512MiB', '1e9' -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"--max-memory {text!r}: give a size such as 4GB, 512MB or 2GiB")
    try:
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    except ValueError:
        raise ConfigError(f"--max-memory {text!r}: {m.group(1)!r} is not a number") from None


def size_text(b: float) -> str:
    """Bytes as a person reads them: 512 B, 12.3 KB, 45.6 MB, 2.05 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}" if b < 100 * scale else f"{b / scale:.0f} {unit}"
    return f"{int(b)} B"


def budget_pq_m(n: int, d: int, max_memory: int) -> int:
    """The most IVF-PQ sub-quantizer bytes per vector (a divisor of d, <= 64) the memory budget allows."""
    per_vec = max_memory / n - 8                     # bytes per vector left after its 8-byte id
    m = max([x for x in range(1, min(d, 64) + 1) if d % x == 0 and x <= per_vec] or [0])
    if m == 0:
        raise ConfigError(f"--max-memory {size_text(max_memory)} is too small for {n} vectors "
                          f"(IVF-PQ needs >= {size_text(9 * n)})")
    return m


def forced_params(kind: str, n: int, d: int, max_memory: int) -> dict:
    """--kind KIND within --max-memory: ivfpq's default sub-quantizers, fewer when the budget needs it; the
    other kinds hold the float32 vectors, refused in one line when those pass the budget."""
    if kind == "ivfpq":
        return {"pq_m": min(default_pq_m(d), budget_pq_m(n, d, max_memory))}
    flat = n * d * 4
    if flat > max_memory:
        raise ConfigError(f"--kind {kind}: holds the {n} x {d} float32 vectors ({size_text(flat)}), over "
                          f"--max-memory {size_text(max_memory)}; raise --max-memory, or leave out --kind")
    return {}


def choose_index(n: int, d: int, max_memory: int, max_latency_ms: float) -> Tuple[str, dict, str]:
    """-> (kind, build parameters, one-line reason) for N vectors of dim D."""
    flat = n * d * 4
    if flat <= max_memory and flat <= max_latency_ms * SCAN_BYTES_PER_MS:
        return "flat_faiss", {}, (f"exact: {n} x {d} float32 ({size_text(flat)}) fits the memory budget and a "
                                  f"full scan fits {max_latency_ms:g} ms")
    nlist = default_nlist(n)
    if flat + nlist * d * 4 <= max_memory:
        return "ivf", {"nlist": nlist}, (f"IVF-Flat: a full scan of {size_text(flat)} would pass "
                                         f"{max_latency_ms:g} ms; the float32 vectors fit {size_text(max_memory)}")
    m = budget_pq_m(n, d, max_memory)
    return "ivfpq", {"nlist": nlist, "pq_m": m}, (f"IVF-PQ{m}: the float32 vectors ({size_text(flat)}) pass the "
                                                 f"{size_text(max_memory)} budget")


def latency_ms(index, queries: np.ndarray, k: int) -> Tuple[float, float]:
    """p50 / p99 of one-query searches, ms."""
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall_at(index, queries: np.ndarray, exact: np.ndarray, k: int, rows=None) -> float:
    """k-recall@k of the index against the exact top-k ids [Q, >=k]; rows(ids) -> gallery rows makes it tie-aware
    (a duplicate of an exact hit counts: align.bench.index.topk_recall)."""
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return topk_recall(got, exact, k, queries=queries, rows=rows)


def _knob(index) -> Tuple[str, tuple, object]:
    """(parameter name, values to try, setter) of an approximate index's speed/recall knob."""
    if isinstance(index, faiss.IndexHNSW):
        return "ef_search", EF_SEARCH, lambda v: setattr(index.hnsw, "efSearch", int(v))
    ivf = faiss.extract_index_ivf(index)
    return "nprobe", tuple(p for p in PROBES if p <= ivf.nlist), lambda v: setattr(ivf, "nprobe", int(v))


def tune(index, queries: np.ndarray, exact: np.ndarray, k: int, max_latency_ms: float,
         target: float = TARGET_RECALL, searcher=None, rows=None) -> dict:
    """Grow the knob until recall@k >= target or p50 passes the budget; keep the last setting within budget.
    searcher: what is measured (default the index itself; a Refined wrapper of it for a re-ranked index);
    rows(ids) -> the gallery's rows, for a tie-aware recall (recall_at)."""
    name, values, set_ = _knob(index)
    searcher = searcher if searcher is not None else index
    lat_q = queries[: min(len(queries), 100)]
    best, sweep = None, []
    for v in values:
        set_(v)
        rec = recall_at(searcher, queries, exact, k, rows)
        p50, p99 = latency_ms(searcher, lat_q, k)
        sweep.append({name: v, "recall": round(rec, 4), "p50_ms": round(p50, 3)})
        if p50 > max_latency_ms and best is not None:
            break
        best = {name: v, "recall": rec, "p50_ms": p50, "p99_ms": p99}
        if rec >= target:
            break
    set_(best[name])
    return dict(best, sweep=sweep)


def _queries(emb_dir: str, modality: str, parts: EmbeddingParts, n: int, seed: int) -> Tuple[np.ndarray, str]:
    """n query vectors [<=n, D]: a sample of another embedded modality of the same dim, else of the corpus."""
    rng = np.random.default_rng(seed)
    for other in embedded_modalities(emb_dir):
        if other != modality:
            q = EmbeddingParts(emb_dir, other)
            if len(q) and q.shape[1] == parts.shape[1]:
                return q.take(np.sort(rng.choice(len(q), min(n, len(q)), replace=False))), other
    return parts.take(np.sort(rng.choice(len(parts), min(n, len(parts)), replace=False))), modality


def write_store(parts: EmbeddingParts, path: str) -> np.ndarray:
    """The vectors -> a float16 .npy at path, written chunk by chunk (never whole in memory); its memmap."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=parts.shape)
    for first, x in parts.chunks():
        out[first:first + len(x)] = x
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def counted(chunks, bar):
    """Pass (first row, block) chunks through, advancing a progress bar by each block's rows."""
    for first, x in chunks:
        yield first, x
        bar.update(len(x))


def build_streamed(kind: str, parts: EmbeddingParts, *, seed: int = 0, rows: int = 65536, progress: bool = False,
                   **params):
    """build_index(kind, all vectors) without holding them: the same training sample (sample_rows with the same
    seed and size) gathered from the parts, then the parts added in chunks of ~`rows` -> the same index."""
    from align.progress import progress as tqdm   # plain lines off a terminal

    n, d = parts.shape
    index = create_index(kind, d, n, **params)
    sample = training_rows(index, n, seed=seed)
    if sample is not None:
        index.train(parts.take(sample))
    with tqdm(total=n, desc=f"index {kind}: add", unit="row", disable=not progress) as bar:
        for _, x in counted(parts.chunks(rows), bar):
            index.add(x)
    return index


def tune_refined(index, store, queries, exact, k: int, max_latency_ms: float, rows=None) -> dict:
    """tune() with a re-rank of k*F candidates, F through REFINE until recall@k reaches the target."""
    sweeps = []
    for f in REFINE:
        tuned = tune(index, queries, exact, k, max_latency_ms, searcher=Refined(index, store, f), rows=rows)
        sweeps += [dict(e, refine=f) for e in tuned["sweep"]]
        if tuned["recall"] >= TARGET_RECALL or tuned["p50_ms"] > max_latency_ms:
            break
    return dict(tuned, refine=f, sweep=sweeps)


def build_modality(emb_dir: str, modality: str, out_dir: str, *, max_memory: int, max_latency_ms: float,
                   kind: Optional[str] = None, n_queries: int = 500, k: int = 10, seed: int = 0,
                   refine: bool = True, progress: bool = False, before_write=None) -> dict:
    """Build, tune and write one modality's index; returns its settings. progress: bars (plain lines off a
    terminal) over the adds and the exact check, which take minutes from millions of vectors. before_write():
    called before anything is written to out_dir (build_indexes marks the index as being built)."""
    from align.progress import progress as tqdm
    parts = EmbeddingParts(emb_dir, modality)                   # [N, D], read part by part
    n, d = parts.shape
    if kind:
        if kind == "flat" or kind not in INDEXES:
            raise ConfigError(f"--kind {kind!r}: use one of flat_faiss, ivf, hnsw, ivfpq")
        params, why = forced_params(kind, n, d, max_memory), f"--kind {kind}"
    else:
        kind, params, why = choose_index(n, d, max_memory, max_latency_ms)
    if not refine and kind != "ivfpq":
        why += f"; --no-refine does not apply (only ivfpq is re-ranked, this is {kind})"
    # IVF-PQ is chosen when the float32 vectors pass the memory budget: then they are never held whole (train
    # on a sample, add and check recall chunk by chunk); the other kinds hold them in the index anyway
    streamed = kind == "ivfpq"
    vectors = None if streamed else np.concatenate([x for _, x in parts.chunks()])   # [N, D] float32
    t0 = time.perf_counter()
    index = (build_streamed(kind, parts, seed=seed, progress=progress, **params) if streamed
             else build_index(kind, vectors, seed=seed, progress=progress, **params))
    build_s = time.perf_counter() - t0
    queries, qsrc = _queries(emb_dir, modality, parts, n_queries, seed)
    kk = min(k, n)
    if streamed:
        with tqdm(total=n, desc=f"index {modality}: exact top-{kk} of {len(queries)} queries", unit="row",
                  disable=not progress) as bar:
            exact = exact_topk_chunks(counted(parts.chunks(), bar), queries, kk)
    else:
        exact = exact_topk(vectors, queries, kk)
    gallery = parts.take if streamed else vectors.__getitem__     # exact scores of returned ids: tie-aware recall
    if before_write is not None:
        before_write()
    make_folder(out_dir, "index")     # after the checks: a refused --kind leaves no folder
    if kind == "flat_faiss":
        p50, p99 = latency_ms(index, queries[:100], kk)
        tuned = {"recall": recall_at(index, queries, exact, kk, gallery), "p50_ms": p50, "p99_ms": p99}
    elif kind == "ivfpq" and refine:
        store = write_store(parts, os.path.join(out_dir, STORE))
        tuned = tune_refined(index, store, queries, exact, kk, max_latency_ms, gallery)
        why += f"; re-ranks k*{tuned['refine']} candidates with the float16 vectors in {STORE}"
    else:
        tuned = tune(index, queries, exact, kk, max_latency_ms, rows=gallery)
    faiss.write_index(index, os.path.join(out_dir, "index.faiss"))
    write_rows(emb_dir, modality, os.path.join(out_dir, "rows.parquet"))    # part by part, never all rows at once
    settings = {"modality": modality, "kind": kind, "why": why, "n": int(n), "dim": int(d),
                **describe_index(index), f"recall@{kk}": round(tuned["recall"], 4),
                "p50_ms": round(tuned["p50_ms"], 3), "p99_ms": round(tuned["p99_ms"], 3),
                **({"refine": tuned["refine"], "store": STORE} if "refine" in tuned else {}),
                "tuning": tuned.get("sweep", []), "queries": {"n": int(len(queries)), "from": qsrc},
                "build_s": round(build_s, 2), "streamed": streamed,
                "index_bytes": int(faiss.serialize_index(index).nbytes),
                "budget": {"max_memory": int(max_memory), "max_latency_ms": max_latency_ms}}
    with open(os.path.join(out_dir, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    return settings


def check_out(out: str, emb_dir: str, overwrite: bool = False) -> None:
    """--out before the build: missing, empty, or a previous index of the same embeddings (rebuilt in place);
    anything else -- a file, a folder of other things, an index of other embeddings -- is refused unless
    overwrite, so nothing the user put there is replaced without asking."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if overwrite or not os.path.isdir(out) or not os.listdir(out):
        return
    try:
        with open(os.path.join(out, "index.json"), "rb") as f:
            previous = json.loads(f.read()).get("embeddings")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != os.path.abspath(emb_dir):
        what = (f"an index of other embeddings ({previous})" if isinstance(previous, str)
                else "no `align index` output (no readable index.json)")
        raise ConfigError(f"--out {out}: not empty and holds {what}; choose an empty folder or pass --overwrite "
                          f"to write over it")


def build_indexes(emb_dir: str, out: str, *, max_memory="4GB", max_latency_ms: float = 10.0,
                  kind: Optional[str] = None, modalities: Optional[List[str]] = None, n_queries: int = 500,
                  seed: int = 0, refine: bool = True, progress: bool = False, overwrite: bool = False) -> List[dict]:
    """One index per embedded modality (or `modalities`) under out/<modality>/; writes out/index.json.
    out must be new, empty or a previous index of emb_dir unless overwrite (check_out)."""
    if n_queries < 1:               # no query: no recall and no latency to measure (an IndexError after the build)
        raise ConfigError(f"--queries must be >= 1, got {n_queries}")
    if not max_latency_ms > 0:      # 0 or -1 built an index chosen as if a full scan "would pass -1 ms"
        raise ConfigError(f"--max-latency-ms must be > 0, got {max_latency_ms:g}")
    if kind and kind != "ivfpq" and not refine:
        raise ConfigError(f"--no-refine: only an ivfpq index is re-ranked; --kind {kind} has nothing to refine")
    man = read_manifest(emb_dir)
    have = embedded_modalities(emb_dir)
    mods = modalities or have
    bad = [m for m in mods if m not in have]
    if bad:
        raise DataError(f"{emb_dir}: no {bad[0]} embeddings (embedded: {', '.join(have) or 'none'})")
    mem = parse_bytes(max_memory)
    check_out(out, emb_dir, overwrite)
    verify_parts(emb_dir)             # the parts' checksums, once for every modality built below
    meta = {"modalities": mods, "model": man.get("model"), "model_fingerprint": man.get("model_fingerprint"),
            "embeddings": os.path.abspath(emb_dir),
            # the corpus folder (`align serve` answers shard paths relative to it); embeddings of before the
            # manifest recorded it: the deepest folder holding every shard
            "root": man.get("root") or (corpus_root("", man["shards"]) if man.get("shards") else None)}
    # before the first file: an index.json that says the build is under way, so that a build killed half-way is
    # never read as an index (an old one's modalities beside new ones) and the same command rebuilds it (check_out)
    # a full disk: one line (StorageError), the modality's half-written folder removed
    kept = "the embeddings are untouched"
    results = []
    for m in mods:
        with guard_write(os.path.join(out, m), None, None, kept=kept, partial=os.path.join(out, m)):
            results.append(build_modality(emb_dir, m, os.path.join(out, m), max_memory=mem,
                                          max_latency_ms=max_latency_ms, kind=kind, n_queries=n_queries, seed=seed,
                                          refine=refine, progress=progress,
                                          before_write=lambda: write_meta(out, dict(meta, complete=False))))
    with guard_write(os.path.join(out, "index.json"), None, None, kept=kept):
        write_meta(out, dict(meta, complete=True))
    return results


def write_meta(out: str, meta: dict) -> None:
    """out/index.json, replaced atomically."""
    make_folder(out, "index")
    atomic_write(os.path.join(out, "index.json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))


def summary_line(s: dict) -> str:
    knob = "".join(f", {x}={s[x]}" for x in ("nprobe", "ef_search", "refine") if x in s)
    rec = next(v for key, v in s.items() if key.startswith("recall@"))
    return (f"index {s['modality']}: {s['kind']}{knob}, {s['n']} x {s['dim']}, recall@10 {rec:.3f} vs exact "
            f"({s['queries']['n']} {s['queries']['from']} queries), p50 {s['p50_ms']:.2f} ms, "
            f"p99 {s['p99_ms']:.2f} ms, "
            f"built in {s['build_s']:.1f} s, {size_text(s['index_bytes'])} ({s['why']})")
