"""Tests for align.data.tools.inspect.inspect_shards: counts by reason (as training's), corrupt tars, patterns."""
import io
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from align.data.tools.inspect import inspect_shards
from align.errors import DataError
from align.wds.writer import write_shard
from tests.wds_helpers import member_offset


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
    write_shard(path, [dict(members, __key__=key) for key, members in samples])


def test_counts_and_skips_by_reason(tmp_path, capsys):
    good = {"png": _png(), "txt": b"a green box\nsecond", "cls": b"4", "json": b"{}"}
    _tar(tmp_path / "s-000.tar", [("k0", good), ("k1", dict(good, png=b"\x89PNG broken")), ("k2", good)])
    _tar(tmp_path / "s-001.tar", [("k3", {"flac": _flac(), "txt": "ünïcode".encode()}),
                                  ("k4", {"flac": b"fLaC junk", "txt": b"\xff\xfe bad utf8"})])
    res = inspect_shards(str(tmp_path / "s-{000..001}.tar"), n=4, progress=False)
    assert res["samples"] == 5 and res["corrupt"] == [] and res["missing"] == []
    # one reason per skipped sample, the first problem found in align's modality order (image, text, audio):
    # k4's text before its audio
    assert res["skipped"] == {"undecodable image": 1, "undecodable text": 1} and res["usable"] == 3
    assert res["modalities"] == {"cls": 3, "flac": 2, "json": 3, "png": 3, "txt": 5}
    s0, s1 = res["shards"]
    assert [(f["key"], f["reason"]) for f in s0["failures"]] == [("k1", "undecodable image")]
    assert [(f["key"], f["reason"]) for f in s1["failures"]] == [("k4", "undecodable text")]
    first = res["first"]
    assert [s["key"] for s in first] == ["k0", "k1", "k2", "k3"]
    assert first[0]["image"] == "8x6" and first[0]["caption"] == "a green box" and first[0]["label"] == 4
    assert first[3]["audio"] == {"duration": 0.5, "sample_rate": 16000} and first[3]["caption"] == "ünïcode"
    printed = capsys.readouterr().out
    assert "k0  image 8x6  label 4  'a green box'" in printed
    assert "k3  audio 0.50s@16000Hz" in printed and "k1  SKIPPED: undecodable image" in printed
    assert "2 shards, 5 samples" in printed and "skipped 2 (undecodable image 1, undecodable text 1)" in printed


def test_check_all_false_decodes_only_first_n(tmp_path):
    good = {"png": _png(), "txt": b"x"}
    _tar(tmp_path / "a.tar", [("k0", good), ("k1", good), ("k2", dict(good, png=b"bad"))])
    res = inspect_shards(str(tmp_path / "a.tar"), n=2, check_all=False, quiet=True, progress=False)
    assert res["samples"] == 3 and res["skipped"] == {}
    res = inspect_shards(str(tmp_path / "a.tar"), n=2, check_all=True, quiet=True, progress=False)
    assert res["skipped"] == {"undecodable image": 1}


def test_only_training_extensions_count_and_modalities_choose_what_is_needed(tmp_path):
    # bmp/opus/caption are not extensions training decodes: such a sample has no usable modality.
    _tar(tmp_path / "a.tar", [("k0", {"bmp": _png(), "caption": b"x", "opus": b"y"}),
                              ("k1", {"png": _png(), "txt": b"x"}), ("k2", {"flac": _flac(), "txt": b"y"})])
    res = inspect_shards(str(tmp_path / "a.tar"), quiet=True, progress=False)
    assert res["skipped"] == {"fewer than 2 modalities": 1}
    res = inspect_shards(str(tmp_path / "a.tar"), quiet=True, progress=False, modalities=["image", "text"])
    assert res["skipped"] == {"fewer than 2 modalities": 2}
    with pytest.raises(DataError, match="each must be one of image, text, audio"):
        inspect_shards(str(tmp_path / "a.tar"), quiet=True, modalities=["video"])


