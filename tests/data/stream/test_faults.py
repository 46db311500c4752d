"""Broken data is skipped, counted exactly by reason (across worker processes) and warned about."""

import logging
import os

import pytest
import torch

import align.data.stream.worker as stream_worker
from align.data.stream.faults import FaultCounter, skip_rate_error
from align.data.stream.build import build_train_loader
from align.errors import DataError
from tests.wds_helpers import TRANSFORMS, audio_text, flat, image_text, make_shards, member_offset, write_shard

MODS = ["image", "text", "audio"]


def _faulty_dataset(root):
    """Shards with one of each fault; returns (shard list, expected good keys, expected counts)."""
    root.mkdir()
    good = [image_text(f"a{j}", seed=j) for j in range(6)] + [audio_text(f"b{j}", seed=j) for j in range(4)]
    bad = [
        {"__key__": "bad_img", "jpg": b"\xff\xd8\xff not a jpeg", "txt": "broken image"},
        {"__key__": "bad_aud", "flac": b"fLaC garbage", "txt": "broken audio"},
        {"__key__": "empty_cap", "jpg": good[0]["jpg"], "txt": " \n\n  "},
        {"__key__": "text_only", "txt": "no image, no audio"},
    ]
    s0 = write_shard(root / "s0.tar", good[:5] + bad[:2])
    s1 = write_shard(root / "s1.tar", good[5:] + bad[2:])
    # s2: 8 samples, cut in the middle of sample 5's image -> samples 0..4 survive.
    trunc = [image_text(f"t{j}", seed=100 + j) for j in range(8)]
    s2 = write_shard(root / "s2.tar", trunc)
    cut = member_offset(s2, "t5.jpg") + 20
    with open(s2, "r+b") as f:
        f.truncate(cut)
    s3 = write_shard(root / "s3.tar", [image_text("gone", seed=7)])  # deleted after the loader is built
    expected_keys = sorted([s["__key__"] for s in good] + [f"t{j}" for j in range(5)])
    counts = {"undecodable image": 1, "undecodable audio": 1, "empty caption": 1,
              "fewer than 2 modalities": 1, "corrupt tar": 1, "missing shard": 1}
    return [s0, s1, s2, s3], expected_keys, counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_fault_is_skipped_and_counted_exactly(tmp_path, num_workers):
    shards, expected_keys, counts = _faulty_dataset(tmp_path / "d")
    loader = build_train_loader(shards, transforms=TRANSFORMS, batch_size=3, modalities=MODS,
                                num_workers=num_workers, drop_last=False, shuffle_buffer=4)
    os.remove(shards[3])  # listed, present at build time, absent at read time
    batches = list(loader)
    assert sorted(flat([b["__key__"] for b in batches])) == expected_keys
    assert dict(loader.skipped) == counts
    # seen = raw samples read (10 good + 4 bad + 5 before the cut) + 2 unreadable shards
    assert loader.seen == 10 + 4 + 5 + 2


def test_transform_failure_is_counted_not_fatal(tmp_path):
    shards, keys = make_shards(tmp_path, 1, 6)

    def picky(img):
        if picky.calls == 2:
            picky.calls += 1
            raise ValueError("boom")
        picky.calls += 1
        return TRANSFORMS["image"](img)

    picky.calls = 0
    tf = dict(TRANSFORMS, image=picky)
    loader = build_train_loader(shards, transforms=tf, batch_size=2, modalities=["image", "text"], num_workers=0,
                                drop_last=False, shuffle_buffer=0)
    got = flat([b["__key__"] for b in loader])
    assert len(got) == 5 and dict(loader.skipped) == {"image transform failed": 1}


def test_warnings_are_rate_limited_and_name_the_sample(tmp_path, caplog):
    root = tmp_path / "d"
    root.mkdir()
    samples = [{"__key__": f"bad{j}", "jpg": b"nope", "txt": "x"} for j in range(5)]
    samples += [image_text(f"ok{j}", seed=j) for j in range(3)]
    shard = write_shard(root / "s.tar", samples)
    loader = build_train_loader(shard, transforms=TRANSFORMS, batch_size=2, modalities=["image", "text"],
                                num_workers=0, drop_last=False, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="align.data"):
        list(loader)
    msgs = [r.getMessage() for r in caplog.records if "undecodable image" in r.getMessage()]
    assert len(msgs) == 1 and "bad0" in msgs[0] and "s.tar" in msgs[0]
    assert loader.skipped["undecodable image"] == 5


def test_fault_counter_reports_suppressed_count(caplog):
    fc = FaultCounter(warn_every_s=0.0)
    with caplog.at_level(logging.WARNING, logger="align.data"):
        fc.record("r", "sample k1")
        fc.record("r", "sample k2")
    assert len(caplog.records) == 2
    fc = FaultCounter(warn_every_s=3600)
    fc.record("r", "a")
    fc.record("r", "b")
    fc.record("s", "c", per_sample=False)
    assert fc.take_delta() == ({"r": 2, "s": 1}, 1)
    assert fc.take_delta() == ({}, 0)
    fc.muted = True
    fc.record("r", "d")
    assert fc.take_delta() == ({}, 0) and fc.total["r"] == 2


