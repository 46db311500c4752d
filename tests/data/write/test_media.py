"""Tests for align.data.write.media: resizing, and the image and audio bytes `align data shards` writes (the
format kept or chosen, EXIF rotation, transparency, 16-bit scans, decoded audio arrays, image quality)."""
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from align.data.write.media import _resized
from align.data.write.shards import write_shards
from tests.wds_helpers import all_tar_members as _all_members


@pytest.mark.parametrize("mode,src,size,expect", [
    ("keep", (40, 20), 16, (32, 16)), ("keep", (20, 40), 16, (16, 32)), ("keep", (10, 10), 16, (16, 16)),
    ("longest", (40, 20), 16, (16, 8)), ("longest", (15, 45), 15, (5, 15)),
    ("center_crop", (40, 20), 16, (16, 16)), ("center_crop", (17, 50), 16, (16, 16)),
    ("border", (40, 20), 16, (16, 16)), ("border", (16, 16), 16, (16, 16)),
])
def test_resize_modes_sizes(mode, src, size, expect):
    assert _resized(Image.new("RGB", src, (255, 0, 0)), size, mode).size == expect


def test_resize_border_pads_black_and_center_crop_keeps_middle():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    out = np.asarray(_resized(img, 16, "border"))  # content 16x8 at rows 4..11
    assert out[:4].max() == 0 and out[12:].max() == 0 and out[4:12].min() > 250
    stripes = Image.new("RGB", (30, 10), (0, 0, 0))
    stripes.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    crop = np.asarray(_resized(stripes, 10, "center_crop"))
    assert crop.shape == (10, 10, 3) and crop.min() > 250


