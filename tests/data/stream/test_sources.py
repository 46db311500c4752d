"""Source specs: expansion of patterns/dirs/lists, refusal of pipe: URLs, clear errors."""

import io

import pytest

from align.data.stream.faults import FaultCounter
from align.data.stream.build import build_train_loader
from align.data.stream.sources import SourceSpec, expand_urls, resolve_sources, shard_samples
from align.errors import DataError
from tests.wds_helpers import TRANSFORMS, flat, make_shards

KW = dict(transforms=TRANSFORMS, batch_size=2, modalities=["image", "text"], num_workers=0, drop_last=False)


def test_brace_dir_glob_list_and_double_colon(tmp_path):
    paths, _ = make_shards(tmp_path / "d", 3, 1)
    (tmp_path / "d" / "notes.txt").write_text("not a shard")
    assert expand_urls(str(tmp_path / "d")) == paths  # dir -> sorted *.tar
    assert expand_urls(str(tmp_path / "d" / "s-{000..002}.tar")) == paths
    assert expand_urls(str(tmp_path / "d" / "s-*.tar")) == paths
    assert expand_urls(f"{paths[0]}::{paths[2]}") == [paths[0], paths[2]]
    assert expand_urls([paths[1], "file://" + paths[0]]) == [paths[1], paths[0]]


@pytest.mark.parametrize("pattern", ["nope/s-{000..003}.tar", "nope/*.tar", "nope.tar"])
def test_pattern_matching_nothing_is_a_data_error_naming_it(tmp_path, pattern):
    with pytest.raises(DataError) as e:
        build_train_loader(str(tmp_path / pattern), **KW)
    assert "nope" in str(e.value) and ("no shard found" in str(e.value) or "matches no file" in str(e.value))


def test_empty_dir_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: directory contains no .tar shards"):
        build_train_loader(str(tmp_path / "empty"), **KW)


def test_partly_missing_list_warns_then_counts(tmp_path, caplog):
    paths, keys = make_shards(tmp_path / "d", 2, 3)
    loader = build_train_loader([paths[0], str(tmp_path / "d" / "absent.tar"), paths[1]], **KW)
    assert any("1 of 3 shards do not exist" in r.getMessage() for r in caplog.records)
    assert sorted(flat([b["__key__"] for b in loader])) == sorted(keys)
    assert dict(loader.skipped) == {"missing shard": 1}



def test_a_launch_warns_of_missing_and_too_few_shards_once_not_once_per_rank(tmp_path, caplog):
    """Under `accelerate launch --num_processes 2` both lines were printed by every rank (the same text twice);
    rank 0 says them for the launch, and every rank still counts its own missing shards."""
    paths, _ = make_shards(tmp_path / "d", 1, 4)
    urls = [paths[0], str(tmp_path / "d" / "absent.tar")]
    said = []
    for rank in (0, 1):
        caplog.clear()
        build_train_loader(urls, **dict(KW, drop_last=True), rank=rank, world_size=3)
        said.append([r.getMessage() for r in caplog.records if r.levelname == "WARNING"])
    assert len(said[0]) == 2
    assert "1 of 2 shards do not exist" in said[0][0] and "has 2 shards for 3 readers" in said[0][1]
    assert said[1] == []


def test_pipe_urls_refused_unless_allowed(tmp_path):
    paths, keys = make_shards(tmp_path / "d", 1, 3)
    url = f"pipe:cat {paths[0]}"
    with pytest.raises(DataError, match=r"pipe: URLs run shell commands; set data.allow_pipe: true to enable"):
        build_train_loader(url, **KW)
    with pytest.raises(DataError, match="allow_pipe"):
        build_train_loader([SourceSpec(paths[0]), SourceSpec([url])], **KW)
    loader = build_train_loader(url, allow_pipe=True, **KW)
    assert sorted(flat([b["__key__"] for b in loader])) == sorted(keys)


