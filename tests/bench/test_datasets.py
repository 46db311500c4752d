"""Dataset layouts: CLIP_benchmark wds, class folders, Hugging Face save_to_disk, CSV; errors name the path."""
import json
import os
import tarfile

import numpy as np
import pytest

from align.bench.datasets import DATASET_TYPES, SampleError, open_dataset
from align.errors import ConfigError, DataError
from tests.bench.conftest import classification_wds, png_bytes, wav_bytes, write_wds


def test_registered_types():
    assert DATASET_TYPES.names() == ["audiofolder", "csv", "hf", "imagefolder", "wds"]


def test_wds_classification_layout(tmp_path):
    root = classification_wds(tmp_path / "d", n=10, n_classes=5, per_shard=3, audio=True)
    ds = open_dataset(root, "wds")
    assert len(ds) == 10 and ds.modalities == ["image", "audio"]
    assert list(ds.labels) == [i % 5 for i in range(10)]
    assert ds.classnames[1] == "class1 thing7" and ds.templates == ["a photo of a {c}.", "a picture of the {c}."]
    assert ds.items[3].key == "1.tar:s0000003"  # 3 per shard, shard order kept
    img = ds.load(9, "image")
    assert img.mode == "RGB" and img.size == (12, 12)
    wave, sr = ds.load(0, "audio")
    assert wave.dtype == np.float32 and wave.ndim == 1 and sr == 8000


def test_wds_prefers_clip_benchmark_image_key_order_and_reads_captions(tmp_path):
    rng = np.random.default_rng(0)
    jpg, png = png_bytes(rng, 5, "JPEG"), png_bytes(rng, 7, "PNG")
    root = write_wds(tmp_path / "d", [("a", {"jpg": jpg, "png": png, "txt": "one\ntwo\nthree"})])
    ds = open_dataset(root, "wds")
    assert ds.load(0, "image").size == (7, 7)  # png before jpg, as CLIP_benchmark's to_tuple list
    assert ds.items[0].captions == ["one", "two", "three"] and ds.modalities == ["image", "text"]


def test_wds_bad_label_is_reported_not_fatal(tmp_path):
    rng = np.random.default_rng(0)
    samples = [("a", {"png": png_bytes(rng), "cls": "x1"}), ("b", {"png": png_bytes(rng), "cls": "2"}),
               ("c", {"png": png_bytes(rng), "cls": "-2"})]
    root = write_wds(tmp_path / "d", samples)
    ds = open_dataset(root, "wds")
    assert list(ds.labels) == [-1, 2, -1]
    assert ds.problems == ["0.tar:a: cls 'x1' is not an integer", "0.tar:c: cls -2 is negative; left unlabelled"]


def test_wds_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nope"), "wds")
    os.makedirs(tmp_path / "e")
    with pytest.raises(DataError, match=r"nshards.txt is missing \(split 'test'\)"):
        open_dataset(str(tmp_path / "e"), "wds")
    root = classification_wds(tmp_path / "d", n=4)
    with open(os.path.join(root, "test", "nshards.txt"), "w") as f:
        f.write("3\n")
    with pytest.raises(DataError, match=r"1\.tar cannot be opened"):
        open_dataset(root, "wds")
    with pytest.raises(ConfigError, match="option 'image_column' is not valid for type 'wds'"):
        open_dataset(root, "wds", image_column="x")
    with pytest.raises(ConfigError, match="unknown dataset type 'tfds'"):
        open_dataset(root, "tfds")


def test_empty_wds_is_a_data_error(tmp_path):
    root = write_wds(tmp_path / "d", [])
    with open(os.path.join(root, "test", "nshards.txt"), "w") as f:
        f.write("0\n")
    with pytest.raises(DataError, match="has no items"):
        open_dataset(root, "wds")


