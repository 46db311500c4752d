"""What `--precision bf16` changes in `align embed`'s vectors, and what it buys, on one model and data set.

    python benchmarks/precision_agreement.py MODEL --data SHARDS_OR_EVAL_SET [--pretrained FILE]
        [--work DIR] [--batch-size 64] [--k 10]

MODEL is anything `align embed` takes (an align run, checkpoint or export; `open_clip:ARCH` with --pretrained).
The data are embedded twice through `align.embed` in this process, fp32 then bf16 autocast (float32 storage),
each timed (encode only: the model is loaded once, before either). Printed per modality: the largest and the
median 1 - cos between a sample's fp32 and bf16 vector; per pair of modalities: how much of each query's
top-k (cosine, exact) is the same in both precisions, the query and the corpus encoded in the same precision
(the mean over queries of |top-k fp32 ∩ top-k bf16| / k); and the two encode rates. Whether bf16 is faster
depends on the CPU: native bf16 dot products (AVX512-BF16, AMX) make it so, emulation makes it slower.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def cpu_flags() -> str:
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "?"
    have = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags]
    return ", ".join(have) or "none of avx2/avx512f/avx512_bf16/amx_bf16"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--split", default=None,
                    help="split of a CLIP_benchmark-layout eval set (default: test); not with shards")
    ap.add_argument("--work", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args(argv)
    import torch
    from align.bench.index import exact_topk, topk_recall
    from align.bench.models import load_model
    from align.retrieval.embed import embed_corpus, load_embeddings

    work = a.work or tempfile.mkdtemp(prefix="precision_")
    model = load_model(a.model, pretrained=a.pretrained, device="cpu")
    print(f"model {a.model}; data {a.data}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"CPU flags: {cpu_flags()}", flush=True)
    vecs, rate = {}, {}
    for p in ("fp32", "bf16"):
        out = os.path.join(work, p)
        t = time.perf_counter()
        s = embed_corpus(model, a.data, out, dtype="float32", batch_size=a.batch_size, precision=p,
                         split=a.split, progress=False)
        dt = time.perf_counter() - t
        rate[p] = (s.items / dt if s.items else float("nan"), s.items, dt, s.done_before)
        vecs[p] = {m: load_embeddings(out, m)[0] for m in s.vectors}
    for p, (r, n, dt, before) in rate.items():
        print(f"{p}: {n} samples encoded in {dt:.1f} s = {r:.2f} samples/s"
              + (f" ({before} parts were already there)" if before else ""))
    if rate["fp32"][1] and rate["bf16"][1]:
        print(f"RESULT bf16 / fp32 encode rate: {rate['bf16'][0] / rate['fp32'][0]:.2f}x")
    mods = sorted(vecs["fp32"])
    for m in mods:
        a32, b16 = vecs["fp32"][m], vecs["bf16"][m]
        d = 1.0 - np.sum(a32.astype(np.float64) * b16, axis=1)
        print(f"RESULT {m}: {len(d)} vectors, 1 - cos(fp32, bf16) max {d.max():.2e}, median {np.median(d):.2e}")
    for q in mods:
        for c in mods:
            if q == c:
                continue
            k = min(a.k, len(vecs["fp32"][c]))
            # the share of each fp32 top-k that the bf16 top-k keeps (k-recall@k of bf16 against fp32)
            same = topk_recall(exact_topk(vecs["bf16"][c], vecs["bf16"][q], k),
                               exact_topk(vecs["fp32"][c], vecs["fp32"][q], k), k)
            print(f"RESULT {q} -> {c} top-{k}: {100 * same:.2f} % the same in bf16 as in fp32 "
                  f"({len(vecs['fp32'][q])} queries, {len(vecs['fp32'][c])} items)")


if __name__ == "__main__":
    main()
