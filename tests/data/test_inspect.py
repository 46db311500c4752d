"""Tests for align.data.inspect.inspect_shards: counts, decode failures, corrupt tars, patterns."""
import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from align.data.inspect import inspect_shards
from align.errors import DataError


def _png(size=(8, 6)):
    b = io.BytesIO()
    Image.new("RGB", size, "green").save(b, "PNG")
    return b.getvalue()


def _flac(seconds=0.5, sr=16000):
    b = io.BytesIO()
    sf.write(b, np.zeros(int(seconds * sr), np.float32), sr, format="FLAC")
    return b.getvalue()


def _tar(path, samples):
    """samples: [(key, {ext: bytes})] -> a tar at path."""
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_counts_and_decode_failures(tmp_path, capsys):
    good = {"png": _png(), "txt": b"a green box\nsecond", "cls": b"4", "json": b"{}"}
    _tar(tmp_path / "s-000.tar", [("k0", good), ("k1", dict(good, png=b"\x89PNG broken")), ("k2", good)])
    _tar(tmp_path / "s-001.tar", [("k3", {"flac": _flac(), "txt": "ünïcode".encode()}),
                                  ("k4", {"flac": b"fLaC junk", "txt": b"\xff\xfe bad utf8"})])
    res = inspect_shards(str(tmp_path / "s-{000..001}.tar"), n=4, progress=False)
    assert res["samples"] == 5 and res["decode_failures"] == 3 and res["corrupt"] == [] and res["missing"] == []
    assert res["modalities"] == {"cls": 3, "flac": 2, "json": 3, "png": 3, "txt": 5}
    s0, s1 = res["shards"]
    assert s0["samples"] == 3 and s0["decode_failures"] == 1
    assert [(f["key"], f["ext"]) for f in s0["failures"]] == [("k1", "png")]
    assert [(f["key"], f["ext"]) for f in s1["failures"]] == [("k4", "flac"), ("k4", "txt")]
    first = res["first"]
    assert [s["key"] for s in first] == ["k0", "k1", "k2", "k3"]
    assert first[0]["image"] == "8x6" and first[0]["caption"] == "a green box" and first[0]["label"] == "4"
    assert first[3]["audio"] == {"duration": 0.5, "sample_rate": 16000} and first[3]["caption"] == "ünïcode"
    printed = capsys.readouterr().out
    assert "k0  image 8x6  label 4  'a green box' (+1)" in printed
    assert "k3  audio 0.50s@16000Hz" in printed
    assert "2 shards, 5 samples" in printed and "3 decode failures" in printed


def test_check_all_false_decodes_only_first_n(tmp_path):
    good = {"png": _png(), "txt": b"x"}
    _tar(tmp_path / "a.tar", [("k0", good), ("k1", good), ("k2", dict(good, png=b"bad"))])
    res = inspect_shards(str(tmp_path / "a.tar"), n=2, check_all=False, quiet=True, progress=False)
    assert res["samples"] == 3 and res["decode_failures"] == 0
    res = inspect_shards(str(tmp_path / "a.tar"), n=2, check_all=True, quiet=True, progress=False)
    assert res["decode_failures"] == 1


def test_truncated_and_corrupt_tars(tmp_path, capsys):
    samples = [(f"k{i}", {"png": _png(), "txt": b"caption"}) for i in range(4)]
    _tar(tmp_path / "full.tar", samples)
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        members = tf.getmembers()
    # Cut inside the 3rd member's data, and cut exactly at a member boundary
    # (tarfile reads the latter without complaint: only the end marker tells).
    (tmp_path / "mid.tar").write_bytes(data[: members[2].offset_data + 10])
    (tmp_path / "edge.tar").write_bytes(data[: members[4].offset])
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    res = inspect_shards(str(tmp_path / "{full,mid,edge,junk}.tar"), n=0, progress=False)
    by_name = {s["path"].rsplit("/", 1)[1]: s for s in res["shards"]}
    assert by_name["full.tar"]["error"] is None and by_name["full.tar"]["samples"] == 4
    assert "truncated" in by_name["mid.tar"]["error"] and by_name["mid.tar"]["samples"] == 1
    assert "truncated" in by_name["edge.tar"]["error"] and by_name["edge.tar"]["samples"] == 2
    assert by_name["junk.tar"]["error"] and by_name["junk.tar"]["samples"] == 0
    assert sorted(p.rsplit("/", 1)[1] for p in res["corrupt"]) == ["edge.tar", "junk.tar", "mid.tar"]
    assert "3 corrupt/truncated shards" in capsys.readouterr().out


def test_patterns(tmp_path):
    _tar(tmp_path / "x-0.tar", [("k", {"txt": b"a"})])
    _tar(tmp_path / "x-1.tar", [("k", {"txt": b"b"})])
    with pytest.raises(DataError, match="no shards match .*nothing-"):
        inspect_shards(str(tmp_path / "nothing-{0..3}.tar"), quiet=True)
    with pytest.raises(DataError, match="local shards only"):
        inspect_shards("pipe:cat x.tar", quiet=True)
    res = inspect_shards(str(tmp_path), quiet=True, progress=False)  # a directory
    assert [s["samples"] for s in res["shards"]] == [1, 1]
    res = inspect_shards(str(tmp_path / "x-*.tar"), quiet=True, progress=False)  # a glob
    assert len(res["shards"]) == 2
    res = inspect_shards(str(tmp_path / "x-{0..2}.tar"), quiet=True, progress=False)  # brace, one missing
    assert len(res["shards"]) == 2 and res["missing"] == [str(tmp_path / "x-2.tar")]


def test_inspects_write_shards_output(tmp_path):
    """The writer's shards read back clean: every sample has the same members."""
    import pandas as pd
    from align.data.shards import write_shards
    for i in range(3):
        Image.new("RGB", (10, 10)).save(tmp_path / f"{i}.jpg")
    pd.DataFrame({"image": [f"{i}.jpg" for i in range(3)], "text": ["a", "b", "c"]}).to_csv(tmp_path / "d.csv")
    stats = write_shards(tmp_path / "d.csv", tmp_path / "out", shard_size=2, progress=False)
    res = inspect_shards(stats["pattern"], quiet=True, progress=False)
    assert res["samples"] == 3 and res["decode_failures"] == 0 and res["corrupt"] == []
    assert [s["layouts"] for s in res["shards"]] == [{"jpg+json+txt": 2}, {"jpg+json+txt": 1}]
