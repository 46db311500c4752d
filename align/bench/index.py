"""FAISS inner-product indexes for benchmarks, by explicit type name.

  flat        exact (default): bf16 scoring + exact float64 re-rank of a provably complete
              candidate set (align.bench.exact.ExactIndex); params scoring (bf16 | fp32 | fp64),
              batch_size (1024 queries per block), extra (16 spare candidates per query)
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

import math
from typing import Optional, Tuple

import faiss
import numpy as np
from align.progress import progress as tqdm   # plain lines off a terminal

from align.bench.exact import ExactIndex
from align.errors import ConfigError, DataError
from align.registry import Registry

INDEXES: Registry = Registry("index")
EXACT = {"flat", "flat_faiss"}


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nlist(n: int) -> int:
    """~4*sqrt(N) lists, but at most N/39 so k-means has >= 39 points per centroid (FAISS's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


@INDEXES.register("flat")
def _flat(d: int, n: int, scoring: str = "bf16", batch_size: int = 1024, extra: int = 16) -> ExactIndex:
    return ExactIndex(d, scoring=scoring, batch_size=batch_size, extra=extra)


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


def build_index(name: str, gallery: np.ndarray, *, train_size: Optional[int] = None, seed: int = 0,
                add_batch: int = 65536, progress: bool = False, **params) -> faiss.Index:
    """Create index `name` for gallery [N, D] float32, train it on a sample if needed, and add the gallery."""
    factory = INDEXES.get(name)
    gallery = np.asarray(gallery)
    if gallery.ndim != 2 or len(gallery) == 0:
        raise DataError(f"index {name}: gallery must be a non-empty [N, D] array, got shape {gallery.shape}")
    n, d = gallery.shape
    try:
        index = factory(d, n, **params)
    except TypeError as e:
        raise ConfigError(f"index {name}: bad parameters {sorted(params)}: {e}") from None
    if not index.is_trained:  # (ExactIndex is always trained)
        nlist = getattr(faiss.extract_index_ivf(index), "nlist", 1)
        size = min(n, int(train_size or max(40 * nlist, 10000)))
        rng = np.random.default_rng(seed)
        sample = gallery if size >= n else gallery[np.sort(rng.choice(n, size, replace=False))]
        index.train(_f32(sample))
    for s in tqdm(range(0, n, add_batch), desc=f"index {name}: add", disable=not progress or n <= add_batch):
        index.add(_f32(gallery[s:s + add_batch]))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 8192,
           progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (scores [Q, k] float32, ids [Q, k] int64); k is clipped to the gallery size.
    ids are -1 where an approximate index found fewer than k items."""
    k = int(min(k, index.ntotal))
    q = len(queries)
    scores = np.empty((q, k), dtype=np.float32)
    ids = np.empty((q, k), dtype=np.int64)
    for s in tqdm(range(0, q, batch_size), desc="search", disable=not progress or q <= batch_size):
        scores[s:s + batch_size], ids[s:s + batch_size] = index.search(_f32(queries[s:s + batch_size]), k)
    return scores, ids


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k gallery ids [Q, k] by inner product (ExactIndex: float64 scores, ties -> lower id)."""
    index = ExactIndex(np.shape(gallery)[1])
    index.add(gallery)
    return index.search(queries, k)[1]


def recall_against_exact(approx_index: faiss.Index, gallery: np.ndarray, queries_sample: np.ndarray,
                         k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (k-recall@k of the approximate index)."""
    exact = exact_topk(gallery, queries_sample, k)               # [Q, k]
    _, approx = search(approx_index, queries_sample, k)          # [Q, k]
    k = exact.shape[1]
    hits = [len(np.intersect1d(a[a >= 0], e, assume_unique=True)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / (len(exact) * k))


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
