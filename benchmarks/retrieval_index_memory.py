"""Peak memory and time of `align index` on an `align embed`-shaped corpus whose float32 vectors pass the budget.

    python benchmarks/retrieval_index_memory.py --n 1000000 --dim 512 --max-memory 300MB [--work DIR]
        [--align-path PATH]

Writes (once, into WORK/emb) N unit vectors of dim D around 1,000 random centres as float16 parts of
--per-part rows (what `align embed` writes by default), plus 2,000 "text" vectors near corpus rows (the
cross-modal queries `align index` tunes on), then runs `align index WORK/emb --out WORK/ix --modalities image
--max-memory M` as its own process and reports its wall time and peak RSS (getrusage of the child), and the
settings it wrote. With --max-memory below N * D * 4 bytes `align index` chooses IVF-PQ; from this tree on it
builds that from the parts in chunks (align.retrieval.embed.EmbeddingParts) instead of loading every vector as
float32. --align-path runs another checkout's `align` (put first on PYTHONPATH), e.g. a worktree of the
previous commit, to compare the two on the same files.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(out: str, n: int, d: int, per_part: int, n_text: int = 2000, seed: int = 0) -> None:
    """An `align embed`-shaped folder: float16 image vectors in parts + a few text vectors (part 0)."""
    import pandas as pd
    sys.path.insert(0, ROOT)
    from align.retrieval.embed import COLUMNS, part_name
    if os.path.isfile(os.path.join(out, "manifest.json")):
        return
    parts_dir = os.path.join(out, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    names = []
    for p, s in enumerate(range(0, n, per_part)):
        m = min(per_part, n - s)
        x = centres[rng.integers(0, 1000, m)] + (0.7 / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        names.append(part_name(p))
        vecs = {"image": x}
        if p == 0:                                         # captions near the first rows: cross-modal queries
            t = x[:n_text] + (0.5 / np.sqrt(d)) * rng.standard_normal((min(n_text, m), d), dtype=np.float32)
            vecs["text"] = t / np.linalg.norm(t, axis=1, keepdims=True)
        rows = []
        for mod, v in vecs.items():
            np.save(os.path.join(parts_dir, f"{names[-1]}.{mod}.npy"), v.astype(np.float16))
            rows += [{"key": f"k{s + r:08d}", "caption": "", "shard": "synthetic.tar", "modality": mod, "row": r,
                      "media_offset": -1, "media_size": -1, "part": names[-1]} for r in range(len(v))]
        pd.DataFrame(rows, columns=COLUMNS).to_parquet(os.path.join(parts_dir, f"{names[-1]}.parquet"))
        with open(os.path.join(parts_dir, f"{names[-1]}.done.json"), "w") as f:
            json.dump({"items": m, "skipped": 0, "vectors": {k: len(v) for k, v in vecs.items()}}, f)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"parts": names, "modalities": ["image", "text"], "model_fingerprint": "synthetic",
                   "dtype": "float16", "normalised": True}, f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--per-part", type=int, default=10_000)
    ap.add_argument("--max-memory", default="300MB")
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--work", default="/tmp/index_memory")
    ap.add_argument("--align-path", default=ROOT, help="the checkout whose align runs (default: this one)")
    a = ap.parse_args(argv)
    emb, ix = os.path.join(a.work, "emb"), os.path.join(a.work, "ix")
    t = time.perf_counter()
    write_corpus(emb, a.n, a.dim, a.per_part)
    print(f"corpus: {a.n} x {a.dim} float16 in parts of {a.per_part} ({time.perf_counter() - t:.1f} s); "
          f"float32 would be {a.n * a.dim * 4 / 1e9:.2f} GB", flush=True)
    cmd = [sys.executable, "-m", "align.cli", "index", emb, "--out", ix, "--modalities", "image",
           "--max-memory", a.max_memory, "--queries", str(a.n_queries)]
    env = {**os.environ, "PYTHONPATH": a.align_path}
    t = time.perf_counter()
    # cwd: WORK, so `python -m` (which puts the working directory first on sys.path) imports --align-path's align
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=a.work)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6     # KB -> GB (Linux)
    print((p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else "(no output)")
    if p.returncode:
        print(f"exit {p.returncode}")
        return p.returncode
    s = json.load(open(os.path.join(ix, "image", "settings.json")))
    print(f"RESULT align index ({a.align_path}): {a.n} x {a.dim}, --max-memory {a.max_memory}: {s['kind']} "
          f"{ {k: s[k] for k in ('nlist', 'pq_m', 'nprobe', 'refine') if k in s} }, streamed {s.get('streamed', False)}, "
          f"recall@10 {s['recall@10']}, p50 {s['p50_ms']} ms; wall {dt:.1f} s (build {s['build_s']} s), "
          f"peak RSS {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
