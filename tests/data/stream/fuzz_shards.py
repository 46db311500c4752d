"""Hypothesis strategies for corrupt webdataset shards (issue 24), used by test_fuzz.py.

A fuzzed shard is built in two steps:
1. samples drawn from a pool of good members (tiny JPEG/PNG/WebP images, FLAC/WAV audio, captions) and bad
   ones (decompression bombs, truncated PNG/JPEG/WebP, zero-size and palette tricks; WAVs claiming extreme
   sample rates, frame counts or channels, NaN/Inf samples, zero length; invalid UTF-8, a 10 MB caption,
   a 2 MB JSON, a bad cls), written with align's own tar writer;
2. tar damage applied to those bytes: a size field claiming more than the archive holds (up to 2^88), bit
   flips, a truncation, a header field set to an extreme value
   (sizes, negative or octal garbage, long names, type flags of links, devices, directories, GNU/pax
   long-name headers) with the checksum usually fixed so the damage gets past it, or whole extra members
   inserted between samples (GNU long names, pax headers, links, devices, directories, hostile names).

`Fuzzed` keeps the bytes and what the property needs: the keys of good samples and where each sample
ends, and the first byte the damage touched.
"""
from __future__ import annotations

import functools
import io
import struct
import tarfile
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from hypothesis import strategies as st
from PIL import Image

from align.wds.reader import index_members
from align.wds.writer import SampleWriter
from tests.wds_helpers import flac_bytes, float_wav, jpeg_bytes, png_claiming, wav_claiming

TEN_MB = 10 << 20


@functools.lru_cache(maxsize=None)
def good_members() -> list[dict]:
    """Members of samples that decode: image+text and audio+text, several formats."""
    out = []
    for i in range(4):
        img = Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8))
        png, webp = io.BytesIO(), io.BytesIO()
        img.save(png, "PNG")
        img.save(webp, "WEBP")
        out += [{"jpg": jpeg_bytes(i), "txt": f"a photo {i}".encode()},
                {"png": png.getvalue(), "txt": f"a drawing {i}\nsecond caption".encode(), "cls": str(i).encode()},
                {"webp": webp.getvalue(), "txt": f"a picture {i}".encode(), "json": b'{"i": 1}'},
                {"flac": flac_bytes(i), "txt": f"a sound {i}".encode()},
                {"wav": wav_claiming(16000, frames=400), "txt": f"a tone {i}".encode()}]
    return out


def _flac_claiming_frames(total: int) -> bytes:
    """A FLAC whose STREAMINFO says `total` samples (36 bits), whatever its frames hold."""
    data = bytearray(flac_bytes(7))
    bits = int.from_bytes(data[18:26], "big")            # 20 rate | 3 channels | 5 bps | 36 total samples
    bits = (bits & ~((1 << 36) - 1)) | (total & ((1 << 36) - 1))
    data[18:26] = bits.to_bytes(8, "big")
    return bytes(data)


