"""`align index` at 10M x 512 without holding the corpus: chunked synthetic vectors, build, latency, recall.

The corpus never exists in memory at once (10M float32 x 512 is 20 GB): chunk i (--chunk rows) is generated
from its own random stream, so any chunk can be made again from its index. Rows are unit vectors around
1,000 random unit centres; the within-cluster offset is *uniform* noise of norm --spread (uniform because
numpy's uniform draws are ~5x faster than normal ones on this machine; the 1M in-memory script,
retrieval_index.py, uses normal noise, so the two scripts' data differ slightly).

  1. choose:  choose_index + the default budget of `align index` (--max-memory 4e9, --max-latency-ms 10);
              IVF-PQ for 10M x 512. --nlist overrides the chosen nlist (training and assignment cost).
  2. train:   on the first chunks (rows are i.i.d., so the first rows are a uniform sample), --train-size
              rows (default max(40 * nlist, 10000), the size build_index samples).
  3. add:     chunk by chunk; the rows of the --queries held-out query ids are kept (queries are noisy
              copies of them). --store PATH also writes the corpus as a float16 .npy memmap for re-ranking.
  4. exact:   exact top-10 of every query, streaming the chunks again (align.bench.index.exact_topk_chunks).
  5. tune:    align.retrieval.index_build.tune (nprobe grows until recall@10 >= 0.95 or p50 > budget), then
              p50/p99 of one-query searches at k=10 and k=1000 on --threads FAISS threads.
  6. re-rank: with --store, align index's re-rank of an ivfpq index (index_build.tune_refined: k * F
              candidates re-scored with the float16 rows read from the memmap; nprobe and F tuned together).

    python benchmarks/retrieval_index_stream.py --n 10000000 --nlist 4096 --store /tmp/corpus_f16.npy
    python benchmarks/retrieval_index_stream.py --n 20000 --dim 64 --queries 50    # a tiny check
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faiss  # noqa: E402

from align.bench.index import INDEXES, Refined, exact_topk_chunks  # noqa: E402
from align.retrieval.index_build import choose_index, latency_ms, recall_at, tune_refined  # noqa: E402
from retrieval_index import tune_and_report  # noqa: E402
from retrieval_scale import RssPeak  # noqa: E402  (the memory probe)


class Corpus:
    """n rows of dim d in chunks of `chunk` rows; chunk(i) is the same array every time it is made."""

    def __init__(self, n, d, chunk, clusters=1000, spread=0.7, seed=0):
        self.n, self.d, self.size, self.seed = n, d, chunk, seed
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
        c = rng.standard_normal((clusters, d), dtype=np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)                 # [C, d]
        # uniform(-a, a) per coordinate with E|offset|^2 = spread^2: a = spread * sqrt(3 / d)
        self.half = spread * math.sqrt(3.0 / d)

    def __len__(self):
        return math.ceil(self.n / self.size)

    def chunk(self, i):
        """Rows [i*chunk, min(n, (i+1)*chunk)) as float32 [m, d], unit length."""
        m = min(self.n, (i + 1) * self.size) - i * self.size
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, i)))
        x = self.centres[rng.integers(0, len(self.centres), m)]
        u = rng.random((m, self.d), dtype=np.float32)                               # [m, d] in [0, 1)
        u -= np.float32(0.5)
        u *= np.float32(2 * self.half)
        x += u
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def train(index, corpus, size):
    """Train on the first chunks' rows (i.i.d. rows: a uniform sample of the corpus) -> (rows, seconds)."""
    parts, have, i = [], 0, 0
    while have < size and i < len(corpus):
        parts.append(corpus.chunk(i)[: size - have])
        have += len(parts[-1])
        i += 1
    t = time.perf_counter()
    index.train(np.concatenate(parts))
    return have, time.perf_counter() - t


def add_all(index, corpus, rows, store=None):
    """Add every chunk; return the corpus rows listed in `rows` (sorted ids) as float32 [len(rows), d]."""
    out = np.empty((len(rows), corpus.d), np.float32)
    t, last = time.perf_counter(), time.perf_counter()
    for i in range(len(corpus)):
        x, s = corpus.chunk(i), i * corpus.size
        index.add(x)
        if store is not None:
            store[s:s + len(x)] = x
        sel = (rows >= s) & (rows < s + len(x))
        out[sel] = x[rows[sel] - s]
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"  add: {s + len(x)}/{corpus.n} rows in {last - t:.0f} s", flush=True)
    return out