def test_truncated_and_corrupt_tars(tmp_path, capsys):
    samples = [(f"k{i}", {"png": _png(), "txt": b"caption"}) for i in range(4)]
    _tar(tmp_path / "full.tar", samples)
    data = (tmp_path / "full.tar").read_bytes()
    k1_png = member_offset(tmp_path / "full.tar", "k1.png")
    k2_png = member_offset(tmp_path / "full.tar", "k2.png")
    # Cut inside the 3rd member's data, and cut exactly at a member boundary (before k2.png's header)
    # (tarfile reads the latter without complaint: only the missing end marker tells).
    (tmp_path / "mid.tar").write_bytes(data[: k1_png + 10])
    (tmp_path / "edge.tar").write_bytes(data[: k2_png - 512])
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    res = inspect_shards(str(tmp_path / "{full,mid,edge,junk}.tar"), n=0, progress=False)
    by_name = {s["path"].rsplit("/", 1)[1]: s for s in res["shards"]}
    assert by_name["full.tar"]["error"] is None and by_name["full.tar"]["samples"] == 4
    assert "corrupt tar" in by_name["mid.tar"]["error"] and by_name["mid.tar"]["samples"] == 1
    # at a boundary the last sample may lack members: dropped with the fault, as in training
    assert "end-of-archive marker" in by_name["edge.tar"]["error"] and by_name["edge.tar"]["samples"] == 1
    assert by_name["junk.tar"]["error"] and by_name["junk.tar"]["samples"] == 0
    assert sorted(p.rsplit("/", 1)[1] for p in res["corrupt"]) == ["edge.tar", "junk.tar", "mid.tar"]
    assert res["skipped"] == {"corrupt tar": 3}
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
    from align.data.write.shards import write_shards
    for i in range(3):
        Image.new("RGB", (10, 10)).save(tmp_path / f"{i}.jpg")
    pd.DataFrame({"image": [f"{i}.jpg" for i in range(3)], "text": ["a", "b", "c"]}).to_csv(tmp_path / "d.csv")
    stats = write_shards(tmp_path / "d.csv", tmp_path / "out", shard_size=2, progress=False)
    res = inspect_shards(stats["pattern"], quiet=True, progress=False)
    assert res["samples"] == 3 and res["skipped"] == {} and res["corrupt"] == []
    assert [s["layouts"] for s in res["shards"]] == [{"jpg+json+txt": 2}, {"jpg+json+txt": 1}]


@pytest.mark.parametrize("modalities", [["image", "text", "audio"], ["image", "text"]])
def test_inspect_counts_every_case_as_training_does(tmp_path, modalities):
    """Planted duplicates, unknown extensions, broken members, a cut shard and a missing one: inspect's
    counts by reason and its `seen` equal a training epoch's over the same pattern."""
    from align.data.stream.build import build_train_loader
    from tests.wds_helpers import TRANSFORMS, audio_text, image_text

    good = [image_text(f"g{j}", seed=j) for j in range(4)] + [audio_text(f"a{j}", seed=j) for j in range(3)]
    planted = [
        dict(image_text("dup", seed=9)), {"__key__": "dup", "txt": "a second txt of the same sample"},  # duplicate
        dict(image_text("unk", seed=8), xyz=b"unknown extension, carried and ignored"),
        {"__key__": "old", "bmp": _png(), "caption": "caption", "opus": b"x"},   # no extension training decodes
        {"__key__": "badjpg", "jpg": b"\xff\xd8 broken", "txt": "x"},
        {"__key__": "badflac", "flac": b"fLaC broken", "txt": "x"},
        {"__key__": "badtxt", "jpg": good[0]["jpg"], "txt": b"\xff\xfe"},
        {"__key__": "emptytxt", "jpg": good[0]["jpg"], "txt": " \n "},
        dict(image_text("badcls", seed=7), cls="seven"),
        dict(image_text("g0", seed=5)),                                        # a key repeated later in the shard
        {"__key__": "onlyimg", "jpg": good[0]["jpg"]},
    ]
    write_shard(tmp_path / "p-0.tar", good[:4] + planted[:6])
    write_shard(tmp_path / "p-1.tar", good[4:] + planted[6:])
    cut = write_shard(tmp_path / "p-2.tar", [image_text(f"c{j}", seed=20 + j) for j in range(5)])
    with open(cut, "r+b") as f:
        f.truncate(member_offset(cut, "c3.jpg") + 7)
    pattern = str(tmp_path / "p-{0..3}.tar")                                 # p-3.tar does not exist
    res = inspect_shards(pattern, quiet=True, progress=False, modalities=modalities)
    loader = build_train_loader(pattern, transforms=TRANSFORMS, batch_size=4, modalities=modalities,
                                num_workers=0, drop_last=False, shuffle_buffer=0)
    keys = [k for b in loader for k in b["__key__"]]
    assert res["skipped"] == dict(loader.skipped)
    assert res["seen"] == loader.seen and res["usable"] == len(keys)
    expected = {"duplicate file in sample": 1, "corrupt tar": 1, "missing shard": 1, "undecodable image": 1,
                "undecodable text": 1, "empty caption": 1, "bad cls": 1, "fewer than 2 modalities": 2}
    if "audio" in modalities:
        expected["undecodable audio"] = 1
    else:  # audio-text samples lack the second requested modality
        expected["fewer than 2 modalities"] += 1 + 3
    assert res["skipped"] == expected