def test_imagefolder_and_classnames_override(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("b_cat", 2), ("a_dog", 3)):
        os.makedirs(tmp_path / "f" / cls / "sub")
        for j in range(n):
            (tmp_path / "f" / cls / "sub" / f"{j}.png").write_bytes(png_bytes(rng))
    (tmp_path / "f" / "a_dog" / "notes.txt").write_text("x")
    ds = open_dataset(str(tmp_path / "f"), "imagefolder")
    assert ds.classnames == ["a_dog", "b_cat"] and list(ds.labels) == [0, 0, 0, 1, 1]
    assert ds.items[0].key == os.path.join("a_dog", "sub", "0.png") and "1 files" in ds.problems[0]
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    ds = open_dataset(str(tmp_path / "f"), "imagefolder", classnames=str(tmp_path / "names.txt"))
    assert ds.classnames == ["dog", "cat"]
    (tmp_path / "bad.txt").write_text("dog\n")
    with pytest.raises(DataError, match="2 class folders but the class names list has 1"):
        open_dataset(str(tmp_path / "f"), "imagefolder", classnames=str(tmp_path / "bad.txt"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(str(tmp_path / "empty"), "imagefolder")


def test_audiofolder_decodes_and_skips_broken(tmp_path):
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "a" / "rain")
    (tmp_path / "a" / "rain" / "0.flac").write_bytes(wav_bytes(rng, fmt="FLAC"))
    (tmp_path / "a" / "rain" / "1.wav").write_bytes(b"RIFF not really")
    ds = open_dataset(str(tmp_path / "a"), "audiofolder", templates="audio")
    assert ds.modalities == ["audio"] and ds.templates[0] == "the sound of {c}."
    assert ds.load(0, "audio")[0].shape == (80,)
    with pytest.raises(SampleError, match=r"1\.wav.*cannot decode audio"):
        ds.load(1, "audio")


def test_a_device_in_a_class_folder_is_refused_unread(tmp_path):
    """A link to /dev/zero named x.wav has size 0 to stat, and reading it to its end filled memory for ever: a
    path that is not a regular file is refused before it is opened (/dev/null here: the same stat, and harmless
    to read before the fix, when it failed as undecodable audio instead)."""
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "a" / "rain")
    (tmp_path / "a" / "rain" / "0.wav").write_bytes(wav_bytes(rng))
    os.symlink("/dev/null", tmp_path / "a" / "rain" / "1.wav")
    ds = open_dataset(str(tmp_path / "a"), "audiofolder")
    assert ds.load(0, "audio")[0].shape == (80,)
    with pytest.raises(SampleError, match=r"rain/1\.wav is not a regular file \(a device, pipe or socket\)"):
        ds.load(1, "audio")


def test_hf_save_to_disk_image_labels_and_audio_captions(tmp_path):
    import datasets as hfd

    rng = np.random.default_rng(0)
    feats = hfd.Features({"img": hfd.Image(), "label": hfd.ClassLabel(names=["cat", "dog"])})
    d = hfd.Dataset.from_dict({"img": [{"bytes": png_bytes(rng), "path": None} for _ in range(3)],
                               "label": [1, 0, 1]}, features=feats)
    hfd.DatasetDict({"test": d}).save_to_disk(str(tmp_path / "h"))
    ds = open_dataset(str(tmp_path / "h"), "hf")
    assert ds.classnames == ["cat", "dog"] and list(ds.labels) == [1, 0, 1] and ds.modalities == ["image"]
    assert ds.load(2, "image").size == (12, 12)

    # datasets 5 needs torchcodec to *encode* Audio examples; casting a {bytes, path} struct column does not
    a = hfd.Dataset.from_dict({"audio": [{"bytes": wav_bytes(rng), "path": "x.wav"}] * 2,
                               "caption": [["rain falls", "wet"], ["a dog barks"]]})
    a = a.cast_column("audio", hfd.Audio(decode=False))
    assert type(a.features["audio"]).__name__ == "Audio"
    a.save_to_disk(str(tmp_path / "ha"))
    ds = open_dataset(str(tmp_path / "ha"), "hf")
    assert ds.modalities == ["text", "audio"] and ds.items[0].captions == ["rain falls", "wet"]
    assert ds.load(1, "audio")[1] == 8000
    with pytest.raises(DataError, match="caption column 'nope' not found"):
        open_dataset(str(tmp_path / "ha"), "hf", caption_column="nope")
    hfd.DatasetDict({"a": d, "b": d}).save_to_disk(str(tmp_path / "h2"))
    with pytest.raises(DataError, match="no split .val.; available: a, b"):
        open_dataset(str(tmp_path / "h2"), "hf", split="val")
    os.makedirs(tmp_path / "plain")
    with pytest.raises(DataError, match="is not a Hugging Face save_to_disk folder"):
        open_dataset(str(tmp_path / "plain"), "hf")


def test_csv_groups_captions_by_path(tmp_path):
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "img")
    for n in ("a.png", "b.jpg"):
        (tmp_path / "img" / n).write_bytes(png_bytes(rng, fmt="PNG" if n.endswith("png") else "JPEG"))
    (tmp_path / "s.wav").write_bytes(wav_bytes(rng))
    (tmp_path / "d.csv").write_text("filepath,caption\nimg/a.png,red dog\nimg/b.jpg,blue car\n"
                                    "img/a.png,a dog that is red\ns.wav,rain\nnotes.doc,x\n")
    ds = open_dataset(str(tmp_path / "d.csv"), "csv")
    assert [it.captions for it in ds.items] == [["red dog", "a dog that is red"], ["blue car"], ["rain"]]
    assert ds.modalities == ["image", "text", "audio"] and "line 6" in ds.problems[0]
    assert ds.load(1, "image").size == (12, 12)
    (tmp_path / "t.tsv").write_text("path\ttext\nimg/gone.png\thello\n")
    ds = open_dataset(str(tmp_path / "t.tsv"), "csv")
    with pytest.raises(SampleError, match="gone.png"):
        ds.load(0, "image")
    (tmp_path / "h.csv").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="no path column"):
        open_dataset(str(tmp_path / "h.csv"), "csv")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "missing.csv"), "csv")



