"""align.media.truncation: a WAV, AIFF or MP3 file shorter than its header says is refused by decode_audio in one
line (as libsndfile refuses a cut FLAC), where libsndfile read it as far as it went; streaming writers'
"length unknown" sizes and legitimate layouts (pad bytes, chunks after the data, RF64, W64, extensible) still
decode."""
import io
import struct

import numpy as np
import pytest
import soundfile

from align.errors import DataError
from align.media.audio import decode_audio
from align.media.truncation import truncation

WAVE = (np.sin(np.arange(16000) / 10) * 0.5).astype(np.float32)     # 1 s at 16 kHz


def _written(fmt: str, subtype: str = "PCM_16", wave=WAVE, sr=16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _chunk(cid: bytes, body: bytes, size=None) -> bytes:
    return cid + struct.pack("<I", len(body) if size is None else size) + body + (b"\0" if len(body) % 2 else b"")


def _wav(*chunks: bytes, riff=None) -> bytes:
    body = b"".join(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body) if riff is None else riff) + b"WAVE" + body


FMT = _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16))      # 16-bit mono PCM
PCM = (np.arange(800) * 37 % 6000 - 3000).astype(np.int16).tobytes()           # 800 frames


def _refused(data: bytes, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as exn:
        decode_audio(data, name="shard-3.tar: sample 'k7'")
    assert "\n" not in str(exn.value) and str(exn.value).startswith("shard-3.tar: sample 'k7': ")


@pytest.mark.parametrize("fmt, subtype, kind", [("WAV", "PCM_16", "WAV"), ("WAV", "PCM_24", "WAV"),
                                                ("WAV", "FLOAT", "WAV"), ("WAV", "PCM_U8", "WAV"),
                                                ("WAVEX", "PCM_16", "WAV"), ("RF64", "PCM_16", "WAV"),
                                                ("W64", "PCM_16", "W64"), ("AIFF", "PCM_16", "AIFF"),
                                                ("AIFF", "PCM_24", "AIFF")])
def test_a_file_cut_short_is_refused_naming_the_frames_declared_and_held(fmt, subtype, kind):
    """libsndfile decoded each of these cut in half to about 8,000 of 16,000 frames without a word."""
    data = _written(fmt, subtype)
    assert decode_audio(data)[0].shape == (16000,)
    width = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4, "PCM_U8": 1}[subtype]
    cut = data[:len(data) // 2]
    held = (len(cut) - (len(data) - 16000 * width)) // width           # the file is its header and 16,000 frames
    _refused(cut, f"truncated {kind}: the header declares 16000 frames, the file holds {held}$")
    _refused(data[:-1], "holds 15999$")                                  # one byte short: one frame short


def test_the_numpy_wav_reader_and_soundfile_refuse_alike(monkeypatch):
    import align.media.audio as audio_mod
    cut = _wav(FMT, _chunk(b"data", PCM))[:-100]
    _refused(cut, "declares 800 frames, the file holds 750$")
    monkeypatch.setattr(audio_mod, "_plain_wav", lambda data: None)
    _refused(cut, "declares 800 frames, the file holds 750$")
    behind_odd = _wav(FMT, _chunk(b"LIST", b"INFOodd"), _chunk(b"data", PCM))[:-100]   # a pad byte before the data
    _refused(behind_odd, "declares 800 frames, the file holds 750$")


def test_streaming_writers_length_placeholders_read_as_unknown_not_as_truncated():
    """ffmpeg (0xFFFFFFFF), SoX (0x7FFFF000) and arecord (~0x7FFFFFFF) leave these where a pipe cannot be
    rewound; libsndfile writes data 0 under a RIFF size of 8 and reads such a file to its end."""
    for size in (0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF):
        wave, sr = decode_audio(_wav(FMT, _chunk(b"data", PCM, size), riff=size))
        assert sr == 16000 and wave.shape == (800,)
    never_closed = _wav(FMT, _chunk(b"data", PCM, 0), riff=8)
    assert truncation(never_closed) is None and decode_audio(never_closed)[0].shape == (800,)
    aiff = bytearray(_written("AIFF"))
    ssnd = aiff.index(b"SSND")
    aiff[ssnd + 4:ssnd + 8] = struct.pack(">I", 0xFFFFFFFF)
    assert truncation(bytes(aiff)) is None and decode_audio(bytes(aiff))[0].shape == (16000,)


def test_legitimate_layouts_are_not_truncated():
    """An odd-sized data chunk and its pad byte, chunks after the data, the last pad byte missing, a stray byte
    short of a whole frame, RF64's ds64 size, W64, extensible, AIFC little-endian ('sowt')."""
    odd = _wav(_chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)), _chunk(b"data", b"\x80" * 801),
               _chunk(b"LIST", b"INFOabc"))
    assert decode_audio(odd)[0].shape == (801,)
    assert decode_audio(_wav(FMT, _chunk(b"data", PCM + b"\0"))[:-1])[0].shape == (800,)   # pad byte missing
    assert decode_audio(_wav(FMT, _chunk(b"data", PCM, len(PCM) + 1)))[0].shape == (800,)  # half a frame more
    assert decode_audio(_wav(FMT, _chunk(b"data", PCM), _chunk(b"id3 ", b"x" * 300)))[0].shape == (800,)
    for fmt in ("RF64", "W64", "WAVEX"):
        assert truncation(_written(fmt)) is None
    sowt = _written("AIFF", "PCM_16").replace(b"AIFF", b"AIFC", 1)
    assert truncation(sowt) is None and truncation(b"fLaC" + b"\0" * 100) is None and truncation(b"") is None


