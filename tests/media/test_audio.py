"""Tests for align.media.audio: resampling against analytic sines, FLAC round trips, decode errors."""
import io
import math

import numpy as np
import pytest
import soundfile

from align.media.audio import decode_audio, encode_flac, resample
from align.errors import DataError


def _sine(freq, sr, seconds, phase=0.3):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


@pytest.mark.parametrize("sr_in,sr_out,freq", [(22050, 16000, 440.0), (16000, 48000, 1000.0),
                                               (44100, 16000, 3000.0), (8000, 16000, 700.0)])
def test_resample_matches_analytic_sine(sr_in, sr_out, freq):
    x = _sine(freq, sr_in, 0.5)
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32
    assert len(y) == math.ceil(len(x) * sr_out / sr_in)
    ref = _sine(freq, sr_out, len(y) / sr_out)[: len(y)]
    # the filter's edge effects die out within ~10 input periods of the low-pass
    edge = int(0.02 * sr_out)
    err = np.abs(y[edge:-edge] - ref[edge:-edge]).max()
    assert err < 5e-3, err
    # and the spectral peak sits at the same frequency
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spec) * sr_out / len(y)
    assert abs(peak_hz - freq) <= sr_out / len(y) + 1e-6


def test_resample_removes_tones_above_new_nyquist():
    x = _sine(7000.0, 22050, 0.5)            # above 4 kHz, the Nyquist of 8 kHz
    y = resample(x, 22050, 8000)
    edge = 200
    assert np.sqrt(np.mean(y[edge:-edge] ** 2)) < 0.01 * np.sqrt(np.mean(x ** 2))


def test_resample_identity_and_channels():
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    same = resample(x, 16000, 16000)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    y = resample(x, 16000, 8000)
    assert y.shape == (2, 500)
    np.testing.assert_allclose(y[1], resample(x[1], 16000, 8000), atol=1e-6)
    with pytest.raises(ValueError, match="sr_in"):
        resample(x, 0, 16000)


def test_flac_round_trip_is_16_bit_exact():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.9, 0.9, 4000).astype(np.float32)
    data = encode_flac(x, 16000)
    assert data[:4] == b"fLaC"
    assert encode_flac(x, 16000) == data            # deterministic bytes
    y, sr = decode_audio(data)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 1.0 / 32768 + 1e-7


def test_flac_clips_out_of_range_and_rejects_bad_waves():
    y, _ = decode_audio(encode_flac(np.array([2.0, -3.0, 0.5], np.float32), 8000))
    np.testing.assert_allclose(y, [32767 / 32768, -1.0, 0.5], atol=1e-4)
    with pytest.raises(ValueError, match="mono"):
        encode_flac(np.zeros((2, 10), np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        encode_flac(np.array([0.0, np.nan], np.float32), 16000)


def test_decode_mixes_stereo_down_and_reports_bad_bytes():
    rng = np.random.default_rng(2)
    stereo = rng.uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, stereo, 22050, format="WAV", subtype="FLOAT")
    y, sr = decode_audio(buf.getvalue())
    assert sr == 22050
    np.testing.assert_allclose(y, stereo.mean(axis=1), atol=1e-6)
    with pytest.raises(DataError, match="sample-42.flac: cannot decode audio"):
        decode_audio(b"not audio at all", name="sample-42.flac")
    with pytest.raises(DataError, match="expected audio bytes"):
        decode_audio("a string")


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_to_mono_downmixes_channels_first_and_channels_last(layout):
    from align.media.audio import to_mono
    t = np.arange(1000, dtype=np.float32) / 1000
    stereo = np.stack([t, 1 - t])                                  # [C=2, T=1000]: torchaudio's layout
    wave = stereo if layout == "channels_first" else stereo.T      # [T, C]: soundfile's layout
    mono = to_mono(wave)
    assert mono.shape == (1000,) and np.allclose(mono, 0.5)
    six = np.tile(t, (6, 1)) * np.arange(1, 7, dtype=np.float32)[:, None]   # 6 channels, channel c = (c+1) t
    assert np.allclose(to_mono(six if layout == "channels_first" else six.T), 3.5 * t)
# -- header sizes checked before decoding (issue 24) ---------------------------------------------------------

@pytest.mark.parametrize("sr, frames, channels, reason", [
    (2_147_483_647, 160, 1, "audio sample rate out of range"),   # was: 0.00s@2147483647Hz, then 43 GB to resample
    (1, 1600, 1, "audio sample rate out of range"),               # was: trained as 1,600 s of audio
    (16000, 16000 * 601, 1, "audio too long"),
    (16000, 160, 64, "audio has too many channels"),
])
def test_a_header_past_a_limit_is_refused_before_any_sample_is_decoded(monkeypatch, sr, frames, channels, reason):
    import soundfile

    from align.limits import LimitExceeded
    from align.media.audio import decode_audio
    from tests.wds_helpers import wav_claiming

    data = wav_claiming(sr, frames=frames, channels=channels)

    def no_read(*a, **k):
        raise AssertionError("decoded samples of a refused header")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_read)
    monkeypatch.setattr(np, "frombuffer", no_read)          # a complete WAV: align.media.audio reads it with numpy
    with pytest.raises(LimitExceeded) as exn:
        decode_audio(data, name="k1")
    assert exn.value.reason == reason and "k1" in str(exn.value)


