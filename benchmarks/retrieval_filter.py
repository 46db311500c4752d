"""Filter precision/recall on planted cases, and samples/s: `align data filter` with a model trained on clean data.

Builds (tests/retrieval/planted.py) clean coloured-shape shards with captions, trains the tiny open_clip
model on them for --steps, then plants --mismatch shuffled captions and --dup near-copies (JPEG re-encode at
quality 60-80 or a 1-2 px crop) in a fresh corpus of --n samples and runs the filter with --min-score and
--dedup. Precision/recall per kind: a planted mismatch counts as found when dropped as low_score, a planted
copy when dropped as near_duplicate. --work keeps the data and the trained run between invocations.

    python benchmarks/retrieval_filter.py --work /tmp/filter_bench [--steps 500] [--min-score 0.75] [--dedup 0.995]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.retrieval.planted import clean_shards, planted_shards, precision_recall, train_shapes_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--mismatch", type=int, default=40)
    ap.add_argument("--dup", type=int, default=40)
    ap.add_argument("--min-score", type=float, default=0.75)
    ap.add_argument("--dedup", type=float, default=0.995)
    a = ap.parse_args()
    import align
    from align.retrieval.filter import filter_shards
    w = a.work
    if not os.path.isdir(os.path.join(w, "run", "checkpoints")):
        clean_shards(os.path.join(w, "train"), 3000)
        t = time.perf_counter()
        train_shapes_model(os.path.join(w, "train"), os.path.join(w, "run"), steps=a.steps)
        print(f"trained {a.steps} steps in {time.perf_counter() - t:.0f} s")
    if not os.path.isfile(os.path.join(w, "truth.json")):
        _, truth = planted_shards(os.path.join(w, "planted"), a.n, a.mismatch, a.dup)
        json.dump(truth, open(os.path.join(w, "truth.json"), "w"))
    truth = json.load(open(os.path.join(w, "truth.json")))
    model = align.load(os.path.join(w, "run"))
    out = os.path.join(w, f"filtered-{time.time_ns()}")
    s = filter_shards(model, os.path.join(w, "planted"), out, min_score=a.min_score, dedup_cos=a.dedup,
                      progress=False)
    dropped = [json.loads(x) for x in open(os.path.join(out, "dropped.jsonl"))]
    for reason, kind in (("low_score", "mismatch"), ("near_duplicate", "near_duplicate")):
        p, r, ng, nw = precision_recall(dropped, truth, reason, kind)
        print(f"{kind}: precision {p:.3f} recall {r:.3f} ({ng} dropped as {reason}, {nw} planted)")
    print(f"filter (embed + score + dedup + write) {s['samples']} samples in {s['seconds']:.1f} s: "
          f"{s['samples_per_s']:.1f} samples/s; summary {s['dropped']}")


if __name__ == "__main__":
    main()