def exact_all(corpus, queries, k):
    """Exact top-k ids [Q, k] over the corpus, made again chunk by chunk (what `align index` does on the parts)."""
    return exact_topk_chunks(((i * corpus.size, corpus.chunk(i)) for i in range(len(corpus))), queries, k)


def refine_report(index, store, q, exact, max_latency_ms):
    """align index's re-rank (tune_refined: nprobe and F tuned together) -> one RESULT-REFINE line."""
    tuned = tune_refined(index, store, q, exact, 10, max_latency_ms)
    ref = Refined(index, store, tuned["refine"])
    p50, p99 = latency_ms(ref, q[:200], 10)
    p50k, p99k = latency_ms(ref, q[:100], 1000)
    print(f"RESULT-REFINE nprobe {faiss.extract_index_ivf(index).nprobe}, F {tuned['refine']} ({10 * tuned['refine']} "
          f"candidates, float16 rows from {store.filename}): recall@10 {recall_at(ref, q, exact, 10):.4f}, "
          f"k=10 p50 {p50:.2f} ms p99 {p99:.2f} ms, k=1000 p50 {p50k:.2f} ms p99 {p99k:.2f} ms; "
          f"sweep {tuned['sweep']}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=65536, help="rows per generated chunk")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--noise", type=float, default=1.0, help="query offset from its corpus row (norm)")
    p.add_argument("--spread", type=float, default=0.7, help="within-cluster offset (norm)")
    p.add_argument("--max-memory", type=float, default=4e9, help="align index's default budget")
    p.add_argument("--max-latency-ms", type=float, default=10.0)
    p.add_argument("--nlist", type=int, default=None, help="override the chosen nlist")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="FAISS threads for the latency figures")
    p.add_argument("--build-threads", type=int, default=0, help="FAISS threads for train/add (0: all)")
    p.add_argument("--store", default=None, help="write a float16 .npy copy here and measure re-ranking")
    a = p.parse_args(argv)
    if a.build_threads:
        faiss.omp_set_num_threads(a.build_threads)
    rss, t_all = RssPeak(), time.perf_counter()
    rss.reset()
    corpus = Corpus(a.n, a.dim, a.chunk, spread=a.spread)
    kind, params, why = choose_index(a.n, a.dim, int(a.max_memory), a.max_latency_ms)
    if a.nlist and "nlist" in params:
        params["nlist"] = a.nlist
    print(f"chosen: {kind} {params} ({why}); {len(corpus)} chunks of {a.chunk}", flush=True)
    index = INDEXES.get(kind)(a.dim, a.n, **params)
    t0 = time.perf_counter()
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        rows, t_tr = train(index, corpus, min(a.n, a.train_size or max(40 * nlist, 10000)))
        print(f"trained on {rows} rows in {t_tr:.1f} s, rss {rss.now():.2f} GB", flush=True)
    qrows = np.sort(np.random.default_rng(1).choice(a.n, a.queries, replace=False))
    store = (np.lib.format.open_memmap(a.store, mode="w+", dtype=np.float16, shape=(a.n, a.dim))
             if a.store else None)
    base = add_all(index, corpus, qrows, store)
    build_s = time.perf_counter() - t0
    if store is not None:
        store.flush()
    print(f"built in {build_s:.1f} s (train + add{' + float16 store' if store is not None else ''}); "
          f"peak rss {rss.peak:.2f} GB; index {faiss.serialize_index(index).nbytes / 1e9:.2f} GB", flush=True)
    rng = np.random.default_rng(2)
    q = base + (a.noise / np.sqrt(a.dim)) * rng.standard_normal(base.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)                                    # [Q, d]
    t = time.perf_counter()
    exact = exact_all(corpus, q, 10)
    print(f"exact top-10 for {len(q)} queries in {time.perf_counter() - t:.1f} s (streamed again)", flush=True)
    faiss.omp_set_num_threads(a.threads)
    tune_and_report(index, kind, params, q, exact, build_s, rss.peak, a)
    if store is not None:
        refine_report(index, np.load(a.store, mmap_mode="r"), q, exact, a.max_latency_ms)
    print(f"total {time.perf_counter() - t_all:.1f} s, peak rss {rss.peak:.2f} GB; load avg {os.getloadavg()}")


if __name__ == "__main__":
    main()
