"""Audio bytes <-> waves: decode any soundfile format (16-bit and float WAV read with numpy), encode FLAC or
WAV, resample.

Waves are mono float32 numpy arrays [T] in [-1, 1] paired with an integer
sample rate; a float file may hold samples past +-1, kept here (the towers'
front ends clip them after resampling, as the shard writer's 16-bit FLAC does).
Resampling is polyphase FIR (scipy.signal.resample_poly, Kaiser window), which
needs no torchaudio and is exact for rational rate ratios.
"""
import functools
import io
import math
import struct
from typing import Optional, Tuple

import numpy as np
import soundfile

from align.errors import DataError, without_reprs
from align.limits import DataLimits, LimitExceeded, as_limits, check_audio_header
from align.media.truncation import truncation


def decode_audio(data: bytes, name: str = "<audio bytes>", limits: Optional[DataLimits] = None,
                 ) -> Tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/... bytes to (mono float32 wave [T], sample_rate).

    Multi-channel audio is mixed down by averaging channels. `name` (a sample
    key or file path) is only used in the error message.  The header's frames,
    sample rate and channels are checked against `limits` (align.limits) before
    anything is decoded: LimitExceeded past one, DataError for undecodable audio
    and for a WAV, AIFF or MP3 file shorter than its header says (align.media.truncation).
    A stream whose header gives no length (a FLAC written to a pipe) is read in
    blocks and refused as soon as it passes a limit.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"{name}: expected audio bytes, got {type(data).__name__}")
    limits = as_limits(limits)
    cut = truncation(data, limits.max_audio_seconds)    # libsndfile reads a cut WAV, AIFF or MP3 as far as it goes
    if cut:
        raise DataError(f"{name}: {cut}")
    plain = _plain_wav(data)
    if plain is not None:               # the common WAV layouts: read with numpy, ~40x less time than soundfile
        (dtype, scale), body, frames, channels, sr = plain
        try:
            check_audio_header(frames, sr, channels, limits)
        except LimitExceeded as exn:
            raise LimitExceeded(exn.reason, f"{name}: {exn.detail}", exn.limit) from None
        raw = np.frombuffer(data, dtype=dtype, count=frames * channels, offset=body).reshape(frames, channels)
        # libsndfile's int16 -> float is the same product (x * 2^-15, exact), so both paths give the same wave
        wave = raw.astype(np.float32) * np.float32(scale) if scale else raw.astype(np.float32)
        return _mono(wave, sr, name)
    try:
        with soundfile.SoundFile(io.BytesIO(bytes(data))) as f:
            known = f.frames != _UNKNOWN_FRAMES
            try:
                check_audio_header(f.frames if known else 0, f.samplerate, f.channels, limits)
            except LimitExceeded as exn:
                raise LimitExceeded(exn.reason, f"{name}: {exn.detail}", exn.limit) from None
            # [T, C] float32 whatever the file layout, so mixing down is one mean; at most f.frames rows
            wave = f.read(dtype="float32", always_2d=True) if known else _read_unknown_length(data, limits, name)
            sr = f.samplerate
    except (RuntimeError, ValueError, TypeError, EOFError, OverflowError, MemoryError) as e:
        # LibsndfileError is a RuntimeError
        first = without_reprs(str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: cannot decode audio ({len(data)} bytes): {first}") from None
    return _mono(wave, sr, name)


# libsndfile's frame count of a stream whose header gives no length (SF_COUNT_MAX): a FLAC written to a pipe
# (STREAMINFO total samples 0, "unknown" in the FLAC format)
_UNKNOWN_FRAMES = 2 ** 63 - 1
_BLOCK = 65536                   # frames read at a time from such a stream


class _ForwardSoundFile(soundfile.SoundFile):
    """A SoundFile read front to back only: soundfile seeks to its own position after every read, and libsndfile
    cannot seek to the end of a stream of unknown length ("Internal psf_fseek() failed")."""

    def seekable(self) -> bool:
        return False


def _read_unknown_length(data, limits: DataLimits, name: str) -> np.ndarray:
    """float32 [T, C]: every frame of a stream whose header gives no length, read in blocks, the limits checked
    after each (LimitExceeded as soon as one is passed), so memory stays within them whatever the stream holds."""
    blocks, n = [], 0
    with _ForwardSoundFile(io.BytesIO(bytes(data))) as f:
        while True:
            block = f.read(_BLOCK, dtype="float32", always_2d=True)
            n += block.shape[0]
            try:
                check_audio_header(n, f.samplerate, f.channels, limits)
            except LimitExceeded as exn:
                raise LimitExceeded(exn.reason, f"{name}: {exn.detail} (so far: the header gives no length)",
                                     exn.limit) from None
            blocks.append(block)
            if block.shape[0] < _BLOCK:
                return np.concatenate(blocks)


def _mono(wave: np.ndarray, sr: int, name: str) -> Tuple[np.ndarray, int]:
    """float32 [T, C] -> (mono float32 [T], sr), refusing empty or non-finite audio."""
    if wave.shape[0] == 0:
        raise DataError(f"{name}: audio has no samples")
    mono = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(mono).all():
        raise DataError(f"{name}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


# (format tag, bits per sample) -> (numpy dtype, scale to [-1, 1]) of the WAV layouts read without soundfile
_WAV_LAYOUTS = {(1, 16): ("<i2", 1.0 / 32768), (3, 32): ("<f4", None)}


def _plain_wav(data) -> Optional[tuple]:
    """((dtype, scale), data offset, frames, channels, sample rate) of a complete RIFF/WAVE file of 16-bit PCM or
    32-bit float samples (the layouts soundfile and most tools write), else None: anything else (other sample
    formats, WAVE_FORMAT_EXTENSIBLE, a data chunk longer than the bytes, odd headers) goes to soundfile, as before.
    Chunks other than fmt and data (LIST, fact, ...) are skipped as libsndfile skips them."""
    n = len(data)
    if n < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= n:
        cid, size = bytes(data[pos:pos + 4]), int.from_bytes(bytes(data[pos + 4:pos + 8]), "little")
        body = pos + 8
        if not all(32 <= c < 127 for c in cid) or size >= n:
            return None                                       # libsndfile stops at such a chunk: let it say so
        if cid == b"fmt ":
            if size < 16 or body + 16 > n or fmt is not None:
                return None
            fmt = struct.unpack_from("<HHIIHH", data, body)   # tag, channels, rate, byte rate, block align, bits
        elif cid == b"data":
            if fmt is None or body + size > n or size == 0:   # 0: libsndfile reads a never-closed file to its end
                return None
            tag, channels, sr, _, block, bits = fmt
            layout = _WAV_LAYOUTS.get((tag, bits))
            if layout is None or channels < 1 or not 1 <= sr < 2 ** 31 or block != channels * bits // 8 \
                    or size % block:
                return None
            return layout, body, size // block, channels, sr
        pos = body + size + (size & 1)                        # chunks are padded to an even length
    return None


def encode_flac(wave: np.ndarray, sr: int) -> bytes:
    """Encode a mono float wave [T] (values clipped to [-1, 1]) as 16-bit FLAC bytes."""
    return _encode(wave, sr, "FLAC", "encode_flac")


def _encode(wave: np.ndarray, sr: int, fmt: str, what: str) -> bytes:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"{what} expects a mono wave [T], got shape {tuple(wave.shape)}")
    if wave.size == 0:
        raise ValueError(f"{what}: wave has no samples")
    if not np.isfinite(wave).all():
        raise ValueError(f"{what}: wave contains NaN or infinite samples")
    _check_rate(sr, "sr")
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(wave, -1.0, 1.0), int(sr), format=fmt, subtype="PCM_16")
    return buf.getvalue()


