"""Tests for align.data.write.shards.write_shards: inputs, skips, determinism, resume (media formats and resizing:
test_media.py; held-out groups: test_eval_sets.py)."""
import io
import json
import os
import re
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from align.data.write import shards as shards_mod
from align.data.write.shards import summary_line, write_shards
from align.errors import ConfigError, DataError
from tests.wds_helpers import all_tar_members as _all_members


def _jpg(path, size=(40, 30), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path, "JPEG")


def _csv_dataset(tmp_path, n_good=6):
    """CSV of image paths + captions: n_good good rows, then 3 broken ones."""
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(n_good):
        _jpg(tmp_path / "imgs" / f"{i}.jpg", size=(40 + i, 30))
        rows.append({"filepath": f"imgs/{i}.jpg", "caption": f"photo {i}\nsecond caption {i}", "note": f"n{i}"})
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"\x00not a jpeg")
    rows.insert(2, {"filepath": "imgs/bad.jpg", "caption": "broken", "note": "b"})
    rows.insert(4, {"filepath": "imgs/missing.jpg", "caption": "gone", "note": "m"})
    rows.append({"filepath": "imgs/0.jpg", "caption": "  ", "note": "e"})
    csv = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv



def test_the_skipped_rows_wait_on_disk_not_in_memory_until_skipped_jsonl_is_written(tmp_path, monkeypatch):
    """Every shard's skipped rows (a dict per skipped input row) were held until the end, to write skipped.jsonl
    from them: a billion-row input with a tenth broken held 100M dicts. They stay in each shard's .done record
    and are read back one shard at a time; skipped.jsonl is the same."""
    import gc
    (tmp_path / "imgs").mkdir()
    _jpg(tmp_path / "imgs" / "ok.jpg")
    pd.DataFrame({"filepath": [f"imgs/{'ok' if i % 10 == 0 else f'missing{i}'}.jpg" for i in range(300)],
                  "caption": [f"row {i}" for i in range(300)]}).to_csv(tmp_path / "data.csv", index=False)
    held, real = [], shards_mod.write_json_atomic

    def counting(path, obj, lines=False):
        if path.name == "skipped.jsonl":    # the skipped-row dicts alive in lists now (the lists are gc-tracked)
            gc.collect()                    # not an earlier test's garbage, which a cycle can keep until a collection
            held.append(sum(len(o) for o in gc.get_objects() if type(o) is list and o and type(o[0]) is dict
                            and {"row", "reason", "shard"} <= set(o[0])))
        return real(path, obj, lines)
    monkeypatch.setattr(shards_mod, "write_json_atomic", counting)
    stats = write_shards(tmp_path / "data.csv", tmp_path / "out", shard_size=30, progress=False)
    assert stats["skipped"] == 270 and held == [0]
    rows = [json.loads(line)["row"] for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert rows == [i for i in range(300) if i % 10]

def test_csv_with_broken_rows_exact_stats_and_skipped(tmp_path):
    csv = _csv_dataset(tmp_path)
    out = tmp_path / "out"
    stats = write_shards(csv, out, shard_size=4, progress=False)
    expect = {"written": 6, "skipped": 3, "shards": 3,
              "by_reason": {"undecodable image": 1, "image: file not found": 1, "empty caption": 1},
              "modalities": {"image": 6, "text": 6, "audio": 0, "label": 0}}
    assert json.loads((out / "stats.json").read_text()) == expect
    assert stats == dict(expect, pattern=str(out / "shard-{000000..000002}.tar"))
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [
        {"row": 2, "key": None, "shard": "shard-000000", "source": str(tmp_path / "imgs" / "bad.jpg"),
         "reason": "image: cannot identify image file 'imgs/bad.jpg'"},
        {"row": 4, "key": None, "shard": "shard-000001", "source": str(tmp_path / "imgs" / "missing.jpg"),
         "reason": "image: file not found 'imgs/missing.jpg'"},
        {"row": 8, "key": None, "shard": "shard-000002", "source": str(csv), "reason": "text: empty caption"},
    ]
    members = _all_members(out)
    # Row r -> shard r // 4, key offset r % 4; skipped rows leave gaps.
    keys = sorted({name.split(".")[0] for name in members})
    assert keys == ["shard-000000-000000", "shard-000000-000001", "shard-000000-000003",
                    "shard-000001-000001", "shard-000001-000002", "shard-000001-000003"]
    assert members["shard-000000-000001.txt"] == b"photo 1\nsecond caption 1"
    meta = json.loads(members["shard-000001-000003.json"])
    assert meta == {"key": "shard-000001-000003", "captions": 2, "extra": {"note": "n5"},
                    "image": {"width": 45, "height": 30, "mode": "RGB"},
                    "source": {"row": 7, "image": "imgs/5.jpg"}}
    img = Image.open(io.BytesIO(members["shard-000001-000003.jpg"]))
    assert img.format == "JPEG" and img.size == (45, 30)
    # Fixed tar headers: nothing depends on when or by whom the shard was written.
    with tarfile.open(out / "shard-000000.tar") as tf:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tf} == {(0, 0, 0, "", "", 0o644)}
    assert "wrote 6 image+text samples in 3 shards" in summary_line(stats)


