"""FAISS inner-product indexes for benchmarks, by explicit type name.

  flat        exact (default): bf16 scoring + exact float64 re-rank of a provably complete
              candidate set (align.bench.exact.ExactIndex); params scoring (bf16 | fp32 | fp64),
              batch_size (1024 queries per block), extra (16 spare candidates per query), device
              (cpu | cuda[:N]; benchmarks pass the device they encode on: index_params_on)
  flat_faiss  FAISS IndexFlatIP: exact float32 (the path before ExactIndex; for comparison)
  ivf    IVF-Flat, inner product; params nlist (default ~4*sqrt(N)), nprobe (16)
  hnsw   IndexHNSWFlat(METRIC_INNER_PRODUCT); params M (32), ef_construction (40), ef_search (64)
  ivfpq  IVF-PQ, inner product; params nlist, nprobe, pq_m (sub-quantizers, divides D), pq_nbits (8)

All embeddings are L2-normalised, so inner product = cosine similarity.
Trained indexes (ivf, ivfpq) train on a random sample of the gallery
(`train_size`, default max(40 * nlist, 10000) points). `search` runs queries in batches
so memory stays bounded; `recall_against_exact` measures how many of the
exact top-k an approximate index finds, on a sample of queries.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Callable, List, Optional, Tuple

import faiss
import numpy as np
import torch
from align.progress import progress as tqdm   # plain lines off a terminal

from align.bench.exact import ExactIndex, check_device, check_fits
from align.errors import ConfigError, DataError
from align.registry import Registry

log = logging.getLogger("align.bench")
INDEXES: Registry = Registry("index")
EXACT = {"flat", "flat_faiss"}


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nlist(n: int) -> int:
    """~4*sqrt(N) lists, but at most N/39 so k-means has >= 39 points per centroid (FAISS's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


@INDEXES.register("flat")
def _flat(d: int, n: int, scoring: str = "bf16", batch_size: int = 1024, extra: int = 16,
          device: Optional[str] = None) -> ExactIndex:
    return ExactIndex(d, scoring=scoring, batch_size=batch_size, extra=extra, device=device)


def index_params_on(name: str, params: Optional[dict], device, gallery: Optional[Tuple[int, int]] = None) -> dict:
    """build_index params for a benchmark encoding on `device`: an index that can search on a torch device
    (its factory takes `device`: flat) searches where the embeddings were made, unless params name a device.
    gallery (n, d), the largest gallery it will hold: one too big for that GPU's free memory stays on the CPU,
    with a warning (a device the user named in params is kept: too big, it is refused in one line)."""
    out = dict(params or {})
    if device is None or "device" in out or "device" not in inspect.signature(INDEXES.get(name)).parameters:
        return out
    try:
        dev = check_device(device, types=None)
    except ConfigError:
        dev = None                        # not a device this machine has: the index refuses it in one line
    if gallery is not None and dev is not None and dev.type == "cuda":
        try:
            check_fits(dev, gallery[0], gallery[1], out.get("scoring", "bf16"))
        except ConfigError as e:
            log.warning("%s; searching on the CPU instead", e)
            return out
    out["device"] = str(device)
    return out


@INDEXES.register("flat_faiss")
def _flat_faiss(d: int, n: int) -> faiss.Index:
    return faiss.IndexFlatIP(d)


@INDEXES.register("ivf")
def _ivf(d: int, n: int, nlist: Optional[int] = None, nprobe: int = 16) -> faiss.Index:
    nlist = int(nlist or default_nlist(n))
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.nprobe = int(min(nprobe, nlist))
    return index


@INDEXES.register("hnsw")
def _hnsw(d: int, n: int, M: int = 32, ef_construction: int = 40, ef_search: int = 64) -> faiss.Index:
    index = faiss.IndexHNSWFlat(d, int(M), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    index.hnsw.efSearch = int(ef_search)
    return index


def default_pq_m(d: int) -> int:
    """Largest divisor of d that is <= d/8 (e.g. 64 sub-quantizers for D=512), at least 1."""
    return max([m for m in range(1, max(1, d // 8) + 1) if d % m == 0] or [1])


@INDEXES.register("ivfpq")
def _ivfpq(d: int, n: int, nlist: Optional[int] = None, nprobe: int = 16, pq_m: Optional[int] = None,
           pq_nbits: Optional[int] = None) -> faiss.Index:
    nlist = int(nlist or default_nlist(n))
    m = int(pq_m or default_pq_m(d))
    if d % m:
        raise ConfigError(f"index ivfpq: pq_m={m} must divide the embedding dim {d}")
    # 2**nbits centroids per sub-quantizer need >= 39 training points each
    nbits = int(pq_nbits or max(1, min(8, int(math.log2(max(2, n // 39))))))
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{nbits}", faiss.METRIC_INNER_PRODUCT)
    # the factory turns on polysemous training (Hamming-filtered search, unused here): 100x the training time
    index.do_polysemous_training = False
    index.nprobe = int(min(nprobe, nlist))
    return index


def create_index(name: str, d: int, n: int, **params) -> faiss.Index:
    """An empty index `name` for n vectors of dim d; bad parameters are one line."""
    try:
        return INDEXES.get(name)(d, n, **params)
    except TypeError as e:
        raise ConfigError(f"index {name}: bad parameters {sorted(params)}: {e}") from None


def training_rows(index: faiss.Index, n: int, train_size: Optional[int] = None, seed: int = 0) -> Optional[np.ndarray]:
    """Sorted gallery rows an untrained index trains on (default max(40 * nlist, 10000) of them); None if it
    needs no training."""
    if index.is_trained:  # (ExactIndex is always trained)
        return None
    nlist = getattr(faiss.extract_index_ivf(index), "nlist", 1)
    return sample_rows(n, min(n, int(train_size or max(40 * nlist, 10000))), seed)


def check_trainable(name: str, index: faiss.Index, n_train: int) -> None:
    """One line (ConfigError) when k-means cannot train `index` on n_train rows: nlist lists, or 2**pq_nbits
    centroids per sub-quantizer, need at least that many rows (FAISS stops with a C++ assertion traceback)."""
    need = [("nlist", int(faiss.extract_index_ivf(index).nlist), "lists")]
    if isinstance(index, faiss.IndexIVFPQ):
        need.append(("pq_nbits", 2 ** int(index.pq.nbits), "centroids per sub-quantizer"))
    for param, k, what in need:
        if n_train < k:
            value = k if param == "nlist" else int(math.log2(k))
            raise ConfigError(f"index {name}: {param}={value} ({k} {what}) needs at least {k} rows to train on, the "
                              f"gallery gives {n_train}; lower {param} or use index flat (exact) for a gallery "
                              f"this small")


def build_index(name: str, gallery: np.ndarray, *, train_size: Optional[int] = None, seed: int = 0,
                add_batch: int = 65536, progress: bool = False, **params) -> faiss.Index:
    """Create index `name` for gallery [N, D] float32, train it on a sample if needed, and add the gallery."""
    INDEXES.get(name)                                  # an unknown name fails before the gallery is checked
    gallery = np.asarray(gallery)
    if gallery.ndim != 2 or len(gallery) == 0:
        raise DataError(f"index {name}: gallery must be a non-empty [N, D] array, got shape {gallery.shape}")
    n, d = gallery.shape
    index = create_index(name, d, n, **params)
    rows = training_rows(index, n, train_size, seed)
    if rows is not None:
        check_trainable(name, index, len(rows))
        index.train(_f32(gallery if len(rows) == n else gallery[rows]))
    for s in tqdm(range(0, n, add_batch), desc=f"index {name}: add, {add_batch} rows a batch", unit="batch",
                  disable=not progress or n <= add_batch):
        index.add(_f32(gallery[s:s + add_batch]))
    return index


def _ivf_flat_lists(ivf: faiss.IndexIVFFlat) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Each inverted list as (vectors [n_l, D] float32, ids [n_l] int64): views of FAISS's memory, no copy."""
    inv, d, out = ivf.invlists, ivf.d, []
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n == 0:
            out.append((np.empty((0, d), np.float32), np.empty(0, np.int64)))
            continue
        codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size)           # uint8 [n * 4D]
        out.append((codes.view(np.float32).reshape(n, d), faiss.rev_swig_ptr(inv.get_ids(lst), n)))
    return out


def list_major_search(index: faiss.Index, queries: np.ndarray, k: int, lists=None) -> Tuple[np.ndarray, np.ndarray]:
    """IVF-Flat (inner product) search of a large query batch, one inverted list at a time.

    FAISS scans each query's nprobe lists on its own: a 1M-query batch reads every list ~nprobe*Q/nlist
    times from memory, one vector at a time. Here the (query, probe) pairs are grouped by list, and each
    list is scored against all its queries in one matrix product ([m, D] @ [D, n_l], BLAS), then top-k.
    Same probes (the quantizer's top-nprobe) and exact float32 inner products as index.search, so the
    same results up to float rounding among near-ties. -> (scores [Q, k], ids [Q, k]; -1 / -inf where
    the probed lists hold fewer than k items)."""
    ivf = faiss.extract_index_ivf(index)
    q = _f32(queries)
    nq, p = len(q), int(ivf.nprobe)
    lists = lists if lists is not None else _ivf_flat_lists(ivf)
    _, probe = ivf.quantizer.search(q, p)                                         # [Q, P] list ids
    flat = probe.ravel()
    order = np.argsort(flat, kind="stable")                                       # pairs grouped by list
    bounds = np.searchsorted(flat[order], np.arange(ivf.nlist + 1))
    cand_s = np.full((nq * p, k), -np.inf, np.float32)                            # [Q*P, k] per-pair top-k
    cand_i = np.full((nq * p, k), -1, np.int64)
    qt = torch.from_numpy(q)
    for lst in np.flatnonzero(np.diff(bounds)):
        vecs, ids = lists[lst]
        if len(ids) == 0:
            continue
        pairs = order[bounds[lst]:bounds[lst + 1]]
        sc = qt[torch.from_numpy(pairs // p)] @ torch.from_numpy(vecs).T           # [m, n_l]
        kk = min(k, len(ids))
        top = torch.topk(sc, kk, dim=1)
        cand_s[pairs, :kk] = top.values.numpy()
        cand_i[pairs, :kk] = ids[top.indices.numpy()]
    cand_s, cand_i = cand_s.reshape(nq, p * k), cand_i.reshape(nq, p * k)         # [Q, P*k] -> top-k
    top = torch.topk(torch.from_numpy(cand_s), k, dim=1)
    return top.values.numpy(), np.take_along_axis(cand_i, top.indices.numpy(), 1)


def _list_major_ok(index: faiss.Index, batch: int) -> bool:
    """IVF-Flat by inner product, and enough queries per list (>= 8 pairs) for list-major search to pay."""
    return (isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
            and batch * index.nprobe >= 8 * index.nlist)


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 8192,
           progress: bool = False, list_major: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (scores [Q, k] float32, ids [Q, k] int64); k is clipped to the gallery size (an
    empty gallery: [Q, 0]). ids are -1 and scores -inf where an approximate index found fewer than k items (FAISS
    pads with -3.4e38, list-major and re-ranked searches with -inf: one value for all). list_major (None: when it
    pays, see _list_major_ok): IVF-Flat batches go through list_major_search."""
    k = int(min(k, index.ntotal))
    q = len(queries)
    scores = np.empty((q, k), dtype=np.float32)
    ids = np.empty((q, k), dtype=np.int64)
    if k <= 0:                                         # FAISS asserts k > 0: an empty gallery finds nothing
        return scores, ids
    use = _list_major_ok(index, min(q, batch_size)) if list_major is None else list_major
    lists = _ivf_flat_lists(faiss.extract_index_ivf(index)) if use else None
    for s in tqdm(range(0, q, batch_size), desc=f"search, {batch_size} queries a batch", unit="batch",
                  disable=not progress or q <= batch_size):
        qb = _f32(queries[s:s + batch_size])
        scores[s:s + batch_size], ids[s:s + batch_size] = (list_major_search(index, qb, k, lists) if use
                                                           else index.search(qb, k))
    scores[ids < 0] = -np.inf
    return scores, ids


def refine_search(index: faiss.Index, store: np.ndarray, queries: np.ndarray, k: int, factor: int,
                  block: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k after re-scoring the index's top k*factor candidates with the stored vectors.

    store: the corpus [N, D] (float16 or float32; a np.load(..., mmap_mode="r") memmap is read only at the
    candidates' rows). Scores are float32 inner products with the stored rows (exact up to float16 rounding
    of the corpus). For k > 10 the extra candidates stay those of k = 10 (k + 10*(factor-1)), so a k=1000
    query reads ~1,000 + 10*F rows, not 1,000*F. -> (scores [Q, k], ids [Q, k]; -1 / -inf where fewer
    than k candidates)."""
    q = _f32(queries)
    kk = int(min(k + (factor - 1) * min(k, 10), index.ntotal))
    _, cand = index.search(q, kk)                                                  # [Q, kF] candidate ids
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    for s in range(0, len(q), block):
        c = cand[s:s + block]
        uniq, pos = np.unique(c[c >= 0], return_inverse=True)                     # sorted rows: sequential reads
        vec = np.asarray(store[uniq], dtype=np.float32)                            # [U, D]
        sc = np.full(c.shape, -np.inf, np.float32)                                 # [B, kF]
        rows, cols = np.nonzero(c >= 0)
        sc[rows, cols] = np.einsum("nd,nd->n", vec[pos], q[s:s + block][rows])
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        got = min(k, sc.shape[1])
        scores[s:s + block, :got] = np.take_along_axis(sc, top, 1)
        ids[s:s + block, :got] = np.where(np.isfinite(scores[s:s + block, :got]), np.take_along_axis(c, top, 1), -1)
    return scores, ids


class Refined:
    """An index whose search re-ranks k*factor candidates with a stored copy of the vectors (refine_search)."""

    def __init__(self, index: faiss.Index, store: np.ndarray, factor: int):
        if len(store) != index.ntotal or store.shape[1] != index.d:
            raise DataError(f"re-rank store has shape {tuple(store.shape)}, the index holds {index.ntotal} x {index.d}")
        self.index, self.store, self.factor = index, store, int(factor)

    ntotal = property(lambda self: self.index.ntotal)
    d = property(lambda self: self.index.d)

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return refine_search(self.index, self.store, queries, k, self.factor)


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k gallery ids [Q, k] by inner product (ExactIndex: float64 scores, ties -> lower id)."""
    index = ExactIndex(np.shape(gallery)[1])
    index.add(gallery)
    return index.search(queries, k)[1]


def exact_topk_chunks(chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """exact_topk over a gallery that arrives as (first row, block [m, D]) chunks in row order, never held whole:
    each block's exact top-k, merged by float64 inner product, ties -> lower id. -> ids [Q, min(k, N)]."""
    q64 = np.asarray(queries, dtype=np.float64)                                   # [Q, D]
    best_s = np.empty((len(q64), 0))                                              # [Q, <=k] float64
    best_i = np.empty((len(q64), 0), np.int64)                                    # [Q, <=k] gallery ids
    for first, block in chunks:
        ids = exact_topk(block, queries, min(k, len(block)))                      # [Q, kk] ids in the block
        s = np.einsum("qd,qkd->qk", q64, np.asarray(block)[ids].astype(np.float64))  # [Q, kk]
        s, ids = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids + first], 1)
        order = np.lexsort((ids, -s), axis=1)[:, :k]                              # score desc, then id asc
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(ids, order, 1)
    return best_i


TIE_TOL = 1e-6   # cosines of unit float32 rows, scored in float64: equal rows score exactly equal; this absorbs
#                  the ulp-level differences of rows that differ only by rounding (float16 copies re-normalised)


def pair_scores(queries: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> np.ndarray:
    """float64 inner product of query i with gallery row ids[i, j] -> [Q, m]; -inf where ids is -1.
    rows(flat ids) -> those gallery rows [n, D] (an array's __getitem__, EmbeddingParts.take)."""
    flat = np.asarray(ids).reshape(-1)
    valid = flat >= 0
    out = np.full(flat.shape, -np.inf)
    if valid.any():
        q = np.repeat(np.asarray(queries, dtype=np.float64), ids.shape[1], axis=0)[valid]     # [n, D]
        out[valid] = np.einsum("nd,nd->n", q, np.asarray(rows(flat[valid]), dtype=np.float64))
    return out.reshape(ids.shape)


def topk_recall(got: np.ndarray, exact: np.ndarray, k: int, *, queries: Optional[np.ndarray] = None,
                rows: Optional[Callable[[np.ndarray], np.ndarray]] = None, tol: float = TIE_TOL) -> float:
    """Mean over queries of the share of the k returned ids that belong in an exact top-k (k-recall@k); got
    [Q, >=k] ids, -1 where an approximate index found fewer (a miss); exact [Q, >=k] ids.
    With the queries and the gallery's rows: tie-aware. A returned id is a hit when its exact score is >= the
    exact k-th score - tol, so a duplicate of an exact top-k row (same score) is not a miss: an exact index
    scores 1.0 on a corpus with repeated captions, and a tuner does not chase an unreachable target.
    Without them: the plain id intersection (two exact top-k lists compared, ties broken alike)."""
    if queries is None or rows is None:
        return float(np.mean([len(np.intersect1d(g[:k][g[:k] >= 0], e[:k], assume_unique=True)) / k
                              for g, e in zip(got, exact)]))
    g = np.where(_repeats(got[:, :k]), -1, got[:, :k])              # an id returned twice counts once
    kth = pair_scores(queries, rows, exact[:, :k]).min(axis=1)        # [Q] exact k-th score
    hits = pair_scores(queries, rows, g) >= (kth - tol)[:, None]      # [Q, k]; -1 scores -inf
    return float(np.mean(hits.sum(axis=1) / k))


def _repeats(ids: np.ndarray) -> np.ndarray:
    """[Q, k] bool: True at the second and later occurrences of an id in its row."""
    order = np.argsort(ids, axis=1, kind="stable")
    s = np.take_along_axis(ids, order, 1)
    dup = np.zeros_like(ids, dtype=bool)
    np.put_along_axis(dup, order[:, 1:], s[:, 1:] == s[:, :-1], 1)
    return dup


def recall_against_exact(approx_index: faiss.Index, gallery: np.ndarray, queries_sample: np.ndarray,
                         k: int) -> float:
    """k-recall@k of the approximate index against exact search on a sample of queries (topk_recall, tie-aware)."""
    exact = exact_topk(gallery, queries_sample, k)               # [Q, k]
    _, approx = search(approx_index, queries_sample, k)          # [Q, k]
    return topk_recall(approx, exact, exact.shape[1], queries=queries_sample, rows=gallery.__getitem__)


def describe_index(index: faiss.Index) -> dict:
    """The effective settings of an index, for result JSON."""
    if isinstance(index, ExactIndex):
        return index.describe()
    out = {"ntotal": int(index.ntotal), "dim": int(index.d)}
    try:
        ivf = faiss.extract_index_ivf(index)
        out.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    except RuntimeError:
        pass
    if isinstance(index, faiss.IndexIVFPQ):
        out.update(pq_m=int(index.pq.M), pq_nbits=int(index.pq.nbits))
    if isinstance(index, faiss.IndexHNSW):
        out.update(M=int(index.hnsw.nb_neighbors(1)), ef_search=int(index.hnsw.efSearch),
                   ef_construction=int(index.hnsw.efConstruction))
    return out


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted random row indices [min(n, size)] (all rows when size >= n)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
