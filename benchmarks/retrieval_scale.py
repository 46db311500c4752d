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
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faiss  # noqa: E402
import torch  # noqa: E402

from align.bench.index import EXACT, build_index, describe_index, exact_topk, sample_rows, search, topk_recall  # noqa: E402


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


class RssPeak:
    """Samples this process's resident memory every 20 ms; `.peak` (GB) since the last reset()."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3

    def reset(self):
        self.peak = self.now()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())


def run_search(index, gallery, a, ks, label, sample=None, sample_q=None, compare_to=None):
    """All n queries through index.search in batches -> (top-k ids [n, 10], own-item hits per k, seconds, diff).

    compare_to (ids [n, 10] of another exact run): diff = (queries whose ids are equal, largest float64 score
    gap between the two lists at one rank among the others), computed outside the timed calls."""
    ids_all = np.empty((a.n, max(ks)), dtype=np.int64)
    hits = {k: 0 for k in ks}
    t_search, cpu, same, worst = 0.0, 0.0, 0, 0.0
    for s in range(0, a.n, a.batch_size):
        e = min(a.n, s + a.batch_size)
        t0 = time.time()
        q = make_queries(gallery, s, e, a.noise, a.seed)                     # [B, dim] (not in the search time)
        a.t_queries = getattr(a, "t_queries", 0.0) + time.time() - t0
        t0, c0 = time.time(), time.process_time()
        # align.bench.index.search: list-major scan for IVF-Flat batches unless --faiss-scan
        _, ids = search(index, q, max(ks), batch_size=len(q), list_major=False if a.faiss_scan else None)  # [B, 10]
        t_search += time.time() - t0
        cpu += time.process_time() - c0
        ids_all[s:e] = ids
        own = (ids == np.arange(s, e)[:, None])                              # [B, 10] own item found at rank j
        for k in ks:
            hits[k] += int(own[:, :k].any(axis=1).sum())
        if sample_q is not None:
            inside = (sample >= s) & (sample < e)
            sample_q[np.flatnonzero(inside)] = q[sample[inside] - s]
        if compare_to is not None:
            eq = (ids == compare_to[s:e]).all(axis=1)
            same += int(eq.sum())
            rows = np.flatnonzero(~eq)
            if len(rows):
                other = compare_to[s:e][rows]
                gap = np.abs(scores64(gallery, q[rows], ids[rows]) - scores64(gallery, q[rows], other))
                worst = max(worst, float(gap.max()))
        print(f"\r{label}: {e}/{a.n} queries ({e / t_search:.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return ids_all, hits, (t_search, cpu), (same, worst)


def scores64(gallery, queries, ids):
    """float64 inner products of each query [Q, D] with its listed ids [Q, k] -> [Q, k]."""
    return np.einsum("qd,qkd->qk", queries.astype(np.float64), gallery[ids].astype(np.float64))


def check_float64(gallery, sample_q, ids, k):
    """How many sampled queries' top-k ids equal the float64 brute force (stable argsort: ties -> lower id)."""
    ok, g64 = 0, gallery.astype(np.float64)
    for s in range(0, len(sample_q), 256):
        sc = sample_q[s:s + 256].astype(np.float64) @ g64.T                 # [256, n]
        ok += int((np.argsort(-sc, axis=1, kind="stable")[:, :k] == ids[s:s + 256]).all(axis=1).sum())
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="gallery items = queries")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--index", default="flat", choices=["flat", "flat_faiss", "ivf", "hnsw", "ivfpq"])
    p.add_argument("--sample", type=int, default=None,
                   help="queries checked against exact search (default 10000; flat: 1000 vs float64 brute force)")
    p.add_argument("--batch-size", type=int, default=65_536, help="queries per search call")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.7, help="within-cluster noise (norm of the offset)")
    p.add_argument("--noise", type=float, default=3.0, help="query noise (norm of the offset from its item)")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--scoring", default="bf16", choices=["bf16", "fp32", "fp64"], help="flat: low-precision scoring")
    p.add_argument("--no-compare", action="store_true", help="flat: skip the FAISS float32 run (the old path)")
    p.add_argument("--threads", type=int, default=0,
                   help="FAISS and torch threads (0 = their defaults; 1 is faster on a loaded shared machine)")
    p.add_argument("--train-size", type=int, default=None, help="ivf/ivfpq: rows sampled to train (40 * nlist)")
    p.add_argument("--faiss-scan", action="store_true",
                   help="ivf: FAISS's own per-query list scan instead of align's list-major batch search")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
        torch.set_num_threads(a.threads)
    if a.sample is None:
        a.sample = 1000 if a.index == "flat" else 10_000
    ks = (1, 5, 10)
    t_start = time.time()
    rss = RssPeak()
    t0 = time.time()
    gallery = make_gallery(a.n, a.dim, a.clusters, a.spread, a.seed)
    t_data = time.time() - t0
    params = {k: v for k, v in (("nlist", a.nlist), ("nprobe", a.nprobe)) if v is not None}
    if a.index == "flat":
        params["scoring"] = a.scoring
    rss.reset()
    t0 = time.time()
    index = build_index(a.index, gallery, progress=True, train_size=a.train_size, **params)
    t_build = time.time() - t0
    sample = sample_rows(a.n, a.sample, a.seed)
    sample_q = np.empty((len(sample), a.dim), dtype=np.float32)
    ids_new, hits, (t_search, cpu_new), _ = run_search(index, gallery, a, ks, f"search {a.index}", sample, sample_q)
    peak = rss.peak
    print(f"retrieval_scale: n={a.n} dim={a.dim} index={a.index} {describe_index(index)} "
          f"threads faiss={faiss.omp_get_max_threads()} torch={torch.get_num_threads()} cpu={cpu_name()}")
    print(f"  data {t_data:.1f}s  build {t_build:.1f}s  search {t_search:.1f}s "
          f"({a.n / t_search:.0f} queries/s, batch {a.batch_size}; CPU time {cpu_new:.1f}s)  "
          f"query generation {a.t_queries:.1f}s  peak RSS during build+search {peak:.2f} GB")
    print("  recall (own item): " + "  ".join(f"R@{k}={hits[k] / a.n:.4f}" for k in ks))
    if a.index not in EXACT:
        t0 = time.time()
        k = max(ks)
        exact = exact_topk(gallery, sample_q, k)                              # [S, k]
        got = ids_new[sample]                                                 # the index's top-k from the run
        r = topk_recall(got, exact, k)
        own_ex, own_ix = ((x == sample[:, None]).any(1).mean() for x in (exact, got))
        print(f"  recall@{k} vs exact top-{k} on {len(sample)} sampled queries: {r:.4f}; own-item R@{k} on them: "
              f"exact {own_ex:.4f}, index {own_ix:.4f} ({time.time() - t0:.1f}s)")
    if a.index == "flat" and not a.no_compare:
        del index
        rss.reset()
        t0 = time.time()
        old = build_index("flat_faiss", gallery)
        t_build_old = time.time() - t0
        _, hits_old, (t_old, cpu_old), (same, worst) = run_search(old, gallery, a, ks, "search flat_faiss (previous exact path)",
                                                       compare_to=ids_new)
        peak_old = rss.peak
        print(f"  previous exact path (FAISS IndexFlatIP, float32): build {t_build_old:.1f}s  search {t_old:.1f}s "
              f"({a.n / t_old:.0f} queries/s; CPU time {cpu_old:.1f}s)  peak RSS during build+search {peak_old:.2f} GB")
        print("  recall (own item), previous path: " + "  ".join(f"R@{k}={hits_old[k] / a.n:.4f}" for k in ks))
        print(f"  speed-up: {t_old / t_search:.2f}x wall, {cpu_old / cpu_new:.2f}x CPU time (previous / new, same run; "
              f"CPU time is the fairer ratio on a shared machine)")
        print(f"  top-{max(ks)} ids equal to FAISS float32 for {same}/{a.n} queries"
              + (f"; in the {a.n - same} others the two lists' float64 scores differ by at most {worst:.2g} at any "
                 f"rank (items tied within float32 rounding, ordered differently)" if same < a.n else ""))
        print(f"  recall@k equal to the previous path: "
              f"{all(hits[k] == hits_old[k] for k in ks)} ({', '.join(f'{hits[k]} vs {hits_old[k]}' for k in ks)})")
    if a.index == "flat":
        t0 = time.time()
        ref_ok = check_float64(gallery, sample_q, ids_new[sample], max(ks))
        print(f"  top-{max(ks)} equal to the float64 brute force (numpy argsort, ties -> lower id) on {len(sample)} "
              f"sampled queries: {ref_ok}/{len(sample)} ({time.time() - t0:.1f}s)")
    print(f"  peak memory (ru_maxrss, whole process): {peak_rss_gb():.2f} GB; wall {time.time() - t_start:.1f}s; "
          f"load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_") + f"x{os.cpu_count()}"
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    main()