def test_folder_of_audio_and_captions(tmp_path):
    src = tmp_path / "clips"
    (src / "sub").mkdir(parents=True)
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)], 1) * 0.3  # [T, 2], 1 s
    sf.write(src / "a.wav", stereo, 22050)
    sf.write(src / "sub" / "b.ogg", stereo[:11025, 0], 22050, format="OGG", subtype="VORBIS")
    sf.write(src / "c.flac", stereo[:, 0], 16000)  # no caption -> skipped
    (src / "a.txt").write_text("a tone\n\nanother tone\n", encoding="utf-8")
    (src / "sub" / "b.txt").write_text("short tone", encoding="utf-8")
    (src / "a.json").write_text('{"speaker": "x"}', encoding="utf-8")
    out = tmp_path / "out"
    stats = write_shards(src, out, shard_size=2, sample_rate=16000, progress=False)
    assert {k: stats[k] for k in ("written", "skipped", "by_reason", "shards")} == {
        "written": 2, "skipped": 1, "by_reason": {"text: missing": 1}, "shards": 2}
    assert stats["modalities"] == {"image": 0, "text": 2, "audio": 2, "label": 0}
    skipped = json.loads((out / "skipped.jsonl").read_text())
    assert skipped["key"] == "c" and skipped["reason"] == "text: no file for stem 'c'"
    m = _all_members(out)
    # Rows in sorted stem order: a, c (skipped), sub/b -> shard 1.
    assert sorted(m) == ["shard-000000-000000.flac", "shard-000000-000000.json", "shard-000000-000000.txt",
                         "shard-000001-000000.flac", "shard-000001-000000.json", "shard-000001-000000.txt"]
    assert m["shard-000000-000000.txt"] == b"a tone\nanother tone"
    wave, sr = sf.read(io.BytesIO(m["shard-000000-000000.flac"]))
    assert sr == 16000 and wave.ndim == 1 and abs(len(wave) - 16000) <= 1
    # Mono mix of the two sines, evaluated directly at 16 kHz (away from the filter's edges).
    t16 = np.arange(16000) / 16000
    ref = 0.15 * (np.sin(2 * np.pi * 440 * t16) + np.sin(2 * np.pi * 220 * t16))
    assert np.abs(wave[200:-200] - ref[200:len(wave) - 200]).max() < 0.01
    wave_b, _ = sf.read(io.BytesIO(m["shard-000001-000000.flac"]))
    assert abs(len(wave_b) - 8000) <= 1
    meta = json.loads(m["shard-000000-000000.json"])
    assert meta["source"] == {"row": 0, "key": "a", "audio": "a.wav"}
    assert meta["audio"] == {"duration": 1.0, "sample_rate": 22050}
    assert meta["extra"] == {"speaker": "x"}
    assert json.loads(m["shard-000001-000000.json"])["source"] == {"row": 2, "key": "sub/b", "audio": "sub/b.ogg"}


