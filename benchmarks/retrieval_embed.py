"""Embed throughput: `align embed` against clip-retrieval's `inference`, same open_clip model, data and machine.

clip-retrieval pins webdataset<0.3, numpy<2 and pyarrow<16, so it cannot share align's environment; it runs
from its own venv (`--cr-venv`, made by `tools/make_clip_retrieval_env.sh`).  Both tools run as the user
runs them, one command each, and the wall time of the whole command is timed (model load, warm-up, decode,
encode, writing).  The model is open_clip --arch with random weights saved to a local file (no download),
passed to clip-retrieval as `open_clip:ARCH/<file>` and to align as `open_clip:ARCH --pretrained <file>`.
The data are --n JPEGs (--size px) with captions of --words words (LAION-like length; 17 as in the
throughput benchmark) in shards of 100, read by both as webdataset tars (`jpg`, `txt`).  Each setting runs
--repeats times, the tools alternating, so load from other jobs falls on both.  At the end the two tools'
image and text vectors are compared key by key (they must be the same embeddings, or the timing compares
different work).

    python benchmarks/retrieval_embed.py --cr-venv /work/crenv/venv --arch ViT-B-32 --n 200 600 \\
        --align-workers 0 1 --align-engines torch onnxruntime --cr-workers 1 4 [--plain]

`--align-engines` runs `align embed --engine E` for each E (onnxruntime: the image tower in onnxruntime,
align.bench.engine). With two corpus sizes (`--n A B`, the first A samples of both are the same) the
*steady-state* rate of each setting is (B - A) / (t_B - t_A): the fixed costs (start-up, model load,
warm-up, export) cancel, and what is left is the per-sample cost, which is what a large corpus pays.
`--plain` adds a hand-written open_clip batch loop (tarfile + PIL + preprocess + encode) as a third row.
"""
import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from tests.retrieval.planted import random_pair  # noqa: E402

FILLER = "seen in a photo with soft light a plain frame and a little shadow under it".split()


def make_data(d, n, size, words=17):
    """n JPEG + caption samples in shards of 100 under d; captions padded to `words` words."""
    from align.wds.writer import write_shard
    from PIL import Image
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        img, cap = random_pair(rng)
        extra = max(0, words - len(cap.split()))
        cap = " ".join(cap.split() + FILLER[:extra])
        b = io.BytesIO()
        img.resize((size, size), Image.BILINEAR).save(b, format="JPEG", quality=90)
        samples.append({"__key__": f"k{i:06d}", "jpg": b.getvalue(), "txt": cap})
    os.makedirs(d, exist_ok=True)
    return [write_shard(os.path.join(d, f"{i // 100:03d}.tar"), samples[i:i + 100]) for i in range(0, n, 100)]


def plain_loop(arch, weights, shards, out, batch_size):
    """The loop a user writes by hand; returns (samples, seconds)."""
    import open_clip
    from PIL import Image
    t = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    tok = open_clip.get_tokenizer(arch)
    model.eval()
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


CPU = []   # CPU seconds (user + system) of each timed command and the processes it waited for


def timed(cmd, env=None):
    """Run a command; (wall seconds, exit code, last lines of its output); its CPU seconds go to CPU.
    On a shared machine the wall time moves with the other jobs' load; the CPU time much less."""
    import resource
    r0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return dt, p.returncode, "\n".join(p.stdout.strip().splitlines()[-3:])


def run_clip_retrieval(cr_venv, arch, weights, shards, out, batch_size, workers):
    # clip-retrieval brace-expands --input_dataset: a list of absolute paths goes inside braces
    data = "{" + ",".join(shards) + "}" if len(shards) > 1 else shards[0]
    cmd = [os.path.join(cr_venv, "bin", "clip-retrieval"), "inference", "--input_dataset", data,
           "--output_folder", out, "--input_format", "webdataset", "--clip_model", f"open_clip:{arch}/{weights}",
           "--batch_size", str(batch_size), "--num_prepro_workers", str(workers), "--enable_wandb", "False",
           "--enable_metadata", "False"]
    env = {**os.environ, "PYTHONPATH": ""}
    return timed(cmd, env)


