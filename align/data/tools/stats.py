"""`align data stats`: the mean and std of a feature transform's output over the audio in shards.

The CLI passes the audio tower's eval front end without its normalisation (align.towers.audio_features
`unnormalised_eval_frontend`), so the numbers are those of the log-mel the tower sees (same resampling,
trimming, level normalisation, clip length; padding included) and go into the tower's recipe keys
`norm_mean` / `norm_std` in place of AST's AudioSet constants. This module reads shards only; it does not
know what the transform computes.
"""
import math
from typing import Callable, Optional

from align.data.stream.loader import build_eval_loader
from align.errors import DataError


def feature_stats(pattern, transform: Callable, modality: str = "audio", max_samples: Optional[int] = None,
                  batch_size: int = 64, progress: bool = True) -> dict:
    """Mean and std over every element of transform(sample) for the first `max_samples` samples (all: None).

    Returns {"norm_mean", "norm_std", "samples", "skipped"} (mean/std rounded to 4 decimals)."""
    from align.progress import progress as tqdm   # plain lines off a terminal

    loader = build_eval_loader(pattern, transforms={modality: transform}, batch_size=batch_size,
                               modalities=[modality], min_modalities=1)
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
    if n == 0:
        raise DataError(f"data stats: no {modality} sample could be read from {pattern}")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return {"norm_mean": round(mean, 4), "norm_std": round(std, 4), "samples": n,
            "skipped": sum(loader.skipped.values())}
