"""Audio augmentation stages (registered in align.data.stream.augment_stage's STAGES by type name).

Wave stages run on the clip [C, L] float32 at the audio front end's rate, in the data workers, after the tower's
per-sample resampling, trimming and crop; log-mel stages on one sample's features [n_mels, T] after the
per-batch log-mel (align.data.stream.augment, the whole chain). Each draws from the generator it is given.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import List, Optional, Tuple

import numpy as np
import torch

from align.data.stream.augment_stage import Stage, register
from align.errors import ConfigError, DataError


# ---- audio: clips [C, L] float32 at the front end's rate ----------------------------------------

class WaveStage(Stage):
    modality, level = "audio", "wave"


def sound_span(a: np.ndarray) -> Optional[Tuple[int, int]]:
    """(first, last) sample index where clip a [C, L] is not zero on some channel (its content between the
    zero padding that crop/pad and the wave stages leave); None for a silent clip."""
    content = np.flatnonzero(a.any(axis=0))
    return None if content.size == 0 else (int(content[0]), int(content[-1]))


@register("gain")
class Gain(WaveStage):
    """Scale by a gain drawn uniformly in decibels."""
    defaults = {"db": [-6.0, 6.0]}

    def check(self):
        self.db = self._range("db", -60, 60)

    def apply(self, x, rng, sr):
        return x * float(10 ** (rng.uniform(*self.db) / 20))


@register("time_shift")
class TimeShift(WaveStage):
    """Shift the content inside the clip by up to `max_seconds` either way; the gap is silence.

    cut: false (default) shifts only into the clip's zero padding, so no sound is cut: a trimmed word, which sits
    at the start of its zero-padded clip, is only delayed (cutting its onset cost 6.8 points on the real Bengali
    speakers, benchmarks/RESULTS.md). cut: true shifts by the full draw and drops what moves out of the clip."""
    defaults = {"max_seconds": 0.1, "cut": False}

    def check(self):
        self.max_s = self._num(self.params["max_seconds"], "max_seconds", 0, 60)
        self.cut = self.params["cut"]
        if not isinstance(self.cut, bool):
            raise ConfigError(f"{self.where}.cut: expected true or false, got {self.cut!r}")

    def apply(self, x, rng, sr):
        reach = int(self.max_s * sr)
        lo, hi = -reach, reach
        if not self.cut:
            span = sound_span(x.numpy())
            if span is None:
                return x
            lo, hi = -min(reach, span[0]), min(reach, x.shape[-1] - 1 - span[1])
        n = int(rng.integers(lo, hi + 1))
        out = torch.zeros_like(x)
        if n >= 0:
            out[..., n:] = x[..., :x.shape[-1] - n]
        else:
            out[..., :n] = x[..., -n:]
        return out


@register("speed")
class Speed(WaveStage):
    """Speed and pitch together by a factor in `factor` (resampling: 1.1 = 10 % faster and higher),
    in steps of 0.01 (so the polyphase filter is one of a few); cropped/padded back to the clip."""
    defaults = {"factor": [0.9, 1.1]}

    def check(self):
        self.factor = self._range("factor", 0.5, 2)

    # How far (input samples) the resampling filter reaches: 10 * max(up, down) / up <= 20 for factors in [0.5, 2]
    REACH = 32

    def apply(self, x, rng, sr):
        from align.media.audio import resample
        f = round(float(rng.uniform(*self.factor)), 2)
        if f == 1.0:
            return x
        a = x.numpy()                                                          # [C, L]
        span = sound_span(a)
        if span is None:
            return x                                                           # silence resamples to silence
        # The clip's zero padding after the content resamples to exact zeros, so only the content and the filter's
        # reach past it are resampled: a short word in a long clip costs its own length (same values as the whole
        # clip: tests/data/stream/test_augment.py)
        end = min(a.shape[-1], span[1] + 1 + self.REACH)
        # Played at sr * f, heard at sr: resample from sr * f down/up to sr.
        y = resample(a[..., :end], int(round(sr * f)), sr)                     # [C, ~end / f]
        out = np.zeros_like(a)                  # numpy: a third of the time torch's small ops take per clip
        n = min(a.shape[-1], y.shape[-1])
        out[..., :n] = y[..., :n]
        return torch.from_numpy(out)


# The decoded noise clips a data worker keeps (the most recently drawn; float32 at the front end's rate). A noise
# folder is read at random, so an unbounded cache held all of it in every worker after enough samples: MUSAN's
# noise part (~6 h) is 1.4 GB at 16 kHz, its music part ~10 GB, times the workers.
NOISE_CACHE_BYTES = 256 << 20


@register("noise")
class Noise(WaveStage):
    """Additive noise at an SNR drawn from `snr_db`: white, or a random stretch of a random clip from
    `folder` (wav/flac/ogg/mp3, decoded and resampled once per worker while the clips drawn last fit
    NOISE_CACHE_BYTES, again when drawn after being let go; looped when shorter than the clip)."""
    defaults = {"snr_db": [10.0, 30.0], "folder": None}

    def check(self):
        self.snr = self._range("snr_db", -20, 100)
        folder = self.params["folder"]
        self.files: List[str] = []
        if folder is not None:
            if not isinstance(folder, str) or not os.path.isdir(os.path.expanduser(folder)):
                raise ConfigError(f"{self.where}.folder: {folder!r} is not a folder")
            root = os.path.expanduser(folder)
            self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                                if f.lower().rsplit(".", 1)[-1] in ("wav", "flac", "ogg", "mp3"))
            if not self.files:
                raise ConfigError(f"{self.where}.folder: {folder!r} holds no wav/flac/ogg/mp3 files")
        self._cache: OrderedDict = OrderedDict()      # (file index, rate) -> clip, least recently drawn first
        self._cached_bytes = 0

    def _clip(self, i: int, sr: int) -> np.ndarray:
        if (i, sr) in self._cache:
            self._cache.move_to_end((i, sr))
        else:
            from align.media.audio import decode_audio, resample
            from align.media.audio import to_mono
            path = self.files[i]
            try:
                with open(path, "rb") as f:
                    wave, fsr = decode_audio(f.read(), name=path)
                clip = resample(to_mono(wave, path), int(fsr), sr)
            except Exception as exn:
                raise DataError(f"{self.where}.folder: cannot read noise file {path}: {exn}") from None
            self._cache[(i, sr)] = clip
            self._cached_bytes += clip.nbytes
            while self._cached_bytes > NOISE_CACHE_BYTES and len(self._cache) > 1:   # the clip drawn stays
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return self._cache[(i, sr)]

    def apply(self, x, rng, sr):
        L = x.shape[-1]
        if self.files:
            src = self._clip(int(rng.integers(len(self.files))), sr)
            reps = -(-L // src.shape[0]) + 1
            src = np.tile(src, reps)
            s = int(rng.integers(0, src.shape[0] - L + 1))
            noise = torch.from_numpy(np.ascontiguousarray(src[s:s + L], dtype=np.float32)).expand_as(x)
        else:
            # torch's normal sampler, seeded from the stage's generator: ~3x faster than numpy's for a clip
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 63)))
            noise = torch.randn(tuple(x.shape), generator=gen)
        p_sig = x.pow(2).mean(dim=-1, keepdim=True)                           # [C, 1]
        p_noise = noise.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12)
        snr = float(rng.uniform(*self.snr))
        scale = torch.sqrt(p_sig / (p_noise * 10 ** (snr / 10)))
        return x + scale * noise


# ---- audio: one log-mel [n_mels, T] -------------------------------------------------------------

@register("spec_augment")
class SpecAugment(Stage):
    """`freq_masks` masks of up to `freq_width` mel bins and `time_masks` of up to `time_width` frames,
    set to 0 (the normalised mean)."""
    modality, level = "audio", "logmel"
    defaults = {"freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 10}

    def check(self):
        for k in self.defaults:
            self._int(k)

    def apply(self, x, rng):
        x = x.clone()
        for dim, (n, width) in enumerate(((self.params["freq_masks"], self.params["freq_width"]),
                                          (self.params["time_masks"], self.params["time_width"]))):
            size = x.shape[dim]
            for _ in range(n):
                w = min(int(rng.integers(0, width + 1)), size)
                s = int(rng.integers(0, size - w + 1))
                if dim == 0:
                    x[s:s + w] = 0.0
                else:
                    x[:, s:s + w] = 0.0
        return x


@register("vtlp")
class Vtlp(Stage):
    """Vocal tract length perturbation (Jaitly & Hinton 2013) on the log-mel: the frequency axis warped by a factor
    alpha drawn from `alpha`, piecewise linear so the top bin stays put (the warp bends at `boundary` of the axis).
    A longer or shorter vocal tract shifts every formant by one factor, so this shows a model the other speakers
    it will meet. Warping mel bins rather than Hz is the usual approximation on log-mel features."""
    modality, level = "audio", "logmel"
    defaults = {"alpha": [0.9, 1.1], "boundary": 0.8}

    def check(self):
        self._range("alpha", 0.5, 2.0)
        self._num(self.params["boundary"], "boundary", 0.1, 0.95)

    def apply(self, x, rng):
        # x: [n_mels, T] (or [C, n_mels, T]); out[i] = x at source position s(i), linearly interpolated
        lo, hi = self.params["alpha"]
        alpha, n = float(rng.uniform(lo, hi)), x.shape[-2]
        top, b = n - 1, self.params["boundary"] * (n - 1)
        pos = torch.arange(n, dtype=torch.float64, device=x.device)     # x may be on the training device
        knee = min(b, top / alpha)                   # keep the warped knee inside the axis
        src = torch.where(pos <= knee, pos * alpha,
                          knee * alpha + (pos - knee) * (top - knee * alpha) / max(top - knee, 1e-9))
        src = src.clamp(0, top)
        i0 = src.floor().long().clamp(max=top)
        i1 = (i0 + 1).clamp(max=top)
        w = (src - i0).to(x.dtype).unsqueeze(-1)     # [n_mels, 1]
        return x.index_select(-2, i0) * (1 - w) + x.index_select(-2, i1) * w
