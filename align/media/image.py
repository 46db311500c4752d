"""Image bytes -> RGB PIL image, with the pixel count checked from the header before any pixel is decoded.

PIL's own guard (`Image.MAX_IMAGE_PIXELS`, a warning past it, `DecompressionBombError` past twice it)
is replaced by one limit, `data.limits.max_image_pixels` (align.limits): a 48 KB PNG that claims
20000 x 20000 pixels is refused as `image too large` whatever PIL's setting, and a recipe may allow
larger images than PIL's default.
"""
from __future__ import annotations

import io
import warnings
from typing import Optional, Union

from align.limits import DataLimits, IMAGE_TOO_LARGE, LimitExceeded, as_limits, check_image_size


def open_image(data: Union[bytes, str], limits: Optional[DataLimits] = None):
    """Open (header only) an image from bytes or a path; LimitExceeded when it claims too many pixels."""
    from PIL import Image

    limits = as_limits(limits)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_image_pixels   # PIL must not refuse what the recipe allows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the check below decides
        try:
            img = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        except Image.DecompressionBombError as exn:
            raise LimitExceeded(IMAGE_TOO_LARGE, str(exn)) from None
        except Image.UnidentifiedImageError:
            # PIL's own message ends in the repr of the in-memory buffer ("<_io.BytesIO object at 0x...>"),
            # which tells a user nothing; the caller names the file, key or upload
            what = data if isinstance(data, str) else f"{len(data)} bytes"
            raise Image.UnidentifiedImageError(f"cannot identify image file ({what}): not a format PIL "
                                               f"reads") from None
    check_image_size(img.size[0], img.size[1], limits)
    return img


def decode_image(data: Union[bytes, str], limits: Optional[DataLimits] = None):
    """Image bytes or path -> fully decoded RGB PIL.Image (so truncation is caught here).

    Raises LimitExceeded (too many pixels) or PIL's own errors (undecodable)."""
    from PIL import Image

    img = open_image(data, limits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img.load()
    return img.convert("RGB")
