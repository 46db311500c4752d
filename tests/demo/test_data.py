"""Tests for align.demo.data: determinism, stratified split, webdataset and CLIP_benchmark layouts."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from align.demo import data as demo
from align.media.audio import decode_audio
from align.errors import DataError

LIMIT = 60


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """Two builds of the first 60 digits with small shards/chunks, one and two workers."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "SAMPLES_PER_SHARD", 16)   # several shards per split
        mp.setattr(demo, "_CHUNK", 16)              # several synthesis processes
        m1 = demo.build_demo(root / "a", seed=3, limit=LIMIT, workers=1, progress=False)
        m2 = demo.build_demo(root / "b", seed=3, limit=LIMIT, workers=2, progress=False)
    return root, m1, m2


def _files(d: Path):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _samples(pattern_paths):
    import webdataset as wds

    urls = [str(p) for p in pattern_paths]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_build_is_byte_identical_whatever_the_workers(small_demo):
    root, m1, m2 = small_demo
    a, b = _files(root / "a"), _files(root / "b")
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".tar") for k in a)
    for name in a:
        assert a[name] == b[name], name
    assert m1 == m2 == json.loads(a["demo.json"])
    # no temporary build directory left behind
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]


def test_layout_and_manifest(small_demo):
    root, m, _ = small_demo
    out = root / "a"
    assert m["counts"]["total"] == LIMIT == m["counts"]["train"] + m["counts"]["val"]
    assert m["seed"] == 3 and m["limit"] == LIMIT and m["image_size"] == 32
    assert [f"train/train-{i:06d}.tar" for i in range(len(m["train"]["shards"]))] == m["train"]["shards"]
    assert len(m["train"]["shards"]) == math.ceil(m["counts"]["train"] / 16) >= 2
    stats = json.loads((out / "train" / "stats.json").read_text())
    assert stats["written"] == m["counts"]["train"] and stats["shards"] == len(m["train"]["shards"])
    assert stats["skipped"] == 0 and stats["modalities"]["audio"] == stats["written"]
    assert sum(stats["shard_sizes"].values()) == stats["written"]
    assert [stats["per_class"][c] for c in demo.CLASSNAMES] == m["per_class"]["train"]
    nshards = int((out / "val" / "test" / "nshards.txt").read_text())
    assert [f"val/test/{i}.tar" for i in range(nshards)] == m["val"]["shards"] and nshards >= 2
    assert (out / "val" / "classnames.txt").read_text().split("\n")[:10] == demo.CLASSNAMES
    templates = (out / "val" / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == demo.TEMPLATES and all("{c}" in t for t in templates)


def test_split_is_stratified_and_disjoint(small_demo):
    from sklearn.datasets import load_digits

    root, m, _ = small_demo
    labels = load_digits().target[:LIMIT]
    train = _samples(sorted((root / "a" / "train").glob("*.tar")))
    val = _samples(sorted((root / "a" / "val" / "test").glob("*.tar")))
    tkeys, vkeys = {s["__key__"] for s in train}, {s["__key__"] for s in val}
    assert not tkeys & vkeys and len(tkeys | vkeys) == LIMIT
    assert tkeys | vkeys == {f"digit{i:05d}" for i in range(LIMIT)}
    for c in range(10):
        n_c = int((labels == c).sum())
        n_val = sum(int(s["cls"]) == c for s in val)
        assert n_val == math.ceil(0.25 * n_c), c        # every class in val, >= 25 %
        assert n_val + sum(int(s["cls"]) == c for s in train) == n_c
    assert m["per_class"]["val"] == [sum(int(s["cls"]) == c for s in val) for c in range(10)]
    assert len(val) / LIMIT >= 0.2


def test_samples_have_expected_content(small_demo):
    from PIL import Image
    from sklearn.datasets import load_digits
    import io

    root, _, _ = small_demo
    digits = load_digits()
    samples = _samples(sorted((root / "a" / "train").glob("*.tar")))
    voices = set()
    for s in samples:
        assert set(k for k in s if not k.startswith("__")) == {"png", "txt", "wav", "cls", "json"}
        meta = json.loads(s["json"])
        idx, label = meta["source_index"], int(s["cls"])
        assert s["__key__"] == f"digit{idx:05d}"
        assert label == meta["label"] == digits.target[idx]
        assert s["txt"].decode() == demo.caption(label, meta["template"])
        assert demo.CLASSNAMES[label] in s["txt"].decode() or str(label) in s["txt"].decode()
        img = Image.open(io.BytesIO(s["png"]))
        assert img.mode == "RGB" and img.size == (32, 32)
        # shrinking back to 8x8 recovers the source digit
        small = np.asarray(img.convert("L").resize((8, 8), Image.BOX), dtype=np.float64)
        assert np.corrcoef(small.ravel(), digits.images[idx].ravel())[0, 1] > 0.9
        wave, sr = decode_audio(s["wav"], name=s["__key__"])
        assert sr == 16000 and 0.1 < len(wave) / sr < 1.5 and np.sqrt(np.mean(wave ** 2)) > 0.01
        assert demo.RATE_RANGE[0] <= meta["rate"] <= demo.RATE_RANGE[1]
        assert demo.PITCH_RANGE[0] <= meta["pitch"] <= demo.PITCH_RANGE[1]
        voices.add(meta["voice"])
    assert len(voices) >= 5                       # voices vary per sample


def test_val_loads_through_clip_benchmark(small_demo):
    from clip_benchmark.datasets.builder import build_dataset

    root, m, _ = small_demo
    ds = build_dataset("wds/demo", root=str(root / "a" / "val"), transform=lambda im: im.size,
                       split="test", download=False, task="zeroshot_classification")
    assert ds.classes == demo.CLASSNAMES and ds.templates == demo.TEMPLATES
    items = list(ds)
    assert len(items) == m["counts"]["val"]
    assert {size for size, _ in items} == {(32, 32)}
    assert sorted(label for _, label in items) == sorted(
        c for c in range(10) for _ in range(m["per_class"]["val"][c]))


def test_fast_path_and_refusals(small_demo, tmp_path, monkeypatch):
    root, m, _ = small_demo
    out = root / "a"

    def no_build(*a, **k):
        raise AssertionError("rebuilt although demo.json matched")

    monkeypatch.setattr(demo, "_build", no_build)
    monkeypatch.setattr(demo, "SAMPLES_PER_SHARD", 16)
    assert demo.build_demo(out, seed=3, limit=LIMIT, progress=False) == m
    with pytest.raises(DataError, match=r"demo.json: demo was built with other settings: seed=3 \(asked 4\)"):
        demo.build_demo(out, seed=4, limit=LIMIT, progress=False)
    # a user's directory is never written into
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and has no demo.json"):
        demo.build_demo(user, progress=False)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    with pytest.raises(DataError, match="val_frac"):
        demo.build_demo(tmp_path / "x", val_frac=1.5, progress=False)
    with pytest.raises(DataError, match="limit"):
        demo.build_demo(tmp_path / "x", limit=5, progress=False)


def test_incomplete_demo_is_reported(small_demo, tmp_path, monkeypatch):
    import shutil

    root, m, _ = small_demo
    out = tmp_path / "copy"
    shutil.copytree(root / "a", out)
    (out / m["val"]["shards"][-1]).unlink()
    monkeypatch.setattr(demo, "SAMPLES_PER_SHARD", 16)
    with pytest.raises(DataError, match=r"incomplete, missing val/test/\d+\.tar"):
        demo.build_demo(out, seed=3, limit=LIMIT, progress=False)


def test_overwrite_replaces_only_what_the_demo_wrote(tmp_path):
    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    (out / "train" / "old.tar").write_bytes(b"old")
    (out / "demo.json").write_text(json.dumps({"version": demo.DEMO_VERSION, "seed": 99}))
    (out / "notes.txt").write_text("keep me")
    m = demo.build_demo(out, seed=0, limit=20, overwrite=True, workers=1, progress=False)
    assert m["seed"] == 0 and m["counts"]["total"] == 20
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "train" / "old.tar").exists()
    assert json.loads((out / "demo.json").read_text()) == m