def cr_own_rate(out):
    """clip-retrieval's own timing (stats/*.json: read + inference + write, no model load or warm-up)."""
    import json
    try:
        st = [json.load(open(os.path.join(out, "stats", f))) for f in os.listdir(os.path.join(out, "stats"))]
    except OSError:
        return ""
    n, t = sum(s["sample_count"] for s in st), sum(s["total_duration"] for s in st)
    return f" | its own stats: {n} samples in {t:.1f} s = {n / t:.2f} samples/s" if t else ""


def run_align(arch, weights, data_dir, out, batch_size, workers, threads, engine="torch", precision="fp32"):
    cmd = [sys.executable, "-m", "align.cli", "embed", f"open_clip:{arch}", "--pretrained", weights,
           "--data", data_dir, "--out", out, "--batch-size", str(batch_size), "--num-workers", str(workers),
           "--dtype", "float16", "--engine", engine, "--precision", precision, "--no-progress"]
    return timed(cmd, {**os.environ, "OMP_NUM_THREADS": str(threads)})


def compare_outputs(cr_out, align_out):
    """Max over samples of 1 - cosine between the two tools' image and text vectors, matched by key."""
    import pandas as pd
    from align.retrieval.embed import load_embeddings
    meta = pd.concat([pd.read_parquet(os.path.join(cr_out, "metadata", f))
                      for f in sorted(os.listdir(os.path.join(cr_out, "metadata")))], ignore_index=True)
    keys = [os.path.basename(str(k)) for k in meta["image_path"]]
    res = {}
    for mod, sub in (("image", "img_emb"), ("text", "text_emb")):
        cr = np.concatenate([np.load(os.path.join(cr_out, sub, f)).astype(np.float32)
                             for f in sorted(os.listdir(os.path.join(cr_out, sub)))])
        cr /= np.linalg.norm(cr, axis=1, keepdims=True)
        x, rows = load_embeddings(align_out, mod)
        row_of = {k: i for i, k in enumerate(rows["key"])}
        mine = x[[row_of[k] for k in keys]]
        res[mod] = float(np.max(1.0 - np.sum(cr * mine, axis=1)))
    return res, len(keys)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cr-venv", required=True, help="venv with clip-retrieval (tools/make_clip_retrieval_env.sh)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--n", type=int, nargs="+", default=[256], help="corpus size(s); two sizes give steady rates")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--words", type=int, default=17)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--align-workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--align-engines", nargs="+", default=["torch"], choices=["torch", "onnxruntime"])
    ap.add_argument("--align-precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="align's --precision (bf16: autocast, native on CPUs with AVX512-BF16 or AMX; "
                         "clip-retrieval has no CPU choice: its wrapper runs fp32 on CPU, bf16/fp16 on CUDA)")
    ap.add_argument("--cr-workers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="also time a hand-written open_clip loop")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import open_clip
    d = a.work or tempfile.mkdtemp(prefix="embed_bench_")
    os.makedirs(d, exist_ok=True)
    weights = os.path.join(d, "weights.pt")
    torch.save(open_clip.create_model(a.arch).state_dict(), weights)
    sizes = sorted(set(a.n))
    shards = {n: make_data(os.path.join(d, f"shards{n}"), n, a.size, a.words) for n in sizes}
    print(f"data: {', '.join(map(str, sizes))} samples ({a.size} px JPEG + {a.words}-word caption) in shards of "
          f"100; model open_clip {a.arch} (random weights, local file); batch {a.batch_size}", flush=True)
    best = {}   # (setting, n) -> (seconds, output folder, CPU seconds): the fastest repeat
    for r in range(a.repeats):
        for n in sizes:
            for w in a.cr_workers:
                name, out = f"clip-retrieval inference --num_prepro_workers {w}", os.path.join(d, f"cr{w}_{n}_{r}")
                dt, rc, tail = run_clip_retrieval(a.cr_venv, a.arch, weights, shards[n], out, a.batch_size, w)
                print(f"{name}: {n} samples in {dt:.1f} s = {n / dt:.2f} samples/s, {CPU[-1]:.0f} CPU s "
                      f"(exit {rc}){cr_own_rate(out)}", flush=True)
                if rc:
                    print(tail)
                elif dt < best.get((name, n), (1e9,))[0]:
                    best[(name, n)] = dt, out, CPU[-1]
            for e, p, w in align_settings(a):
                name = f"align embed --engine {e}" + (f" --precision {p}" if p != "fp32" else "") \
                    + f" --num-workers {w}"
                out = os.path.join(d, f"al{e}{p}{w}_{n}_{r}")
                dt, rc, tail = run_align(a.arch, weights, os.path.join(d, f"shards{n}"), out, a.batch_size, w,
                                         a.threads, e, p)
                print(f"{name}: {n} samples in {dt:.1f} s = {n / dt:.2f} samples/s, {CPU[-1]:.0f} CPU s "
                      f"(exit {rc}) | {tail.splitlines()[-1] if tail else ''}", flush=True)
                if not rc and dt < best.get((name, n), (1e9,))[0]:
                    best[(name, n)] = dt, out, CPU[-1]
    if a.plain:
        os.makedirs(os.path.join(d, "plain"), exist_ok=True)
        n, dt = plain_loop(a.arch, weights, shards[sizes[-1]], os.path.join(d, "plain"), a.batch_size)
        print(f"plain open_clip loop (in this process): {n} samples in {dt:.1f} s = {n / dt:.2f} samples/s")
    report(best, sizes)


def align_settings(a):
    """(engine, precision, workers) of each align row; onnxruntime encodes in fp32 only."""
    return [(e, p, w) for e in a.align_engines for p in a.align_precisions for w in a.align_workers
            if not (e == "onnxruntime" and p != "fp32")]


def report(best, sizes):
    """The two tools' vectors compared, end-to-end ratios at the largest size, steady-state ratios."""
    n = sizes[-1]
    cr = {k: v for k, v in best.items() if k[0].startswith("clip-retrieval") and k[1] == n}
    al = {k: v for k, v in best.items() if k[0].startswith("align") and k[1] == n}
    if not (cr and al):
        return
    kc = min(cr, key=lambda k: cr[k][0])
    for ka in sorted(al, key=lambda k: al[k][0]):
        diff, m = compare_outputs(cr[kc][1], al[ka][1])
        print(f"same vectors ({ka[0]} vs {kc[0]}): {m} keys matched; max 1-cos image {diff['image']:.2e}, "
              f"text {diff['text']:.2e}")
    for ka in sorted(al, key=lambda k: al[k][0]):
        (ta, _, ca), (tc, _, cc) = al[ka], cr[kc]
        print(f"RESULT end to end, {n} samples: {ka[0]} {n / ta:.2f} samples/s vs {kc[0]} {n / tc:.2f}: "
              f"{tc / ta:.2f}x wall; CPU seconds {ca:.0f} vs {cc:.0f}: {cc / ca:.2f}x")
    if len(sizes) < 2:
        return
    lo, hi = sizes[0], sizes[-1]
    both = [s for s in {k[0] for k in best} if (s, lo) in best and (s, hi) in best]
    # wall: (hi - lo) / (t_hi - t_lo) of the fastest runs; CPU: the same from CPU seconds, which a VM's stalls
    # (a cold disk at process start, other jobs) move much less than the wall time
    for col, what in ((0, "samples/s (wall)"), (2, "samples per CPU-second")):
        rate = {s: (hi - lo) / (best[(s, hi)][col] - best[(s, lo)][col]) for s in both}
        crs = max((s for s in rate if s.startswith("clip-retrieval")), key=rate.get, default=None)
        for s in sorted(rate, key=rate.get, reverse=True):
            print(f"steady state ({hi} - {lo} samples): {s}: {rate[s]:.2f} {what}"
                  + (f" = {rate[s] / rate[crs]:.2f}x {crs}" if crs and s.startswith("align") else ""))


if __name__ == "__main__":
    main()
