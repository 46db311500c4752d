"""`align serve` under a bounded local load: queries/s and p99, with bad requests mixed in (127.0.0.1 only).

Builds a corpus (--n planted coloured-shape images with captions), embeds and indexes it with a model
(--model, default: the tiny image+text+audio model of tests/export/conftest.py, random weights), starts the
server on 127.0.0.1 in this process, and runs --clients client threads for --seconds (<= 30): each sends text
queries (k=10, and k=1000 every 7th) and, every --bad-every-th request, one bad request (empty query,
undecodable upload, oversized upload, unknown modality; each must answer its 4xx). Afterwards every client
must have finished and /health must answer: nothing lost or hung. Server and clients share the 2 cores.

    python benchmarks/retrieval_serve.py --n 2000 --clients 4 --seconds 20
"""
import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.retrieval.planted import planted_shards  # noqa: E402

BAD = [("GET", "/search?q=", None, 400), ("POST", "/search?modality=image", b"not an image", 400),
       ("POST", "/search?modality=image", b"\xff" * (3 << 20), 413), ("POST", "/search?modality=video", b"x", 400)]


def request(base, method, path, body=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def client(base, caps, stop, bad_every, seed, out):
    rng = np.random.default_rng(seed)
    i = 0
    while not stop.is_set():
        i += 1
        if i % bad_every == 0:
            m, path, body, want = BAD[int(rng.integers(len(BAD)))]
            try:
                got = request(base, m, path, body)
            except OSError as e:       # a server that closes an oversized upload early may reset the socket
                got = f"{type(e).__name__}"
            out["bad"].append((want, got))
            continue
        k = 1000 if i % 7 == 0 else 10
        q = urllib.request.quote(caps[int(rng.integers(len(caps)))])
        t = time.perf_counter()
        status = request(base, "GET", f"/search?q={q}&k={k}")
        out["lat"].append(((time.perf_counter() - t) * 1e3, k, status))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default=None, help="align run (default: a tiny random image+text+audio model)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bad-every", type=int, default=10)
    a = ap.parse_args()
    assert a.seconds <= 30, "bounded load test: at most 30 s"
    import pathlib

    import align
    from align.retrieval.embed import embed_corpus
    from align.retrieval.index_build import build_indexes
    from align.retrieval.serve import make_server
    d = pathlib.Path(tempfile.mkdtemp(prefix="serve_bench_"))
    if a.model is None:
        from tests.export.conftest import TINY_AUDIO_CNN, make_run
        a.model, _ = make_run(d, towers={"audio": TINY_AUDIO_CNN})
    model = align.load(a.model)
    planted_shards(d / "shards", a.n, 0, 0)
    embed_corpus(model, str(d / "shards"), str(d / "emb"), progress=False)
    build_indexes(str(d / "emb"), str(d / "ix"))
    srv = make_server(str(d / "ix"), model, port=0, max_upload_mb=2)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    from align.retrieval.embed import load_embeddings
    caps = list(load_embeddings(str(d / "emb"), "text")[1]["caption"])
    stop = threading.Event()
    results = [{"lat": [], "bad": []} for _ in range(a.clients)]
    threads = [threading.Thread(target=client, args=(base, caps, stop, a.bad_every, i, results[i]))
               for i in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(a.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    wall = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    lat = [x for r in results for x in r["lat"]]
    bad = [x for r in results for x in r["bad"]]
    ok = [ms for ms, k, s in lat if s == 200]
    ok10 = [ms for ms, k, s in lat if s == 200 and k == 10]
    ok1000 = [ms for ms, k, s in lat if s == 200 and k == 1000]
    wrong_bad = [(w, g) for w, g in bad if w != g]
    health = request(base, "GET", "/health")
    print(f"RESULT {a.n} items ({len(ok)} good queries + {len(bad)} bad in {wall:.1f} s, {a.clients} clients): "
          f"{len(ok) / wall:.1f} queries/s; k=10 p50 {np.percentile(ok10, 50):.1f} ms p99 {np.percentile(ok10, 99):.1f} ms; "
          f"k=1000 p50 {np.percentile(ok1000, 50):.1f} ms p99 {np.percentile(ok1000, 99):.1f} ms; "
          f"non-200 good queries {len(lat) - len(ok)}; bad requests answered as expected {len(bad) - len(wrong_bad)}"
          f"/{len(bad)} (others: {sorted(set(map(str, wrong_bad)))[:4]}); hung clients {hung}; /health after: {health}")
    srv.shutdown()
    srv.server_close()


if __name__ == "__main__":
    main()
