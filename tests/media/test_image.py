"""align.media.image: the pixel count is checked from the header, before any pixel is decoded."""
import io

import pytest
from PIL import Image

from align.limits import LimitExceeded
from align.media.image import decode_image
from tests.wds_helpers import png_claiming


def test_a_20000_by_20000_png_is_refused_from_its_header(monkeypatch):
    data = png_claiming(20000, 20000)
    assert len(data) < 200

    def no_load(*a, **k):
        raise AssertionError("decoded the pixels of a refused header")

    monkeypatch.setattr(Image.Image, "load", no_load)
    with pytest.raises(LimitExceeded) as exn:
        decode_image(data)
    assert exn.value.reason == "image too large" and "400000000 pixels" in str(exn.value)
    assert "data.limits.max_image_pixels=89478485" in str(exn.value)       # the limit in force, not PIL's 2x


def test_the_pixel_limit_is_one_setting_both_ways():
    """Smaller than PIL's own bound refuses earlier; larger lifts PIL's bound (it would refuse past 2x its own)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "PNG")
    assert decode_image(buf.getvalue()).size == (64, 64)
    with pytest.raises(LimitExceeded, match="image too large"):
        decode_image(buf.getvalue(), {"max_image_pixels": 4095})
    big = png_claiming(20000, 20000)   # 400 M pixels: PIL's default (89 M, error past 179 M) refuses it
    with pytest.raises(Exception) as exn:
        decode_image(big, {"max_image_pixels": 500_000_000})
    assert not isinstance(exn.value, LimitExceeded)   # allowed by the limit: fails later, on its broken pixel data


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", png_claiming(0, 10), png_claiming(8, 8)[:40]])
def test_empty_zero_size_and_truncated_images_are_errors_not_crashes(data):
    with pytest.raises(Exception) as exn:
        decode_image(data)
    assert not isinstance(exn.value, (MemoryError, LimitExceeded))


def test_unreadable_bytes_are_named_without_a_buffer_repr():
    from PIL import UnidentifiedImageError
    from align.media.image import open_image
    with pytest.raises(UnidentifiedImageError) as e:
        open_image(b"this is not an image at all")
    assert "object at 0x" not in str(e.value) and "27 bytes" in str(e.value)


def _saved(arr, fmt):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    return b.getvalue()


def test_sixteen_bit_and_float_grey_are_scaled_to_eight_bits_not_clipped():
    """PIL's convert("RGB") clips: a 16-bit scan came out 99.6 % white, a float image in [0, 1] black."""
    import numpy as np
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = np.asarray(decode_image(_saved(ramp, "PNG")))                      # [64, 64, 3] uint8
    assert Image.open(io.BytesIO(_saved(ramp, "PNG"))).mode == "I;16"
    assert img.shape == (64, 64, 3) and img.min() == 0 and img.max() == 255
    assert abs(float(img.mean()) - 127.5) < 1 and len(np.unique(img)) == 256
    np.testing.assert_array_equal(img[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    half = np.asarray(decode_image(_saved(np.full((8, 8), 0.5, np.float32), "TIFF")))
    assert (half == 128).all()
    wide = np.asarray(decode_image(_saved(np.full((8, 8), 1000, np.int32), "TIFF")))
    assert (wide == 4).all()                                                  # 1000 of 65535


@pytest.mark.parametrize("arr, msg", [("float_big", r"float image with values in \[0, 2\], outside \[0, 1\]"),
                                      ("int_big", r"32-bit integer image .* outside \[0, 65535\]"),
                                      ("float_nan", "NaN or infinite")])
def test_grey_values_without_an_eight_bit_meaning_are_refused(arr, msg):
    import numpy as np
    a = {"float_big": np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8),
         "int_big": np.full((8, 8), 70000, np.int32),
         "float_nan": np.full((8, 8), np.nan, np.float32)}[arr]
    with pytest.raises(ValueError, match=msg):
        decode_image(_saved(a, "TIFF"))


def test_exif_orientation_and_transparency_decode_as_a_viewer_shows_them():
    """Training, bench, embed and search decode through decode_image, and `align data shards` stores images
    turned upright and flattened onto white: a phone photo tagged "rotate 90" and a logo with a transparent
    background must decode the same from a folder, a CSV or a raw shard (they came out on their side and on
    the hidden colour under the transparency, black here)."""
    import numpy as np
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)                                   # red on the left of the stored pixels
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6                                              # displayed turned 90 degrees clockwise
    b = io.BytesIO()
    img.save(b, "PNG", exif=exif)                                 # lossless, so the pixels compare exactly
    np.testing.assert_array_equal(np.asarray(decode_image(b.getvalue())), np.rot90(stored, k=-1))
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 2], rgba[:3, :, 3] = 255, 255                        # blue, top half opaque, bottom transparent
    want = np.full((6, 8, 3), 255, np.uint8)
    want[:3] = (0, 0, 255)
    pal = Image.fromarray(rgba, "RGBA").convert("P")               # palette PNG with a transparent index
    for im in (Image.fromarray(rgba, "RGBA"), pal):
        got = np.asarray(decode_image(_saved_image(im)))
        np.testing.assert_array_equal(got, want)
    la = np.asarray(decode_image(_saved_image(Image.fromarray(rgba, "RGBA").convert("LA"))))
    assert (la[3:] == 255).all() and (la[:3] == la[0, 0]).all() and la[0, 0, 0] < 255


