"""Audio front end shared by the audio towers: resampling, cropping and log-mel features.

Everything is plain torch/numpy/scipy (no torchaudio):

    wave (np.float32 [samples], sample_rate)
      -> resample to `sample_rate` (align.media.audio.resample, scipy polyphase), clip to [-1, 1] (as the shard
         writer's 16-bit FLAC holds a float file louder than full scale)
      -> optional: trim leading/trailing silence (`trim_db`), peak or RMS normalisation
         (`normalize`, `target_db`) -- the same in training and evaluation
      -> crop / zero-pad to `clip_seconds`
      -> |STFT|^2 (Hann window, centred frames, zero padding at the edges)
      -> mel filterbank (HTK or Slaney scale, optional Slaney area norm)
      -> log(mel + log_offset) -> (x - norm_mean) / norm_std, or per-utterance CMVN (`cmvn: utterance`)
      -> float32 [n_mels, frames], frames = 1 + clip_samples // hop_length

The defaults (25 ms window, 10 ms hop at 16 kHz, natural log, mean -4.27 / std 4.57)
follow AST's Kaldi-fbank set-up so its normalisation statistics are about right.

Eval and several clips: with `eval_clips` = C > 1 the eval preprocess returns
[C, n_mels, frames] (C evenly spaced clips covering the whole recording, the
first starting at 0 and the last ending at the end; a short recording gives C
copies of its padded clip). Use the tower's `encode_clips` on [B, C, n_mels, frames]:
it averages the L2-normalised clip embeddings. With C = 1 (default) eval gives
one centre-cropped [n_mels, frames] clip like training.
"""
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

import numpy as np
import torch
from torch import nn

from align.errors import ConfigError, DataError


# ---- mel scales (same formulas as librosa.hz_to_mel / mel_to_hz) --------------------------

def hz_to_mel(f: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def mel_to_hz(m: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    lin = m * f_sp
    log = min_log_hz * torch.exp(logstep * (m - min_log_mel))
    return torch.where(m >= min_log_mel, log, lin)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float,
                   scale: str = "htk", norm: Optional[str] = None) -> torch.Tensor:
    """Triangular mel filters, float32 [n_freqs, n_mels] (rows: rfft bins 0..sr/2).

    Filter m rises linearly from centre f[m] to f[m+1] and falls to f[m+2], where
    f = n_mels + 2 points evenly spaced on the mel scale between f_min and f_max.
    norm='slaney' scales each filter by 2 / (f[m+2] - f[m]) (constant area).
    """
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)       # [F]
    m_pts = torch.linspace(float(hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64), scale)),
                           float(hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64), scale)),
                           n_mels + 2, dtype=torch.float64)
    f_pts = mel_to_hz(m_pts, scale)                                                   # [M+2]
    f_diff = f_pts[1:] - f_pts[:-1]                                                   # [M+1]
    slopes = f_pts[None, :] - freqs[:, None]                                          # [F, M+2]
    down = -slopes[:, :-2] / f_diff[:-1]                                              # [F, M]
    up = slopes[:, 2:] / f_diff[1:]                                                   # [F, M]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[None, :]
    elif norm is not None:
        raise ValueError(f"mel norm {norm!r} is not None or 'slaney'")
    return fb.float()


# ---- front-end configuration -------------------------------------------------------------