def test_jsonl_and_parquet_inputs(tmp_path):
    _jpg(tmp_path / "x.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "PNG")
    lines = [json.dumps({"img": "x.jpg", "captions": ["one", "two"], "cls": 3, "score": 0.5}),
             "{not json",
             json.dumps({"img": "x.jpg", "captions": [], "cls": 1}),
             json.dumps({"img": str(tmp_path / "x.jpg"), "captions": "abs path", "cls": 2})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    stats = write_shards(tmp_path / "d.jsonl", tmp_path / "o1", progress=False)
    assert (stats["written"], stats["by_reason"]) == (2, {"row: invalid JSON": 1, "empty caption": 1})
    assert stats["modalities"] == {"image": 2, "text": 2, "audio": 0, "label": 2}
    m = _all_members(tmp_path / "o1")
    assert m["shard-000000-000000.txt"] == b"one\ntwo" and m["shard-000000-000000.cls"] == b"3"
    assert json.loads(m["shard-000000-000000.json"])["extra"] == {"score": 0.5}
    assert m["shard-000000-000003.cls"] == b"2"
    bad = json.loads((tmp_path / "o1" / "skipped.jsonl").read_text().splitlines()[0])
    assert bad["row"] == 1 and bad["key"] == "line 2" and bad["reason"].startswith("row: invalid JSON on line 2")

    # Parquet with raw image bytes and a list caption column.
    pd.DataFrame({"image": [buf.getvalue(), b"garbage"], "text": [["a", "b"], ["c"]], "label": ["cat", "dog"]}
                 ).to_parquet(tmp_path / "d.parquet")
    stats = write_shards(tmp_path / "d.parquet", tmp_path / "o2", image_format="png", progress=False)
    assert (stats["written"], stats["by_reason"]) == (1, {"undecodable image": 1})
    m = _all_members(tmp_path / "o2")
    assert set(m) == {"shard-000000-000000.png", "shard-000000-000000.txt", "shard-000000-000000.cls",
                      "shard-000000-000000.json"}
    # String labels -> index into the sorted class names (readers expect an integer cls).
    assert m["shard-000000-000000.cls"] == b"0" and m["shard-000000-000000.txt"] == b"a\nb"
    assert json.loads(m["shard-000000-000000.json"])["label_name"] == "cat"
    assert json.loads((tmp_path / "o2" / "classes.json").read_text()) == ["cat", "dog"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(m["shard-000000-000000.png"]))),
                          np.asarray(Image.open(buf)))  # png is lossless


def test_datasets_save_to_disk_with_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = []
    for i in range(3):
        b = io.BytesIO()
        Image.new("RGBA", (10 + i, 12), (0, 0, 255, 0)).save(b, "PNG")  # fully transparent
        imgs.append({"bytes": b.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                                  "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 1], "caption": ["a", "b", "c"]},
                                    features=features)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match="has splits test, train|has splits train, test"):
        write_shards(tmp_path / "hf", tmp_path / "o", progress=False)
    stats = write_shards(tmp_path / "hf", tmp_path / "o", split="train", progress=False)
    assert stats["written"] == 3 and stats["modalities"] == {"image": 3, "text": 3, "audio": 0, "label": 3}
    m = _all_members(tmp_path / "o")
    assert m["shard-000000-000002.cls"] == b"1" and m["shard-000000-000002.txt"] == b"c"
    meta = json.loads(m["shard-000000-000002.json"])
    assert meta["label_name"] == "dog" and meta["image"] == {"width": 12, "height": 12, "mode": "RGBA"}
    # Transparency is flattened onto white.
    px = np.asarray(Image.open(io.BytesIO(m["shard-000000-000002.jpg"])))
    assert px.shape == (12, 12, 3) and px.min() > 240