def test_limits_are_settable_and_nan_or_empty_audio_is_undecodable():
    from align.errors import DataError
    from align.limits import LimitExceeded
    from align.media.audio import decode_audio
    from tests.wds_helpers import float_wav, wav_claiming

    data = wav_claiming(16000, frames=16000 * 3)
    assert decode_audio(data)[0].shape == (48000,)
    with pytest.raises(LimitExceeded, match="audio too long"):
        decode_audio(data, limits={"max_audio_seconds": 2})
    with pytest.raises(LimitExceeded, match="audio too long"):
        decode_audio(data, limits={"max_audio_samples": 40000})
    assert decode_audio(wav_claiming(500, frames=50), limits={"min_sample_rate": 100})[1] == 500
    for wave in (np.array([0.1, np.nan, 0.2]), np.array([[0.0, np.inf]] * 4)):
        with pytest.raises(DataError, match="NaN or infinite"):
            decode_audio(float_wav(wave))
    with pytest.raises(DataError, match="no samples"):
        decode_audio(wav_claiming(16000, data=b""))


# ---- WAV read with numpy (align.media.audio._plain_wav) against soundfile -------------------------------------

def _soundfile_only(monkeypatch):
    """decode_audio as it was: every file through soundfile."""
    import align.media.audio as audio_mod
    monkeypatch.setattr(audio_mod, "_plain_wav", lambda data: None)


def _outcome(data):
    try:
        wave, sr = decode_audio(data, name="k")
        return wave, sr
    except Exception as exn:             # the type and message a user would see
        return type(exn).__name__, str(exn)


def _same(a, b):
    if isinstance(a[0], np.ndarray) and isinstance(b[0], np.ndarray):
        return a[1] == b[1] and a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0])
    return not isinstance(a[0], np.ndarray) and not isinstance(b[0], np.ndarray) and a == b


def _chunk(cid: bytes, body: bytes) -> bytes:
    import struct
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _wav(body: bytes, tag=1, channels=1, sr=16000, bits=16, extra=(), block=None) -> bytes:
    import struct
    block = channels * bits // 8 if block is None else block
    fmt = struct.pack("<HHIIHH", tag, channels, sr, sr * block, block, bits)
    chunks = _chunk(b"fmt ", fmt) + b"".join(extra) + _chunk(b"data", body)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_wav_is_read_with_numpy_and_gives_soundfiles_wave(monkeypatch, subtype, channels):
    g = np.random.default_rng(channels)
    wave = g.uniform(-1.2, 1.2, (3001, channels)).astype(np.float32)
    wave[:4, 0] = [-1.0, 1.0, -32768 / 32767, 0.5]
    buf = io.BytesIO()
    soundfile.write(buf, wave, 22050, format="WAV", subtype=subtype)
    data = buf.getvalue()
    ints = np.arange(-32768, 32768, dtype=np.int16)                     # every 16-bit value
    every = _wav(ints.tobytes(), extra=(_chunk(b"LIST", b"INFOodd"), _chunk(b"fact", b"\x01\0\0\0")))
    fast = [_outcome(d) for d in (data, every)]
    import align.media.audio as audio_mod

    def no_soundfile(*a, **k):
        raise AssertionError("soundfile was used for a plain WAV")
    monkeypatch.setattr(audio_mod.soundfile, "SoundFile", no_soundfile)
    assert [_outcome(d)[1] for d in (data, every)] == [22050, 16000]     # read without soundfile
    monkeypatch.undo()
    _soundfile_only(monkeypatch)
    assert all(_same(f, _outcome(d)) for f, d in zip(fast, (data, every)))
    assert fast[1][0].min() == -1.0 and fast[1][0].max() == 32767 / 32768


