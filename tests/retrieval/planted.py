"""Planted data for the filter: coloured shapes with captions, plus mismatched pairs and near-duplicates.

`clean_shards` writes training data (caption = what the image shows). `planted_shards` writes a corpus where
`n_mismatch` samples carry another sample's caption (a shuffled caption that differs from the true one)
and `n_dup` samples are copies of earlier images, re-encoded at JPEG quality 60-80 or cropped by 1-2 px
and resized back. `train_shapes_model` trains the tiny open_clip recipe on clean shards (a few hundred
steps, ~1-2 min on 2 shared cores). Used by tests/retrieval/test_filter.py and benchmarks/retrieval_filter.py.
"""
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from align.wds.writer import write_shard

COLORS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 220, 40),
          "white": (245, 245, 245), "black": (10, 10, 10), "purple": (140, 40, 180), "orange": (240, 140, 20)}
SHAPES = ("square", "circle", "triangle", "cross")
SIZE = 32


PLACES = ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right")


def draw(fg: str, shape: str, bg: str, place: int, rng) -> Image.Image:
    """A shape of colour fg on colour bg in one of 9 places (3 x 3 grid), jittered, random size, pixel noise."""
    img = Image.new("RGB", (SIZE, SIZE), COLORS[bg])
    d = ImageDraw.Draw(img)
    r = int(rng.integers(4, 7))
    cell = SIZE // 3
    cx = int(np.clip((place % 3) * cell + cell // 2 + rng.integers(-2, 3), r, SIZE - r - 1))
    cy = int(np.clip((place // 3) * cell + cell // 2 + rng.integers(-2, 3), r, SIZE - r - 1))
    box = (cx - r, cy - r, cx + r, cy + r)
    c = COLORS[fg]
    if shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=c)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=c)
    a = np.asarray(img).astype(np.int16) + rng.integers(-25, 26, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    b = io.BytesIO()
    img.save(b, format="JPEG", quality=quality)
    return b.getvalue()


def random_pair(rng):
    fg, bg = rng.choice(list(COLORS), 2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    place = int(rng.integers(len(PLACES)))
    return draw(fg, shape, bg, place, rng), f"a {fg} {shape} at the {PLACES[place]} on a {bg} background"


def _write(out, samples, per_shard):
    os.makedirs(out, exist_ok=True)
    return [write_shard(os.path.join(out, f"shard-{i // per_shard:03d}.tar"), samples[i:i + per_shard])
            for i in range(0, len(samples), per_shard)]


def clean_shards(out, n: int, seed: int = 0, per_shard: int = 500):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img, cap = random_pair(rng)
        samples.append({"__key__": f"c{i:06d}", "jpg": jpeg(img), "txt": cap})
    return _write(out, samples, per_shard)


def near_copy(img_bytes: bytes, rng) -> bytes:
    img = Image.open(io.BytesIO(img_bytes)).convert("RGB")
    if rng.random() < 0.5:
        return jpeg(img, int(rng.integers(60, 81)))
    c = int(rng.integers(1, 3))
    return jpeg(img.crop((c, c, SIZE - c, SIZE - c)).resize((SIZE, SIZE), Image.BILINEAR))


def planted_shards(out, n: int, n_mismatch: int, n_dup: int, seed: int = 1, per_shard: int = 100):
    """-> (shard paths, {key: "mismatch" | "near_duplicate"}) for n samples of which the planted ones are marked."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n - n_dup):
        img, cap = random_pair(rng)
        samples.append({"__key__": f"p{i:06d}", "jpg": jpeg(img), "txt": cap})
    truth = {}
    mis = rng.choice(len(samples), n_mismatch, replace=False)
    caps = [s["txt"] for s in samples]
    for i in mis:                       # another sample's caption, never one equal to the true caption
        j = int(rng.integers(len(samples)))
        while caps[j] == caps[i]:
            j = int(rng.integers(len(samples)))
        samples[i]["txt"] = caps[j]
        truth[samples[i]["__key__"]] = "mismatch"
    originals = [k for k in rng.choice(len(samples), n_dup, replace=False) if samples[k]["__key__"] not in truth]
    for m, k in enumerate(originals):
        dup = {"__key__": f"p{n - n_dup + m:06d}", "jpg": near_copy(samples[k]["jpg"], rng),
               "txt": samples[k]["txt"]}
        truth[dup["__key__"]] = "near_duplicate"
        samples.append(dup)             # copies come later in corpus order, so the original is the one kept
    return _write(out, samples, per_shard), truth


def train_shapes_model(train_dir, run_dir, steps: int = 300, seed: int = 0):
    """The tiny open_clip image-text model of tests/conftest.py, trained on clean shards; returns run_dir."""
    from align.config import parse_recipe
    from align.train.loop import train
    from tests.conftest import TINY_OPEN_CLIP
    oc = {"vision_cfg": dict(TINY_OPEN_CLIP["vision_cfg"], image_size=SIZE, patch_size=8, width=64, layers=2),
          "text_cfg": dict(TINY_OPEN_CLIP["text_cfg"], width=64)}
    r = parse_recipe({"output_dir": str(run_dir), "seed": seed, "model": {"embed_dim": 32, "open_clip": oc},
                      "data": {"train": str(train_dir), "num_workers": 0, "shuffle_buffer": 200},
                      "train": {"batch_size": 64, "max_steps": steps, "lr": 2e-3, "warmup_steps": 20,
                                "log_every": 50, "checkpoint_every": steps, "num_threads": 1},
                      "eval": {"every": 0}})
    train(r, progress=False)
    return str(run_dir)


def precision_recall(dropped, truth, reason, kind):
    """(precision, recall, n dropped for `reason`, n planted of `kind`) of a filter's dropped.jsonl records."""
    got = {d["key"] for d in dropped if d["reason"] == reason}
    want = {k for k, v in truth.items() if v == kind}
    tp = len(got & want)
    return tp / max(len(got), 1), tp / max(len(want), 1), len(got), len(want)