def _hostile_samples():
    """The cases of issue 24's table, plus the other limits: (key, members, reason)."""
    import numpy as np

    from tests.wds_helpers import float_wav, jpeg_bytes, png_claiming, wav_claiming
    return [
        ("bomb", {"png": png_claiming(20000, 20000), "txt": b"a bomb"}, "image too large"),
        ("hugerate", {"wav": wav_claiming(2_147_483_647), "txt": b"a fast one"}, "audio sample rate out of range"),
        ("onehz", {"wav": wav_claiming(1, frames=1600), "txt": b"a slow one"}, "audio sample rate out of range"),
        ("manych", {"wav": wav_claiming(16000, channels=40), "txt": b"wide"}, "audio has too many channels"),
        ("nan", {"wav": float_wav(np.array([0.1, np.nan] * 80)), "txt": b"nan"}, "undecodable audio"),
        ("longcap", {"jpg": jpeg_bytes(1), "txt": b"x" * (10 << 20)}, "caption too long"),
        ("bigjson", {"jpg": jpeg_bytes(2), "txt": b"ok", "json": b"[" + b"0," * (1 << 20) + b"0]"},
         "json too large"),
    ]


def test_limits_count_alike_in_inspect_training_bench_and_shard_writing(tmp_path):
    """Issue 24's table: each case is skipped under its own reason, the same one in `align data inspect`,
    a training epoch, `align bench` datasets and `align data shards`; a header claiming 50 GB after one
    good sample costs the shard's rest (corrupt tar), not a MemoryError."""
    from align.bench.datasets import SampleError, open_dataset
    from align.data.stream.build import build_train_loader
    from align.data.write.shards import write_shards
    from tests.wds_helpers import TRANSFORMS, audio_text, image_text, set_member_size

    cases = _hostile_samples()
    expected = {key: reason for key, _, reason in cases}
    good = [image_text("g0", 1), audio_text("g1", 2)]
    root = tmp_path / "cb"
    (root / "test").mkdir(parents=True)
    write_shard(root / "test" / "0.tar", good + [dict(m, __key__=k) for k, m, _ in cases])
    flipped = write_shard(root / "test" / "1.tar", [image_text("g2", 3), image_text("cut", 4), image_text("g3", 5)])
    set_member_size(flipped, "cut.jpg", 50 * 2 ** 30)
    (root / "test" / "nshards.txt").write_text("1")
    pattern = str(root / "test" / "{0..1}.tar")
    mods = ["image", "text", "audio"]

    res = inspect_shards(pattern, quiet=True, progress=False, modalities=mods)
    by_key = {f["key"]: f["reason"] for s in res["shards"] for f in s["failures"] if f["reason"] != "corrupt tar"}
    assert by_key == expected
    loader = build_train_loader(pattern, transforms=TRANSFORMS, batch_size=2, modalities=mods, num_workers=0,
                                drop_last=False, shuffle_buffer=0)
    keys = [k for b in loader for k in b["__key__"]]
    assert sorted(keys) == ["g0", "g1", "g2"]                    # the good samples, also the one before the flip
    assert dict(loader.skipped) == res["skipped"]
    assert res["skipped"] == dict(Counter(expected.values()), **{"corrupt tar": 1})

    bench = open_dataset(str(root), "wds")                         # CLIP_benchmark layout, shard 0
    reasons = {}
    for i, it in enumerate(bench.items):
        for m in it.media:
            try:
                bench.load(i, m)
            except SampleError as e:
                reasons[it.key.split(":")[1]] = e.reason
    problems = " ".join(bench.problems)
    assert "longcap: caption too long" in problems
    assert reasons == {k: r for k, r in expected.items() if k not in ("longcap", "bigjson")}

    pairs = tmp_path / "pairs"                                     # the same media as input files
    pairs.mkdir()
    for key, members, _ in cases:
        if key != "bigjson":   # a sidecar json is metadata the writer merges, see test_shards
            for ext, data in members.items():
                (pairs / f"{key}.{ext}").write_bytes(data)
    for sub, kind in (("img", "image"), ("aud", "audio")):
        d = tmp_path / sub
        d.mkdir()
        for p in pairs.iterdir():
            stem = p.name.split(".")[0]
            has = {q.suffix for q in pairs.glob(stem + ".*")}
            if (kind == "image") == bool(has & {".png", ".jpg"}):
                (d / p.name).write_bytes(p.read_bytes())
    (tmp_path / "img" / "g.jpg").write_bytes(good[0]["jpg"])
    (tmp_path / "img" / "g.txt").write_text("good")
    (tmp_path / "aud" / "g.flac").write_bytes(good[1]["flac"])
    (tmp_path / "aud" / "g.txt").write_text("good")
    written = {}
    for sub in ("img", "aud"):
        st = write_shards(tmp_path / sub, tmp_path / f"out-{sub}", progress=False)
        written.update(st["by_reason"])
    assert written == Counter(r for k, r in expected.items() if k != "bigjson")


