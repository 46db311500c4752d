"""Embed throughput: `align embed` against a plain open_clip batch loop, same model, data and machine.

clip-retrieval's `inference` is the reference the issue names; here it is NOT run (see RESULTS.md: the wheel
downloads, but its dependency set was not installed in a venv on this offline, shared machine), so the
baseline is the loop a user writes by hand: read each tar with `tarfile`, PIL-decode, open_clip's preprocess,
batches of --batch-size through encode_image / encode_text under torch.no_grad, normalise, np.save.
The model is open_clip --arch with random weights saved to a file (no download); the data are --n
--size x --size JPEGs with captions in shards of 100.

    python benchmarks/retrieval_embed.py --arch ViT-B-32 --n 256 --workers 0 1
"""
import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from tests.retrieval.planted import random_pair  # noqa: E402


def make_data(d, n, size):
    from align.wds.writer import write_shard
    from PIL import Image
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        img, cap = random_pair(rng)
        b = io.BytesIO()
        img.resize((size, size), Image.BILINEAR).save(b, format="JPEG", quality=90)
        samples.append({"__key__": f"k{i:06d}", "jpg": b.getvalue(), "txt": cap})
    os.makedirs(d, exist_ok=True)
    return [write_shard(os.path.join(d, f"{i // 100:03d}.tar"), samples[i:i + 100]) for i in range(0, n, 100)]


def plain_loop(arch, weights, shards, out, batch_size):
    import open_clip
    from PIL import Image
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    tok = open_clip.get_tokenizer(arch)
    model.eval()
    t = time.perf_counter()
    n = 0
    for si, shard in enumerate(shards):
        imgs, caps = {}, {}
        with tarfile.open(shard) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                if ext == "jpg":
                    imgs[key] = preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
                elif ext == "txt":
                    caps[key] = data.decode()
        keys = sorted(imgs)
        zi, zt = [], []
        with torch.no_grad():
            for s in range(0, len(keys), batch_size):
                b = keys[s:s + batch_size]
                zi.append(torch.nn.functional.normalize(model.encode_image(torch.stack([imgs[k] for k in b])), dim=-1))
                zt.append(torch.nn.functional.normalize(model.encode_text(tok([caps[k] for k in b])), dim=-1))
        np.save(os.path.join(out, f"{si}.img.npy"), torch.cat(zi).numpy().astype(np.float16))
        np.save(os.path.join(out, f"{si}.txt.npy"), torch.cat(zt).numpy().astype(np.float16))
        n += len(keys)
    return n, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import open_clip
    from align.bench.models import load_model
    from align.retrieval.embed import embed_corpus
    d = tempfile.mkdtemp(prefix="embed_bench_")
    weights = os.path.join(d, "weights.pt")
    torch.save(open_clip.create_model(a.arch).state_dict(), weights)
    shards = make_data(os.path.join(d, "shards"), a.n, a.size)
    os.makedirs(os.path.join(d, "plain"))
    n, dt = plain_loop(a.arch, weights, shards, os.path.join(d, "plain"), a.batch_size)
    print(f"plain open_clip loop: {n} samples (image + caption) in {dt:.1f} s = {n / dt:.1f} samples/s", flush=True)
    model = load_model({"model": f"open_clip:{a.arch}", "pretrained": weights})
    for w in a.workers:
        t = time.perf_counter()
        s = embed_corpus(model, os.path.join(d, "shards"), os.path.join(d, f"emb{w}"), batch_size=a.batch_size,
                         num_workers=w, progress=False)
        dt2 = time.perf_counter() - t
        print(f"align embed --num-workers {w}: {s.items} samples in {dt2:.1f} s = {s.items / dt2:.1f} samples/s "
              f"({s.items / dt2 / (n / dt):.2f}x the plain loop)", flush=True)


if __name__ == "__main__":
    main()
