"""align.data.write.inputs: what a folder of pairs may read (issue 24: links out of the folder)."""
import json
import os
import stat
import threading

import pytest

from align.cli import main
from align.data.write.inputs import LINK_OUTSIDE, FolderInput
from align.data.write.shards import write_shards
from align.errors import DataError
from align.wds.reader import iter_tar
from tests.wds_helpers import jpeg_bytes


def _folder(tmp_path):
    """pairs/ with a.jpg+a.txt, b.jpg + b.txt -> a secret outside, c.jpg + c.txt -> a.txt (inside), and
    pairs/far -> a folder outside holding d.jpg + d.txt."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is hunter2")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "d.jpg").write_bytes(jpeg_bytes(4))
    (outside / "d.txt").write_text("a far photo")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for k, seed in (("a", 1), ("b", 2), ("c", 3)):
        (pairs / f"{k}.jpg").write_bytes(jpeg_bytes(seed))
    (pairs / "a.txt").write_text("a photo")
    os.symlink(secret, pairs / "b.txt")
    os.symlink(pairs / "a.txt", pairs / "c.txt")
    os.symlink(outside, pairs / "far")
    os.symlink(tmp_path / "nothing-here.txt", pairs / "dangling.txt")   # a broken link: no crash
    return pairs


def _captions(out) -> dict:
    caps = {}
    for tar in sorted(out.glob("*.tar")):
        for name, data in iter_tar(open(tar, "rb")):
            if name.endswith(".txt"):
                caps[name] = data.decode()
    return caps


def test_links_out_of_the_input_folder_are_not_followed_unless_asked(tmp_path):
    pairs = _folder(tmp_path)
    stats = write_shards(pairs, tmp_path / "out", progress=False)
    caps = _captions(tmp_path / "out")
    assert sorted(caps.values()) == ["a photo", "a photo"]          # a, and c through its link inside
    assert not any("hunter2" in c for c in caps.values())
    # b, the dangling link (it points outside too), and the linked folder far/: one row, listed, not lost
    assert stats["by_reason"] == {LINK_OUTSIDE: 3}
    listed = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in listed if r["key"] == "far"] == [
        "folder: far is a link out of the input folder, not entered (--follow-links reads it)"]
    # the CLI option reads them
    assert main(["data", "shards", str(pairs), "--out", str(tmp_path / "out2"), "--follow-links"]) == 0
    caps = _captions(tmp_path / "out2")
    assert sorted(caps.values()) == ["a far photo", "a photo", "a photo", "the password is hunter2"]


def test_a_link_loop_is_walked_once(tmp_path):
    pairs = _folder(tmp_path)
    os.symlink(pairs, pairs / "loop")
    stats = write_shards(pairs, tmp_path / "out", progress=False, follow_links=True)
    assert stats["written"] == 4


def test_a_caption_edited_in_place_to_the_same_length_is_another_input(tmp_path):
    """The fingerprint (a resume's and the table cache's check) covers each file's modification time, not only
    its name and size: `speech 0` -> `speech 9` must not leave training on the old caption."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "a.jpg").write_bytes(jpeg_bytes(1))
    (pairs / "a.txt").write_text("speech 0")
    before = FolderInput(pairs).fingerprint()
    assert FolderInput(pairs).fingerprint() == before                         # stable when nothing changed
    (pairs / "a.txt").write_text("speech 9")
    t = (pairs / "a.txt").stat().st_mtime_ns + 5_000_000_000                  # a clock tick apart, whatever the fs
    os.utime(pairs / "a.txt", ns=(t, t))
    assert FolderInput(pairs).fingerprint() != before


def test_devices_pipes_and_folders_named_as_files_are_skipped_not_read(tmp_path):
    """/dev/zero in a table would fill memory (its size reads 0) and a FIFO in a folder would block forever:
    both are skipped and counted as not regular files, and the job ends."""
    (tmp_path / "ok.jpg").write_bytes(jpeg_bytes(3))
    (tmp_path / "t.csv").write_text("image,text\n/dev/zero,zero\n%s,a folder\nok.jpg,fine\n" % tmp_path)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "ok.jpg").write_bytes(jpeg_bytes(1))
    (pairs / "ok.txt").write_text("fine")
    (pairs / "p.jpg").write_bytes(jpeg_bytes(2))
    os.mkfifo(pairs / "p.txt")
    assert stat.S_ISFIFO(os.stat(pairs / "p.txt").st_mode)
    done = {}
    job = threading.Thread(target=lambda: done.update(
        t=write_shards(tmp_path / "t.csv", tmp_path / "o1", progress=False),
        f=write_shards(pairs, tmp_path / "o2", progress=False)), daemon=True)
    job.start()
    job.join(120)
    assert not job.is_alive(), "a device or a FIFO was read"
    assert done["t"]["by_reason"] == {"image: not a regular file": 2} and done["t"]["written"] == 1
    assert done["f"]["by_reason"] == {"text: not a regular file": 1} and done["f"]["written"] == 1
    listed = (tmp_path / "o1" / "skipped.jsonl").read_text()
    assert "'/dev/zero' is a device, pipe or socket, not a regular file" in listed and "is a folder" in listed