def test_the_shards_inspected_are_the_shards_training_reads(tmp_path):
    """inspect expanded patterns its own way: a folder's hidden and .tar.gz files (training reads only *.tar),
    a shard named twice counted once (training reads it twice), and `a::b` refused (training reads both)."""
    from align.data.stream.sources import resolve_sources
    d = tmp_path / "d"
    d.mkdir()
    _tar(d / "a.tar", [("k", {"txt": b"a"})])
    _tar(d / ".b.tar", [("k", {"txt": b"b"})])
    _tar(tmp_path / "c.tar", [("k", {"txt": b"c"}), ("j", {"txt": b"d"})])
    (d / "c.tar.gz").write_bytes(__import__("gzip").compress((tmp_path / "c.tar").read_bytes()))
    for pattern in (str(d), f"{tmp_path}/{{c.tar,c*.tar}}", f"{d}/a.tar::{tmp_path}/c.tar"):
        res = inspect_shards(pattern, quiet=True, progress=False, modalities=["text"], min_modalities=1)
        training = [u for src in resolve_sources(pattern) for u in src.urls]
        assert [s["path"] for s in res["shards"]] == training, pattern
    assert inspect_shards(f"{tmp_path}/{{c.tar,c*.tar}}", quiet=True, progress=False, modalities=["text"],
                          min_modalities=1)["samples"] == 4


def test_printed_keys_escape_their_control_characters(tmp_path, capsys):
    """A member named `k<ESC>]0;pwned<BEL><ESC>[2J.txt` was printed raw by `align data inspect`: the terminal's
    title changed and its screen was cleared."""
    write_shard(tmp_path / "a.tar", [{"__key__": "k\x1b]0;pwned\x07\x1b[2J", "txt": "a caption"}])
    inspect_shards(str(tmp_path / "a.tar"), progress=False, modalities=["text"], min_modalities=1)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "k\\x1b]0;pwned\\x07\\x1b[2J" in out, out


