"""align.data.write.inputs: what a folder of pairs may read (issue 24: links out of the folder)."""
import json
import os
import stat
import threading

import pytest

from align.cli import main
from align.data.write.inputs import LINK_OUTSIDE, FolderInput
from align.data.write.shards import write_shards
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

