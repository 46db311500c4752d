"""Key split and sample grouping against webdataset's own rules; the writer against tarfile and the reader."""
import io
import os
import tarfile

import pytest

from align.wds.format import check_key, group_samples, split_name
from align.wds.reader import iter_tar
from align.wds.writer import NumberedShards, SampleWriter, write_shard

NAMES = ["a.jpg", "a.TXT", "dir/b.seg.json", "x/y.z/k.tar.gz", "__meta__", "__a.b__", "noext", ".hidden.txt",
         "dir/.h.txt", "d.i.r/s001.png", "k.", "a/b/c.d.e", "ünï/cödé.flac"]


def test_split_name_is_webdatasets_rule_with_lower_cased_extension():
    from webdataset.tariterators import base_plus_ext

    for name in NAMES:
        ours = split_name(name)
        ref = base_plus_ext(name)
        if os.path.basename(name).startswith("__") and name.endswith("__") or ref[0] is None:
            assert ours is None, name          # webdataset's metadata members / no extension
        elif os.path.basename(name).startswith("."):
            assert ours is None, name          # hidden files are not samples
        else:
            assert ours == (ref[0], ref[1].lower()), name


def test_group_samples_counts_a_repeated_extension_as_a_duplicate_not_a_new_sample():
    members = [("a.jpg", 1), ("a.txt", 2), ("a.TXT", 3), ("b.jpg", 4), ("noext", 0), ("a.jpg", 5)]
    dups = []
    got = list(group_samples(members, dups.append))
    assert got == [{"__key__": "a", "jpg": 1, "txt": 2}, {"__key__": "b", "jpg": 4}, {"__key__": "a", "jpg": 5}]
    assert dups == ["a.TXT"]


def _damaged(members, member):
    def gen():
        yield from members
        exn = EOFError("cut")
        exn.member = member
        raise exn
    return gen()


def test_group_samples_on_damage_keeps_only_provably_complete_samples():
    members = [("a.jpg", 1), ("a.txt", 2), ("b.jpg", 3)]
    got = []
    with pytest.raises(EOFError):
        for s in group_samples(_damaged(members, "c.jpg"), None):   # cut in a later sample: b is complete
            got.append(s["__key__"])
    assert got == ["a", "b"]
    got = []
    with pytest.raises(EOFError):
        for s in group_samples(_damaged(members, "b.txt"), None):   # cut inside b: dropped
            got.append(s["__key__"])
    assert got == ["a"]
    got = []
    with pytest.raises(EOFError):
        for s in group_samples(_damaged(members, None), None):      # unknown where: dropped
            got.append(s["__key__"])
    assert got == ["a"]


def test_writer_output_reads_back_with_tarfile_and_the_reader_and_is_reproducible(tmp_path):
    samples = [{"__key__": "dir/s0", "txt": "ünïcode caption", "jpg": b"\xff" * 700, "cls": "3"},
               {"__key__": "s1", "flac": b"", "json": b"{}"}]
    a, b = write_shard(tmp_path / "a.tar", samples), write_shard(tmp_path / "b.tar", samples)
    data = open(a, "rb").read()
    assert data == open(b, "rb").read()   # no clock, user or machine in the bytes
    with tarfile.open(a) as tf:           # reference reader
        ref = [(m.name, tf.extractfile(m).read(), m.mtime, m.mode, m.uid, m.uname) for m in tf.getmembers()]
    assert [r[0] for r in ref] == ["dir/s0.cls", "dir/s0.jpg", "dir/s0.txt", "s1.flac", "s1.json"]
    assert {r[2:] for r in ref} == {(0, 0o644, 0, "")}
    assert list(iter_tar(io.BytesIO(data))) == [(r[0], r[1]) for r in ref]
    assert ref[2][1] == "ünïcode caption".encode()


def test_writer_refuses_keys_and_extensions_that_would_not_read_back(tmp_path):
    with SampleWriter(tmp_path / "x.tar") as w:
        for key in ["a.b", "", "dir/", "dir/.x"]:
            with pytest.raises(ValueError, match="cannot be written"):
                w.write(key, {"txt": "x"})
        for ext in ["", "a/b", "_meta"]:
            with pytest.raises(ValueError, match="cannot be written"):
                w.write("k", {ext: b"x"})
        w.write("d.i.r/k", {"txt": "ok"})   # dots in a folder name are fine
    check_key("d.i.r/k")
    assert list(iter_tar(open(tmp_path / "x.tar", "rb"))) == [("d.i.r/k.txt", b"ok")]


def test_numbered_shards_roll_over(tmp_path):
    w = NumberedShards(tmp_path, lambda i: f"{i}.tar", per_shard=2)
    for i in range(5):
        w.write(f"k{i}", {"txt": str(i)})
    w.close()
    assert w.names == ["0.tar", "1.tar", "2.tar"] and w.sizes == [2, 2, 1]
    assert [n for p in w.paths for n, _ in iter_tar(open(p, "rb"))] == [f"k{i}.txt" for i in range(5)]


def test_hostile_member_names_are_keys_never_paths(tmp_path, monkeypatch):
    """Members named `../x`, `/abs/x`, links to /etc/passwd and devices: inspect, a training epoch and
    `align bench` read the shard and nothing is written or read outside (issue 24, item 5)."""
    from align.bench.datasets import open_dataset
    from align.data.stream.build import build_train_loader
    from align.data.tools.inspect import inspect_shards
    from tests.wds_helpers import TRANSFORMS, jpeg_bytes

    work = tmp_path / "work"
    shards = work / "ds" / "test"
    shards.mkdir(parents=True)
    escape = tmp_path / "escaped"
    absolute = tmp_path / "abs"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data))
        add("../../../escaped.jpg", jpeg_bytes(1))
        add("../../../escaped.txt", b"climbed out")
        add(f"{absolute}/x.jpg", jpeg_bytes(2))
        add(f"{absolute}/x.txt", b"absolute")
        add("link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("link.txt", kind=tarfile.LNKTYPE, link="../../../escaped.txt")
        add("dev.jpg", kind=tarfile.CHRTYPE)
        add("sub/", kind=tarfile.DIRTYPE)
        add("ok.jpg", jpeg_bytes(3))
        add("ok.txt", b"fine")
    (shards / "0.tar").write_bytes(buf.getvalue())
    (shards / "nshards.txt").write_text("1")
    before = sorted(p for p in tmp_path.rglob("*"))
    monkeypatch.chdir(work)
    res = inspect_shards(str(shards / "0.tar"), quiet=True, progress=False, modalities=["image", "text"])
    loader = build_train_loader(str(shards / "0.tar"), transforms=TRANSFORMS, batch_size=2,
                                modalities=["image", "text"], num_workers=0, drop_last=False, shuffle_buffer=0)
    keys = sorted(k for b in loader for k in b["__key__"])
    ds = open_dataset(str(work / "ds"), "wds")
    for i, it in enumerate(ds.items):
        for m in it.media:
            ds.load(i, m)
    # the names are sample keys (links, devices and directories are not members of a sample) ...
    assert keys == sorted(["../../../escaped", f"{absolute}/x", "ok"])
    assert res["skipped"] == {}
    # ... and nothing was created outside, or inside, by reading
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not escape.with_suffix(".jpg").exists() and not absolute.exists()
