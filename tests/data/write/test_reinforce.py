"""align data reinforce's writer: every member copied unchanged, one teacher_<m>.npy member per teacher
modality (the encoder's row of that sample), teacher.json beside; a sample the teacher cannot embed is
left out and counted."""
import io
import json
import os

import numpy as np
import pytest

from align.data.write.reinforce import _samples, write_reinforced
from tests.wds_helpers import image_text, write_shard


def test_members_copied_and_teacher_members_added(tmp_path):
    samples = [image_text(f"k{j}", seed=j) for j in range(5)]
    samples[1]["neg.txt"] = "a dog"
    del samples[3]["jpg"]                                   # no image: the image teacher cannot embed it
    src = write_shard(tmp_path / "s-000.tar", samples)
    enc = {"image": lambda items: np.stack([np.full(3, len(b), np.float32) for b in items]),
           "text": lambda items: np.stack([np.full(2, float(b[-1]), np.float32) for b in items])}
    counts = write_reinforced([src], str(tmp_path / "out"), enc, {"teacher": "T", "logit_scale": 50.0})
    assert counts == {"samples": 4, "shards": 1, "skipped": 1}
    out = list(_samples(str(tmp_path / "out" / "s-000.tar")))
    assert [s["__key__"] for s in out] == ["k0", "k1", "k2", "k4"]
    by_key = {s["__key__"]: s for s in samples}
    for s in out:
        orig = by_key[s["__key__"]]
        for ext, data in orig.items():
            if ext != "__key__":
                assert s[ext] == (data.encode() if isinstance(data, str) else data)
        img = np.load(io.BytesIO(s["teacher_image.npy"]))
        txt = np.load(io.BytesIO(s["teacher_text.npy"]))
        assert img.tolist() == [float(len(orig["jpg"]))] * 3 and txt.tolist() == [float(s["txt"][-1])] * 2
    meta = json.load(open(tmp_path / "out" / "teacher.json"))
    assert (meta["teacher"], meta["logit_scale"], meta["modalities"]) == ("T", 50.0, ["image", "text"])


def test_the_copies_never_land_on_the_users_files(tmp_path, capsys):
    """--out = the input's folder rewrote the user's shard in place; two inputs of one name became one file (the
    summary counted both); a non-empty --out lost its teacher.json. Each is one line before the teacher loads."""
    import os
    import shutil

    import pytest

    from align.cli import main
    from align.data.write.reinforce import check_out
    from align.errors import DataError
    os.makedirs(tmp_path / "a")
    src = write_shard(tmp_path / "a" / "s-000.tar", [image_text("k0")])
    os.makedirs(tmp_path / "b")
    shutil.copy(src, tmp_path / "b" / "s-000.tar")
    before = open(src, "rb").read()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "teacher.json").write_text("mine")
    cases = [([src], tmp_path / "a", "holds the input shard"),
             ([src, str(tmp_path / "b" / "s-000.tar")], tmp_path / "o", "two input shards are named s-000.tar"),
             ([src], tmp_path / "mine", "is not empty; choose an empty folder or pass --overwrite")]
    for urls, out, msg in cases:
        with pytest.raises(DataError, match=msg):
            check_out(urls, str(out))
    check_out([src], str(tmp_path / "mine"), overwrite=True)
    # through the CLI, before any teacher is loaded (this one does not exist)
    assert main(["data", "reinforce", str(tmp_path / "a"), "--teacher", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "a")]) == 2
    assert "holds the input shard" in capsys.readouterr().err
    assert main(["data", "reinforce", str(tmp_path / "a"), "--teacher", "x", "--out", str(tmp_path / "o2"),
                 "--modalities", "audio"]) == 2
    assert "audio is not supported" in capsys.readouterr().err
    assert open(src, "rb").read() == before and (tmp_path / "mine" / "teacher.json").read_text() == "mine"


