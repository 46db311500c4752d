"""Re-encoding one row's media for shards: images -> RGB jpg/webp/png (optionally resized), audio -> mono FLAC.

`encode_image` / `encode_audio` take the job's settings (image_size, resize_mode, image_format,
image_quality, sample_rate) and raise `SkipRow(reason, detail)` for media that cannot be decoded.

image_format "source" keeps the user's pixels: a JPEG, PNG or WebP that needs no change (no resize, no EXIF
rotation, RGB or grey, no transparency to flatten) is stored as its own bytes (its metadata, EXIF included,
comes along), which training decodes to the same RGB pixels as the writer would have; one that must change is
re-encoded as PNG (lossless), or as JPEG at image_quality when it was a JPEG already (a photo's PNG would be
several times its size). The caches of `data.train=pairs.csv` write this way (align.data.write.cached), so a
scan or a screenshot is never JPEG-ed.
"""
from __future__ import annotations

import io
from typing import Any, Dict, Optional, Tuple

import numpy as np

from align.media.audio import decode_audio, encode_flac, resample, to_mono
from align.media.image import ORIENTATION, open_image, upright_rgb
from align.data.stream.faults import UNDECODABLE_AUDIO, UNDECODABLE_IMAGE
from align.data.write.values import SkipRow
from align.errors import DataError
from align.limits import LimitExceeded, check_audio_header, check_image_size

RESIZE_MODES = ("keep", "center_crop", "border", "longest")
IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "source": None}
SOURCE_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}   # formats "source" stores as they are


def _resized(img, size: int, mode: str):
    """Resize an RGB PIL image: keep (shorter side = size), longest (longer side =
    size), center_crop (size x size), border (longer side = size, padded black)."""
    from PIL import Image
    w, h = img.size
    short = mode in ("keep", "center_crop")
    scale = size / (min(w, h) if short else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (w >= h) != short:
        nw = size   # exact on the side that defines the scale, despite rounding
    else:
        nh = size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if mode == "center_crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif mode == "border":
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        img = canvas
    return img


def encode_image(payload, name: Optional[str], job) -> Tuple[bytes, Dict[str, Any], str]:
    """(bytes, meta, the shard extension they go under) for one image, or SkipRow."""
    from PIL import UnidentifiedImageError
    shown = repr(name) if name else "bytes"
    source = None                        # the decoded file's format (bytes payloads), for image_format "source"
    if isinstance(payload, (bytes, bytearray)):
        try:
            img = open_image(bytes(payload), job.limits)   # pixels checked from the header first
            w, h = img.size
            orientation = img.getexif().get(ORIENTATION, 1)  # 5-8 swap width and height
            if orientation in (5, 6, 7, 8):
                w, h = h, w
            meta = {"width": w, "height": h, "mode": img.mode}
            if job.image_size and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target
                # (several times faster on large photos); the short side stays >= its target.
                short = job.image_size if job.resize_mode in ("keep", "center_crop") else \
                    max(1, round(min(w, h) * job.image_size / max(w, h)))
                img.draft("RGB", (short, short))
            source = img.format
            img.load()
            if (job.image_format == "source" and not job.image_size and orientation == 1
                    and img.mode in ("RGB", "L") and source in SOURCE_EXTS):
                return bytes(payload), meta, SOURCE_EXTS[source]    # decoded fine, nothing to change: as it is
        except LimitExceeded as e:
            raise SkipRow(e.reason, f"image: {shown}: {e.detail}") from None
        except UnidentifiedImageError:
            raise SkipRow(UNDECODABLE_IMAGE, f"image: cannot identify image file {shown}") from None
        except Exception as e:  # PIL plugins raise OSError, ValueError, SyntaxError...
            raise SkipRow(UNDECODABLE_IMAGE, f"image: cannot decode {shown} ({type(e).__name__}: {e})") from None
    else:
        img = payload
        meta = {"width": img.size[0], "height": img.size[1], "mode": img.mode}
        try:
            check_image_size(img.size[0], img.size[1], job.limits)
        except LimitExceeded as e:
            raise SkipRow(e.reason, f"image: {shown}: {e.detail}") from None
    try:
        img = upright_rgb(img)   # as training decodes: EXIF-rotated, transparency on white, 16-bit grey scaled
    except Exception as e:      # ValueError (grey without an 8-bit meaning), PIL's errors from a damaged EXIF
        raise SkipRow(UNDECODABLE_IMAGE, f"image: {shown}: {e}") from None
    if job.image_size:
        img = _resized(img, job.image_size, job.resize_mode)
    buf = io.BytesIO()
    fmt = IMAGE_FORMATS[job.image_format] or ("JPEG" if source == "JPEG" else "PNG")
    if fmt == "PNG":
        img.save(buf, fmt, compress_level=6)
    else:
        img.save(buf, fmt, quality=job.image_quality)
    return buf.getvalue(), meta, SOURCE_EXTS[fmt]


def encode_audio(payload, name: Optional[str], job) -> Tuple[bytes, Dict[str, Any]]:
    shown = repr(name) if name else "bytes"
    if isinstance(payload, tuple):  # an already decoded datasets Audio array
        wave, sr = payload
        raw = np.asarray(wave)
        try:
            # to_mono as the towers' transforms: int PCM scaled to [-1, 1] (it was cast: +-32768 into the FLAC's
            # clip), [C, T] or [T, C] down-mixed over the shorter axis, empty / NaN refused
            wave = to_mono(raw, f"audio: {shown}")
            check_audio_header(len(wave), int(sr), min(raw.shape) if raw.ndim == 2 else 1, job.limits)
        except LimitExceeded as e:
            raise SkipRow(e.reason, f"audio: {shown}: {e.detail}") from None
        except DataError as e:
            raise SkipRow(UNDECODABLE_AUDIO, str(e)) from None
    else:
        try:
            wave, sr = decode_audio(payload, name=shown, limits=job.limits)
        except LimitExceeded as e:
            raise SkipRow(e.reason, f"audio: {e.detail}") from None
        except DataError as e:  # names the file and what is wrong
            raise SkipRow(UNDECODABLE_AUDIO, f"audio: {e}") from None
    meta = {"duration": round(len(wave) / sr, 6), "sample_rate": int(sr)}
    return encode_flac(resample(wave, int(sr), job.sample_rate), job.sample_rate), meta