def test_a_bytes_field_that_is_not_bytes_skips_its_row(tmp_path):
    """JSON has no bytes: {"bytes": "<base64>"} or a list of numbers is one skipped row, not a crash."""
    rows = ['{"image": {"bytes": "iVBORw0KGgo="}, "text": "base64"}', '{"image": {"bytes": [300]}, "text": "list"}',
            '{"image": {"bytes": null, "path": "a.jpg"}, "text": "path"}']
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    stats = write_shards(tmp_path / "t.jsonl", tmp_path / "out", progress=False)
    assert stats["written"] == 1 and stats["by_reason"] == {"image: unsupported value": 2}
    assert "the 'bytes' field holds str, not bytes" in (tmp_path / "out" / "skipped.jsonl").read_text()


def test_a_table_that_is_not_utf8_names_the_byte_and_line_in_the_file(tmp_path):
    """pandas decodes in chunks and its error counts from the chunk: "at byte 3" for a byte at 47."""
    from align.errors import DataError
    rows = (b"path,caption\n" + b"".join(b"a%d.jpg,a fine caption %d\n" % (i, i) for i in range(3000))
            + b"b.jpg,caf\xe9\n")
    (tmp_path / "t.csv").write_bytes(rows)
    with pytest.raises(DataError, match=f"not UTF-8 text \\(invalid continuation byte at byte {len(rows) - 2}, "
                                        f"line 3002\\)"):
        write_shards(tmp_path / "t.csv", tmp_path / "out", progress=False)


def test_a_folder_of_shards_given_as_pairs_is_one_line_saying_so(tmp_path):
    """`align data shards SHARDS/ --out X` on a folder of webdataset shards said "need two of image/text/audio ...
    (found none); available columns: (none)": it says the folder holds shards, which need no writing."""
    from tests.wds_helpers import image_text, write_shard
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "a.tar", [image_text("k0", seed=0)])
    with pytest.raises(DataError, match=r"shards: holds 1 \.tar file\(s\) and no pairs: webdataset shards already\?"):
        write_shards(str(tmp_path / "shards"), str(tmp_path / "out"), progress=False)
    assert main(["data", "shards", str(tmp_path / "shards"), "--out", str(tmp_path / "out2")]) == 2


def test_a_hub_download_of_a_dataset_is_read_from_its_folder_without_the_network(tmp_path, monkeypatch):
    """`align data shards ORG/NAME` has a local form: the folder `huggingface-cli download --repo-type dataset`
    leaves (README.md, data/train-*.parquet, its .cache/). It was read as a folder of pairs and held none."""
    import socket

    import pyarrow as pa
    import pyarrow.parquet as pq

    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    dl = tmp_path / "dl"
    (dl / "data").mkdir(parents=True)
    (dl / ".cache" / "huggingface" / "download" / "data").mkdir(parents=True)
    (dl / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# pairs\n")
    images = [{"bytes": jpeg_bytes(s), "path": f"{s}.jpg"} for s in (1, 2, 3)]
    pq.write_table(pa.table({"image": images, "caption": ["a red photo", "a green photo", "a blue photo"]}),
                   dl / "data" / "train-00000-of-00001.parquet")
    (dl / ".cache" / "huggingface" / "download" / "data" / "train-00000-of-00001.parquet.metadata").write_text("x")
    write_shards(dl, tmp_path / "out", progress=False)
    assert sorted(_captions(tmp_path / "out").values()) == ["a blue photo", "a green photo", "a red photo"]
    jpgs = [data for tar in sorted((tmp_path / "out").glob("*.tar")) for name, data in iter_tar(open(tar, "rb"))
            if name.endswith(".jpg")]
    assert len(jpgs) == 3


def test_a_hub_dataset_on_a_machine_without_the_hub_is_its_cached_copy_or_one_line_at_once(tmp_path, monkeypatch):
    """`align data shards ORG/NAME` with no network and no HF_HUB_OFFLINE: huggingface_hub retried ~23 s before
    its line. The hub's host is tried once (align.hub, as the towers do); it not answering, datasets loads in
    offline mode (the cache's copy at once), and a dataset not cached is one line naming the host."""
    import socket

    import datasets
    import datasets.config
    import huggingface_hub.constants as hc

    from align.data.write.inputs import open_input
    for k in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    tried, offline_at_call = [], []

    def refuse(address, *a, **k):
        tried.append(address)
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    cached = {"org/cached": datasets.Dataset.from_dict({"image": ["a.jpg"], "caption": ["a photo"]})}

    def load_dataset(name, split=None):
        offline_at_call.append((hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        if name in cached and datasets.config.HF_HUB_OFFLINE:
            return cached[name]
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        open_input("org/name")
    assert "\n" not in str(e.value) and "huggingface.co does not answer and it is not in the Hugging Face cache" \
        in str(e.value), str(e.value)
    assert tried == [("huggingface.co", 443)] and offline_at_call == [(True, True)]
    assert len(open_input("org/cached")) == 1                                # the cache's copy
    assert (hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == (False, False)   # restored after