def test_csv_from_a_spreadsheet_bom_bad_bytes_and_empty_captions(tmp_path):
    """A CSV saved by a spreadsheet starts with a byte-order mark (was: "no path column", header
    ['\\ufefffilepath', ...]); a Latin-1 one was a UnicodeDecodeError traceback; an empty or blank caption was
    scored as a text query like any other (`align data shards` skips all three cases' captions the same way)."""
    rng = np.random.default_rng(0)
    for n in ("a.png", "b.png", "c.png"):
        (tmp_path / n).write_bytes(png_bytes(rng))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbffilepath,caption\r\na.png,a red dog\r\nb.png,\r\nc.png,\"  \"\r\n")
    ds = open_dataset(str(tmp_path / "bom.csv"), "csv")
    assert [it.captions for it in ds.items] == [["a red dog"], [], []]
    assert ds.problems == ["line 3: empty caption for 'b.png' skipped", "line 4: empty caption for 'c.png' skipped"]
    (tmp_path / "latin.csv").write_bytes(b"filepath,caption\na.png,un caf\xe9\n")
    with pytest.raises(DataError, match=r"latin.csv'?: not UTF-8 text \(invalid continuation byte, byte 0xe9\)"):
        open_dataset(str(tmp_path / "latin.csv"), "csv")


def test_imagefolder_pixels_are_what_the_shard_writer_stores(tmp_path):
    """Bench and embed read the user's files, training the shards `align data shards` wrote from them: a photo
    tagged "rotate 90" and a logo on a transparent background came out on their side and on black in the
    bench, upright and on white in training."""
    from PIL import Image

    from align.data.write.shards import write_shards
    from align.media.image import decode_image
    os.makedirs(tmp_path / "f" / "x")
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 16, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 8                                               # displayed turned 90 degrees anticlockwise
    photo.save(tmp_path / "f" / "x" / "photo.png", exif=exif)
    logo = np.zeros((6, 8, 4), np.uint8)
    logo[:, :4] = (0, 200, 0, 255)                                 # green left half, transparent right half
    Image.fromarray(logo, "RGBA").save(tmp_path / "f" / "x" / "logo.png")
    for stem in ("photo", "logo"):
        (tmp_path / "f" / "x" / f"{stem}.txt").write_text(f"a {stem}")   # the writer wants pairs; bench ignores it
    ds = open_dataset(str(tmp_path / "f"), "imagefolder")
    write_shards(tmp_path / "f", tmp_path / "o", image_format="png", progress=False)
    stored = {}
    with tarfile.open(next((tmp_path / "o").glob("*.tar"))) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".json"):
                stem = json.loads(tar.extractfile(m).read())["source"]["key"]
                stored[os.path.basename(stem)] = tar.extractfile(m.name[:-4] + "png").read()
    assert set(stored) == {"photo", "logo"}
    for i, it in enumerate(ds.items):
        bench = np.asarray(ds.load(i, "image"))
        assert np.array_equal(bench, np.asarray(decode_image(stored[it.key.split(os.sep)[-1][:-4]])))
    assert np.asarray(ds.load(1, "image")).shape == (16, 10, 3)   # upright
    assert (np.asarray(ds.load(0, "image"))[:, 4:] == 255).all()   # on white

def test_fingerprint_tracks_files_and_options(tmp_path):
    root = classification_wds(tmp_path / "d", n=4, n_classes=2, split="val")
    fp = open_dataset(root, "wds", split="val").fingerprint()
    assert open_dataset(root, "wds", split="val").fingerprint() == fp
    with open(os.path.join(root, "val", "0.tar"), "ab") as f:
        f.write(b"\0" * 1024)
    assert open_dataset(root, "wds", split="val").fingerprint() != fp


def test_wds_members_outside_any_sample_are_reported(tmp_path):
    import tarfile
    rng = np.random.default_rng(0)
    root = write_wds(tmp_path / "d", [("a", {"png": png_bytes(rng), "cls": "1"})])
    shard = os.path.join(root, "test", "0.tar")
    with tarfile.open(shard, "a") as tf:
        for name in ("README", "._a.png", "__index__"):
            tf.addfile(tarfile.TarInfo(name))
    ds = open_dataset(root, "wds")
    assert len(ds) == 1 and ds.problems == [
        f"{shard}: 2 files outside any sample ignored (no extension or a hidden name; first: README)"]
