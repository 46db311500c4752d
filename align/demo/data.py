"""The built-in demo dataset: scikit-learn's 1,797 handwritten digits as image/text/audio.

`build_demo(out_dir)` writes, with no download, a small triple-modality
webdataset that trains and benchmarks in minutes on a CPU:

    OUT/demo.json                      manifest (settings, counts, shard lists)
    OUT/train/train-000000.tar ...     256 samples per shard, shuffled
    OUT/train/stats.json               write_shards' keys ("written", "shards", ...) + per_class
    OUT/val/test/0.tar, 1.tar ...      CLIP_benchmark "wds/" layout: dataset_name="wds/demo",
    OUT/val/test/nshards.txt           dataset_root=OUT/val, split="test"
    OUT/val/classnames.txt             zero .. nine, one per line
    OUT/val/zeroshot_classification_templates.txt
    OUT/heldout/...                    the same val digits in held-out groups, same layout as val/:
                                       spoken by eSpeak voices never heard in training, drawn in
                                       another rendering (smaller, off-centre, thinner or thicker
                                       strokes, another blur) -- what generalisation, not memorisation,
                                       is reported on (`align demo` prints it)
    OUT/selection/...                  the same val digits in other held-out groups, same layout: voices
                                       heard neither in training nor in heldout/, and another camera
                                       (drawn larger, less blur) -- what recipe settings are chosen by
                                       (benchmarks/demo_sweep.py), so heldout/ stays an unbiased report

Each sample: `png` (the 8x8 digit upsampled bicubically to image_size, 0-255,
RGB, white ink on black), `txt` (one caption from CAPTION_TEMPLATES), `wav`
(the digit's English name spoken by eSpeak NG, 16 kHz mono 16-bit PCM: twice
FLAC's size, but read with numpy, a third of a data worker's audio time), `cls` (label as
ASCII int) and `json` ({"label", "voice", "rate", "pitch", "template", ...}).

The same settings give byte-identical tars: every random draw comes from one
seeded generator in the parent, tar headers are fixed (mtime 0, uid 0, sorted
members), and speech is synthesised in fixed chunks, each in a fresh worker
process (eSpeak keeps state across utterances, see align.demo.espeak).
"""
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from align.errors import DataError, make_folder
from align.wds.writer import NumberedShards
from align.writes import guard_write

DEMO_VERSION = 3
SAMPLES_PER_SHARD = 256
SAMPLE_RATE = 16000
IMAGE_MODE = "RGB"
KEYS = ("cls", "json", "png", "txt", "wav")   # members of a sample (the writer sorts them)
_CHUNK = 64                                     # samples per fresh synthesis process

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# zero-shot prompts (CLIP_benchmark formats them with .format(c=classname))
TEMPLATES = [
    "a photo of the digit {c}.",
    "a handwritten {c}.",
    "the number {c} written by hand.",
    "a blurry image of the digit {c}.",
    "a low-resolution photo of the number {c}.",
    "a white {c} on a black background.",
]

# training captions: {word} = "seven", {num} = "7"
CAPTION_TEMPLATES = [
    "a photo of the digit {word}.",
    "a handwritten {word}.",
    "the number {num} written by hand.",
    "a scanned image of a handwritten {num}.",
    "a low-resolution picture of the digit {num}.",
    "a white {word} on a black background.",
    "someone wrote the number {word}.",
    "a blurry {num}, drawn by hand.",
]

# English accents x variants (espeak-ng-data/voices/!v); drawn uniformly per sample. Training and val
# use the first lists; the held-out split uses the HELDOUT ones: accents and variants never heard in training.
VOICE_BASES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp"]
VOICE_VARIANTS = ["", "m1", "m3", "f1", "f2", "klatt"]
HELDOUT_VOICE_BASES = ["en-029", "en-us-nyc"]
HELDOUT_VOICE_VARIANTS = ["m5", "f3", "f4"]
# Held-out rendering (as real scans look next to upscaled 8x8 digits): the digit drawn at this fraction of
# the image side, shifted off-centre, strokes thinned or thickened (3x3 min/max filter), Gaussian blur.
HELDOUT_SCALE = (0.55, 0.8)
HELDOUT_BLUR = (0.6, 1.2)       # radius in pixels at 32 px
# The selection groups: other accents and variants again, and the held-out style drawn larger with less blur.
SELECTION_VOICE_BASES = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]
SELECTION_VOICE_VARIANTS = ["m6", "f5"]
SELECTION_SCALE = (0.6, 0.9)
SELECTION_BLUR = (0.3, 0.8)
HELD_SPLITS = ("selection", "heldout")
RATE_RANGE = (130, 210)    # words per minute, inclusive
PITCH_RANGE = (30, 70)     # eSpeak pitch 0-100, inclusive


