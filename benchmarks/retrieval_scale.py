"""Retrieval at scale on FAISS: N text queries against N image embeddings, batched; prints time, recall, memory.

Synthetic data shaped like real embeddings: the gallery is L2-normalised points
around `--clusters` random centres (`--spread` sets the within-cluster noise);
query i is a noisy copy of gallery item i (`--noise`), so recall@k of "find
your own item" is meaningful. Queries are generated batch by batch (never all
held in memory). Exact search (`--index flat`) scores every query against every
item; approximate indexes (ivf, hnsw, ivfpq) also report recall@k against exact
search on `--sample` queries.

    python benchmarks/retrieval_scale.py --n 100000                      # exact, must stay < 8 GB
    python benchmarks/retrieval_scale.py --n 1000000 --index ivf         # approximate + recall vs exact
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faiss  # noqa: E402

from align.bench.index import EXACT, build_index, describe_index, recall_against_exact, sample_rows  # noqa: E402


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_gallery(n: int, dim: int, clusters: int, spread: float, seed: int, chunk: int = 65536) -> np.ndarray:
    """[n, dim] float32 unit vectors around random unit centres, built in chunks (bounded temporaries)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    centres = normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = centres[rng.integers(0, clusters, e - s)]
        x += (spread / np.sqrt(dim)) * rng.standard_normal((e - s, dim), dtype=np.float32)
        out[s:e] = normalise(x)
    return out


def make_queries(gallery: np.ndarray, start: int, end: int, noise: float, seed: int) -> np.ndarray:
    """Queries [end-start, dim] for rows start..end-1: noisy copies of their own gallery items (deterministic)."""
    # own stream per batch; spawn_key keeps it independent of the gallery's (seeds [0, 0] and 0 collide)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, start)))
    q = gallery[start:end] + (noise / np.sqrt(gallery.shape[1])) * rng.standard_normal(
        (end - start, gallery.shape[1]), dtype=np.float32)
    return normalise(q)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="gallery items = queries")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw", "ivfpq"])
    p.add_argument("--sample", type=int, default=10_000, help="queries checked against exact search")
    p.add_argument("--batch-size", type=int, default=16_384, help="queries per search call")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.7, help="within-cluster noise (norm of the offset)")
    p.add_argument("--noise", type=float, default=3.0, help="query noise (norm of the offset from its item)")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = FAISS default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    ks = (1, 5, 10)
    t0 = time.time()
    gallery = make_gallery(a.n, a.dim, a.clusters, a.spread, a.seed)
    t_data = time.time() - t0
    params = {k: v for k, v in (("nlist", a.nlist), ("nprobe", a.nprobe)) if v is not None}
    t0 = time.time()
    index = build_index(a.index, gallery, progress=True, **params)
    t_build = time.time() - t0
    sample = sample_rows(a.n, a.sample, a.seed)
    sample_q = np.empty((len(sample), a.dim), dtype=np.float32)
    hits = {k: 0 for k in ks}
    t0 = time.time()
    for s in range(0, a.n, a.batch_size):
        e = min(a.n, s + a.batch_size)
        q = make_queries(gallery, s, e, a.noise, a.seed)                     # [B, dim]
        _, ids = index.search(q, max(ks))                                    # [B, 10]
        own = (ids == np.arange(s, e)[:, None])                              # [B, 10] own item found at rank j
        for k in ks:
            hits[k] += int(own[:, :k].any(axis=1).sum())
        inside = (sample >= s) & (sample < e)
        sample_q[np.flatnonzero(inside)] = q[sample[inside] - s]
        print(f"\rsearch: {e}/{a.n} queries ({e / (time.time() - t0):.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    t_search = time.time() - t0
    print(f"retrieval_scale: n={a.n} dim={a.dim} index={a.index} {describe_index(index)} "
          f"threads={faiss.omp_get_max_threads()}")
    print(f"  data {t_data:.1f}s  build {t_build:.1f}s  search {t_search:.1f}s "
          f"({a.n / t_search:.0f} queries/s, batch {a.batch_size})")
    print("  recall (own item): " + "  ".join(f"R@{k}={hits[k] / a.n:.4f}" for k in ks))
    if a.index not in EXACT:
        t0 = time.time()
        r = recall_against_exact(index, gallery, sample_q, max(ks))
        print(f"  recall@{max(ks)} vs exact top-{max(ks)} on {len(sample)} sampled queries: {r:.4f} "
              f"({time.time() - t0:.1f}s)")
    print(f"  peak memory (ru_maxrss): {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