def test_a_build_of_another_demo_version_is_rebuilt_in_place(small_demo, tmp_path, monkeypatch, capsys):
    """`align demo` after an upgrade: data the demo wrote with the same settings but another builder version is
    replaced (one line says so); other content of the folder stays."""
    import shutil

    root, m, _ = small_demo
    out = tmp_path / "copy"
    shutil.copytree(root / "a", out)
    (out / "notes.txt").write_text("keep me")
    old = dict(m, version=demo.DEMO_VERSION - 1)
    (out / "demo.json").write_text(json.dumps(old))
    shutil.rmtree(out / "selection")                    # version 2 had no selection split
    monkeypatch.setattr(demo, "SAMPLES_PER_SHARD", 16)
    monkeypatch.setattr(demo, "_CHUNK", 16)
    capsys.readouterr()
    new = demo.build_demo(out, seed=3, limit=LIMIT, workers=2, progress=False)
    assert f"built by demo data version {demo.DEMO_VERSION - 1}; rebuilding" in capsys.readouterr().err
    assert new == m and _files(out / "selection") == _files(root / "a" / "selection")
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="other settings"):   # another seed is still refused without overwrite
        demo.build_demo(out, seed=4, limit=LIMIT, progress=False)


@pytest.mark.slow
def test_full_build(tmp_path):
    m = demo.build_demo(tmp_path / "full", progress=False)
    assert m["counts"]["total"] == 1797
    assert m["counts"]["val"] / 1797 >= 0.2 and min(m["per_class"]["val"]) > 0


HELD = {"heldout": (demo.HELDOUT_VOICE_BASES, demo.HELDOUT_VOICE_VARIANTS, demo.HELDOUT_SCALE, demo.HELDOUT_BLUR),
        "selection": (demo.SELECTION_VOICE_BASES, demo.SELECTION_VOICE_VARIANTS, demo.SELECTION_SCALE,
                      demo.SELECTION_BLUR)}


def _voices(samples) -> set:
    return {json.loads(s["json"])["voice"] for s in samples}