def _palette_png(entries: int, index: int) -> bytes:
    """A palette PNG whose pixels point at entry `index` of a `entries`-colour palette."""
    img = Image.new("P", (6, 6), index)
    img.putpalette([(7 * i) % 256 for i in range(3 * entries)])
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def bad_media() -> list[tuple[str, bytes]]:
    """(extension, bytes) of members that must be skipped, not crash anything."""
    jpg, png = jpeg_bytes(3, size=32), png_claiming(8, 8)
    webp = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(webp, "WEBP")
    webp = webp.getvalue()
    huge_wav = bytearray(wav_claiming(16000, frames=100))
    huge_wav[40:44] = struct.pack("<I", 0xFFFFFFF0)       # the data chunk claims 4 GB
    return [
        ("png", png_claiming(20000, 20000)), ("png", png_claiming(100000, 100000)),
        ("png", png_claiming(1 << 31, 1)), ("png", png_claiming(0, 0)), ("png", png_claiming(0, 5)),
        ("png", png[: len(png) // 2]), ("jpg", jpg[: len(jpg) // 2]), ("jpg", jpg[:3]), ("webp", webp[:30]),
        ("jpg", b""), ("png", b""), ("webp", b"RIFF\x00\x00\x00\x00WEBP"),
        ("png", _palette_png(2, 200)), ("png", _palette_png(256, 255)),
        ("wav", wav_claiming(2_147_483_647)), ("wav", wav_claiming(1, frames=1600)), ("wav", wav_claiming(0)),
        ("wav", wav_claiming(16000, channels=40)), ("wav", wav_claiming(16000, channels=0)),
        ("wav", wav_claiming(16000, channels=3, data=b"\x01\x02\x03\x04\x05")), ("wav", wav_claiming(16000, data=b"")),
        ("wav", bytes(huge_wav)), ("flac", _flac_claiming_frames((1 << 36) - 1)), ("flac", flac_bytes(1)[:60]),
        ("flac", b"fLaC"), ("wav", float_wav(np.array([0.1, np.nan] * 50))),
        ("wav", float_wav(np.array([[0.0, np.inf]] * 50))), ("wav", float_wav(np.zeros(0))),
        ("txt", b"\xff\xfe\xfd bad utf-8"), ("txt", b" \n \n"), ("txt", b"x" * TEN_MB), ("txt", b"[1, 2"),
        ("json", b"[" + b"0," * (1 << 20) + b"0]"), ("cls", b"seven"), ("cls", b"9" * 5000),
    ]


@dataclass
class Fuzzed:
    data: bytes
    good: list[str]                                  # keys of samples built only from good members
    ends: dict[str, int] = field(default_factory=dict)   # key -> the byte after its last member's data
    damage: int | None = None                        # first byte offset touched by tar damage (None: none)
    edits: list[str] = field(default_factory=list)   # the damage applied, e.g. "field size", "flip", "insert pax-file"


def _write(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with SampleWriter(buf) as tar:
        for s in samples:
            tar.write(s["__key__"], {k: v for k, v in s.items() if k != "__key__"})
    return buf.getvalue()


def _headers(data: bytes) -> list[tuple[str, int, int]]:
    """(member name, header offset, data end) of each member of a clean tar."""
    return [(name, off - 512, off + size) for name, off, size, _ in index_members(io.BytesIO(data), lambda n: False)]


FIELDS = {  # header field -> (start, end)
    "name": (0, 100), "mode": (100, 108), "uid": (108, 116), "size": (124, 136), "mtime": (136, 148),
    "chksum": (148, 156), "typeflag": (156, 157), "linkname": (157, 257), "magic": (257, 265), "prefix": (345, 500),
}
_SIZES = [b"%011o\x00" % v for v in (0, 1, 511, 512, 513, 8 ** 11 - 1)] + [
    b"\x80" + (50 << 30).to_bytes(11, "big"), b"\x80" + b"\xff" * 11, b"\xff" * 12,   # base-256: 50 GB, max, -1
    b"-00000000001", b"99999999999\x00", b"abcdefghijk\x00", b"\x00" * 12, b" " * 12, b"0x1000\x00\x00\x00\x00\x00\x00"]
_VALUES = {
    "size": _SIZES,
    "typeflag": [bytes([c]) for c in b"0123456789LKxgSVM?\x00\xff"],
    "name": [b"../../etc/passwd.txt", b"/abs/path.jpg", b"a" * 100, b"k.txt\x00hidden", b"\xff\xfe.txt", b"", b"./.x",
             b"__key__.txt", b"a/../../b.png"],
    "linkname": [b"../../../etc/shadow", b"/", b"x" * 100],
    "mode": [b"7777777\x00", b"-000001\x00", b"zzzzzzz\x00"], "uid": [b"-000001\x00", b"\xff" * 8],
    "mtime": [b"\x80" + b"\xff" * 11, b"garbage!!!!\x00"], "chksum": [b"0000000\x00", b"\x00" * 8, b"7777777\x00"],
    "magic": [b"ustar\x0000", b"ustar  \x00", b"\x00" * 8, b"GNUtar \x00"], "prefix": [b"../" * 50, b"/" * 155],
}


def _fix_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)


def _set_field(data: bytearray, start: int, lo: int, hi: int, value: bytes, fix: bool) -> None:
    """Bytes lo..hi of the header at `start` := value (cut or NUL-padded); fix: recompute its checksum."""
    header = bytearray(data[start:start + 512])
    header[lo:hi] = value[: hi - lo].ljust(hi - lo, b"\x00")
    if fix:
        _fix_checksum(header)
    data[start:start + 512] = header


def _extra_member(kind: str, name: str) -> bytes:
    """A whole tar member (header blocks and data) to insert between samples."""
    info = tarfile.TarInfo(name)
    fmt = tarfile.GNU_FORMAT if kind.startswith("gnu") else tarfile.PAX_FORMAT
    payload = b""
    if kind in ("gnu-file", "pax-file"):
        payload = b"extra member data"
        info.size = len(payload)
    else:
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE,
                     "blockdev": tarfile.BLKTYPE, "dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE,
                     "gnu-link": tarfile.SYMTYPE}[kind]
        info.linkname = "../" * 40 + "etc/passwd"
    head = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    return head + payload + b"\x00" * (-len(payload) % 512)


_EXTRA_KINDS = ["gnu-file", "pax-file", "symlink", "hardlink", "chardev", "blockdev", "dir", "fifo", "gnu-link"]
_EXTRA_NAMES = ["../../escape.jpg", "/etc/cron.d/x.txt", "d" * 300 + "/long.txt", "é" * 120 + ".png",
                "k000.jpg", "dir/", "x"]


@st.composite
def fuzzed_shards(draw) -> Fuzzed:
    goods, bads = good_members(), bad_media()
    samples, good_keys = [], []
    for i in range(draw(st.integers(1, 6))):
        key = f"k{i:03d}"
        members = dict(goods[draw(st.integers(0, len(goods) - 1))])
        if draw(st.integers(0, 2)) == 0:                   # a third of the samples get a bad member
            ext, data = bads[draw(st.integers(0, len(bads) - 1))]
            members[ext] = data
        else:
            good_keys.append(key)
        samples.append(dict(members, __key__=key))
    data = bytearray(_write(samples))
    heads = _headers(bytes(data))
    ends = {}
    for name, _, end in heads:
        ends[name.split(".")[0]] = end
    first_header = {}
    for name, start, _ in heads:
        first_header.setdefault(name.split(".")[0], start)
    damage, edits = None, []

    def touch(pos: int) -> None:
        nonlocal damage
        damage = pos if damage is None else min(damage, pos)

    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["claim", "flip", "truncate", "field", "insert"]))
        if kind == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= 1 << draw(st.integers(0, 7))
                touch(pos)
            edits.append("flip")
        elif kind == "truncate":
            pos = draw(st.integers(0, len(data)))
            del data[pos:]
            touch(pos)
            edits.append("truncate")
        elif kind == "field" and heads:
            _, start, _ = heads[draw(st.integers(0, len(heads) - 1))]
            if start + 512 > len(data):
                continue
            fname = draw(st.sampled_from(sorted(FIELDS)))
            lo, hi = FIELDS[fname]
            extreme = st.sampled_from(_VALUES[fname])
            value = draw(st.one_of(extreme, extreme, extreme, st.binary(min_size=1, max_size=hi - lo)))
            # mostly: damage that passes the checksum
            _set_field(data, start, lo, hi, value, fix=fname != "chksum" and draw(st.integers(0, 4)) > 0)
            touch(start)
            edits.append(f"field {fname}")
        elif kind == "claim" and heads:      # a size field that claims more than the archive holds
            _, start, end = heads[draw(st.integers(0, len(heads) - 1))]
            if start + 512 > len(data):
                continue
            size = draw(st.sampled_from([8 ** 11 - 1, 50 << 30, (1 << 88) - 1, 3 << 30, len(data) - start]))
            _set_field(data, start, 124, 136, b"%011o\x00" % size if size < 8 ** 11 else
                       b"\x80" + size.to_bytes(11, "big"), fix=True)
            touch(start)
            edits.append("claim size")
        elif kind == "insert":
            at = first_header[draw(st.sampled_from(sorted(first_header)))]
            if at > len(data):
                continue
            extra = draw(st.sampled_from(_EXTRA_KINDS))
            blob = _extra_member(extra, draw(st.sampled_from(_EXTRA_NAMES)))
            edits.append(f"insert {extra}")
            data[at:at] = blob
            touch(at)
            shifted = {}
            for k, e in ends.items():
                shifted[k] = e + len(blob) if e > at else e
            ends = shifted
            first_header = {k: (s + len(blob) if s >= at else s) for k, s in first_header.items()}
            heads = []            # offsets of later fields are no longer known: no more field edits
    return Fuzzed(bytes(data), good_keys, ends, damage, edits)


def intact_good_keys(f: Fuzzed) -> list[str]:
    """Good samples wholly before the damage, but the last of them (it may be dropped with the damage: a
    sample is known complete only when the next one starts): these must train."""
    if f.damage is None:
        return list(f.good)
    before = [k for k in f.good if f.ends[k] <= f.damage]
    last_before = max((k for k in f.ends if f.ends[k] <= f.damage), default=None, key=lambda k: f.ends[k])
    return [k for k in before if k != last_before]