def test_a_folder_named_relative_to_the_working_directory(tmp_path, monkeypatch):
    """`align data shards voices/ --out shards/` from the folder's parent: every file is found (the folder's
    files were once read as voices/voices/x.wav, all skipped), and a group read from the file name is the
    speaker's field, not the folder's name."""
    src = tmp_path / "voices"
    src.mkdir()
    for k, spk in enumerate(("p1", "p2")):
        for d in range(3):      # different clips: a held-out byte copy of a trained clip is left out of val
            sf.write(src / f"{spk}_{d}.wav", np.full(1600, 0.01 * (3 * k + d + 1), dtype="float32"), 16000)
            (src / f"{spk}_{d}.txt").write_text(f"digit {d}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    stats = write_shards("voices/", "shards", shard_size=10, progress=False, val_groups_from="audio:0",
                         val_groups=["p2"])
    assert stats["written"] == 3 and stats["skipped"] == 0, stats
    assert len(_all_members(tmp_path / "shards" / "train")) == 9      # p1's 3 clips, each flac + json + txt
    assert len(_all_members(tmp_path / "shards" / "val" / "test")) == 9   # p2's, held out


def _mixed_csv(tmp_path, n=11):
    (tmp_path / "i").mkdir()
    rows = []
    for i in range(n):
        _jpg(tmp_path / "i" / f"{i}.jpg", size=(20 + i, 16), color=(i * 20, 100, 50))
        rows.append({"image": f"i/{i}.jpg", "text": f"c{i}", "label": i % 3})
    if n > 5:
        rows[5]["image"] = "i/none.jpg"
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_workers_give_byte_identical_shards(tmp_path):
    csv = _mixed_csv(tmp_path)
    s1 = write_shards(csv, tmp_path / "w1", shard_size=3, workers=1, image_size=16, progress=False)
    s2 = write_shards(csv, tmp_path / "w2", shard_size=3, workers=2, image_size=16, progress=False)
    assert s1["shards"] == 4 and s1["written"] == 10
    assert {k: v for k, v in s1.items() if k != "pattern"} == {k: v for k, v in s2.items() if k != "pattern"}
    snap1, snap2 = _snapshot(tmp_path / "w1"), _snapshot(tmp_path / "w2")
    assert sorted(snap1) == sorted(snap2) and all(snap1[k] == snap2[k] for k in snap1)


