"""Throughput of the streaming data pipeline (align.data.stream.loader), in samples/s.

Writes synthetic webdataset shards in a temp dir (by default 2,000 image-text
samples with 256x256 JPEGs and 2,000 audio-text samples with 10 s FLACs at
16 kHz), then times one epoch of `build_train_loader` per workload and worker
count.  Transforms are the real ones: open_clip's ViT-B-32 train image
transform (224 px), open_clip's BPE tokenizer, and the audio tower's log-mel
front end (`align.towers.audio_features.AudioPreprocess`).  Shards are written by
align's one writer (`align.wds.writer`).  Run:

    python benchmarks/data_throughput.py [--n-image 2000] [--n-audio 2000] [--workers 0 1 2]

Figures depend on the CPU and on other load; with N workers the pipeline can use
N cores.  "steady" excludes the time to the first batch (worker start-up);
"cpu ms/sample" (this process + its workers) is the figure least affected by
other load on a shared machine.

`--step-ms MS ...` adds a consumer: after each batch the main process computes (1-thread matmuls, a
busy core as a training step is) for MS milliseconds, and the "wait" column is the share of the time
after the first batch spent waiting for the next one: the data-wait share a training step of that
length would see (`align train`'s `data_wait_frac`).  At the default worker count
(data.num_workers: 2): `--workers 2 --step-ms 100 250 500`.

`--features step workers`: where the audio log-mel runs. "step" (the default, what `align train` does) hands
the clips to the consumer, which computes the log-mel after each batch (its time then counts as step time);
"workers" computes it in the data workers' collate, as align did before (issue 23).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.data.stream.build import build_train_loader  # noqa: E402


def _write_shards(root: str, prefix: str, n: int, per_shard: int, desc: str, make_sample) -> list[str]:
    """n samples in shards of per_shard; make_sample(i) -> {extension: bytes}."""
    from tqdm import tqdm

    from align.wds.writer import NumberedShards

    shards = NumberedShards(root, lambda i: f"{prefix}-{i:04d}.tar", per_shard)
    with tqdm(total=n, desc=desc, unit="sample") as bar:
        for i in range(n):
            shards.write(f"{i:06d}", make_sample(i))
            bar.update()
    shards.close()
    return shards.paths


def write_image_shards(root: str, n: int, per_shard: int, size: int = 256) -> list[str]:
    """n image-text samples: smooth random colour fields + noise, JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def sample(i):
        c = rng.uniform(0, 255, (3, 3))
        img = c[0] + c[1] * xx[..., None] / 2 + c[2] * yy[..., None] / 2
        img = np.clip(img / 2 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        return {"jpg": buf.getvalue(), "txt": f"a synthetic photo number {i}\nanother caption {i}"}

    return _write_shards(root, "img", n, per_shard, "writing image-text shards", sample)


def write_audio_shards(root: str, n: int, per_shard: int, seconds: float = 10.0, sr: int = 16000) -> list[str]:
    """n audio-text samples: chirps + noise, 16-bit FLAC."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * sr)) / sr

    def sample(i):
        f0 = rng.uniform(100, 2000)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.05 * t)) + rng.normal(0, 0.02, t.shape)
        buf = io.BytesIO()
        sf.write(buf, wave.astype(np.float32), sr, format="FLAC", subtype="PCM_16")
        return {"flac": buf.getvalue(), "txt": f"a synthetic sound number {i}"}

    return _write_shards(root, "aud", n, per_shard, "writing audio-text shards", sample)


def audio_transform():
    """(wave, sr) -> [64, 1001] log-mel: the audio tower's front end."""
    from align.towers.audio_features import AudioFrontend, AudioPreprocess

    return AudioPreprocess(AudioFrontend(), train=True), "align AudioPreprocess (64 mel, 10 s)"


def _cpu_seconds() -> float:
    """User+system CPU time of this process and its reaped children (DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def busy(ms: float, a: torch.Tensor) -> None:
    """Keep this process's core computing for `ms` milliseconds (a stand-in for a training step)."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        a @ a


def time_epoch(shards, transforms, modalities, workers, batch_size, step_ms: float = 0.0, features: str = "step"):
    """One epoch -> (samples, samples/s, steady samples/s after the first batch, CPU ms per sample, wait share
    after the first batch when each batch is followed by `step_ms` of compute).

    features="step": the audio log-mel is computed by this consumer after each batch, as `align train` computes
    it in its step (align.data.stream.features), so it counts as step time, not wait; "workers": in collate."""
    loader = build_train_loader(shards, transforms=transforms, batch_size=batch_size, modalities=modalities,
                                num_workers=workers, shuffle_buffer=1000, drop_last=False,
                                keep_workers=False,  # one epoch: the workers must not go on into the next
                                features_in_step=features == "step")
    finish = loader.step_features("cpu")
    a = torch.randn(128, 128)
    cpu0 = _cpu_seconds()
    n, n_first, t0, t_first, waited = 0, 0, time.perf_counter(), None, 0.0
    t_ask = t0
    for batch in loader:
        t_got = time.perf_counter()
        if t_first is None:
            t_first, n_first = t_got, len(batch["__key__"])
        else:
            waited += t_got - t_ask
        n += len(batch["__key__"])
        if finish is not None:
            batch = finish(batch)
        if step_ms:
            busy(step_ms, a)
        batch = None      # freed after its step, as align train frees it (its shared memory unmapped: step time)
        t_ask = time.perf_counter()
    t1 = time.perf_counter()
    loader.close()  # the workers exit on a background thread; wait, so their CPU time is counted
    cpu_ms = 1000 * (_cpu_seconds() - cpu0) / max(n, 1)
    if loader.skipped:
        print(f"  (skipped: {dict(loader.skipped)})")
    steady = (n - n_first) / (t1 - t_first) if n > n_first and t1 > t_first else float("nan")
    return n, n / (t1 - t0), steady, cpu_ms, waited / max(t1 - t_first, 1e-9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-image", type=int, default=2000)
    ap.add_argument("--n-audio", type=int, default=2000)
    ap.add_argument("--per-shard", type=int, default=250)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dir", default=None, help="reuse/keep shards here instead of a temp dir")
    ap.add_argument("--step-ms", type=float, nargs="+", default=[0.0],
                    help="compute after each batch, as a training step (0: none, the pipeline alone)")
    ap.add_argument("--features", choices=["step", "workers"], nargs="+", default=["step"],
                    help="where the audio log-mel runs: in the consumer's step (align train) or in the workers")
    args = ap.parse_args(argv)

    import open_clip

    torch.set_num_threads(1)  # one core per worker process; the main process only collects batches
    tok = open_clip.get_tokenizer("ViT-B-32")
    image_tf = open_clip.image_transform(224, is_train=True)
    aud_tf, aud_name = audio_transform()
    transforms = {"image": image_tf, "text": tok, "audio": aud_tf}

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="align-bench-")
    root = args.dir or tmp.name
    os.makedirs(root, exist_ok=True)
    img = sorted(p for p in os.listdir(root) if p.startswith("img-"))
    aud = sorted(p for p in os.listdir(root) if p.startswith("aud-"))
    img = [os.path.join(root, p) for p in img] or write_image_shards(root, args.n_image, args.per_shard)
    aud = [os.path.join(root, p) for p in aud] or write_audio_shards(root, args.n_audio, args.per_shard)

    print(f"cpu cores: {os.cpu_count()}, torch threads per process: 1, batch size {args.batch_size}")
    print(f"image: open_clip image_transform(224, is_train=True) on 256x256 JPEG + ViT-B-32 tokenizer")
    print(f"audio: {aud_name} on 10 s 16 kHz FLAC + ViT-B-32 tokenizer")
    print(f"{'workload':<12}{'workers':>8}{'step ms':>8}{'samples':>9}{'samples/s':>11}{'steady/s':>10}"
          f"{'cpu ms/sample':>15}{'wait':>8}  log-mel in")
    for name, shards, mods in (("image-text", img, ["image", "text"]), ("audio-text", aud, ["audio", "text"])):
        for where in (args.features if name == "audio-text" else args.features[:1]):
            for w in args.workers:
                for ms in args.step_ms:
                    n, rate, steady, cpu_ms, wait = time_epoch(shards, transforms, mods, w, args.batch_size, ms,
                                                               where)
                    print(f"{name:<12}{w:>8}{ms:>8.0f}{n:>9}{rate:>11.1f}{steady:>10.1f}{cpu_ms:>15.1f}"
                          f"{wait:>8.1%}  {where if name == 'audio-text' else '-'}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
