"""A multi-GB synthetic image/text/audio corpus for the retrieval commands at scale (issue 21).

Every sample is one of scikit-learn's 1,797 bundled handwritten digits, drawn white on black the way the demo
draws it but at --image-size px with Gaussian pixel noise (a crop at a per-sample offset of one seeded noise
tile, cheaper than fresh noise per image; every JPEG differs and is large),
a caption from the demo's training templates ("a handwritten seven."), and, every --audio-every-th sample,
the digit's name spoken by eSpeak NG (a bank of clips synthesised once, then a per-sample gain and white
noise; 16 kHz FLAC). The demo's model therefore finds meaningful neighbours in it: a text query for "seven"
should return sevens, audio and images of sevens.

Written with align's shard writer (align.wds.writer.NumberedShards), --per-shard samples per tar, until the
shards reach --gb gigabytes (1e9 bytes). Deterministic: the same arguments give the same bytes (sample i draws
from numpy's generator seeded with [seed, i]; the clip bank is synthesised in a fixed order in one process).
Nothing is downloaded. Prints one summary line and writes OUT/corpus.json.

    python benchmarks/retrieval_corpus.py --out corpus/ --gb 2.2
    align embed RUN --data 'corpus/shard-{000000..000014}.tar' --out emb/     # the pattern is printed
    python benchmarks/retrieval_corpus.py --out corpus/ --check-filter FILTERED/

Samples that draw the same source digit are near-copies (the same drawing under other noise, JPEG-encoded
again). `--check-filter` scores an `align data filter ... --dedup COS` output against that truth: among the
samples not dropped as low_score, every sample whose source digit came earlier is a copy; precision is the
share of near_duplicate drops whose duplicate_of has the same source digit, recall the share of copies dropped.
"""
import argparse
import io
import json
import os
import sys
import time

import numpy as np


def clip_bank(words, voices, rates, sample_rate):
    """[(label, wave float32 [T])] spoken once each, in a fixed order (eSpeak is deterministic in one process)."""
    from align.demo.espeak import synthesize

    bank = []
    for label, word in enumerate(words):
        for v in voices:
            for r in rates:
                wave, _ = synthesize(word, voice=v, rate=r, pitch=50, sample_rate=sample_rate, seed=label)
                bank.append((label, wave))
    return bank


def noise_tile(seed, size, std):
    """[2*size, 2*size, 3] int16 Gaussian noise, drawn once; samples crop it at their own offset."""
    rng = np.random.default_rng([seed, -1 & 0xFFFF])
    return np.round(rng.normal(0.0, std, size=(2 * size, 2 * size, 3))).astype(np.int16)


def make_sample(i, seed, digits, labels, bank, noise, args):
    """Sample i -> {ext: bytes}; everything random comes from default_rng([seed, i])."""
    from PIL import Image

    from align.demo.data import CAPTION_TEMPLATES, caption, render_digit
    from align.media.audio import encode_flac

    rng = np.random.default_rng([seed, i])
    j = int(rng.integers(len(digits)))
    label = int(labels[j])
    grid = np.clip(np.round(digits[j] * (255.0 / 16.0)), 0, 255).astype(np.uint8)     # [8, 8] 0..255
    img = np.asarray(render_digit(grid, args.image_size), dtype=np.int16)              # [S, S, 3]
    y, x = rng.integers(0, args.image_size, size=2)
    img = img + noise[y:y + args.image_size, x:x + args.image_size]
    jpg = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(jpg, format="JPEG", quality=args.quality)
    text = caption(label, int(rng.integers(len(CAPTION_TEMPLATES))))
    out = {"jpg": jpg.getvalue(), "txt": text, "cls": str(label),
           "json": json.dumps({"label": label, "source_index": j, "sample": i})}
    if args.audio_every and i % args.audio_every == 0:
        clips = [w for lab, w in bank if lab == label]
        wave = clips[int(rng.integers(len(clips)))] * float(rng.uniform(0.4, 1.0))       # [T]
        noise = rng.normal(0.0, 1.0, size=wave.shape) * float(np.sqrt(np.mean(wave ** 2)))
        wave = wave + noise * 10 ** (-float(rng.uniform(20, 40)) / 20)                 # SNR 20..40 dB
        out["flac"] = encode_flac(np.clip(wave, -1, 1).astype(np.float32), args.sample_rate)
    return out