def test_a_shard_that_cannot_be_read_or_embedded_is_one_line(tmp_path):
    """An empty file or a text file as a shard was the tar reader's EOFError traceback; a shard of which the
    teacher embeds no sample re-raised the first sample's exception (PIL's traceback). Each is one line naming
    the shard."""
    import pytest

    from PIL import Image

    from align.errors import DataError
    enc = {"image": lambda items: np.stack([np.asarray(Image.open(io.BytesIO(b))).mean(axis=(0, 1)) for b in items])}
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "notes.tar").write_text("hello\n")
    bad = write_shard(tmp_path / "bad-000.tar", [dict(image_text(f"k{j}"), jpg=b"not a jpeg") for j in range(2)])
    for path, msg in ((tmp_path / "empty.tar", "not a readable tar"), (tmp_path / "notes.tar", "not a readable tar"),
                      (bad, "image: the teacher embedded no sample (the first error: UnidentifiedImageError")):
        with pytest.raises(DataError) as e:
            write_reinforced([str(path)], str(tmp_path / "out"), enc, {"teacher": "T"})
        assert str(e.value).startswith(f"data reinforce: {path}: {msg}") and "\n" not in str(e.value)


def test_a_batch_size_below_one_is_refused_before_the_teacher_loads(tmp_path, capsys):
    """--batch-size 0 was range()'s ValueError traceback after the teacher had loaded."""
    from align.cli import main
    (tmp_path / "a").mkdir()
    write_shard(tmp_path / "a" / "s-000.tar", [image_text("k0")])
    assert main(["data", "reinforce", str(tmp_path / "a"), "--teacher", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "align: error: data reinforce: --batch-size must be >= 1, got 0"]


def test_a_bar_counts_the_shards_the_teacher_embeds(tmp_path, monkeypatch, capsys):
    """`align data reinforce` runs a teacher over every sample (hours on a corpus) and showed nothing until its end
    line: a bar (a plain line off a terminal) counts the shards done, with the samples embedded and skipped."""
    srcs = [write_shard(tmp_path / f"s-{i:03d}.tar", [image_text(f"k{i}{j}", seed=j) for j in range(2)])
            for i in range(3)]
    enc = {"text": lambda items: np.stack([np.full(2, 1.0, np.float32) for _ in items])}
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")
    write_reinforced(srcs, str(tmp_path / "out"), enc, {"teacher": "T"}, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("reinforce")]
    assert len(lines) == 1 and lines[0].startswith("reinforce (teacher embeddings): 3/3 shard (100%)"), lines
    assert lines[0].endswith("6 samples, 0 skipped"), lines


@pytest.mark.parametrize("full_at", ["s-001.tar", "teacher.json"])
def test_a_full_disk_while_reinforcing_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, full_at):
    """ENOSPC in a reinforced shard's copy or in teacher.json: an OSError traceback, and the shard's .tmp (or a cut
    teacher.json) stayed in --out. Now one line naming the file, nothing partial; the rerun writes a clean run's
    bytes."""
    from align.writes import StorageError
    from tests.diskfull import files_under, full_disk
    srcs = [write_shard(tmp_path / f"s-00{i}.tar", [image_text(f"k{i}{j}", seed=j) for j in range(3)])
            for i in range(2)]
    enc = {"image": lambda items: np.stack([np.full(3, len(b), np.float32) for b in items])}
    write_reinforced(srcs, str(tmp_path / "clean"), enc, {"teacher": "T"})
    out = tmp_path / "out"
    disk = full_disk(monkeypatch, str(out / full_at), free=10)
    with pytest.raises(StorageError) as e:
        write_reinforced(srcs, str(out), enc, {"teacher": "T"})
    path = str(out / full_at)
    assert disk.failed and str(e.value).startswith(f"{path}: No space left on device (") and "\n" not in str(e.value)
    assert "the input shards are untouched" in str(e.value) and not os.path.exists(path)
    assert not [f for f in files_under(out) if ".tmp" in f], files_under(out)
    monkeypatch.undo()
    write_reinforced(srcs, str(out), enc, {"teacher": "T"})
    assert files_under(out) == files_under(tmp_path / "clean")
    assert all((out / f).read_bytes() == (tmp_path / "clean" / f).read_bytes() for f in files_under(out))
