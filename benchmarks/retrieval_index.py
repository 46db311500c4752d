"""`align index` at scale: build time, memory, p50/p99 latency (k=10, k=1000) and recall@10 on synthetic vectors.

The index is chosen and tuned by align.retrieval.index_build (choose_index + tune, the code `align index`
runs), on --n clustered unit vectors of dim --dim (benchmarks/retrieval_scale.py's generator). Queries are
noisy copies of random corpus rows (held aside: not used to train the IVF quantizer's sample). Exact top-10
for recall is computed by chunked matrix products (no second copy of the corpus). Latency: one query per
call, FAISS on --threads OpenMP threads.

    python benchmarks/retrieval_index.py --n 1000000 --dim 512 [--nlist 2048] [--max-latency-ms 10]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faiss  # noqa: E402

from align.bench.index import build_index  # noqa: E402
from align.retrieval.index_build import latency_ms, choose_index, recall_at, tune  # noqa: E402
from retrieval_scale import RssPeak, make_gallery  # noqa: E402  (the same gallery and memory probe)


def make_queries(gallery, rows, noise, seed):
    """Noisy copies of gallery[rows], unit length."""
    rng = np.random.default_rng(seed)
    q = gallery[rows] + (noise / np.sqrt(gallery.shape[1])) * rng.standard_normal((len(rows), gallery.shape[1]),
                                                                                 dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top(gallery, queries, k, chunk=131072):
    """[Q, k] exact inner-product top-k, streaming the corpus in chunks."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for s in range(0, len(gallery), chunk):
        sc = queries @ gallery[s:s + chunk].T                      # [Q, chunk]
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]          # the chunk's top-k, then merge [Q, 2k]
        s_all = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        i_all = np.concatenate([best_i, part + s], 1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return np.take_along_axis(best_i, np.argsort(-best_s, 1), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nlist", type=int, default=None, help="override the chosen nlist (IVF training cost)")
    ap.add_argument("--max-memory", type=float, default=8e9)
    ap.add_argument("--max-latency-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spread", type=float, default=0.7, help="within-cluster noise (retrieval_scale.py's default)")
    ap.add_argument("--noise", type=float, default=1.0, help="query offset from its corpus row")
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    rss = RssPeak()
    t = time.perf_counter()
    x = make_gallery(a.n, a.dim, clusters=1000, spread=a.spread, seed=0)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(a.n, a.queries, replace=False))
    q = make_queries(x, rows, a.noise, seed=2)
    print(f"data {a.n} x {a.dim} in {time.perf_counter() - t:.1f} s, rss {rss.now():.2f} GB", flush=True)
    kind, params, why = choose_index(a.n, a.dim, int(a.max_memory), a.max_latency_ms)
    if a.nlist and "nlist" in params:
        params["nlist"] = a.nlist
    base = rss.now()
    rss.reset()
    t = time.perf_counter()
    index = build_index(kind, x, **params)
    build_s = time.perf_counter() - t
    print(f"{kind} {params} built in {build_s:.1f} s; peak rss during build {rss.peak:.2f} GB "
          f"(+{rss.peak - base:.2f} GB over the data); {why}", flush=True)
    t = time.perf_counter()
    exact = exact_top(x, q, 10)
    print(f"exact top-10 for {len(q)} queries in {time.perf_counter() - t:.1f} s", flush=True)
    tune_and_report(index, kind, params, q, exact, build_s, rss.peak, a)


def tune_and_report(index, kind, params, q, exact, build_s, peak_gb, a) -> None:
    """align index's tuning (nprobe / ef_search up to recall@10 >= 0.95 or the latency budget), then the
    RESULT line: recall@10 against `exact` and one-query p50/p99 at k=10 and k=1000 (also used by
    retrieval_index_stream.py)."""
    tuned = tune(index, q, exact, 10, a.max_latency_ms) if kind != "flat_faiss" else {}
    rec = recall_at(index, q, exact, 10)
    p50, p99 = latency_ms(index, q[:200], 10)
    p50k, p99k = latency_ms(index, q[:100], 1000)
    knob = {k: v for k, v in tuned.items() if k in ("nprobe", "ef_search")}
    print(f"RESULT n={a.n} dim={a.dim} {kind} {params} {knob} build {build_s:.1f} s, peak rss {peak_gb:.2f} GB, "
          f"recall@10 {rec:.4f}, k=10 p50 {p50:.2f} ms p99 {p99:.2f} ms, k=1000 p50 {p50k:.2f} ms p99 {p99k:.2f} ms "
          f"({a.threads} FAISS thread(s)); sweep {tuned.get('sweep')}", flush=True)


if __name__ == "__main__":
    main()