def test_a_cut_wav_aiff_or_mp3_is_skipped_as_a_cut_flac_is_in_every_reader(tmp_path):
    """libsndfile refuses a FLAC cut short but read a cut WAV, AIFF or MP3 as far as it went, without a word. All
    four are now skipped and counted as undecodable audio alike by training, `align data inspect`, `align bench` /
    `align embed` datasets, `align data stats` and `align data shards`, each with the line saying what is missing."""
    from align.bench.datasets import SampleError, open_dataset
    from align.data.stream.build import build_train_loader
    from align.data.tools.stats import audio_duration_stats
    from align.data.write.shards import write_shards
    from tests.wds_helpers import TRANSFORMS, audio_text

    wave = (np.sin(np.arange(8000) / 7) * 0.4).astype(np.float32)
    cut = {}
    for ext, fmt, subtype in (("flac", "FLAC", "PCM_16"), ("wav", "WAV", "PCM_16"), ("mp3", "MP3", "MPEG_LAYER_III"),
                              ("aiff", "AIFF", "PCM_16")):
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format=fmt, subtype=subtype)
        cut[ext] = buf.getvalue()[:len(buf.getvalue()) * 2 // 3]
    in_shards = ("flac", "wav", "mp3")                                       # the extensions training reads
    root = tmp_path / "cb"
    (root / "test").mkdir(parents=True)
    write_shard(root / "test" / "0.tar", [audio_text("g0", 1)] + [{"__key__": f"cut_{e}", e: cut[e], "txt": b"x"}
                                                                  for e in in_shards])
    (root / "test" / "nshards.txt").write_text("1")
    pattern = str(root / "test" / "0.tar")

    res = inspect_shards(pattern, quiet=True, progress=False, modalities=["audio", "text"])
    failures = {f["key"]: f for s in res["shards"] for f in s["failures"]}
    assert {k: f["reason"] for k, f in failures.items()} == {f"cut_{e}": "undecodable audio" for e in in_shards}
    assert "truncated WAV: the header declares 8000 frames, the file holds" in str(failures["cut_wav"])
    assert "truncated MP3: the header declares" in str(failures["cut_mp3"])
    loader = build_train_loader(pattern, transforms=TRANSFORMS, batch_size=2, modalities=["audio", "text"],
                                num_workers=0, drop_last=False, shuffle_buffer=0)
    assert [k for b in loader for k in b["__key__"]] == ["g0"]
    assert dict(loader.skipped) == res["skipped"] == {"undecodable audio": 3}
    bench = open_dataset(str(root), "wds")
    reasons = {}
    for i, it in enumerate(bench.items):
        try:
            bench.load(i, "audio")
        except SampleError as e:
            reasons[it.key.split(":")[1]] = e.reason
    assert reasons == {f"cut_{e}": "undecodable audio" for e in in_shards}
    durations = audio_duration_stats(pattern, lambda w, r: len(w) / r)
    assert durations["clips"] == 1 and durations["unreadable"] == 3

    files = tmp_path / "clips"
    files.mkdir()
    for ext, data in cut.items():
        (files / f"cut_{ext}.{ext}").write_bytes(data)
        (files / f"cut_{ext}.txt").write_text("x")
    (files / "g.flac").write_bytes(audio_text("g", 2)["flac"])
    (files / "g.txt").write_text("good")
    st = write_shards(files, tmp_path / "out", progress=False)
    assert st["by_reason"] == {"undecodable audio": 4} and st["written"] == 1


def test_the_summary_names_the_modalities_the_shards_hold(tmp_path, capsys):
    """`align data inspect` on image-text shards said "for modalities image+text+audio" (training's default, which
    it counts skips with): the summary names the modalities the shards hold; asked for some, it names those."""
    from align.cli import main
    _tar(tmp_path / "a.tar", [("k0", {"png": _png(), "txt": b"a green box"}), ("k1", {"png": _png(), "txt": b"b"})])
    assert main(["data", "inspect", str(tmp_path / "a.tar"), "-n", "0"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "for modalities image+text (found in the shards);" in last and "audio" not in last, last
    res = inspect_shards(str(tmp_path / "a.tar"), quiet=True, progress=False, modalities=["text", "image"])
    assert res["checked"] == ["text", "image"] and res["usable"] == 2
    assert main(["data", "inspect", str(tmp_path / "a.tar"), "-n", "0", "--modalities", "image,text,audio"]) == 0
    assert "for modalities image+text+audio;" in capsys.readouterr().out


def test_pairs_skip_a_sample_in_no_loss_pair_as_training_does(tmp_path, capsys):
    """--pairs image-text,audio-text (bind's loss.pairs): an image-audio sample without a caption is skipped as
    `no pair of loss.pairs` in inspect as in a training epoch given the same pairs; without --pairs it counts as
    usable. A malformed --pairs item is one line naming it."""
    from align.cli import main
    from align.data.stream.build import build_train_loader
    from tests.wds_helpers import TRANSFORMS, audio_text, image_text

    ia = {"__key__": "ia", "jpg": image_text("x")["jpg"], "flac": audio_text("y")["flac"]}
    write_shard(tmp_path / "m-0.tar", [image_text("it"), audio_text("at"), ia])
    pairs = [("image", "text"), ("audio", "text")]
    res = inspect_shards(str(tmp_path / "m-0.tar"), quiet=True, progress=False, pairs=pairs)
    loader = build_train_loader(str(tmp_path / "m-0.tar"), transforms=TRANSFORMS, batch_size=1, num_workers=0,
                                modalities=["image", "text", "audio"], shuffle_buffer=0, pairs=pairs)
    assert sorted(k for b in loader for k in b["__key__"]) == ["at", "it"]
    assert res["skipped"] == dict(loader.skipped) == {"no pair of loss.pairs": 1} and res["usable"] == 2
    assert inspect_shards(str(tmp_path / "m-0.tar"), quiet=True, progress=False)["usable"] == 3
    assert main(["data", "inspect", str(tmp_path / "m-0.tar"), "--pairs", "image-text,audio-text"]) in (0, None)
    assert "skipped 1 (no pair of loss.pairs 1)" in capsys.readouterr().out
    for bad in ("image", "image-image", "image-text,audio-", "image-speech"):
        assert main(["data", "inspect", str(tmp_path / "m-0.tar"), "--pairs", bad]) not in (0, None)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pairs" in err[0], err