def test_large_jpeg_and_exif_rotation(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, (512, 1024, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    rot = Image.new("RGB", (40, 20), "red")
    exif = rot.getexif()
    exif[0x0112] = 6  # stored 40x20, displayed rotated 90 degrees: 20x40
    rot.save(tmp_path / "rot.jpg", exif=exif)
    pd.DataFrame({"image": ["big.jpg", "rot.jpg"], "text": ["big", "rotated"]}).to_csv(tmp_path / "d.csv")
    write_shards(tmp_path / "d.csv", tmp_path / "o", image_size=64, resize_mode="longest", progress=False)
    m = _all_members(tmp_path / "o")
    assert Image.open(io.BytesIO(m["shard-000000-000000.jpg"])).size == (64, 32)
    assert json.loads(m["shard-000000-000000.json"])["image"] == {"width": 1024, "height": 512, "mode": "RGB"}
    assert Image.open(io.BytesIO(m["shard-000000-000001.jpg"])).size == (32, 64)
    assert json.loads(m["shard-000000-000001.json"])["image"] == {"width": 20, "height": 40, "mode": "RGB"}


def _source_images(tmp_path):
    """One file per case image_format "source" must tell apart; -> {stem: the pixels training should see}."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (28, 20), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "scan.png")                     # a scan: kept byte for byte
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=80)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "web.webp", lossless=True)
    rgba = np.zeros((12, 14, 4), np.uint8)
    rgba[..., 0], rgba[:6, :, 3] = 255, 255                       # red, top half opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    Image.fromarray(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8)).save(tmp_path / "old.bmp")
    rot = Image.new("RGB", (40, 20), "blue")
    exif = rot.getexif()
    exif[0x0112] = 6                                              # displayed rotated: 20 x 40
    rot.save(tmp_path / "turned.jpg", exif=exif)
    flat = np.full((12, 14, 3), 255, np.uint8)
    flat[:6] = (255, 0, 0)                                        # transparency flattened onto white
    return {"scan": np.repeat(grey[..., None], 3, axis=2), "photo": None, "web": None, "clear": flat,
            "old": np.asarray(Image.open(tmp_path / "old.bmp").convert("RGB")), "turned": None}


def test_image_format_source_keeps_the_users_bytes_and_else_stays_lossless(tmp_path):
    from align.media.image import decode_image
    want = _source_images(tmp_path)
    names = {"scan": "scan.png", "photo": "photo.jpg", "web": "web.webp", "clear": "clear.png", "old": "old.bmp",
             "turned": "turned.jpg"}
    pd.DataFrame({"image": list(names.values()), "text": list(names)}).to_csv(tmp_path / "d.csv", index=False)
    stats = write_shards(tmp_path / "d.csv", tmp_path / "o", image_format="source", progress=False)
    assert stats["written"] == 6
    m = _all_members(tmp_path / "o")
    by_stem = {}
    for name, data in m.items():
        if name.endswith(".txt"):
            by_stem[data.decode()] = name[:-len("txt")]
    stored = {stem: next((ext, m[key + ext]) for ext in ("png", "jpg", "webp") if key + ext in m)
              for stem, key in by_stem.items()}
    for stem in ("scan", "photo", "web"):                         # nothing to change: the file itself
        ext, data = stored[stem]
        assert data == (tmp_path / names[stem]).read_bytes() and ext == names[stem].rsplit(".")[1]
    assert np.array_equal(np.asarray(decode_image(stored["scan"][1])), want["scan"])
    for stem in ("clear", "old"):                                 # changed or not storable as is: lossless PNG
        ext, data = stored[stem]
        assert ext == "png" and np.array_equal(np.asarray(decode_image(data)), want[stem])
        assert Image.open(io.BytesIO(data)).mode == "RGB"          # flattened in the shard, not only when read
    ext, data = stored["turned"]                                  # a JPEG that must be rotated stays a JPEG
    assert ext == "jpg" and Image.open(io.BytesIO(data)).size == (20, 40)
    # with a resize every image changes: PNG, but JPEG for the JPEGs
    write_shards(tmp_path / "d.csv", tmp_path / "r", image_format="source", image_size=8, progress=False)
    exts = sorted(n.rsplit(".", 1)[1] for n in _all_members(tmp_path / "r") if n.rsplit(".", 1)[1] in
                  ("png", "jpg", "webp"))
    assert exts == ["jpg", "jpg", "png", "png", "png", "png"]


def test_the_cache_of_a_table_keeps_a_png_scan_byte_for_byte(tmp_path):
    from align.data.write.cached import cached_shards
    _source_images(tmp_path)
    pd.DataFrame({"image": ["scan.png", "photo.jpg"], "text": ["a scan", "a photo"]}).to_csv(tmp_path / "t.csv",
                                                                                          index=False)
    out = cached_shards(tmp_path / "t.csv", tmp_path / "cache", progress=False, printer=lambda s: None)
    data = {n.rsplit(".", 1)[1]: b for n, b in _all_members(Path(out)).items()}
    assert data["png"] == (tmp_path / "scan.png").read_bytes()
    assert data["jpg"] == (tmp_path / "photo.jpg").read_bytes()


def test_a_sixteen_bit_scan_is_written_with_its_tones_and_an_unmappable_float_one_is_skipped(tmp_path):
    """`align data shards` wrote a full-range 16-bit grey PNG as 99.6 % white (PIL's convert clips at 255)."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(pairs / "scan.png")
    Image.fromarray(np.full((8, 8), 3.0, np.float32)).save(pairs / "depth.tiff")
    for k in ("scan", "depth"):
        (pairs / f"{k}.txt").write_text(k)
    stats = write_shards(pairs, tmp_path / "out", image_format="png", progress=False)
    assert stats["written"] == 1 and stats["by_reason"] == {"undecodable image": 1}
    png = [v for k, v in _all_members(tmp_path / "out").items() if k.endswith(".png")]
    got = np.asarray(Image.open(io.BytesIO(png[0])))
    assert got.min() == 0 and got.max() == 255 and abs(float(got.mean()) - 127.5) < 1
    assert "outside [0, 1]" in (tmp_path / "out" / "skipped.jsonl").read_text()


def test_a_decoded_audio_array_is_scaled_and_down_mixed_as_the_towers_read_audio():
    """A datasets-style decoded array: int16 PCM was cast (+-32768 into the FLAC, clipped to full scale), a
    [channels, samples] array was averaged over its samples (one frame per channel); NaN is one skipped row."""
    from types import SimpleNamespace
    from align.data.write.media import encode_audio
    from align.data.write.values import SkipRow
    from align.limits import DataLimits
    job = SimpleNamespace(limits=DataLimits(), sample_rate=16000)
    t = np.arange(1600) / 16000
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)                                      # [1600], half scale
    pcm = np.round(sine * 32767).astype(np.int16)
    stereo_ct = np.stack([pcm, pcm])                                            # [2, 1600]: channels first
    for arr in (pcm, stereo_ct, stereo_ct.T, stereo_ct.astype(np.float64) / 32768):
        flac, meta = encode_audio((arr, 16000), "clip.wav", job)
        wave, sr = sf.read(io.BytesIO(flac), dtype="float32")
        assert sr == 16000 and meta["duration"] == 0.1 and wave.shape == (1600,)
        np.testing.assert_allclose(wave, sine, atol=2e-4)
    with pytest.raises(SkipRow, match="clip.wav.*NaN"):
        encode_audio((np.array([0.1, np.nan, 0.2], np.float32), 16000), "clip.wav", job)


def test_image_quality_is_used_by_jpg_and_source_and_refused_with_png(tmp_path, capsys):
    """--image-quality: a lower quality writes other JPEG bytes (jpg, and a JPEG that source must re-encode);
    with png (lossless, no quality) it is one line and exit 2, nothing written."""
    from align.cli import main
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.jpg", quality=95)
    (tmp_path / "in" / "a.txt").write_text("noise")

    def jpeg(name, *args):
        assert main(["data", "shards", str(tmp_path / "in"), "--out", str(tmp_path / name), *args]) == 0
        return next(v for k, v in _all_members(tmp_path / name).items() if k.endswith(".jpg"))
    for args in ([], ["--image-format", "source", "--image-size", "16"]):
        assert jpeg(f"q10{len(args)}", "--image-quality", "10", *args) != jpeg(f"q{len(args)}", *args)
    capsys.readouterr()
    assert main(["data", "shards", str(tmp_path / "in"), "--out", str(tmp_path / "png"), "--image-format", "png",
                 "--image-quality", "50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-quality" in err[0] and "png" in err[0]
    assert not (tmp_path / "png").exists()
    assert main(["data", "shards", str(tmp_path / "in"), "--out", str(tmp_path / "png"), "--image-format", "png"]) == 0
