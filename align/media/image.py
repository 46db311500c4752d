"""Image bytes -> RGB PIL image, with the pixel count checked from the header before any pixel is decoded.

PIL's own guard (`Image.MAX_IMAGE_PIXELS`, a warning past it, `DecompressionBombError` past twice it)
is replaced by one limit, `data.limits.max_image_pixels` (align.limits): a 48 KB PNG that claims
20000 x 20000 pixels is refused as `image too large` whatever PIL's setting, and a recipe may allow
larger images than PIL's default.
"""
from __future__ import annotations

import io
import re
import warnings
from typing import Optional, Union

from align.errors import AlignError
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
        except Image.DecompressionBombError as exn:   # past twice PIL's bound: its message quotes PIL's number
            found = re.search(r"\((\d+) pixels\)", str(exn))
            claimed = f"{found.group(1)} pixels" if found else "an image size"
            raise LimitExceeded(IMAGE_TOO_LARGE, f"{claimed}, over data.limits.max_image_pixels="
                                                 f"{limits.max_image_pixels}", "max_image_pixels") from None
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
    return upright_rgb(img)


def upright_rgb(img):
    """A loaded PIL image -> RGB as a viewer shows it, the one normalisation every reader shares (training,
    `align data shards`, bench, embed, search): its EXIF orientation applied (a phone photo stored on its side
    and tagged "rotate 90"), transparency flattened onto white (not onto the hidden colour under it, often
    black): an alpha channel (RGBA, LA, PA, the premultiplied RGBa and La, a palette of RGBA colours) or a PNG/GIF
    transparent colour (P, 1, L, RGB, 16-bit grey); high-bit-depth grey scaled (to_rgb). ValueError as to_rgb."""
    from PIL import Image, ImageOps

    if img.getexif().get(ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in _PREMULTIPLIED:       # PIL converts "La" to nothing but "LA" ("conversion from La to L")
        img = img.convert(_PREMULTIPLIED[img.mode])
    key = img.info.get("transparency")
    if img.mode in _SIXTEEN_BIT + ("I",) and isinstance(key, int):   # a 16-bit PNG's tRNS grey: scaled, then masked
        import numpy as np
        return _on_white(to_rgb(img), Image.fromarray(((np.asarray(img) != key) * 255).astype(np.uint8), "L"))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "1", "L", "RGB") and key is not None) or \
            (img.mode == "P" and getattr(img.palette, "mode", None) == "RGBA"):   # PIL's own RGBA -> P
        rgba = img.convert("RGBA")
        return _on_white(rgba, rgba.getchannel("A"))
    return to_rgb(img)


def _on_white(img, mask):
    """RGB: `img` pasted onto white through `mask` (an L image, 255 opaque)."""
    from PIL import Image

    flat = Image.new("RGB", img.size, (255, 255, 255))
    flat.paste(img, mask=mask)
    return flat


def transform_shape(transform) -> Optional[tuple]:
    """The shape `transform` (PIL image -> tensor) makes of a square and of a wide image when they agree (a
    transform to a fixed size: what an image tower's encode takes); None when they differ (it keeps the aspect
    ratio) or there is no transform."""
    from PIL import Image

    if transform is None:
        return None
    square, wide = (tuple(transform(Image.new("RGB", size)).shape) for size in ((256, 256), (320, 192)))
    return square if square == wide else None


class UprightThen:
    """A model's image transform that first makes the PIL image upright RGB (`upright_rgb`), so that
    `align.load(...).image_transform(Image.open(path))` sees the pixels `align embed` / training decode from the same
    file. Idempotent on a decoded image (already upright, RGB). A class, not a closure: DataLoader workers pickle it."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        if not hasattr(img, "getexif"):   # a numpy array, tensor, path or None: "no attribute 'getexif'" before
            raise AlignError(f"image_transform: expected a PIL image, got {type(img).__name__}: open a file with "
                             "PIL.Image.open(path), an HWC uint8 array with PIL.Image.fromarray(array)")
        if 0 in img.size:                 # torchvision's resize: ZeroDivisionError
            raise AlignError(f"image_transform: the image has no pixels ({img.size[0]}x{img.size[1]})")
        return self.transform(upright_rgb(img))

    def __repr__(self) -> str:
        return f"UprightThen({self.transform!r})"


# PIL modes whose values are not 0..255: convert("RGB") clips them, so a 16-bit scan (0..65535) comes out
# white and a float image in 0..1 black. 16-bit grey (I;16*; I from a 16-bit PNG or TIFF) is scaled from
# 0..65535, float grey (F) from 0..1; values outside those ranges have no agreed 8-bit meaning and are refused.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}   # colour multiplied by alpha -> straight alpha, then flattened
ORIENTATION = 0x0112     # the EXIF tag of how a stored image is turned for display; 5-8 swap width and height


def to_rgb(img):
    """A decoded PIL image -> RGB, high-bit-depth grey scaled to 8 bits (not clipped); ValueError for a 32-bit
    integer image outside 0..65535 or a float one outside [0, 1] (the caller skips it as undecodable)."""
    if img.mode in _SIXTEEN_BIT + ("I", "F"):
        import numpy as np
        from PIL import Image

        a = np.asarray(img).astype(np.float64)            # [H, W]
        if not np.isfinite(a).all():
            raise ValueError(f"{img.mode} image with NaN or infinite values")
        top = 1.0 if img.mode == "F" else 65535.0
        if a.size and (a.min() < 0 or a.max() > top):
            raise ValueError(f"{'float' if img.mode == 'F' else '32-bit integer'} image with values in "
                             f"[{a.min():g}, {a.max():g}], outside [0, {top:g}]: convert it to 8 or 16 bits")
        img = Image.fromarray(np.rint(a * (255.0 / top)).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")