def test_fsspec_memory_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    paths, keys = make_shards(tmp_path / "d", 1, 3)
    fs = fsspec.filesystem("memory")
    with open(paths[0], "rb") as f:
        fs.pipe("/align-test/shard-0.tar", f.read())
    try:
        loader = build_train_loader("memory://align-test/shard-{0..0}.tar", **KW)
        assert sorted(flat([b["__key__"] for b in loader])) == sorted(keys)
    finally:
        fs.rm("/align-test", recursive=True)


def test_bad_weights_and_specs_are_data_errors(tmp_path):
    paths, _ = make_shards(tmp_path / "d", 1, 1)
    for bad in ([SourceSpec(paths[0], weight=0)], [SourceSpec(paths[0], weight="x")], [{"url": paths[0]}], 42, []):
        with pytest.raises(DataError):
            resolve_sources(bad)
    [src] = resolve_sources({"urls": paths, "weight": 2})
    assert src.urls == paths and src.weight == 2.0


def test_shard_samples_groups_by_key_and_counts_duplicates(tmp_path):
    from align.wds.writer import SampleWriter

    path = tmp_path / "dup.tar"
    with SampleWriter(path) as w:
        w.write("a", {"jpg": b"1", "TXT": b"2"})
        w.write("a", {"txt": b"3"})          # the same key again, at once: a duplicate file of sample a
        w.write("dir/b", {"seg.json": b"4"})
    faults = FaultCounter()
    got = list(shard_samples(str(path), faults))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in got] == [
        {"__key__": "a", "jpg": b"1", "txt": b"2"}, {"__key__": "dir/b", "seg.json": b"4"}]
    assert dict(faults.total) == {"duplicate file in sample": 1}


def test_unknown_url_scheme_is_a_data_error():
    with pytest.raises(DataError, match=r"s3x://bucket/a.tar: cannot read URL scheme 's3x:'"):
        build_train_loader("s3x://bucket/a.tar", **KW)


@pytest.mark.parametrize("allow", [False, True])
def test_an_upper_case_pipe_is_one_line_not_an_unreadable_shard(tmp_path, allow):
    """`PIPE:cat x.tar` ran nothing but passed the check and was counted as an unreadable shard."""
    marker = tmp_path / "ran"
    with pytest.raises(DataError, match="a pipe: URL is written in lower case"):
        expand_urls(f"PIPE:touch {marker}", allow_pipe=allow)
    assert not marker.exists()


def _add_members(path, names):
    import tarfile
    with tarfile.open(path, "a") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))


def test_members_outside_any_sample_are_counted_not_lost(tmp_path):
    # webdataset drops a member with no extension or a hidden name without a word; a tar made on macOS carries
    # `._x.jpg` beside each file, and `README` or `0001` (no extension) is a sample nobody will ever train on
    from align.data.stream.faults import NOT_A_SAMPLE
    from align.data.tools.inspect import inspect_shards
    from align.train.metrics import skipped_words
    from tests.wds_helpers import image_text, write_shard

    path = write_shard(tmp_path / "s.tar", [image_text("a", seed=1), image_text("b", seed=2)])
    _add_members(path, ["README", "._b.jpg", "dir/.DS_Store", "__index__", "dir/__meta__", "0003"])
    faults = FaultCounter()
    assert [s["__key__"] for s in shard_samples(path, faults)] == ["a", "b"]
    assert dict(faults.total) == {NOT_A_SAMPLE: 4}        # webdataset's __*__ metadata is not counted
    loader = build_train_loader(path, transforms=TRANSFORMS, batch_size=2, modalities=("image", "text"),
                                num_workers=0, drop_last=False, shuffle_buffer=0)
    assert [k for b in loader for k in b["__key__"]] == ["a", "b"]
    assert dict(loader.skipped) == {NOT_A_SAMPLE: 4}
    assert skipped_words(dict(loader.skipped)) == f", skipped 0 samples, 4 {NOT_A_SAMPLE}"
    res = inspect_shards(path, quiet=True, progress=False, modalities=("image", "text"))
    assert res["skipped"] == {NOT_A_SAMPLE: 4} and res["usable"] == 2