def source_digit(i, seed, n_digits=1797):
    """The source digit index sample i drew (make_sample's first draw)."""
    return int(np.random.default_rng([seed, i]).integers(n_digits))


def check_filter(corpus_dir, filtered_dir):
    """Near-duplicate precision/recall of a filter output against the source-digit truth (module docstring)."""
    info = json.load(open(os.path.join(corpus_dir, "corpus.json")))
    seed, n = info["args"]["seed"], info["samples"]
    recs = [json.loads(line) for line in open(os.path.join(filtered_dir, "dropped.jsonl"))]
    low = {int(r["key"]) for r in recs if r["reason"] == "low_score"}
    dups = {int(r["key"]): int(r["duplicate_of"]) for r in recs if r["reason"] == "near_duplicate"}
    seen, copies = set(), set()
    for i in range(n):
        if i in low:
            continue
        src = source_digit(i, seed)
        if src in seen:
            copies.add(i)
        seen.add(src)
    right = sum(source_digit(i, seed) == source_digit(k, seed) for i, k in dups.items())
    prec = right / len(dups) if dups else float("nan")
    rec = len(copies & set(dups)) / len(copies) if copies else float("nan")
    print(f"near_duplicate: precision {prec:.3f} recall {rec:.3f} ({len(dups)} dropped as near_duplicate, "
          f"{right} of them copies of their duplicate_of, {len(set(dups) - copies)} the first of their source "
          f"digit; {len(copies)} copies among {n - len(low)} samples not dropped as low_score; {len(seen)} "
          f"distinct source digits)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (shard-NNNNNN.tar, corpus.json)")
    p.add_argument("--gb", type=float, default=2.2, help="stop once the shards hold this many GB (1e9 bytes)")
    p.add_argument("--max-samples", type=int, default=10_000_000, help="stop after this many samples at most")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per tar")
    p.add_argument("--image-size", type=int, default=448, help="image side in px")
    p.add_argument("--noise", type=float, default=24.0, help="std of the per-pixel Gaussian noise (0..255 scale)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    p.add_argument("--audio-every", type=int, default=4, help="every N-th sample also carries speech (0: none)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--check-filter", default=None, metavar="FILTERED",
                   help="instead of writing: score this `align data filter` output of --out's corpus")
    args = p.parse_args(argv)
    if args.check_filter:
        return check_filter(args.out, args.check_filter)

    from sklearn.datasets import load_digits

    from align.demo.data import CLASSNAMES
    from align.wds.writer import NumberedShards

    os.makedirs(args.out, exist_ok=True)
    d = load_digits()
    digits, labels = d.images, d.target                       # [1797, 8, 8] 0..16, [1797]
    t0 = time.perf_counter()
    bank = clip_bank(CLASSNAMES, ["en", "en-us", "en-gb-scotland", "en-gb-x-rp"], [140, 205],
                     args.sample_rate) if args.audio_every else []
    noise = noise_tile(args.seed, args.image_size, args.noise)
    shards = NumberedShards(args.out, lambda k: f"shard-{k:06d}.tar", args.per_shard)
    target, written, n, n_audio = args.gb * 1e9, 0, 0, 0
    while written < target and n < args.max_samples:
        s = make_sample(n, args.seed, digits, labels, bank, noise, args)
        shards.write(f"{n:08d}", s)
        written += sum(len(v) if isinstance(v, bytes) else len(v.encode()) for v in s.values())
        n_audio += "flac" in s
        n += 1
        if n % 2000 == 0:
            print(f"  {n} samples, {written / 1e9:.2f} GB, {n / (time.perf_counter() - t0):.0f} samples/s",
                  file=sys.stderr, flush=True)
    shards.close()
    on_disk = sum(os.path.getsize(x) for x in shards.paths)
    pattern = os.path.join(args.out, f"shard-{{000000..{len(shards.names) - 1:06d}}}.tar")
    info = {"samples": n, "audio_samples": n_audio, "shards": len(shards.names), "bytes": on_disk,
            "pattern": pattern, "seconds": round(time.perf_counter() - t0, 1), "args": vars(args)}
    with open(os.path.join(args.out, "corpus.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"corpus: {n} samples ({n_audio} with audio) in {len(shards.names)} shards, {on_disk / 1e9:.2f} GB on "
          f"disk, {info['seconds']:.0f} s -> {pattern}")


if __name__ == "__main__":
    main()
