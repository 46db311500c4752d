"""`align data stats`: what the data looks like to a recipe -- image sizes, and the log-mel mean/std of its audio.

Image sizes (`image_size_stats`) are read from the image headers only (nothing is decoded); their median longest
side, rounded to a multiple of the patch size, is what a recipe's `image_size: auto` trains at, so the input size
follows the data instead of a number chosen for other data.

Audio: the mean and std of a feature transform's output over the audio in shards, and the clips' durations
(`audio_duration_stats`): their 99th percentile, rounded up to 0.1 s, is what an audio tower's `clip_seconds: auto`
trains at, so a recipe's clip holds nearly every recording whole instead of cropping the longer words.

The CLI passes the audio tower's eval front end without its normalisation (align.towers.audio_features
`unnormalised_eval_frontend`), so the numbers are those of the log-mel the tower sees (same resampling,
trimming, level normalisation, clip length; padding included) and go into the tower's recipe keys
`norm_mean` / `norm_std` in place of AST's AudioSet constants. This module reads shards only; it does not
know what the transform computes (nor how a tower trims a clip: `audio_duration_stats` takes that as a function).
"""
import io
import math
import statistics
from typing import Callable, Optional

from align.data.stream.build import build_eval_loader
from align.errors import DataError


def feature_stats(pattern, transform: Callable, modality: str = "audio", max_samples: Optional[int] = None,
                  batch_size: int = 64, progress: bool = True, limits=None) -> dict:
    """Mean and std over every element of transform(sample) for the first `max_samples` samples (all: None).
    limits: the recipe's data.limits (None: the defaults); a sample past one is skipped, as training skips it.

    Returns {"norm_mean", "norm_std", "samples", "skipped"} (mean/std rounded to 4 decimals)."""
    from align.progress import progress as tqdm   # plain lines off a terminal

    loader = build_eval_loader(pattern, transforms={modality: transform}, batch_size=batch_size,
                               modalities=[modality], min_modalities=1, limits=limits)
    total, total_sq, count, n = 0.0, 0.0, 0, 0
    with tqdm(total=max_samples, unit="clip", desc=f"{modality} stats", disable=not progress) as bar:
        for batch in loader:
            x = batch[modality][batch[f"{modality}_mask"]].double()          # [b, ...] e.g. [b, (C,) n_mels, T]
            if max_samples is not None:
                x = x[:max_samples - n]
            total += float(x.sum())
            total_sq += float((x * x).sum())
            count += x.numel()
            n += x.shape[0]
            bar.update(x.shape[0])
            if max_samples is not None and n >= max_samples:
                break
        bar.total = bar.n        # the shards held fewer than max_samples: the bar ends at 100 %, not at 67 %
    if n == 0:
        raise DataError(f"data stats: no {modality} sample could be read from {pattern}")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return {"norm_mean": round(mean, 4), "norm_std": round(std, 4), "samples": n,
            "skipped": sum(loader.skipped.values())}


def image_size_stats(pattern, max_samples: int = 2000, multiple: int = 4, allow_pipe: bool = False) -> dict:
    """Widths and heights of up to `max_samples` images spread over the shards at `pattern` (`_members`), from
    their headers.

    Returns {"images", "unreadable", "width": {min, median, max}, "height": {...}, "image_size"}: image_size is
    the median longest side rounded to the nearest multiple of `multiple` (the patch size), at least `multiple`.
    {"images": 0} when the shards hold no image."""
    from PIL import Image

    widths, heights, unreadable = [], [], 0
    for _, raw, ext in _members(pattern, "image", allow_pipe, max_samples):
        try:
            with Image.open(io.BytesIO(raw[ext])) as im:     # the header only: no pixel is decoded
                w, h = im.size
        except Exception:
            unreadable += 1
            continue
        widths.append(w)
        heights.append(h)
        if len(widths) >= max_samples:
            break
    if not widths:
        return {"images": 0, "unreadable": unreadable}
    longest = statistics.median(max(w, h) for w, h in zip(widths, heights))
    size = max(multiple, int(round(longest / multiple)) * multiple)

    def spread(v):
        return {"min": min(v), "median": statistics.median(v), "max": max(v)}
    return {"images": len(widths), "unreadable": unreadable, "width": spread(widths), "height": spread(heights),
            "image_size": size}