def _saved_image(img) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def test_the_image_transform_names_what_it_got_when_it_is_not_a_pil_image():
    """model.image_transform (UprightThen) given a numpy array, a tensor, a path or None failed with
    "'ndarray' object has no attribute 'getexif'", and a 0x0 image with ZeroDivisionError; it is one line saying what
    it got (and how to make a PIL image), and the transform it wraps never runs."""
    import numpy as np
    import torch

    from align.errors import AlignError
    from align.media.image import UprightThen
    seen = []
    t = UprightThen(lambda img: seen.append(img.mode) or img.size)
    for bad, name in [(np.zeros((4, 4, 3), np.uint8), "ndarray"), (torch.zeros(3, 4, 4), "Tensor"),
                      ("cat.png", "str"), (None, "NoneType")]:
        with pytest.raises(AlignError, match=f"image_transform: expected a PIL image, got {name}: .*fromarray"):
            t(bad)
    for size in ((0, 0), (7, 0)):       # torchvision's resize divided by zero
        with pytest.raises(AlignError, match=f"image_transform: the image has no pixels \\({size[0]}x{size[1]}\\)"):
            t(Image.new("RGB", size))
    assert seen == [] and t(Image.new("L", (5, 3))) == (5, 3) and seen == ["RGB"]


def _file(img, fmt, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def _mode_cases():
    """(name, a PIL image or file bytes of that mode, the RGB a viewer shows): every PIL mode a decoder or a user
    hands over. Transparent pixels show white; premultiplied La/RGBa failed with PIL's "conversion from La to L
    not supported" (La) or showed the colour under the transparency (RGBa, a palette of RGBA colours, tRNS keys)."""
    import numpy as np
    W, R = (255, 255, 255), (255, 0, 0)
    la = Image.fromarray(np.array([[[200, 255], [50, 0]]], np.uint8), "LA")         # opaque grey, transparent
    rgba = Image.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 255, 0]]], np.uint8), "RGBA")
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0])
    pa = pal.convert("PA")
    pa.putalpha(Image.fromarray(np.array([[255, 0]], np.uint8)))
    grey16 = np.array([[65535, 7, 0]], np.uint16)
    bits = Image.fromarray(np.array([[True, False]])).convert("1")
    return [
        ("La", la.convert("La"), [(200,) * 3, W]),
        ("RGBa", rgba.convert("RGBa"), [R, W]),
        ("LA png", _file(la, "PNG"), [(200,) * 3, W]),
        ("PA tiff", _file(pa, "TIFF"), [R, W]),
        ("P with a transparent index", _file(pal, "PNG", transparency=1), [R, W]),
        ("P of RGBA colours", rgba.quantize(2), [R, W]),
        ("1", _file(bits, "PNG"), [W, (0, 0, 0)]),
        ("1 with a transparent colour", _file(bits, "PNG", transparency=0), [W, W]),
        ("L with a transparent grey", _file(Image.fromarray(np.array([[30, 9]], np.uint8)), "PNG", transparency=9),
         [(30,) * 3, W]),
        ("RGB with a transparent colour", _file(Image.fromarray(np.array([[[255, 0, 0], [1, 2, 3]]], np.uint8)),
                                                "PNG", transparency=(1, 2, 3)), [R, W]),
        ("I;16", _file(Image.fromarray(grey16), "PNG"), [W, (0,) * 3, (0,) * 3]),
        ("I;16 with a transparent grey", _file(Image.fromarray(grey16), "PNG", transparency=7),
         [W, W, (0,) * 3]),
        ("I", _file(Image.fromarray(np.array([[65535, 0]], np.int32)), "TIFF"), [W, (0,) * 3]),
        ("F", _file(Image.fromarray(np.array([[1.0, 0.5]], np.float32)), "TIFF"), [W, (128,) * 3]),
        ("CMYK", _file(Image.fromarray(np.array([[[0, 255, 255, 0], [0, 0, 0, 0]]], np.uint8), "CMYK"), "TIFF"),
         [R, W]),
    ]


@pytest.mark.parametrize("case", _mode_cases(), ids=lambda c: c[0])
def test_every_pil_mode_comes_out_rgb_as_a_viewer_shows_it(case):
    import numpy as np

    from align.media.image import UprightThen, upright_rgb
    name, given, want = case
    img = decode_image(given) if isinstance(given, bytes) else upright_rgb(given)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img)[0], np.array(want, np.uint8))
    if not isinstance(given, bytes):            # model.image_transform(pil_image): the same pixels
        assert UprightThen(lambda im: np.asarray(im))(given).tolist() == np.asarray(img).tolist()


def test_a_half_transparent_premultiplied_pixel_flattens_as_its_straight_alpha_twin():
    import numpy as np

    from align.media.image import upright_rgb
    la = Image.fromarray(np.array([[[100, 128], [240, 64]]], np.uint8), "LA")
    rgba = la.convert("RGBA")
    for straight, premultiplied in ((la, la.convert("La")), (rgba, rgba.convert("RGBa"))):
        got = np.asarray(upright_rgb(premultiplied)).astype(int)
        assert np.abs(got - np.asarray(upright_rgb(straight)).astype(int)).max() <= 2   # 8-bit rounding
        assert 170 <= got[0, 0, 0] <= 185                                  # 100 at alpha 128 over white: ~177