def build_demo(out_dir, seed: int = 0, val_frac: float = 0.25, image_size: int = 32,
               workers: Optional[int] = None, progress: bool = True,
               limit: Optional[int] = None, overwrite: bool = False, summary: bool = True) -> dict:
    """Write the demo dataset to `out_dir` and return its manifest (also OUT/demo.json).

    If OUT/demo.json already records the same settings, return it without
    rebuilding. A directory with other content is never touched (DataError);
    one built with other settings is replaced only with overwrite=True.
    limit: use only the first N digits (tests, N >= 20). workers: synthesis
    processes (default: CPU count, at most 8); does not change the output.
    summary: with progress, a line saying what was written (False: the caller says it, as `align data demo`).
    """
    settings = _check_settings(seed, val_frac, image_size, limit)
    if workers is None:
        workers = max(1, min(8, os.cpu_count() or 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"build_demo: workers must be a positive integer, got {workers!r}")
    out = Path(out_dir).expanduser()
    manifest_path = out / "demo.json"
    for where in (out, *out.parents):        # `align demo --out FILE` puts the data at FILE/data
        if where.exists() and not where.is_dir():
            raise DataError(f"{where}: exists and is not a directory")
    if manifest_path.is_file():
        old = _read_manifest(manifest_path)
        if all(old.get(k) == v for k, v in settings.items()):
            _check_complete(out, old)
            return old
        if all(old.get(k) == v for k, v in settings.items() if k != "version"):
            # the same settings written by another version of this builder: derived data, ours to replace
            print(f"demo: {out} was built by demo data version {old.get('version')}; rebuilding it as version "
                  f"{DEMO_VERSION}", file=sys.stderr)
        elif not overwrite:
            diff = ", ".join(f"{k}={old.get(k)!r} (asked {v!r})" for k, v in settings.items()
                             if old.get(k) != v)
            raise DataError(f"{manifest_path}: demo was built with other settings: {diff}; choose another "
                            f"--out (or remove {out} to rebuild it there; overwrite=True from Python)")
    elif out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: directory is not empty and has no demo.json; "
                        "refusing to write the demo dataset into it")

    t0 = time.time()
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_folder(tmp, "demo data's", shown=out)   # a read-only --out: one line before any speech is synthesised
    try:
        # a full disk: one line naming --out (StorageError), the build folder removed (finally), --out unchanged
        with guard_write(str(out), None, None, kept=f"{out} is unchanged (the build is all or nothing)"):
            manifest = _build(tmp, settings, workers, progress)
        out.mkdir(exist_ok=True)
        # replace only what a previous build of ours wrote; manifest goes last
        for name in ("demo.json", "train", "val", *HELD_SPLITS):
            old_path = out / name
            if old_path.is_dir():
                shutil.rmtree(old_path)
            elif old_path.exists():
                old_path.unlink()
        os.replace(tmp / "train", out / "train")
        os.replace(tmp / "val", out / "val")
        for split in HELD_SPLITS:
            os.replace(tmp / split, out / split)
        os.replace(tmp / "demo.json", manifest_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress and summary:
        c = manifest["counts"]
        print(f"demo: wrote {c['train']} train / {c['val']} val samples "
              f"({len(manifest['train']['shards'])} + {len(manifest['val']['shards'])} shards) "
              f"to {out} in {time.time() - t0:.1f} s", file=sys.stderr)
    return manifest


def caption(label: int, template: int) -> str:
    """The training caption for a digit label with CAPTION_TEMPLATES[template]."""
    return CAPTION_TEMPLATES[template].format(word=CLASSNAMES[label], num=label)


def _check_settings(seed, val_frac, image_size, limit) -> dict:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"build_demo: seed must be a non-negative integer, got {seed!r}")
    if isinstance(val_frac, bool) or not isinstance(val_frac, (int, float)) or not 0.0 < val_frac < 1.0:
        raise DataError(f"build_demo: val_frac must be between 0 and 1, got {val_frac!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise DataError(f"build_demo: image_size must be an integer in [8, 1024], got {image_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 20):
        raise DataError(f"build_demo: limit must be None or an integer >= 20, got {limit!r}")
    return {"version": DEMO_VERSION, "seed": seed, "val_frac": float(val_frac),
            "image_size": image_size, "limit": limit, "samples_per_shard": SAMPLES_PER_SHARD}


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read demo manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: demo manifest is not a JSON object")
    return manifest


def _check_complete(out: Path, manifest: dict) -> None:
    try:
        shards = [s for split in ("train", "val", *HELD_SPLITS) for s in manifest[split]["shards"]]
    except (KeyError, TypeError):
        raise DataError(f"{out / 'demo.json'}: manifest has no train/val/selection/heldout shard lists") from None
    missing = [s for s in shards if not (out / s).is_file()]
    if missing:
        raise DataError(f"{out}: demo dataset is incomplete, missing {missing[0]} "
                        f"({len(missing)} shard(s)); delete the directory and build again")


def _plan(settings: dict) -> Dict[str, List[dict]]:
    """All random draws, in the parent: per-sample jobs of the train, val, selection and held-out splits."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    images = digits.images.astype(np.float32)   # [N, 8, 8], ink intensity 0..16
    labels = digits.target.astype(np.int64)     # [N]
    if settings["limit"] is not None:
        images, labels = images[: settings["limit"]], labels[: settings["limit"]]
    n = len(labels)
    rng = np.random.default_rng(settings["seed"])
    base = rng.integers(len(VOICE_BASES), size=n)
    variant = rng.integers(len(VOICE_VARIANTS), size=n)
    rate = rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1, size=n)
    pitch = rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1, size=n)
    template = rng.integers(len(CAPTION_TEMPLATES), size=n)
    # stratified split: ceil(val_frac * n_c) of every class goes to val
    is_val = np.zeros(n, dtype=bool)
    for c in range(len(CLASSNAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_val[idx[: math.ceil(settings["val_frac"] * len(idx))]] = True
    train_idx = rng.permutation(np.flatnonzero(~is_val))  # shuffled so every shard mixes classes
    val_idx = np.flatnonzero(is_val)
    if len(train_idx) == 0:
        raise DataError(f"build_demo: limit={settings['limit']} with val_frac={settings['val_frac']} "
                        "leaves no training samples")

    # held-out groups, drawn after the draws above (so train/val stay what they were), the report groups
    # (heldout/) before the selection groups (so heldout/ stays what it was in version 2)
    def held_draws(bases, variants, scale, blur) -> dict:
        return {"bases": bases, "variants": variants, "base": rng.integers(len(bases), size=n),
                "variant": rng.integers(len(variants), size=n), "scale": rng.uniform(*scale, size=n),
                "offset": rng.uniform(0, 1, size=(n, 2)),
                "stroke": rng.integers(0, 2, size=n),       # 0: thinner, 1: thicker
                "blur": rng.uniform(*blur, size=n)}

    held = {"heldout": held_draws(HELDOUT_VOICE_BASES, HELDOUT_VOICE_VARIANTS, HELDOUT_SCALE, HELDOUT_BLUR)}
    held["selection"] = held_draws(SELECTION_VOICE_BASES, SELECTION_VOICE_VARIANTS, SELECTION_SCALE, SELECTION_BLUR)

    def job(i: int, split: Optional[str] = None) -> dict:
        d = held.get(split)
        if d is None:
            b, v = VOICE_BASES[base[i]], VOICE_VARIANTS[variant[i]]
        else:
            b, v = d["bases"][d["base"][i]], d["variants"][d["variant"][i]]
        j = {"key": f"digit{i:05d}", "index": int(i), "label": int(labels[i]),
             "image": images[i], "image_size": settings["image_size"],
             "voice": b + (f"+{v}" if v else ""),
             "rate": int(rate[i]), "pitch": int(pitch[i]), "template": int(template[i])}
        if d is not None:
            j["render"] = {"scale": float(d["scale"][i]), "offset": [float(x) for x in d["offset"][i]],
                           "stroke": "thicker" if d["stroke"][i] else "thinner", "blur": float(d["blur"][i])}
        return j

    return {"train": [job(i) for i in train_idx], "val": [job(i) for i in val_idx],
            **{split: [job(i, split) for i in val_idx] for split in HELD_SPLITS}}


def render_digit(grid: np.ndarray, size: int, render: Optional[dict] = None):
    """[8, 8] uint8 grid -> RGB PIL image [size, size]: bicubic upsampling (training style), or the
    held-out style `render` = {scale, offset (0..1 of the free margin), stroke, blur}."""
    from PIL import Image, ImageFilter
    if render is None:
        return Image.fromarray(grid).resize((size, size), Image.BICUBIC).convert(IMAGE_MODE)
    side = max(8, int(round(size * render["scale"])))
    digit = Image.fromarray(grid).resize((side, side), Image.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    free = size - side
    canvas.paste(digit, (int(round(render["offset"][0] * free)), int(round(render["offset"][1] * free))))
    canvas = canvas.filter(ImageFilter.MinFilter(3) if render["stroke"] == "thinner" else ImageFilter.MaxFilter(3))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=render["blur"] * size / 32))
    return canvas.convert(IMAGE_MODE)


def _encode_chunk(jobs: Sequence[dict]) -> List[Tuple[str, int, Dict[str, bytes]]]:
    """Worker: jobs -> [(key, label, {ext: bytes})], in order. Runs in a fresh process."""
    from align.media.audio import encode_wav
    from align.demo.espeak import synthesize

    out = []
    for j in jobs:
        # 0..16 -> 0..255, then bicubic upsampling of the [8, 8] grid to [S, S]
        grid = np.clip(np.round(j["image"] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        img = render_digit(grid, j["image_size"], j.get("render"))
        png = BytesIO()
        img.save(png, format="PNG")
        word = CLASSNAMES[j["label"]]
        wave, sr = synthesize(word, voice=j["voice"], rate=j["rate"], pitch=j["pitch"],
                              sample_rate=SAMPLE_RATE, seed=j["index"])
        if wave.size == 0:
            raise DataError(f"demo sample {j['key']}: eSpeak produced no audio for {word!r} "
                            f"with voice {j['voice']}")
        meta = {"label": j["label"], "voice": j["voice"], "rate": j["rate"], "pitch": j["pitch"],
                "template": j["template"], "spoken": word, "source_index": j["index"]}
        if "render" in j:
            meta["render"] = j["render"]
        out.append((j["key"], j["label"], {
            "cls": str(j["label"]).encode("ascii"),
            "wav": encode_wav(wave, sr),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
            "png": png.getvalue(),
            "txt": caption(j["label"], j["template"]).encode("utf-8"),
        }))
    return out


def _build(tmp: Path, settings: dict, workers: int, progress: bool) -> dict:
    from align.progress import progress as tqdm   # plain lines off a terminal

    from align.data.write.eval_sets import write_clip_benchmark_meta

    jobs = _plan(settings)
    per = settings["samples_per_shard"]
    (tmp / "train").mkdir(parents=True)
    writers = {"train": NumberedShards(tmp / "train", lambda i: f"train-{i:06d}.tar", per)}
    for split in ("val", *HELD_SPLITS):
        (tmp / split / "test").mkdir(parents=True)
        writers[split] = NumberedShards(tmp / split / "test", lambda i: f"{i}.tar", per)
    per_class = {split: [0] * len(CLASSNAMES) for split in writers}
    # chunks never straddle splits; their composition depends only on the settings
    chunks = [(split, js[i:i + _CHUNK]) for split, js in jobs.items() for i in range(0, len(js), _CHUNK)]
    # forkserver children start from a process that never synthesised (fresh eSpeak
    # state); one task per child gives every chunk its own fresh process
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        # import everything the workers need once, in the server, not per chunk
        ctx.set_forkserver_preload(["align.demo.data", "align.demo.espeak", "align.media.audio",
                                    "scipy.signal", "PIL.Image", "PIL.PngImagePlugin", "soundfile"])
    bar = tqdm(total=sum(map(len, jobs.values())), desc="demo", unit="sample", disable=not progress)
    results = _map_in_fresh_processes(ctx, [c for _, c in chunks], min(workers, len(chunks)))
    try:
        for (split, _), samples in zip(chunks, results):
            writer = writers[split]
            for key, label, files in samples:
                writer.write(key, files)
                per_class[split][label] += 1
            bar.update(len(samples))
    finally:
        results.close()  # stops the workers if writing failed
        bar.close()
        for w in writers.values():
            w.close()

    train_w, val_w = writers["train"], writers["val"]
    n_train, n_val = sum(train_w.sizes), sum(val_w.sizes)
    # the keys of align.data.write.shards.write_shards' stats.json, plus the demo's own
    stats = {"written": n_train, "skipped": 0, "by_reason": {},
             "modalities": {"image": n_train, "text": n_train, "audio": n_train, "label": n_train},
             "shards": len(train_w.names), "shard_sizes": dict(zip(train_w.names, train_w.sizes)),
             "per_class": dict(zip(CLASSNAMES, per_class["train"]))}
    _write_text(tmp / "train" / "stats.json", json.dumps(stats, indent=2) + "\n")
    for split in ("val", *HELD_SPLITS):
        write_clip_benchmark_meta(tmp / split, len(writers[split].names), CLASSNAMES, TEMPLATES)

    last_train = len(train_w.names) - 1
    manifest = dict(settings)
    manifest.update({
        "name": "align-demo-digits",
        "image_mode": IMAGE_MODE, "sample_rate": SAMPLE_RATE, "keys": list(KEYS),
        "counts": {"train": n_train, "val": n_val, **{split: sum(writers[split].sizes) for split in HELD_SPLITS},
                   "total": n_train + n_val},
        "per_class": per_class,
        "train": {"pattern": f"train/train-{{000000..{last_train:06d}}}.tar",
                  "shards": [f"train/{u}" for u in train_w.names], "sizes": train_w.sizes,
                  "voices": {"bases": VOICE_BASES, "variants": VOICE_VARIANTS}},
        "val": _eval_split("val", val_w),
        "selection": dict(_eval_split("selection", writers["selection"]),
                          voices={"bases": SELECTION_VOICE_BASES, "variants": SELECTION_VOICE_VARIANTS},
                          rendering=_rendering(SELECTION_SCALE, SELECTION_BLUR)),
        "heldout": dict(_eval_split("heldout", writers["heldout"]),
                        voices={"bases": HELDOUT_VOICE_BASES, "variants": HELDOUT_VOICE_VARIANTS},
                        train_voices={"bases": VOICE_BASES, "variants": VOICE_VARIANTS},
                        rendering=_rendering(HELDOUT_SCALE, HELDOUT_BLUR)),
        "classnames": CLASSNAMES, "templates": TEMPLATES,
    })
    _write_text(tmp / "demo.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _eval_split(split: str, w: NumberedShards) -> dict:
    """The manifest entry of an evaluation split in CLIP_benchmark's wds layout."""
    return {"clip_benchmark": {"dataset_name": "wds/demo", "dataset_root": split, "split": "test"},
            "pattern": f"{split}/test/{{0..{len(w.names) - 1}}}.tar",
            "shards": [f"{split}/test/{u}" for u in w.names], "sizes": w.sizes}


def _rendering(scale, blur) -> dict:
    return {"scale": list(scale), "blur": list(blur), "stroke": ["thinner", "thicker"],
            "offset": "random in the margin"}


def _map_in_fresh_processes(ctx, chunks: List[List[dict]], workers: int):
    """Yield _encode_chunk(chunk) in order, each chunk in its own new process."""
    if sys.version_info < (3, 11):  # no max_tasks_per_child in ProcessPoolExecutor yet
        with ctx.Pool(processes=workers, maxtasksperchild=1) as pool:
            yield from pool.imap(_encode_chunk, chunks)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1)
    try:
        futures = [pool.submit(_encode_chunk, c) for c in chunks]
        for fut in futures:
            yield fut.result()
    except BrokenProcessPool:
        raise DataError("a demo synthesis worker process died (out of memory, or build_demo called from "
                        "a script without `if __name__ == \"__main__\":`)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
