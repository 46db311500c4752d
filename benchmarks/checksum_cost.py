"""What the damage checks cost: the blake2b checksum a bench cache entry is checked against when it is read
(align.bench.embed.content_hash) and the one `align index` / `align data filter` / a rerun of `align embed` check
each embedding part file against (align.retrieval.embed.file_hash), beside the time to read the same bytes.

    python benchmarks/checksum_cost.py [--rows 10000] [--dim 512] [--part-rows 1000000] [--repeats 3]

Prints one line per figure (best of --repeats); the part file is written to --tmp and removed.
"""
import argparse
import os
import tempfile
import time

import numpy as np


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from align.bench.embed import content_hash
    from align.retrieval.embed import file_hash

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000, help="rows of the bench cache entry (float32)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--part-rows", type=int, default=1_000_000, help="rows of the embedding part (float16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    entry = rng.standard_normal((a.rows, a.dim)).astype(np.float32)              # [rows, dim] as the cache keeps
    s = best(lambda: content_hash(entry), a.repeats)
    print(f"bench cache entry {a.rows} x {a.dim} float32 ({entry.nbytes / 1e6:.1f} MB): checksum {s * 1e3:.1f} ms "
          f"({entry.nbytes / 1e9 / s:.2f} GB/s)")
    path = os.path.join(a.tmp, f"checksum_cost_{os.getpid()}.npy")
    try:
        np.save(path, rng.standard_normal((a.part_rows, a.dim)).astype(np.float16))  # [part_rows, dim] as a part
        size = os.path.getsize(path)

        def read():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        r = best(read, a.repeats)
        h = best(lambda: file_hash(path), a.repeats)
        print(f"embedding part {a.part_rows} x {a.dim} float16 ({size / 1e9:.2f} GB, in the page cache): read "
              f"{r:.2f} s, read + checksum {h:.2f} s ({size / 1e9 / h:.2f} GB/s)")
    finally:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