@pytest.mark.parametrize("split", sorted(HELD))
def test_held_splits_use_unseen_voices_and_another_rendering(small_demo, split):
    from PIL import Image
    import io

    root, m, _ = small_demo
    bases, variants, scale, blur = HELD[split]
    train = _samples(sorted((root / "a" / "train").glob("*.tar")))
    val = {s["__key__"]: s for s in _samples(sorted((root / "a" / "val" / "test").glob("*.tar")))}
    held = _samples(sorted((root / "a" / split / "test").glob("*.tar")))
    assert sorted(s["__key__"] for s in held) == sorted(val) and m["counts"][split] == len(val)
    nshards = int((root / "a" / split / "test" / "nshards.txt").read_text())
    assert [f"{split}/test/{i}.tar" for i in range(nshards)] == m[split]["shards"]
    assert (root / "a" / split / "classnames.txt").read_text() == (root / "a" / "val" / "classnames.txt").read_text()
    assert m[split]["voices"] == {"bases": bases, "variants": variants}
    held_voices = set()
    for s in held:
        meta, ref = json.loads(s["json"]), val[s["__key__"]]
        base, _, variant = meta["voice"].partition("+")
        assert base in bases and variant in variants
        held_voices.add(meta["voice"])
        assert s["cls"] == ref["cls"] and s["wav"] != ref["wav"]
        r = meta["render"]
        assert scale[0] <= r["scale"] <= scale[1] and blur[0] <= r["blur"] <= blur[1]
        assert r["stroke"] in ("thinner", "thicker")
        a = np.asarray(Image.open(io.BytesIO(s["png"])).convert("L"), np.float64)
        b = np.asarray(Image.open(io.BytesIO(ref["png"])).convert("L"), np.float64)
        assert a.shape == b.shape == (32, 32) and np.abs(a - b).mean() > 5
        if split == "heldout":
            ink = lambda x: (x > 64).sum()
            assert ink(a) < ink(b)                                      # drawn smaller
    assert not held_voices & (_voices(train) | _voices(val.values())) and len(held_voices) >= 3
    for s in train:
        base, _, variant = json.loads(s["json"])["voice"].partition("+")
        assert base in demo.VOICE_BASES and variant in demo.VOICE_VARIANTS + [""]


def test_selection_and_report_groups_are_apart(small_demo):
    """The groups that choose recipe settings (selection/) share no voice with those reported on (heldout/)."""
    root, m, _ = small_demo
    sel = _voices(_samples(sorted((root / "a" / "selection" / "test").glob("*.tar"))))
    rep = _voices(_samples(sorted((root / "a" / "heldout" / "test").glob("*.tar"))))
    assert sel and rep and not sel & rep
    assert not set(demo.SELECTION_VOICE_BASES) & set(demo.HELDOUT_VOICE_BASES + demo.VOICE_BASES)
    assert not set(demo.SELECTION_VOICE_VARIANTS) & set(demo.HELDOUT_VOICE_VARIANTS + demo.VOICE_VARIANTS)


def test_render_digit_styles():
    grid = np.zeros((8, 8), np.uint8)
    grid[2:6, 3:5] = 255
    train = np.asarray(demo.render_digit(grid, 32).convert("L"), np.float64)
    r = {"scale": 0.5, "offset": [0.0, 1.0], "stroke": "thicker", "blur": 0.0}
    held = np.asarray(demo.render_digit(grid, 32, r).convert("L"), np.float64)
    ys, xs = np.nonzero(held > 64)
    assert xs.mean() < 12 and ys.mean() > 20                            # bottom-left: off-centre
    ys0, xs0 = np.nonzero(train > 64)
    assert abs(xs0.mean() - 15.5) < 1.5 and abs(ys0.mean() - 15.5) < 1.5
    thin = np.asarray(demo.render_digit(grid, 32, dict(r, stroke="thinner")).convert("L"), np.float64)
    assert (thin > 64).sum() < (held > 64).sum()


def test_a_full_disk_while_the_demo_data_is_built_is_one_line_and_leaves_out_unchanged(tmp_path, monkeypatch):
    """ENOSPC in the middle of the build (a shard, a JSON): a traceback. The build folder was removed, but the line
    named neither --out nor what to do. Now one line naming --out, nothing left beside it, and the rerun after
    space is freed writes what a clean build writes."""
    from align.writes import StorageError
    from tests.diskfull import full_disk
    clean = demo.build_demo(tmp_path / "clean", seed=0, limit=20, workers=1, progress=False)
    out = tmp_path / "full"
    disk = full_disk(monkeypatch, ".full.building-", free=20_000)
    with pytest.raises(StorageError) as e:
        demo.build_demo(out, seed=0, limit=20, workers=1, progress=False)
    assert disk.failed and str(e.value).startswith(f"{out}: No space left on device (") and "\n" not in str(e.value)
    assert f"{out} is unchanged (the build is all or nothing); free space and run the same command again" in \
        str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]                  # no build folder, no --out
    monkeypatch.undo()
    assert demo.build_demo(out, seed=0, limit=20, workers=1, progress=False) == clean
    assert _files(out) == _files(tmp_path / "clean")
