"""Audio files cut short: the length a WAV, AIFF or MP3 header declares, against the bytes that are there.

libsndfile reads a WAV, AIFF or MP3 file cut short (a download or copy that stopped part-way) up to where it
ends, without a word, where a FLAC cut short fails in its decoder. `truncation(data)` reads the container's own
length fields (struct only, nothing decoded) and says what is missing in one phrase, or None; decode_audio then
refuses the file as it refuses a cut FLAC (DataError: skipped and counted as undecodable audio).

Read: RIFF/RIFX WAV (WAVE_FORMAT_EXTENSIBLE included), RF64/BW64 (the ds64 chunk's 64-bit data size), Sony Wave64,
AIFF/AIFC, and MP3 (MPEG-1/2/2.5 layers I-III, after an ID3v2 tag). Sizes that streaming writers leave where they
cannot seek back to fill in the length read as "length unknown", never as truncation: 0, and 32-bit sizes from
0x7FFFF000 up (SoX writes 0x7FFFF000, ffmpeg 0xFFFFFFFF, arecord about 0x7FFFFFFF). Anything not understood here
(other formats, a chunk that runs past the end before the data chunk, free-format MP3, bytes between MP3 frames) is
left to libsndfile as before: None.
"""
import struct
from typing import Optional

_UNKNOWN_32 = 0x7FFFF000         # 32-bit sizes from here up are streaming writers' "length unknown"
# WAVE format tags whose block align is the bytes of one frame (PCM, float, A-law, mu-law, extensible)
_FRAME_TAGS = (1, 3, 6, 7, 0xFFFE)
# AIFC compression types whose frames are channels x ceil(bits / 8) bytes (plain AIFF is "NONE")
_PCM_AIFC = (b"NONE", b"twos", b"sowt", b"raw ", b"in24", b"in32", b"fl32", b"FL32", b"fl64", b"FL64")
_W64_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")     # the 12 bytes after "wave", "fmt ", "data" in W64 GUIDs
_W64_RIFF = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")


def truncation(data, max_seconds: float = 600.0) -> Optional[str]:
    """'truncated WAV: the header declares N frames, the file holds M' (or bytes, or MPEG frames) when the file
    is shorter than its header says, else None. max_seconds bounds the MP3 frame walk: a stream longer than that
    is left to the length limits (align.limits), so a hostile stream of tiny frames costs at most that walk."""
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    head = bytes(data[:16])
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return _riff(data, head[:4])
    if head == _W64_RIFF:
        return _w64(data)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _aiff(data, head[8:12] == b"AIFC")
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return _mp3(data, max_seconds)
    return None


def _missing(kind: str, declared: int, held: int, frame: int) -> Optional[str]:
    """The phrase for `declared` bytes of audio data of which `held` are there, in frames of `frame` bytes when
    that is known (a partial frame at the end of what was declared is not counted), else in bytes."""
    held = max(held, 0)
    if frame > 0:
        if held // frame < declared // frame:
            return f"truncated {kind}: the header declares {declared // frame} frames, the file holds {held // frame}"
        return None
    if held < declared:
        return f"truncated {kind}: the header declares {declared} bytes of audio data, the file holds {held}"
    return None