def test_skip_rate_error_message_and_threshold():
    assert skip_rate_error({"x": 50}, 99, 0.05) is None  # too few seen to judge
    assert skip_rate_error({"x": 5}, 100, 0.05) is None  # exactly at the limit
    err = skip_rate_error({"undecodable image": 10, "empty caption": 2, "x": 1}, 104, 0.05)
    assert "skip rate 12.5%" in str(err) and "data.max_skip_frac=0.05" in str(err)
    assert "top reasons: undecodable image (10), empty caption (2)" in str(err)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_max_skip_frac_stops_the_run(tmp_path, num_workers):
    root = tmp_path / "d"
    root.mkdir()
    shards = []
    for i in range(2):
        samples = [image_text(f"g{i}_{j}", seed=j) for j in range(60)]
        samples += [{"__key__": f"b{i}_{j}", "jpg": b"bad", "txt": "x"} for j in range(15)]
        shards.append(write_shard(root / f"s{i}.tar", samples))
    kw = dict(transforms=TRANSFORMS, batch_size=5, modalities=["image", "text"], num_workers=num_workers)
    with pytest.raises(DataError, match=r"skip rate \d+\.\d% .*exceeds data.max_skip_frac=0.05; top reasons: "
                                        r"undecodable image"):
        list(build_train_loader(shards, max_skip_frac=0.05, **kw))
    loader = build_train_loader(shards, max_skip_frac=0.5, **kw)
    assert len(list(loader)) > 0 and loader.skipped["undecodable image"] == 30
    # each rank checks the shards it reads (one of 75 here: checked from the 100th sample on, in its second epoch),
    # and says which rank it is
    one = build_train_loader(shards, max_skip_frac=0.05, rank=1, world_size=2, **kw)
    with pytest.raises(DataError, match=r"^skip rate \d+\.\d% \(\d+ of \d+ samples\) on rank 1 of 2 \(in the shards "
                                        r"it reads\) exceeds data.max_skip_frac=0.05"):
        list(one) + list(one)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_everything_skipped_is_an_error_not_a_silent_spin(tmp_path, num_workers, monkeypatch):
    monkeypatch.setattr(stream_worker, "MAX_ALL_SKIPPED", 10)
    root = tmp_path / "d"
    root.mkdir()
    shards = [write_shard(root / f"s{i}.tar", [{"__key__": f"k{i}_{j}", "txt": "only text"} for j in range(12)])
              for i in range(2)]
    loader = build_train_loader(shards, transforms=TRANSFORMS, batch_size=2, modalities=["image", "text"],
                                num_workers=num_workers)
    with pytest.raises(DataError, match="first 10 samples .* were all skipped .*fewer than 2 modalities"):
        list(loader)


def test_resampled_all_missing_shards_is_an_error(tmp_path):
    shards, _ = make_shards(tmp_path, 2, 2)
    loader = build_train_loader(shards, transforms=TRANSFORMS, batch_size=2, modalities=["image", "text"],
                                num_workers=0, resampled=True)
    for p in shards:
        os.remove(p)
    with pytest.raises(DataError, match="shards drawn gave no sample"):
        next(iter(loader))


def test_missing_modality_zero_filled_even_when_no_sample_has_it(tmp_path):
    shards, _ = make_shards(tmp_path, 1, 4)
    batch = next(iter(build_train_loader(shards, transforms=TRANSFORMS, batch_size=4, modalities=MODS,
                                         num_workers=0)))
    assert batch["audio"].shape == (4, 2, 8) and not batch["audio"].any()
    assert batch["audio_mask"].tolist() == [False] * 4 and batch["image_mask"].all()
    assert batch["text"].dtype == torch.long


def test_a_warning_escapes_the_control_characters_of_a_member_name(caplog):
    """The skip warning printed a member's name raw: `<ESC>[2J` in a tar member name cleared the training terminal."""
    with caplog.at_level(logging.WARNING, logger="align.data"):
        FaultCounter().record("not a sample", "file k\x1b[2J\x1b]0;pwned\x07 in x.tar", "", per_sample=False)
    text = caplog.text
    assert "\x1b" not in text and "\x07" not in text and "k\\x1b[2J\\x1b]0;pwned\\x07" in text, text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shard_unreadable_every_epoch_is_named_once_and_counted_every_epoch(tmp_path, num_workers):
    """A source whose every shard is unreadable (not a tar) beside a readable one: each epoch's readers had a fault
    counter of their own, so each epoch named the broken shards again (and each epoch deals them to other workers).
    They are named once over the run (whichever worker reads them), and still counted every epoch."""
    shards, _ = make_shards(tmp_path, 2, 4)
    bad = []
    for i in range(2):
        (tmp_path / f"bad{i}.tar").write_bytes(b"not a tar" * 100)
        bad.append(str(tmp_path / f"bad{i}.tar"))
    loader = build_train_loader([{"urls": shards, "weight": 1}, {"urls": bad, "weight": 1}], transforms=TRANSFORMS,
                                batch_size=2, modalities=["image", "text"], num_workers=num_workers)
    said = logging.FileHandler(tmp_path / "warnings.log")     # appended to by the data workers too (forked)
    logging.getLogger("align.data").addHandler(said)
    try:
        for epoch in range(4):
            assert len(list(loader)) == 4
            assert loader.skipped["corrupt tar"] == 2 * (epoch + 1)
    finally:
        logging.getLogger("align.data").removeHandler(said)
        said.close()
    lines = (tmp_path / "warnings.log").read_text().splitlines()
    named = sorted(ln.split(":")[0] for ln in lines if "corrupt tar" in ln)
    assert named == [f"skipping shard {p}" for p in bad], named