def test_other_wavs_and_hostile_headers_decode_or_fail_exactly_as_through_soundfile(monkeypatch):
    """Layouts the numpy path does not read go to soundfile; damaged headers (fuzzed) give the same wave or the
    same one-line error whichever path reads them."""
    import struct
    g = np.random.default_rng(0)
    pcm = (g.integers(-3000, 3000, 800)).astype(np.int16).tobytes()
    cases = []
    for subtype in ("PCM_24", "PCM_U8", "PCM_32", "DOUBLE"):
        buf = io.BytesIO()
        soundfile.write(buf, g.uniform(-1, 1, 400).astype(np.float32), 16000, format="WAV", subtype=subtype)
        cases.append(buf.getvalue())
    buf = io.BytesIO()
    soundfile.write(buf, g.uniform(-1, 1, (400, 2)).astype(np.float32), 16000, format="WAVEX", subtype="PCM_16")
    cases += [buf.getvalue(),
              _wav(pcm)[:-100],                                        # the data chunk cut short
              _wav(pcm, channels=0), _wav(pcm, block=3), _wav(pcm, sr=0), _wav(b""), _wav(pcm[:-1]),
              _wav(pcm, tag=3, bits=16), _wav(pcm).replace(b"data", b"dat\0"),
              b"RIFF\0\0\0\0WAVE" + _chunk(b"data", pcm) + _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000,
                                                                                       16000, 2, 16)),
              b"RIFF\xff\xff\xff\xffWAVE" + _chunk(b"fmt ", b"\1\0\1\0") + _chunk(b"data", pcm),
              b"RIFF\0\0\0\0WAVEfmt \xff\xff\xff\xff", b"RIFF"]
    base = _wav(pcm, extra=(_chunk(b"LIST", b"abc"),))
    for _ in range(300):                                             # header bytes flipped at random
        b = bytearray(base)
        for i in g.integers(0, 60, int(g.integers(1, 4))):
            b[i] = int(g.integers(256))
        cases.append(bytes(b))
    fast = [_outcome(d) for d in cases]
    _soundfile_only(monkeypatch)
    slow = [_outcome(d) for d in cases]
    bad = [i for i, (f, s) in enumerate(zip(fast, slow)) if not _same(f, s)]
    assert not bad, [(i, fast[i] if not isinstance(fast[i][0], np.ndarray) else "wave",
                      slow[i] if not isinstance(slow[i][0], np.ndarray) else "wave") for i in bad[:5]]
    assert sum(isinstance(f[0], np.ndarray) for f in fast) > 50          # the fuzz kept many files readable


def test_integer_pcm_is_scaled_to_plus_minus_one_not_cast():
    """An int16 wave (a WAV read as integers) was cast to float as it was: samples of +-32768 where the towers
    expect +-1 (log-mel features 3.4x higher). Unsigned 8-bit PCM is centred on 128."""
    from align.media.audio import to_mono
    np.testing.assert_allclose(to_mono(np.array([0, 16384, -32768, 32767], np.int16)),
                               [0.0, 0.5, -1.0, 32767 / 32768])
    np.testing.assert_allclose(to_mono(np.array([128, 0, 255], np.uint8)), [0.0, -1.0, 127 / 128])
    stereo = np.array([[0, 0], [16384, -16384], [16384, 16384]], np.int16)                  # [samples, channels]
    np.testing.assert_allclose(to_mono(stereo), [0.0, 0.0, 0.5])
    assert to_mono(np.array([0.25, -0.5])).dtype == np.float32
    # a Python list of ints is int64 to numpy, whose scale it does not say: scaled by 2^63 it was silence
    with pytest.raises(DataError, match=r"clip.wav: audio given as int64 integers.*int16"):
        to_mono(np.asarray([0, 16384, -32768]), "clip.wav")


def _flac_of_unknown_length(wave: np.ndarray, sr: int) -> bytes:
    """FLAC bytes whose STREAMINFO gives no length (total samples 0, "unknown" in the FLAC format): what the
    reference encoder writes to a pipe (`... | flac --force-raw-format ... - -c`)."""
    buf = io.BytesIO()
    soundfile.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    assert b[:4] == b"fLaC" and b[4] & 0x7F == 0                 # STREAMINFO comes first, 34 bytes after its header
    fields = int.from_bytes(b[18:26], "big")                     # rate 20 bits, channels 3, bits 5, total samples 36
    b[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(b)


def test_a_flac_stream_of_unknown_length_decodes_and_is_refused_only_past_a_limit():
    """libsndfile counts the frames of such a stream as 2^63 - 1: it was refused as 'audio too long:
    576460752303423.5 s', and read whole (frames=-1) it would ask for that much memory. It is read in blocks now,
    the limits checked as it goes."""
    from align.limits import LimitExceeded

    g = np.random.default_rng(3)
    wave = (g.uniform(-0.5, 0.5, (16000 * 2 + 37, 2))).astype(np.float32)        # 2 s + 37 frames, stereo
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="FLAC", subtype="PCM_16")
    unknown = _flac_of_unknown_length(wave, 16000)
    with soundfile.SoundFile(io.BytesIO(unknown)) as f:
        assert f.frames == 2 ** 63 - 1                                            # what the decoder is told
    got, sr = decode_audio(unknown, name="k")
    want, _ = decode_audio(buf.getvalue(), name="k")
    assert sr == 16000 and got.shape == (32037,) and np.array_equal(got, want)
    assert decode_audio(unknown, limits={"max_audio_seconds": 2.01})[0].shape == (32037,)  # 2.0023 s: within
    for limits in ({"max_audio_seconds": 2.0}, {"max_audio_samples": 64000}):
        with pytest.raises(LimitExceeded) as exn:
            decode_audio(unknown, name="k7", limits=limits)
        assert exn.value.reason == "audio too long" and str(exn.value).startswith("audio too long: k7: ")
        assert "gives no length" in str(exn.value)
