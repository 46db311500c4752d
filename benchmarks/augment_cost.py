"""Cost of each augmentation stage on CPU, in microseconds per sample, on the demo's training shards.

    python benchmarks/augment_cost.py [--data align_demo/data] [--threads 1]

Reads the first training shard's images (PIL RGB) and clips (16 kHz mono), runs every stage of the
demo's augmentation (and random_resized_crop) over all of them after three warm-up calls, and prints one
line per stage.  One process, one generator: this is the data workers' work per sample.
"""
import argparse
import glob
import os
import tarfile
import time

import numpy as np
import torch

IMAGE_STAGES = [
    {"type": "affine", "degrees": 10, "translate": [0.2, 0.2], "shear": 8, "scale": [0.5, 1.05]},
    {"type": "stroke", "p": 1.0},
    {"type": "blur", "sigma": [0.2, 1.3]},
    {"type": "random_resized_crop"},
]
AUDIO_STAGES = [{"type": "speed", "factor": [0.85, 1.15]}, {"type": "gain"}, {"type": "noise", "snr_db": [15, 40]}]


def main() -> None:
    from align.media.audio import decode_audio
    from align.data.stream.augment import STAGES
    from align.data.stream.decode import decode_image
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="align_demo/data")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shards = sorted(glob.glob(os.path.join(a.data, "train", "*.tar")))
    if not shards:
        raise SystemExit(f"{a.data}/train: no shards; run `align demo` first or pass --data")
    images, clips = [], []
    with tarfile.open(shards[0]) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith(".png"):
                images.append(decode_image(data))
            elif member.name.endswith(".flac"):
                wave, sr = decode_audio(data, name=member.name)
                clips.append(torch.from_numpy(wave).reshape(1, -1))          # [1, T], decode_audio mixes to mono
    rng = np.random.default_rng(0)
    for spec in IMAGE_STAGES + AUDIO_STAGES:
        stage = STAGES.get(spec["type"])(spec, spec["type"])
        items = images if stage.modality == "image" else clips
        call = (lambda x: stage.apply(x, rng)) if stage.modality == "image" else (lambda x: stage.apply(x, rng, sr))
        for x in items[:3]:
            call(x)
        t0 = time.perf_counter()
        for x in items:
            call(x)
        us = (time.perf_counter() - t0) / len(items) * 1e6
        print(f"{spec['type']:20s} {stage.modality:6s} {us:8.0f} us/sample  ({len(items)} samples)")


if __name__ == "__main__":
    main()