def _riff(data, magic: bytes) -> Optional[str]:
    """RIFF/RIFX/RF64/BW64: the data chunk's size (ds64's for RF64) against the bytes after its header."""
    n, order = len(data), ">" if magic == b"RIFX" else "<"
    pos, frame, ds64 = 12, 0, None
    while pos + 8 <= n:
        cid, size = bytes(data[pos:pos + 4]), struct.unpack_from(order + "I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"ds64" and magic != b"RIFF" and size >= 16 and body + 16 <= n:
            ds64 = struct.unpack_from("<Q", data, body + 8)[0]          # riffSize, then dataSize
        elif cid == b"fmt " and size >= 14 and body + 14 <= n:
            tag, _, _, _, block = struct.unpack_from(order + "HHIIH", data, body)
            frame = block if tag in _FRAME_TAGS else 0
        elif cid == b"data":
            if size == 0xFFFFFFFF and ds64 is not None:                  # RF64: the real size is in ds64
                if ds64 == 0 or ds64 >= 1 << 63:
                    return None
                return _missing("WAV", ds64, n - body, frame)
            if size == 0 or size >= _UNKNOWN_32:
                return None
            return _missing("WAV", size, n - body, frame)
        pos = body + size + (size & 1)                                    # chunks are padded to an even length
    return None


def _w64(data) -> Optional[str]:
    """Sony Wave64: 16-byte GUID ids, 64-bit sizes that count the 24-byte chunk header, 8-byte alignment."""
    n, pos, frame = len(data), 40, 0
    if bytes(data[24:40]) != b"wave" + _W64_TAIL:
        return None
    while pos + 24 <= n:
        guid, size = bytes(data[pos:pos + 16]), struct.unpack_from("<Q", data, pos + 16)[0]
        body = pos + 24
        if size < 24:
            return None                                                   # a chunk that does not hold its header
        if guid == b"fmt " + _W64_TAIL and size >= 38 and body + 14 <= n:
            tag, _, _, _, block = struct.unpack_from("<HHIIH", data, body)
            frame = block if tag in _FRAME_TAGS else 0
        elif guid == b"data" + _W64_TAIL:
            if size == 24 or size >= 1 << 63:
                return None
            return _missing("W64", size - 24, n - body, frame)
        pos += (size + 7) & ~7
    return None


def _aiff(data, aifc: bool) -> Optional[str]:
    """AIFF/AIFC (big-endian chunks): the SSND chunk's size against the bytes after its header; frames of
    COMM's channels x sample bytes when COMM comes first and the samples are PCM or float."""
    n, pos, frame = len(data), 12, 0
    while pos + 8 <= n:
        cid, size = bytes(data[pos:pos + 4]), struct.unpack_from(">I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"COMM" and size >= 18 and body + 18 <= n:
            channels, _, bits = struct.unpack_from(">hIh", data, body)
            kind = bytes(data[body + 18:body + 22]) if aifc else b"NONE"
            frame = channels * ((bits + 7) // 8) if kind in _PCM_AIFC and channels > 0 and bits > 0 else 0
        elif cid == b"SSND":
            if size <= 8 or size >= _UNKNOWN_32 or body + 8 > n:
                return None                  # no sample bytes declared, a placeholder, or the header itself cut
            offset = struct.unpack_from(">I", data, body)[0]             # bytes before the first frame
            start = body + 8 + offset
            return _missing("AIFF", size - 8 - offset, n - start, frame)
        pos = body + size + (size & 1)
    return None


# MPEG audio: kbps by bitrate index 1..14, for (MPEG-1?, layer); sample rates by version bits (3: MPEG-1, 2: MPEG-2,
# 0: MPEG-2.5)
_KBPS = {(True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
         (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
         (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
         (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
         (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_KBPS[(False, 3)] = _KBPS[(False, 2)]
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_TAGS_AT_END = (b"TAG", b"APETAGEX", b"LYRICSBEGIN")   # ID3v1, APEv2, Lyrics3 after the last frame


def _mpeg_frame(h: int):
    """((version bits, layer, rate), frame bytes, samples per frame, mono?) of a 32-bit MPEG audio frame header,
    or None (not a header, reserved values, or free format, whose frame length the header does not give)."""
    version, layer_bits, index, rate_bits = (h >> 19) & 3, (h >> 17) & 3, (h >> 12) & 15, (h >> 10) & 3
    if h >> 21 != 0x7FF or version == 1 or layer_bits == 0 or index in (0, 15) or rate_bits == 3:
        return None
    layer, mpeg1 = 4 - layer_bits, version == 3
    bps, rate, pad = _KBPS[(mpeg1, layer)][index - 1] * 1000, _RATES[version][rate_bits], (h >> 9) & 1
    if layer == 1:
        size, samples = (12 * bps // rate + pad) * 4, 384
    else:
        per = 144 if layer == 2 or mpeg1 else 72
        size, samples = per * bps // rate + pad, 1152 if layer == 2 or mpeg1 else 576
    return (version, layer, rate), size, samples, (h >> 6) & 3 == 3


def _xing_frames(data, pos: int, version: int, mono: bool) -> int:
    """The audio frames a Xing/Info header in the frame at `pos` declares (its own frame not counted), else 0."""
    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    at = pos + 4 + side
    if bytes(data[at:at + 4]) in (b"Xing", b"Info") and at + 12 <= len(data):
        flags, frames = struct.unpack_from(">II", data, at + 4)
        return frames if flags & 1 else 0
    return 0


def _mp3(data, max_seconds: float) -> Optional[str]:
    """Walk the MPEG frames from the first (after an ID3v2 tag): truncated when the last frame runs past the end,
    or when a Xing/Info header declares more frames than the walk found. No claim when the walk meets anything
    but frames of the first one's version, layer and rate (garbage, another stream) before the end or a tag."""
    n, pos = len(data), 0
    if bytes(data[:3]) == b"ID3" and n >= 10:
        pos = 10 + ((data[6] & 127) << 21 | (data[7] & 127) << 14 | (data[8] & 127) << 7 | (data[9] & 127))
        pos += 10 if data[5] & 0x10 else 0                               # a footer
    stream, count, declared, most = None, 0, 0, 0
    while pos + 4 <= n:
        frame = _mpeg_frame(struct.unpack_from(">I", data, pos)[0])
        if frame is None or (stream is not None and frame[0] != stream):
            if stream is None or not any(bytes(data[pos:pos + len(t)]) == t for t in _TAGS_AT_END):
                return None
            break
        if stream is None:
            stream, most = frame[0], int(max_seconds * frame[0][2] / frame[2]) + 8
            declared = _xing_frames(data, pos, frame[0][0], frame[3])
            count = -1 if declared else 0                                # the Xing frame holds no audio
        if pos + frame[1] > n:
            if declared:
                return f"truncated MP3: the header declares {declared} MPEG frames, the file holds {max(count, 0)}"
            return f"truncated MP3: its last MPEG frame ({frame[1]} bytes) runs {pos + frame[1] - n} bytes past " \
                   f"the end of the file"
        pos, count = pos + frame[1], count + 1
        if count > most:
            return None                                                   # past the length limit: it decides
    if stream is not None and count < declared:
        return f"truncated MP3: the header declares {declared} MPEG frames, the file holds {count}"
    return None