def encode_wav(wave: np.ndarray, sr: int) -> bytes:
    """A mono float wave [T] (values clipped to [-1, 1]) as 16-bit PCM WAV bytes: ~2x the size of FLAC, read
    without soundfile (decode_audio), so a data worker decodes it ~40x faster."""
    return _encode(wave, sr, "WAV", "encode_wav")


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis ([T] or [C, T]) from sr_in to sr_out Hz; float32 out.

    Output length is ceil(T * sr_out / sr_in). The anti-aliasing low-pass
    cuts at the lower of the two Nyquist frequencies.
    """
    _check_rate(sr_in, "sr_in")
    _check_rate(sr_out, "sr_out")
    wave = np.asarray(wave, dtype=np.float32)
    if sr_in == sr_out or wave.shape[-1] == 0:
        return wave.copy()
    from scipy.signal import resample_poly  # scipy ships with scikit-learn

    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g  # e.g. 22050 -> 16000: up 320, down 441
    # float64 math, float32 out; resample_poly copies the cached taps before scaling them
    # Common ratios (44.1 kHz -> 16 kHz: 8,821 taps) are designed once and cached; an odd rate (44,101 Hz
    # -> 16 kHz: 882,021 taps, 7 MB) is designed for this call only, so a stream of odd rates cannot
    # fill memory with cached filters.
    taps = _lowpass(up, down) if max(up, down) <= _CACHED_MAX_RATIO else _design(up, down)
    return resample_poly(wave.astype(np.float64), up, down, axis=-1, window=taps).astype(np.float32)


def preload_resampler() -> None:
    """Import the resampler's scipy parts now, in this process.

    Data workers are forked anew each epoch and inherit what their parent imported; a lazy import in
    `resample` ran in every one of them (21 % of a demo worker's CPU: benchmarks/RESULTS.md, issue 23)."""
    import scipy.signal  # noqa: F401  (resample_poly, firwin)


_CACHED_MAX_RATIO = 2000   # largest of (up, down) whose filter is cached: at most 40,001 taps (320 KB)


@functools.lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    return _design(up, down)


def _design(up: int, down: int) -> np.ndarray:
    """The FIR taps resample_poly designs by default (Kaiser beta 5)."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)
    return taps


def _check_rate(sr, what: str) -> None:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"{what} must be a positive integer sample rate, got {sr!r}")


def to_mono(wave, where: str = "audio") -> np.ndarray:
    """float32 [samples]; 2-D input is down-mixed (mean) over its channel axis.

    This accepts both soundfile's [samples, channels] and torchaudio's [channels, samples]. The rule that
    tells them apart: the channel axis is the shorter one (a recording has more samples than channels);
    a square array is read as [channels, samples].
    """
    raw = np.asarray(wave)
    if raw.dtype.kind in "iu" and raw.dtype.itemsize == 8:
        # no audio file holds 64-bit PCM: int64 is numpy's type for a Python list of ints, whose scale (16-bit?
        # 24-bit?) it does not carry; scaled by 2^63 it was near-silence
        raise DataError(f"{where}: audio given as {raw.dtype} integers, whose full scale is unknown: pass an int16 "
                        "or int32 PCM array (e.g. np.asarray(x, dtype=np.int16)) or floats in [-1, 1]")
    if raw.dtype.kind in "iu":      # PCM integers (int16 from a WAV read as is): scaled to [-1, 1], not cast
        info = np.iinfo(raw.dtype)
        mid = (int(info.max) + int(info.min) + 1) / 2.0                  # 0 for signed, 2^(n-1) for unsigned
        w = ((raw.astype(np.float64) - mid) / (int(info.max) - mid + 1)).astype(np.float32)
    else:
        w = raw.astype(np.float32, copy=False)
    if w.ndim == 2:
        w = w.mean(axis=int(np.argmin(w.shape)))
    if w.ndim != 1:
        raise DataError(f"{where}: expected a mono wave [samples] or [samples, channels], got shape {w.shape}")
    if w.size == 0:
        raise DataError(f"{where}: empty audio")
    if not np.isfinite(w).all():
        raise DataError(f"{where}: audio contains NaN or infinite samples")
    return w
