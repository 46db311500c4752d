"""align.data.write.inputs: what a folder of pairs may read (issue 24: links out of the folder)."""
import os

import pytest

from align.cli import main
from align.data.write.inputs import LINK_OUTSIDE
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
    assert stats["by_reason"] == {LINK_OUTSIDE: 2}      # b, and the dangling link (it points outside too)
    # the CLI option reads them
    assert main(["data", "shards", str(pairs), "--out", str(tmp_path / "out2"), "--follow-links"]) == 0
    caps = _captions(tmp_path / "out2")
    assert sorted(caps.values()) == ["a far photo", "a photo", "a photo", "the password is hunter2"]


def test_a_link_loop_is_walked_once(tmp_path):
    pairs = _folder(tmp_path)
    os.symlink(pairs, pairs / "loop")
    stats = write_shards(pairs, tmp_path / "out", progress=False, follow_links=True)
    assert stats["written"] == 4