def test_resume_after_lost_shard_and_crash(tmp_path, monkeypatch):
    csv = _mixed_csv(tmp_path)
    ref = tmp_path / "ref"
    write_shards(csv, ref, shard_size=3, progress=False)
    want = _snapshot(ref)

    # 1) A run that crashes while writing shard 2 leaves shards 0-1 done and a tmp file.
    out = tmp_path / "out"
    real = shards_mod.encode_row

    def crashing(row, key, job):
        if row.index == 7:
            raise RuntimeError("simulated crash")
        return real(row, key, job)
    monkeypatch.setattr(shards_mod, "encode_row", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_shards(csv, out, shard_size=3, progress=False)
    monkeypatch.setattr(shards_mod, "encode_row", real)
    assert (out / "shard-000002.tar.tmp").exists() and not (out / "shard-000002.tar").exists()
    assert not (out / "stats.json").exists()
    kept = (out / "shard-000000.tar").stat().st_mtime_ns

    # 2) Also lose a finished shard's tar (its done-record alone must not count).
    (out / "shard-000001.tar").unlink()
    stats = write_shards(csv, out, shard_size=3, progress=False)
    assert stats["written"] == 10 and stats["skipped"] == 1
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept  # finished shard was kept, not rewritten
    assert not list(out.glob("*.tmp"))
    assert _snapshot(out) == want

    # 3) A truncated shard (size differs from its done-record) is rewritten too.
    data = (out / "shard-000003.tar").read_bytes()
    (out / "shard-000003.tar").write_bytes(data[:700])
    write_shards(csv, out, shard_size=3, progress=False)
    assert _snapshot(out) == want


def test_refuses_foreign_or_changed_output_dir(tmp_path):
    csv = _mixed_csv(tmp_path, n=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    with pytest.raises(DataError, match="not empty and holds no previous run"):
        write_shards(csv, out, progress=False)
    write_shards(csv, out, overwrite=True, progress=False)
    assert (out / "mine.txt").read_text() == "user file"  # overwrite removes only shard outputs
    with pytest.raises(DataError, match=r"shard_size differ"):
        write_shards(csv, out, shard_size=2, progress=False)
    stats = write_shards(csv, out, shard_size=2, overwrite=True, progress=False)
    assert stats["shards"] == 2 and sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar",
                                                                                 "shard-000001.tar"]
    before = (out / "shard-000000.tar").stat().st_mtime_ns
    write_shards(csv, out, shard_size=2, overwrite=True, progress=False)  # same job, overwrite: rewritten
    assert (out / "shard-000000.tar").stat().st_mtime_ns != before
    with pytest.raises(DataError, match="is the input folder"):
        write_shards(tmp_path / "i", tmp_path / "i", overwrite=True, progress=False)
    # Changed input content is a different job too.
    csv.write_text(csv.read_text().replace("c1", "changed"))
    with pytest.raises(DataError, match="fingerprint"):
        write_shards(csv, out, shard_size=2, progress=False)


def test_column_errors_name_available_columns(tmp_path):
    # (a column of image file names would be found by its values: test_cached.py)
    pd.DataFrame({"foo": ["a"], "caption": ["x"]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"need two of image/text/audio.*available columns: foo, caption"):
        write_shards(tmp_path / "a.csv", tmp_path / "o", progress=False)
    with pytest.raises(DataError, match=r"no column 'pic' for image; available columns: foo, caption"):
        write_shards(tmp_path / "a.csv", tmp_path / "o", image_col="pic", progress=False)
    with pytest.raises(DataError, match="input not found"):
        write_shards(tmp_path / "nope.csv", tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="needs image_size"):
        write_shards(tmp_path / "a.csv", tmp_path / "o", resize_mode="border", progress=False)
    with pytest.raises(ConfigError, match="prefix"):
        write_shards(tmp_path / "a.csv", tmp_path / "o", image_col="foo", prefix="a.b", progress=False)


def test_hub_name_offline_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'someone/pairs' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load Hugging Face dataset 'someone/pairs'.*offline"):
        write_shards("someone/pairs", tmp_path / "o", progress=False)


def test_several_text_columns_become_several_captions(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        _jpg(tmp_path / "imgs" / f"{i}.jpg")
    pd.DataFrame({"filepath": [f"imgs/{i}.jpg" for i in range(3)], "a": ["one", "two", "three"],
                  "b": ["uno", None, "tres"], "note": ["x", "y", "z"]}).to_csv(tmp_path / "d.csv", index=False)
    write_shards(tmp_path / "d.csv", tmp_path / "o", image_col="filepath", text_col="a,b", progress=False)
    m = _all_members(tmp_path / "o")
    txt = [v.decode() for k, v in m.items() if k.endswith(".txt")]
    assert txt == ["one\nuno", "two", "three\ntres"]
    meta = json.loads(next(v for k, v in m.items() if k.endswith(".json")))
    assert meta["captions"] == 2 and "b" not in meta.get("extra", {}) and meta["extra"]["note"] == "x"
    with pytest.raises(DataError, match=r"no column 'c' for text; available columns: filepath, a, b, note"):
        write_shards(tmp_path / "d.csv", tmp_path / "o2", image_col="filepath", text_col="a,c", progress=False)


def test_neg_col_writes_hard_negatives_as_neg_txt(tmp_path, capsys):
    """--neg-col: newline-separated or JSON-list cells -> each sample's neg.txt; rows without any get none."""
    from align.cli import main
    (tmp_path / "imgs").mkdir()
    negs = ["a red dog\na blue cat", '["x y", "z"]', ""]
    rows = []
    for i, n in enumerate(negs):
        _jpg(tmp_path / "imgs" / f"{i}.jpg")
        rows.append({"filepath": f"imgs/{i}.jpg", "caption": f"photo {i}", "negs": n})
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    assert main(["data", "shards", str(tmp_path / "d.csv"), "--out", str(out), "--neg-col", "negs"]) == 0
    m = _all_members(out)
    got = {k.split(".")[0]: v.decode() for k, v in m.items() if k.endswith(".neg.txt")}
    assert sorted(got.values()) == ["a red dog\na blue cat", "x y\nz"] and len(got) == 2
    metas = [json.loads(v) for k, v in m.items() if k.endswith(".json")]
    assert sorted(x.get("negatives", 0) for x in metas) == [0, 2, 2]
    assert not any("negs" in json.dumps(x) for x in metas)      # not also copied into the json extras
    with pytest.raises(DataError, match="--neg-col 'nope': no such column"):
        write_shards(tmp_path / "d.csv", tmp_path / "o2", neg_col="nope", progress=False)


def test_a_busy_out_is_refused_in_one_line_and_a_finished_job_leaves_no_lock(tmp_path):
    """Two `align data shards` on one --out: the second is refused while the first holds it (align.runlock),
    changing no file; a job that ends releases it, and a later run of the same job resumes as before."""
    from align.runlock import is_lock_file
    from tests.conftest import fork_main
    from tests.test_runlock import _holder

    def snapshot():       # every file under out but the holder's own lock files (its heartbeat rewrites them)
        return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
                if f.is_file() and not is_lock_file(f.name)}
    csv = _mixed_csv(tmp_path, n=4)
    out = tmp_path / "out"
    write_shards(csv, out, progress=False)
    assert not [p.name for p in out.iterdir() if is_lock_file(p.name)]      # released at the end
    write_shards(csv, out, progress=False)                                    # same job again: a resume
    p = _holder(out)                                                          # another job writes there now
    try:
        before = snapshot()
        # refused even with --overwrite (which would remove the holder's shards); one refusal: it waits 3 s
        r = fork_main(["data", "shards", str(csv), "--out", str(out), "--overwrite"], timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith("align: error: ") and len(r.stderr.strip().splitlines()) == 1
        assert re.search(rf"another shard job .* pid {p.pid}\b", r.stderr), r.stderr
        assert snapshot() == before
    finally:
        p.kill()
        p.wait()
    write_shards(csv, out, progress=False)              # the holder is gone (SIGKILL): its lock is taken over


def test_a_sample_rate_outside_the_limits_is_one_line_before_anything_is_written(tmp_path):
    """--sample-rate 500 wrote shards whose every clip training skips ('500 Hz, outside data.limits...'), and
    700000 ended in the FLAC encoder's traceback; both are one line naming the limits, nothing written. An
    image-text input does not care; raised limits let 500 Hz through."""
    (tmp_path / "src").mkdir()
    sf.write(tmp_path / "src" / "a.wav", np.zeros(1600), 16000)
    (tmp_path / "src" / "a.txt").write_text("quiet")
    for rate in (500, 700000):
        with pytest.raises(ConfigError, match=rf"^sample_rate {rate} Hz is outside data.limits.min_sample_rate"):
            write_shards(tmp_path / "src", tmp_path / "out", sample_rate=rate, progress=False)
        assert not (tmp_path / "out").exists()
    assert write_shards(tmp_path / "src", tmp_path / "low", sample_rate=500, progress=False,
                        limits={"min_sample_rate": 400})["written"] == 1
    (tmp_path / "img").mkdir()
    assert write_shards(_csv_dataset(tmp_path / "img", n_good=2), tmp_path / "img_out", sample_rate=500,
                        progress=False)["written"] == 2


def test_end_to_end_resize_and_formats(tmp_path):
    csv = _mixed_csv(tmp_path, n=2)
    write_shards(csv, tmp_path / "o", image_size=12, resize_mode="center_crop", image_format="webp",
                 progress=False)
    m = _all_members(tmp_path / "o")
    img = Image.open(io.BytesIO(m["shard-000000-000001.webp"]))
    assert img.format == "WEBP" and img.size == (12, 12)


def test_a_folder_whose_file_names_are_not_utf8_is_written_and_its_skips_recorded(tmp_path, capsys):
    """os.fsdecode reads b"\\xff" in a name as the lone surrogate U+DCFF: the folder's fingerprint, a sample's
    json and skipped.jsonl failed with UnicodeEncodeError; they keep it as the JSON escape "\\udcff" now."""
    from align.cli import main
    src = tmp_path / "src"
    src.mkdir()
    try:
        _jpg(os.fsdecode(bytes(src) + b"/bad\xff.jpg"))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses a file name that is not UTF-8")
    (src / "bad\udcff.txt").write_text("a blue square", encoding="utf-8")
    _jpg(src / "nocap\udcff.jpg")
    _jpg(src / "good.jpg")
    (src / "good.txt").write_text("a red square", encoding="utf-8")
    (src / "good.json").write_text('{"note": "déjà vu"}', encoding="utf-8")
    out = tmp_path / "out"
    assert main(["data", "shards", str(src), "--out", str(out)]) == 0
    assert "wrote 2 image+text samples in 1 shards" in capsys.readouterr().out
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["by_reason"] == {"text: missing": 1}
    line = (out / "skipped.jsonl").read_bytes().decode("utf-8")
    assert '"key": "nocap\\udcff"' in line and json.loads(line)["key"] == "nocap\udcff"
    metas = [v for k, v in sorted(_all_members(out).items()) if k.endswith(".json")]
    assert json.loads(metas[0])["source"] == {"row": 0, "key": "bad\udcff", "image": "bad\udcff.jpg"}
    assert "déjà vu".encode("utf-8") in metas[1]       # other text stays readable UTF-8


@pytest.mark.parametrize("layout,where", [("shards", 0.3), ("shards", 0.7), ("shards", -1), ("clip_benchmark", -1)])
def test_a_full_disk_while_writing_shards_is_one_line_leaves_no_partial_file_and_a_rerun_finishes(
        tmp_path, monkeypatch, capsys, layout, where):
    """ENOSPC in a shard's tar (0.3, 0.7 of the bytes) or in the last file (stats.json; clip_benchmark's templates
    file): a traceback, and the shard's half-written .tar.tmp (or the file's .tmp) stayed. Now one line naming the
    file, exit 74, no partial file; after space is freed the same command writes the same bytes as a clean run."""
    from align.cli import main
    from tests.diskfull import files_under, full_disk
    csv = _mixed_csv(tmp_path)
    args = ["--shard-size", "3", "--layout", layout] + (["--label-col", "label"] if layout != "shards" else [])
    assert main(["data", "shards", str(csv), "--out", str(tmp_path / "ref"), *args]) == 0
    want = _snapshot(tmp_path / "ref")
    # The job's lock file records the command line (sys.argv): pytest's own, which can be tens of KB when it is
    # given hundreds of test ids (tools/mutate.py's baseline), so the lock alone passed 30 % of the bytes. The same
    # short command line for both runs makes the bytes the job writes the same whatever ran pytest.
    monkeypatch.setattr(sys, "argv", ["align", "data", "shards"])
    disk = full_disk(monkeypatch, str(tmp_path / "used"), free=10 ** 9)
    assert main(["data", "shards", str(csv), "--out", str(tmp_path / "used"), *args]) == 0
    used = 10 ** 9 - disk.free                                   # every byte the job writes
    monkeypatch.undo()
    out = tmp_path / "full"                                      # as long a name as "used": the same bytes
    monkeypatch.setattr(sys, "argv", ["align", "data", "shards"])
    disk = full_disk(monkeypatch, str(out), free=int(used * where) if where > 0 else used - 5)
    assert main(["data", "shards", str(csv), "--out", str(out), *args]) == 74
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("align")]   # not the bar
    failed = disk.failed[0].split(".tmp")[0]                     # name.tar.tmp, stats.json.tmpPID: the final name
    assert len(err) == 1 and err[0].startswith(f"align: error: {failed}: No space left on device (") and \
        "the finished shards are kept" in err[0], err
    assert not [f for f in files_under(out) if ".tmp" in f] and not os.path.exists(failed), files_under(out)
    monkeypatch.undo()                                           # space freed
    assert main(["data", "shards", str(csv), "--out", str(out), *args]) == 0
    assert _snapshot(out) == want
