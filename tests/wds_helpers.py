"""Tiny webdataset shards and cheap transforms shared by the pipeline tests."""

import io

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from align.wds.writer import write_shard as _write

L_TEXT = 4


def jpeg_bytes(seed: int = 0, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def flac_bytes(seed: int = 0, n: int = 800, sr: int = 16000) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(n) * 0.1).astype(np.float32), sr, format="FLAC")
    return buf.getvalue()


def write_shard(path, samples: list[dict]) -> str:
    """samples: [{"__key__": k, ext: bytes | str}] -> a tar at `path` (align's one writer)."""
    return _write(path, samples)


def member_offset(path, name: str) -> int:
    """Where member `name`'s data starts in the tar at `path` (to cut a shard inside it)."""
    from align.wds.reader import index_members

    with open(path, "rb") as f:
        return next(offset for n, offset, _, _ in index_members(f, lambda n: False) if n == name)


def image_text(key: str, seed: int = 0, caption: str | None = None) -> dict:
    return {"__key__": key, "jpg": jpeg_bytes(seed), "txt": caption or f"a photo {key}"}


def audio_text(key: str, seed: int = 0, caption: str | None = None) -> dict:
    return {"__key__": key, "flac": flac_bytes(seed), "txt": caption or f"a sound {key}"}


def make_shards(root, n_shards: int, per_shard: int, kind=image_text, prefix: str = "s") -> tuple[list[str], list[str]]:
    """n_shards tars of per_shard samples -> (shard paths, all keys)."""
    root.mkdir(parents=True, exist_ok=True)
    paths, keys = [], []
    for i in range(n_shards):
        samples = [kind(f"{prefix}{i:02d}_{j:03d}", seed=i * 1000 + j) for j in range(per_shard)]
        keys += [s["__key__"] for s in samples]
        paths.append(write_shard(root / f"{prefix}-{i:03d}.tar", samples))
    return paths, keys


def image_tf(img) -> torch.Tensor:  # PIL -> [3, 4, 4]
    return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1).contiguous()


def text_tf(captions: list[str]) -> torch.Tensor:  # [str] -> LongTensor[1, L_TEXT] of char codes
    out = torch.zeros(len(captions), L_TEXT, dtype=torch.long)
    for i, c in enumerate(captions):
        codes = [ord(ch) for ch in c[:L_TEXT]]
        out[i, : len(codes)] = torch.tensor(codes)
    return out


def audio_tf(wave_sr) -> torch.Tensor:  # (wave [T], sr) -> [2, 8] fixed-size "features"
    wave, sr = wave_sr
    w = np.zeros(16, dtype=np.float32)
    w[: min(16, len(wave))] = wave[:16]
    return torch.from_numpy(w).view(2, 8) + sr * 0


TRANSFORMS = {"image": image_tf, "text": text_tf, "audio": audio_tf}


def all_keys(loader) -> list[list[str]]:
    """One epoch of the loader -> list of per-batch key lists."""
    return [list(b["__key__"]) for b in loader]


def flat(batches: list[list[str]]) -> list[str]:
    return [k for b in batches for k in b]


# -- hostile inputs: headers that claim what the bytes do not hold (issue 24) -------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header that claims width x height pixels (a few bytes of pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def wav_claiming(sample_rate: int, frames: int = 160, channels: int = 1, data: bytes | None = None) -> bytes:
    """A 16-bit PCM WAV whose header says `sample_rate` and `channels`, holding `frames` frames (or `data`)."""
    import struct

    body = data if data is not None else (np.arange(frames * channels, dtype=np.int16) % 50).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate & 0xFFFFFFFF,
                      (sample_rate * channels * 2) & 0xFFFFFFFF, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(body)) + body)


def float_wav(wave: np.ndarray, sr: int = 16000) -> bytes:
    """A float32 WAV of `wave` ([T] or [T, C]) as given: NaN and Inf stay."""
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def set_member_size(path, name: str, size: int) -> None:
    """Rewrite the size field of member `name`'s header in the tar at `path` (checksum fixed): the header
    then claims `size` bytes whatever the archive holds, as after a flipped bit."""
    offset = member_offset(path, name) - 512
    with open(path, "r+b") as f:
        f.seek(offset)
        header = bytearray(f.read(512))
        header[124:136] = (b"%011o\x00" % size) if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        f.seek(offset)
        f.write(bytes(header))


def tar_members(path) -> dict:
    """A tar's members -> {member name: bytes}, in archive order."""
    import tarfile
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf}


def all_tar_members(folder) -> dict:
    """tar_members of every *.tar in `folder` (a pathlib.Path), in file-name order, merged."""
    res = {}
    for p in sorted(folder.glob("*.tar")):
        res.update(tar_members(p))
    return res