@dataclass
class AudioFrontend:
    """Recipe keys of the audio front end (shared by `audio` and `audio_cnn` towers)."""
    sample_rate: int = 16000
    clip_seconds: float = 10.0
    n_fft: int = 400           # 25 ms at 16 kHz
    win_length: int = 400
    hop_length: int = 160      # 10 ms at 16 kHz
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    mel_scale: str = "htk"     # htk | slaney
    mel_norm: str = "none"     # none | slaney
    log_offset: float = 1e-6
    norm_mean: float = -4.27   # AST AudioSet statistics of log-mel (natural log)
    norm_std: float = 4.57
    eval_clips: int = 1
    freq_mask: int = 0         # train SpecAugment: max width of one frequency mask (mel bins)
    time_mask: int = 0         # train SpecAugment: max width of one time mask (frames)
    trim_db: float = 0.0       # > 0: cut leading/trailing 10 ms frames quieter than (loudest frame - trim_db)
    normalize: str = "none"    # none | peak | rms: scale each recording to target_db (dBFS)
    target_db: float = -1.0    # peak: -1 dBFS is usual; rms: e.g. -20
    cmvn: str = "none"         # none | utterance: each mel bin to mean 0, std 1 over the recording's own frames

    @classmethod
    def keys(cls):
        return [f.name for f in fields(cls)]

    def validate(self, where: str) -> "AudioFrontend":
        def bad(key, why):
            raise ConfigError(f"{where}.{key}: {why} (got {getattr(self, key)!r})")
        for k in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "eval_clips"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) <= 0:
                bad(k, "must be a positive integer")
        if self.n_fft % 2:
            # torch's centred STFT of an odd n_fft gives 1 + (L - 1) // hop frames, not n_frames (the tower then
            # refused every clip), and the filterbank's bins assume an even FFT size
            bad("n_fft", "must be even")
        if self.win_length > self.n_fft:
            bad("win_length", f"must be <= n_fft ({self.n_fft})")
        if self.clip_seconds == "auto":
            bad("clip_seconds", "auto is set from data.train's clips by `align train` (config.yaml then records "
                                "the seconds); here give a number of seconds")
        if isinstance(self.clip_seconds, bool) or not isinstance(self.clip_seconds, (int, float)) \
                or not self.clip_seconds > 0:
            bad("clip_seconds", "must be a number of seconds > 0")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            bad("f_max", f"need 0 <= f_min < f_max <= sample_rate/2 ({self.sample_rate / 2})")
        if self.mel_scale not in ("htk", "slaney"):
            bad("mel_scale", "must be 'htk' or 'slaney'")
        if self.mel_norm not in ("none", "slaney"):
            bad("mel_norm", "must be 'none' or 'slaney'")
        if not self.norm_std > 0:
            bad("norm_std", "must be > 0")
        if not self.log_offset > 0:
            bad("log_offset", "must be > 0")
        if self.normalize not in ("none", "peak", "rms"):
            bad("normalize", "must be 'none', 'peak' or 'rms'")
        if isinstance(self.target_db, bool) or not isinstance(self.target_db, (int, float)) \
                or not -80 <= self.target_db <= 0:
            bad("target_db", "must be a number of dBFS in [-80, 0]")
        if isinstance(self.trim_db, bool) or not isinstance(self.trim_db, (int, float)) or self.trim_db < 0:
            bad("trim_db", "must be a number >= 0 (0: no trimming)")
        if self.cmvn not in ("none", "utterance"):
            bad("cmvn", "must be 'none' or 'utterance'")
        for k in ("freq_mask", "time_mask"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 0:
                bad(k, "must be an integer >= 0")
        return self

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return 1 + self.clip_samples // self.hop_length

    def config(self) -> dict:
        """JSON-able description for exports / model cards."""
        d = asdict(self)
        d.update(n_frames=self.n_frames, clip_samples=self.clip_samples, window="hann",
                 center=True, pad_mode="constant", power=2.0, log="natural",
                 input="mono float wave in [-1, 1]", output_shape=["n_mels", "n_frames"])
        return d


# ---- log-mel module ----------------------------------------------------------------------

class LogMel(nn.Module):
    """Normalised log-mel features: wave [..., samples] -> [..., n_mels, 1 + samples // hop]."""

    def __init__(self, fe: AudioFrontend):
        super().__init__()
        self.fe = fe
        self.register_buffer("window", torch.hann_window(fe.win_length, periodic=True), persistent=False)
        fb = mel_filterbank(fe.n_fft // 2 + 1, fe.sample_rate, fe.n_mels, fe.f_min, fe.f_max,
                            fe.mel_scale, None if fe.mel_norm == "none" else fe.mel_norm)
        self.register_buffer("fb", fb, persistent=False)                 # [n_freqs, n_mels]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        fe = self.fe
        lead = wave.shape[:-1]
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]).float(), n_fft=fe.n_fft,
                          hop_length=fe.hop_length, win_length=fe.win_length, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)  # [N, F, frames]
        power = spec.real ** 2 + spec.imag ** 2
        mel = torch.einsum("nft,fm->nmt", power, self.fb)                 # [N, n_mels, frames]
        logmel = torch.log(mel + fe.log_offset)
        if fe.cmvn == "utterance":
            out = utterance_cmvn(logmel, math.log(fe.log_offset))
        else:
            out = (logmel - fe.norm_mean) / fe.norm_std
        return out.reshape(*lead, fe.n_mels, out.shape[-1])