def test_hostile_headers_are_one_line_never_a_traceback_or_an_allocation():
    """A data chunk claiming 256 MB (or RF64's ds64 claiming 1 TB) over 1,600 bytes, a zero-length data chunk, a
    chunk before the data whose size overflows 32 bits, an SSND offset past its chunk, a W64 chunk smaller than
    its own header: each is refused in one line or decodes what is there."""
    _refused(_wav(FMT, _chunk(b"data", PCM, 0x10000000)), "declares 134217728 frames, the file holds 800$")
    rf64 = bytearray(_written("RF64"))
    rf64[rf64.index(b"ds64") + 16:rf64.index(b"ds64") + 24] = struct.pack("<Q", 1 << 40)
    _refused(bytes(rf64), "truncated WAV: the header declares 549755813888 frames, the file holds 16000$")
    _refused(_wav(FMT, _chunk(b"data", b"")), "audio has no samples")
    _refused(_wav(FMT, _chunk(b"LIST", b"abcd", 0xFFFFFFF8), _chunk(b"data", PCM)), "cannot decode audio")
    aiff = bytearray(_written("AIFF"))
    ssnd = aiff.index(b"SSND")
    aiff[ssnd + 8:ssnd + 12] = struct.pack(">I", 0xFFFFFF00)                    # offset past the chunk
    assert truncation(bytes(aiff)) is None
    aiff = bytearray(_written("AIFF"))
    aiff[ssnd + 4:ssnd + 8] = struct.pack(">I", 0x10000000)
    _refused(bytes(aiff), "truncated AIFF: the header declares 134217724 frames, the file holds 16000$")
    w64 = bytearray(_written("W64"))
    w64[56:64] = struct.pack("<Q", 3)                                            # the fmt chunk: 3 bytes
    assert truncation(bytes(w64)) is None
    with pytest.raises(DataError):
        decode_audio(bytes(w64))


# ---- MP3 ----------------------------------------------------------------------------------------------------

def _mp3(sr=16000, channels=1, seconds=1.0) -> bytes:
    wave = np.random.default_rng(sr + channels).uniform(-0.5, 0.5, (int(sr * seconds), channels)).astype(np.float32)
    return _written("MP3", "MPEG_LAYER_III", wave, sr)


def _frames(data: bytes) -> list:
    """Where each MPEG frame starts (align.media.truncation's walk, used here to cut on frame boundaries)."""
    from align.media.truncation import _mpeg_frame
    pos, out = 0, []
    while pos + 4 <= len(data):
        frame = _mpeg_frame(struct.unpack_from(">I", data, pos)[0])
        out.append(pos)
        pos += frame[1]
    assert pos == len(data)
    return out


@pytest.mark.parametrize("sr, channels", [(8000, 1), (16000, 2), (22050, 1), (44100, 2), (48000, 1)])
def test_an_mp3_cut_anywhere_is_refused_and_a_whole_one_decodes(sr, channels):
    """LAME's Xing/Info header counts the audio frames: a file cut on a frame boundary holds fewer; cut inside a
    frame, the last frame runs past the end (libmpg123 only printed "Xing stream size off" to stderr)."""
    data = _mp3(sr, channels)
    assert truncation(data) is None and decode_audio(data)[1] == sr
    starts = _frames(data)
    declared = len(starts) - 1                                      # the Xing frame holds no audio
    for cut in range(starts[1] + 1, len(data), 97):
        assert truncation(data[:cut]).startswith(f"truncated MP3: the header declares {declared} MPEG frames"), cut
    _refused(data[:starts[-1]], f"truncated MP3: the header declares {declared} MPEG frames, the file holds "
                                f"{declared - 1}$")


def test_an_mp3_without_a_xing_header_is_refused_when_its_last_frame_is_cut():
    data = bytearray(_mp3())
    at = data.index(b"Xing")
    data[at:at + 4] = b"\0\0\0\0"                                   # a plain CBR stream: frames only
    data = bytes(data)
    starts = _frames(data)
    assert truncation(data) is None and truncation(data[:starts[-1]]) is None    # cut on a boundary: undetectable
    size = len(data) - starts[-1]
    _refused(data[:-10], f"truncated MP3: its last MPEG frame \\({size} bytes\\) runs 10 bytes past the end")


def test_mp3_tags_and_what_the_walk_does_not_understand_are_no_claim():
    """An ID3v2 tag before and an ID3v1 tag after the frames; bytes that are no frame of the stream (garbage, a
    FLAC behind an ID3 tag, another sample rate) end the walk without a claim; a stream longer than the length
    limit is left to the limit, so a hostile file of tiny frames costs at most that walk."""
    data = _mp3()
    id3v2 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10
    id3v1 = b"TAG" + b"\0" * 125
    assert truncation(id3v2 + data + id3v1) is None and decode_audio(id3v2 + data + id3v1)[1] == 16000
    starts = _frames(data)
    assert truncation(id3v2 + data[:starts[-1]] + id3v1).startswith("truncated MP3")   # cut, then tagged
    assert truncation(data[:starts[-1]] + b"junk" * 40) is None
    assert truncation(id3v2 + b"fLaC" + b"\0" * 60) is None
    other = _mp3(sr=22050)
    assert truncation(data[:starts[-1]] + other[:200]) is None                      # another stream's frame
    assert truncation(data[:-10], max_seconds=0.5) is None                           # 1 s of frames: past the walk
    assert truncation(data[:-10], max_seconds=1.5) is not None
