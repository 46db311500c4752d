"""Cost of align's one shard writer (webdataset's TarWriter, `align.wds.writer`) per sample.

Writes the same samples (a 256x256 JPEG of ~20 KB, a caption, a `cls` and a `json`: four members, as
`align data shards` writes) three ways into a temp file and prints microseconds per sample:

  * align.wds.writer.SampleWriter (webdataset TarWriter, fixed headers)
  * a hand-written `tarfile` loop (TarInfo + addfile per member), what the four writers did before
  * for scale: encoding that JPEG once with PIL (quality 95), which every written sample pays

    python benchmarks/tar_writer.py [--n 5000] [--repeats 5]

The median of `repeats` runs is printed; ratios measured in one run are what matters on a shared machine.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.wds.writer import SampleWriter  # noqa: E402


def _sample_members() -> tuple[dict, float]:
    """Four members of a typical image-text sample, and the seconds PIL took to encode its JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    img = np.clip(128 + 60 * xx[..., None] - 40 * yy[..., None] + rng.normal(0, 8, (256, 256, 3)), 0, 255)
    pil = Image.fromarray(img.astype(np.uint8))
    t0 = time.perf_counter()
    for _ in range(20):
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=95)
    jpeg_s = (time.perf_counter() - t0) / 20
    return {"jpg": buf.getvalue(), "txt": b"a synthetic photo of a gradient", "cls": b"3",
            "json": b'{"key":"x","source":{"row":1}}'}, jpeg_s


def _align(path: str, members: dict, n: int) -> None:
    with SampleWriter(path) as w:
        for i in range(n):
            w.write(f"s{i:07d}", members)


def _tarfile(path: str, members: dict, n: int) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            for ext in sorted(members):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
                tf.addfile(info, io.BytesIO(members[ext]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    members, jpeg_s = _sample_members()
    times = {"align SampleWriter (webdataset TarWriter)": [], "hand-written tarfile loop": []}
    with tempfile.TemporaryDirectory(prefix="align-tarw-") as d:
        for _ in range(args.repeats):  # interleaved, so background load hits both alike
            for name, fn in zip(times, (_align, _tarfile)):
                path = os.path.join(d, "x.tar")
                t0 = time.perf_counter()
                fn(path, members, args.n)
                times[name].append((time.perf_counter() - t0) / args.n)
        size = os.path.getsize(os.path.join(d, "x.tar"))
    print(f"{args.n} samples x 4 members ({size / args.n / 1024:.1f} KiB per sample), median of {args.repeats}:")
    base = statistics.median(times["hand-written tarfile loop"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<44}{1e6 * med:8.1f} us/sample  ({med / base:.2f}x the tarfile loop)")
    print(f"  {'for scale: PIL JPEG encode of that image':<44}{1e6 * jpeg_s:8.1f} us/sample")


if __name__ == "__main__":
    main()