def utterance_cmvn(logmel: torch.Tensor, floor: float, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance cepstral mean and variance normalisation of log-mel [N, n_mels, T]: each mel bin to mean 0
    and std 1 over the recording's own frames, so a speaker's vocal tract and a microphone's colour (a per-bin
    offset in the log domain) drop out. Frames of the zero padding (every bin at the log floor) are left out of
    the statistics and set to 0 (the mean)."""
    valid = (logmel.amax(dim=-2, keepdim=True) > floor + 1e-3).to(logmel.dtype)            # [N, 1, T]
    n = valid.sum(dim=-1, keepdim=True).clamp_min(1.0)                                     # [N, 1, 1]
    mean = (logmel * valid).sum(dim=-1, keepdim=True) / n                                  # [N, n_mels, 1]
    var = (((logmel - mean) * valid) ** 2).sum(dim=-1, keepdim=True) / n
    return (logmel - mean) / torch.sqrt(var + eps) * valid


# ---- waveform handling -------------------------------------------------------------------

def resample_wave(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """float32 [samples] -> float32 at target_sr (align.media.audio.resample: polyphase FIR)."""
    if orig_sr == target_sr:
        return wave
    from align.media.audio import resample
    return resample(wave, int(orig_sr), int(target_sr))


def full_scale(wave: np.ndarray) -> np.ndarray:
    """The wave at the front end's rate clipped to [-1, 1], as the shard writer stores it (16-bit FLAC, clipped
    after resampling): a float file with samples past +-1 then gives the same features whether training read it
    from shards or a caller passes it to the eval transform (align.load, `align search`)."""
    return np.clip(wave, -1.0, 1.0)


def wave_at(sample, rate: int) -> np.ndarray:
    """(wave, sample_rate) -> mono float32 [T] at `rate`, clipped to full scale: the first steps of every audio
    front end (this one's AudioPreprocess and hf_audio's), before cropping."""
    from align.media.audio import to_mono   # lazy like resample: soundfile stays out of `import align`
    try:
        wave, sr = sample
    except (TypeError, ValueError):
        raise DataError("audio: expected a (wave, sample_rate) pair") from None
    if not isinstance(sr, (int, np.integer)) or isinstance(sr, bool) or sr <= 0:
        if np.ndim(sr) > 0 and isinstance(wave, (int, np.integer)):   # scipy.io.wavfile.read's order
            raise DataError(f"audio: expected (wave, sample_rate), got (sample_rate {wave}, a wave): "
                            "scipy.io.wavfile.read returns (rate, data), pass (data, rate)")
        shown = repr(sr) if np.ndim(sr) == 0 else f"an array of shape {np.shape(sr)}"   # not numpy's 2-line repr
        raise DataError(f"audio: sample rate must be a positive integer, got {shown}")
    return full_scale(resample_wave(to_mono(wave), int(sr), rate))


def trim_silence(w: np.ndarray, sr: int, top_db: float) -> np.ndarray:
    """w without its leading/trailing 10 ms frames whose RMS is more than top_db below the loudest frame.

    All-silent input is returned unchanged (nothing to measure against)."""
    hop = max(1, sr // 100)
    n = -(-w.shape[0] // hop)
    frames = np.zeros(n * hop, dtype=np.float64)
    frames[:w.shape[0]] = w
    rms = np.sqrt((frames.reshape(n, hop) ** 2).mean(axis=1))                   # [n]
    peak = rms.max()
    if peak <= 0:
        return w
    loud = np.flatnonzero(rms >= peak * 10 ** (-top_db / 20))
    return w[loud[0] * hop:min(w.shape[0], (loud[-1] + 1) * hop)]


def normalize_level(w: np.ndarray, mode: str, target_db: float) -> np.ndarray:
    """Scale so the peak (mode 'peak') or RMS ('rms') is target_db dBFS; silence is left as it is."""
    if mode == "none":
        return w
    level = float(np.abs(w).max()) if mode == "peak" else float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    if level <= 1e-8:
        return w
    return (w * (10 ** (target_db / 20) / level)).astype(np.float32)


def clip_starts(n: int, clip: int, count: int) -> np.ndarray:
    """Deterministic eval clip starts: centre for one clip, else evenly spaced from 0 to n - clip."""
    if n <= clip:
        return np.zeros(count, dtype=np.int64)
    if count == 1:
        return np.array([(n - clip) // 2], dtype=np.int64)
    return np.round(np.linspace(0, n - clip, count)).astype(np.int64)


def crop_or_pad(w: np.ndarray, start: int, clip: int) -> np.ndarray:
    """w[start:start+clip], zero-padded on the right to exactly `clip` samples."""
    out = np.zeros(clip, dtype=np.float32)
    seg = w[start:start + clip]
    out[:seg.shape[0]] = seg
    return out


class AudioPreprocess:
    """Per-sample callable: (wave, sample_rate) -> float32 features (see module docstring).

    Train: one random crop (torch RNG; pass `generator=` for reproducibility) plus optional
    SpecAugment masks -> [n_mels, frames]. Eval: deterministic -> [n_mels, frames] when
    eval_clips == 1, else [eval_clips, n_mels, frames]. Bad audio raises DataError
    (the data pipeline skips and counts the sample).
    """

    def __init__(self, fe: AudioFrontend, train: bool):
        self.fe, self.train = fe, train
        self.logmel = LogMel(fe)

    def to(self, device) -> "AudioPreprocess":
        """per_batch on `device` (its window and mel filters moved there); per_sample stays numpy."""
        self.logmel = self.logmel.to(device)
        return self

    def __call__(self, sample, sr: Optional[int] = None, *,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """sample: a (wave, sample_rate) pair, or the wave with `sr` given separately."""
        return self.per_batch(self.per_sample(sample, sr, generator=generator)[None], generator=generator)[0]

    # Two stages, so a data pipeline can crop per sample and run the STFT once per batch
    # (one torch call for B clips instead of B calls: ~5x less CPU per sample for 1 s clips).
    def per_sample(self, sample, sr: Optional[int] = None, *,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(wave, sample_rate) -> cropped/padded clips at the front end's rate, float32 [C, clip_samples]."""
        if sr is not None:
            sample = (sample, sr)
        fe = self.fe
        w = wave_at(sample, fe.sample_rate)
        if fe.trim_db > 0:
            w = trim_silence(w, fe.sample_rate, fe.trim_db)
        w = normalize_level(w, fe.normalize, fe.target_db)
        L = fe.clip_samples
        if self.train:
            start = 0
            if w.shape[0] > L:
                start = int(torch.randint(0, w.shape[0] - L + 1, (1,), generator=generator))
            clips = crop_or_pad(w, start, L)[None]                            # [1, L]
        else:
            clips = np.stack([crop_or_pad(w, int(s), L)
                              for s in clip_starts(w.shape[0], L, fe.eval_clips)])  # [C, L]
        return torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32))

    def per_batch(self, clips: torch.Tensor, generator=None) -> torch.Tensor:
        """[B, C, clip_samples] -> train: [B, n_mels, T]; eval: [B, n_mels, T] or [B, C, n_mels, T].

        generator: one torch.Generator for the batch, or a list of B (one per clip, so a clip's SpecAugment
        masks do not depend on its batch: what the data loader passes)."""
        with torch.no_grad():
            feats = self.logmel(clips)                                       # [B, C, n_mels, T]
        if self.train:
            gens = generator if isinstance(generator, (list, tuple)) else [generator] * len(feats)
            return torch.stack([spec_augment(f[0], self.fe.freq_mask, self.fe.time_mask, g)
                                for f, g in zip(feats, gens)])
        return feats[:, 0] if self.fe.eval_clips == 1 else feats


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One frequency and one time mask (SpecAugment) on [n_mels, T]; masked values -> 0 (the mean)."""
    x = x.clone()
    for dim, width in ((0, freq_mask), (1, time_mask)):
        if width <= 0:
            continue
        w = int(torch.randint(0, width + 1, (1,), generator=generator))
        w = min(w, x.shape[dim])
        s = int(torch.randint(0, x.shape[dim] - w + 1, (1,), generator=generator))
        if dim == 0:
            x[s:s + w] = 0.0
        else:
            x[:, s:s + w] = 0.0
    return x


# ---- what `align data stats` measures ----------------------------------------------------------

def unnormalised_eval_frontend(fe: AudioFrontend) -> AudioPreprocess:
    """The eval front end of `fe` without its norm_mean / norm_std: the log-mel whose mean and std
    `align data stats` (align.data.tools.stats) measures to set those two keys."""
    return AudioPreprocess(replace(fe, norm_mean=0.0, norm_std=1.0), train=False)
