"""`align data filter`: DataComp-style CLIP-score filtering and near-duplicate removal, with a report.

    align data filter SHARDS --model MODEL --out FILTERED/ [--min-score S | --keep-top F] [--dedup COS] [--emb EMB/]

1. Embeddings: `--emb` (an `align embed` output of the same shards) or computed into FILTERED/emb.
2. Score: cosine of each sample's media (image, else audio) and its first caption. `--min-score S` drops
   scores below S; `--keep-top F` keeps the best fraction F of the scored samples (DataComp's two modes).
3. Dedup (`--dedup COS`): among the samples left, a FAISS range search finds every pair with media cosine
   >= COS; samples are visited in corpus order and each one not yet dropped drops its later neighbours
   (the first copy is kept). Exact (IndexFlatIP) up to EXACT_DEDUP_MAX vectors, IVF beyond.
   Scores and dedup read the vectors a chunk of parts at a time (EmbeddingParts): what stays in memory is the
   dedup's index (the vectors left after the score filter), the scores and the row tables.
4. Samples whose media failed to decode are dropped as `undecodable`.
Writes FILTERED/shards/<source shard name> (align's shard writer, sample bytes unchanged),
FILTERED/dropped.jsonl (key, shard, reason, score, duplicate_of) and FILTERED/summary.json.
Under `accelerate launch` every process embeds its share of the parts; process 0 waits for all parts
and then selects and writes, so the output equals one process's.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Dict, List, Optional

import faiss
import numpy as np

from align.errors import ConfigError, DataError, make_folder
from align.retrieval.embed import (MEDIA, EmbeddingParts, embed_corpus, embedded_modalities, load_rows, part_done,
                                   read_manifest, source_shards, verify_parts)
from align.retrieval.embed_summary import dist_env
from align.bench.embed import model_fingerprint
from align.bench.index import build_index
from align.wds.format import group_samples, pick
from align.wds.reader import index_members, iter_members
from align.wds.writer import SampleWriter
from align.writes import guard_write, write_text_whole

EXACT_DEDUP_MAX = 200_000
KEY_COLUMNS = ("shard", "key")             # all the filter reads of the row tables (a sample's identity)
CHUNK = 16384                               # rows of vectors read at a time (whole parts: one larger comes whole)
KEPT = "the embeddings in --out's emb/ are kept (a rerun reuses them)"     # a full disk's line (align.writes)
WAIT_S = 3600.0


def _wait_for_parts(emb_dir: str, timeout_s: float = WAIT_S) -> None:
    """Process 0 of several: wait until every part has its done marker (the other processes' share)."""
    man = read_manifest(emb_dir)
    t0 = time.monotonic()
    while True:
        left = [p for p in man["parts"] if part_done(os.path.join(emb_dir, "parts"), p) is None]
        if not left:
            return
        if time.monotonic() - t0 > timeout_s:
            raise DataError(f"{emb_dir}: {len(left)} part(s) still unfinished after {timeout_s:.0f} s "
                            f"(first: {left[0]}); did another process fail?")
        time.sleep(1.0)


def first_captions(mrows, trows) -> np.ndarray:
    """The text row of each media row's sample's first caption (int64), -1 where the sample has none."""
    first = {}
    for i, (shard, key) in enumerate(zip(trows["shard"], trows["key"])):
        first.setdefault((shard, key), i)
    return np.array([first.get((s, k), -1) for s, k in zip(mrows["shard"], mrows["key"])], dtype=np.int64)


def clip_scores(media: np.ndarray, mrows, text: np.ndarray, trows) -> np.ndarray:
    """Cosine of each media row with its sample's first caption; NaN where the sample has no caption."""
    idx = first_captions(mrows, trows)
    scores = np.full(len(media), np.nan, dtype=np.float32)
    ok = idx >= 0
    scores[ok] = np.einsum("nd,nd->n", media[ok], text[idx[ok]])
    return scores


def part_scores(media: EmbeddingParts, mrows, text: EmbeddingParts, trows) -> np.ndarray:
    """clip_scores, bit for bit, with the vectors read a chunk of parts at a time (EmbeddingParts): the same
    einsum of each media row and its first caption's row, without the float32 copies of every vector."""
    idx = first_captions(mrows, trows)
    scores = np.full(len(media), np.nan, dtype=np.float32)
    for first, x in media.chunks(CHUNK):
        at = idx[first:first + len(x)]
        ok = at >= 0
        scores[first:first + len(x)][ok] = np.einsum("nd,nd->n", x[ok], text.take(at[ok]))
    return scores


def _first_copies(n: int, lims, sims, ids, threshold: float) -> Dict[int, tuple]:
    """A range search's pairs -> {dropped row: (kept row, cosine)}: rows visited in order, each one not yet
    dropped drops its later neighbours at >= threshold."""
    dropped: Dict[int, tuple] = {}
    for i in range(n):
        if i in dropped:
            continue
        for j, s in zip(ids[lims[i]:lims[i + 1]], sims[lims[i]:lims[i + 1]]):
            if j > i and j not in dropped and s >= np.float32(threshold):
                dropped[int(j)] = (i, float(s))
    return dropped


def _radius(threshold: float) -> float:
    # FAISS keeps inner products > radius: a radius one float32 step below COS, and >= COS here, keeps a pair at
    # exactly COS (the copies of --dedup 1 whose cosine rounds to 1.0 were kept)
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def dedup(vectors: np.ndarray, threshold: float) -> Dict[int, tuple]:
    """Near-duplicates among `vectors` [N, D]: {dropped row: (kept row, cosine)}, first copy kept."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) <= EXACT_DEDUP_MAX:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    else:                                   # O(N^2) exact pairs get slow: IVF range search (may miss a few)
        index = build_index("ivf", x, nprobe=32)
    lims, sims, ids = index.range_search(x, _radius(threshold))
    return _first_copies(len(x), lims, sims, ids, threshold)


def _rows_at(media: EmbeddingParts, left: np.ndarray):
    """Yields the float32 rows at the sorted ids `left`, a chunk of parts at a time, in order."""
    for first, x in media.chunks(CHUNK):
        a, b = np.searchsorted(left, [first, first + len(x)])
        if b > a:
            yield x[left[a:b] - first]


def dedup_parts(media: EmbeddingParts, left: np.ndarray, threshold: float) -> Dict[int, tuple]:
    """dedup(media rows at the sorted ids `left`), the same FAISS calls on the same float32 values, without a copy
    of them beside the index's: up to EXACT_DEDUP_MAX the IndexFlatIP's storage is filled a chunk at a time
    (reserved first: no reallocation) and is itself the range search's queries. Above, the IVF path as dedup's."""
    d = media.shape[1]
    if len(left) > EXACT_DEDUP_MAX:         # the IVF trains on and searches an array of every vector (as dedup)
        x = np.empty((len(left), d), np.float32)
        at = 0
        for block in _rows_at(media, left):
            x[at:at + len(block)] = block
            at += len(block)
        return dedup(x, threshold)
    index = faiss.IndexFlatIP(d)
    index.codes.resize(len(left) * index.code_size)     # reserve: the adds below fill it without a reallocation
    index.codes.resize(0)
    for block in _rows_at(media, left):
        index.add(block)
    n = index.ntotal
    queries = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
    lims, sims, ids = index.range_search(queries, _radius(threshold))
    return _first_copies(n, lims, sims, ids, threshold)


def select(scores: np.ndarray, media, *, min_score: Optional[float], keep_top: Optional[float],
           dedup_cos: Optional[float]):
    """-> ({row to drop: {"reason", "score", "dup_of" (row)}}, score threshold used or None);
    score filtering first, dedup among the rest. media: float32 [N, D], or EmbeddingParts (dedup_parts)."""
    drop: Dict[int, dict] = {}
    scored = ~np.isnan(scores)
    threshold = min_score
    if keep_top is not None and scored.any():
        # keep the best ceil(F * n) scored samples; ties at the cut are kept
        n_keep = int(np.ceil(keep_top * scored.sum()))
        threshold = float(np.sort(scores[scored])[::-1][max(n_keep - 1, 0)]) if n_keep else np.inf
    if threshold is not None:
        for i in np.flatnonzero(scored & (scores < threshold)):
            drop[int(i)] = {"reason": "low_score", "score": float(scores[i])}
    if dedup_cos is not None:
        kept = np.ones(len(media), dtype=bool)
        kept[list(drop)] = False
        left = np.flatnonzero(kept).astype(np.int64)
        pairs = dedup(media[left], dedup_cos) if isinstance(media, np.ndarray) else dedup_parts(media, left, dedup_cos)
        for j, (i, s) in pairs.items():
            drop[int(left[j])] = {"reason": "near_duplicate", "score": s, "dup_of": int(left[i])}
    return drop, threshold


def score_and_select(emb: str, m: str, have: List[str], *, min_score: Optional[float], keep_top: Optional[float],
                     dedup_cos: Optional[float]):
    """Scores (media `m` against the first caption) and select() of the embeddings in `emb`, the vectors read a
    chunk of parts at a time: -> (drop, threshold, media rows). What a load of every vector gave, bit for bit;
    held: the scores, the row tables, and the dedup's index (every vector left after the score filter)."""
    media, mrows = EmbeddingParts(emb, m), load_rows(emb, m, columns=KEY_COLUMNS)
    if "text" in have:
        scores = part_scores(media, mrows, EmbeddingParts(emb, "text"), load_rows(emb, "text", columns=KEY_COLUMNS))
    else:
        scores = np.full(len(media), np.nan)
    drop, threshold = select(scores, media, min_score=min_score, keep_top=keep_top, dedup_cos=dedup_cos)
    return drop, threshold, mrows


def _write_shards(shards: List[str], out_dir: str, dropped_keys: set) -> Counter:
    """Copy every sample not in dropped_keys {(shard, key)} into out_dir/<shard name>; returns counts."""
    os.makedirs(out_dir, exist_ok=True)
    counts: Counter = Counter()
    for shard in shards:
        dest = os.path.join(out_dir, os.path.basename(shard))
        tmp = dest + ".tmp"
        # a full disk: one line naming the shard (StorageError), its .tmp removed
        with guard_write(dest, None, None, kept=KEPT, partial=tmp):
            with open(shard, "rb") as f, SampleWriter(tmp) as w:
                for sample in group_samples(iter_members(f)):
                    key = sample.pop("__key__")
                    if (shard, key) in dropped_keys:
                        continue
                    w.write(key, sample)
                    counts["kept"] += 1
        os.replace(tmp, dest)
    return counts


def check_out(shards: List[str], out: str) -> None:
    """DataError (one line) before anything is read when a filtered copy would land on an input: an input shard in
    OUT/shards (the user's shard rewritten in place, its dropped samples lost) or two inputs of one name (one copy
    would replace the other)."""
    dest = os.path.realpath(os.path.join(out, "shards"))
    seen: Dict[str, str] = {}
    for shard in shards:
        if os.path.dirname(os.path.realpath(shard)) == dest:
            raise DataError(f"data filter: --out {out} would write its filtered copy over the input shard {shard}; "
                            "choose another --out")
        name = os.path.basename(shard)
        if name in seen:
            raise DataError(f"data filter: two input shards are named {name} ({seen[name]}, {shard}): their "
                            "filtered copies would be one file in --out; rename one")
        seen[name] = shard


def _media_keys(shards: List[str], modality: str) -> List[tuple]:
    """(shard, key) of every sample that carries `modality` (text-only samples have nothing to score)."""
    out = []
    for shard in shards:
        with open(shard, "rb") as f:
            members = ((n, None) for n, _, _, _ in index_members(f, lambda n: False))
            out += [(shard, s["__key__"]) for s in group_samples(members) if pick(s, modality)]
    return out


def filter_shards(model, data: str, out: str, *, min_score: Optional[float] = None, keep_top: Optional[float] = None,
                  dedup_cos: Optional[float] = None, emb: Optional[str] = None, batch_size: int = 256,
                  progress: bool = True, engine: str = "torch", precision: Optional[str] = None) -> Optional[dict]:
    """Filter the shards of `data` into `out` (module docstring). Returns the summary (None on processes > 0).
    engine, precision: how the embeddings are computed when `emb` is not given (align.bench.engine; autocast
    fp32 | bf16 | fp16, as `align embed --precision`)."""
    if min_score is not None and keep_top is not None:
        raise ConfigError("data filter: give --min-score or --keep-top, not both")
    if keep_top is not None and not 0 < keep_top <= 1:
        raise ConfigError(f"--keep-top {keep_top}: a fraction in (0, 1]")
    if dedup_cos is not None and not 0 < dedup_cos <= 1:
        raise ConfigError(f"--dedup {dedup_cos}: a cosine in (0, 1]")
    if min_score is None and keep_top is None and dedup_cos is None:
        raise ConfigError("data filter: nothing to do; give --min-score, --keep-top and/or --dedup")
    shards = source_shards(data)
    check_out(shards, out)
    t0 = time.perf_counter()
    if emb is None:
        emb = os.path.join(out, "emb")
        embed_corpus(model, data, emb, batch_size=batch_size, progress=progress, engine=engine, precision=precision)
    else:
        manifest = read_manifest(emb)
        if manifest["shards"] != shards:
            raise ConfigError(f"--emb {emb}: embeds other shards than {data}")
        if manifest.get("model_fingerprint") not in (None, model_fingerprint(model)):
            # the scores come from --emb alone: another model's vectors would be filtered under this model's name
            raise ConfigError(f"--emb {emb}: embedded by another model ({manifest.get('model') or '?'}) than "
                              f"--model {getattr(model, 'name', '?')}; give that model, or leave out --emb")
    rank, world = dist_env()
    if rank != 0:
        return None
    if world > 1:
        _wait_for_parts(emb)
    have = embedded_modalities(emb)
    m = next((x for x in MEDIA if x in have), None)
    if m is None:
        raise DataError(f"{emb}: no image or audio embeddings to filter on")
    verify_parts(emb)                  # the checksums of every part, once for both modalities
    drop, threshold, mrows = score_and_select(emb, m, have, min_score=min_score, keep_top=keep_top,
                                              dedup_cos=dedup_cos)
    keys = list(zip(mrows["shard"], mrows["key"]))
    records = [{"key": keys[i][1], "shard": keys[i][0], "reason": d["reason"], "score": round(d["score"], 5),
                **({"duplicate_of": keys[d["dup_of"]][1]} if "dup_of" in d else {})} for i, d in sorted(drop.items())]
    embedded = set(keys)
    records += [{"key": k, "shard": s, "reason": "undecodable", "score": None}
                for s, k in _media_keys(shards, m) if (s, k) not in embedded]
    make_folder(out, "filtered shards'")
    write_text_whole(os.path.join(out, "dropped.jsonl"), "".join(json.dumps(r) + "\n" for r in records), KEPT)
    counts = _write_shards(shards, os.path.join(out, "shards"), {(r["shard"], r["key"]) for r in records})
    by_reason = Counter(r["reason"] for r in records)
    total = counts["kept"] + len(records)
    summary = {"samples": total, "kept": counts["kept"], "dropped": dict(by_reason), "modality": m,
               "min_score": min_score, "keep_top": keep_top, "dedup": dedup_cos,
               "score_threshold": threshold,
               "seconds": round(time.perf_counter() - t0, 2)}
    summary["samples_per_s"] = round(total / max(summary["seconds"], 1e-9), 1)
    write_text_whole(os.path.join(out, "summary.json"), json.dumps(summary, indent=1), KEPT)
    return summary


def summary_line(s: dict, out: str) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items())) or "none"
    return (f"filter: {s['samples']} samples, kept {s['kept']}, dropped: {reasons} ({s['modality']}-text scores; "
            f"{s['samples_per_s']:.1f} samples/s) -> {out}")