def audio_duration_stats(pattern, seconds: Callable, max_samples: int = 2000, quantile: float = 0.99,
                         step: float = 0.1, allow_pipe: bool = False, progress: bool = False, limits=None) -> dict:
    """Durations of up to `max_samples` audio clips spread over the shards at `pattern` (`_members`), as
    `seconds(wave, rate)` measures one (e.g. after the tower's silence trimming; wave float32 [T] mono).
    limits: the recipe's data.limits (None: the defaults); a clip past one is unreadable here, as training skips it.

    Returns {"clips", "unreadable", "seconds": {min, median, p<q>, max}, "clip_seconds"}: clip_seconds is the
    `quantile` of the durations rounded up to a multiple of `step`, at least `step`. {"clips": 0} when the
    shards hold no readable audio. Undecodable clips are counted, never fatal."""
    from align.errors import AlignError
    from align.media.audio import decode_audio
    from align.progress import progress as tqdm

    durations, unreadable = [], 0
    with tqdm(total=max_samples, unit="clip", desc="audio durations", disable=not progress) as bar:
        for url, raw, ext in _members(pattern, "audio", allow_pipe, max_samples):
            try:
                wave, rate = decode_audio(raw[ext], name=f"{url}: sample {raw.get('__key__')!r}", limits=limits)
            except AlignError:
                unreadable += 1
                continue
            durations.append(float(seconds(wave, rate)))
            bar.update(1)
            if len(durations) >= max_samples:
                break
        bar.total = bar.n        # fewer clips than max_samples: the bar ends at 100 %, not where they ran out
    if not durations:
        return {"clips": 0, "unreadable": unreadable}
    ordered = sorted(durations)
    # the nearest-rank quantile: a duration some clip has, so "holds q of the clips whole" is literally true
    q = ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]
    clip = max(step, math.ceil(round(q / step, 6)) * step)           # round(): 1.0 / 0.1 is 9.999... in floats
    label = f"p{100 * quantile:g}"
    return {"clips": len(durations), "unreadable": unreadable,
            "seconds": {"min": round(ordered[0], 3), "median": round(statistics.median(ordered), 3),
                        label: round(q, 3), "max": round(ordered[-1], 3)},
            "clip_seconds": round(clip, 3)}


SPREAD_SHARDS = 64     # the `auto` sizes read their samples from at most this many shards, evenly spaced


def _members(pattern, modality: str, allow_pipe: bool, max_samples: int):
    """(url, raw sample, extension) for up to `max_samples` samples holding `modality`, spread over the shards of
    every source at `pattern`: up to SPREAD_SHARDS shards evenly spaced over all of them (every shard when there
    are fewer), the same number from each, so shards written in order of class, speaker or size (or a second
    source) are all represented, not only the first shard's first samples. Deterministic, so every rank reads the
    same. Damaged shards are skipped quietly (the stats are of what can be read)."""
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import resolve_sources, shard_samples
    from align.wds.format import pick

    urls = [u for src in resolve_sources(pattern, allow_pipe=allow_pipe) for u in src.urls]
    if not urls:
        return
    k = min(len(urls), SPREAD_SHARDS)
    chosen = [urls[(i * len(urls)) // k] for i in range(k)]             # evenly spaced, the first included
    per_shard = -(-max_samples // k)
    faults = FaultCounter(warn=False)
    for url in chosen:
        n = 0
        for raw in shard_samples(url, faults, allow_pipe=allow_pipe):
            ext = pick(raw, modality)
            if ext is not None:
                yield url, raw, ext
                n += 1
                if n >= per_shard:
                    break


def modalities_present(pattern, max_samples: int = 50, allow_pipe: bool = False) -> set:
    """The modalities found among the first samples of the shards at `pattern`."""
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import resolve_sources, shard_samples
    from align.wds.format import MODALITIES, pick

    found, n = set(), 0
    for src in resolve_sources(pattern, allow_pipe=allow_pipe):
        for url in src.urls:
            for raw in shard_samples(url, FaultCounter(warn=False), allow_pipe=allow_pipe):
                found |= {m for m in MODALITIES if pick(raw, m)}
                n += 1
                if n >= max_samples:
                    return found
    return found
