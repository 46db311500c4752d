"""align.data.write.cached: a table or folder of pairs named in data.train is written once as shards into a
cache folder named by its content, read from there by later runs, rebuilt when the input changes."""
import csv
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from align.data.write.cached import CACHE_FILE, cached_shards, check_cached, entry_input, shard_size_for, val_input
from align.data.write.inputs import open_input, resolve_columns
from align.errors import DataError
from align.runlock import RunLock
from align.wds.reader import iter_tar


def write_wav(path, seed, seconds=0.1, sr=8000):
    import soundfile
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32), sr)


def speech_csv(tmp_path, n=20, name="speech.csv"):
    """A user's speech CSV: `path` (the name an image column would have), free-form `caption`, `speaker`."""
    rows = []
    for i in range(n):
        write_wav(tmp_path / "clips" / f"c{i}.wav", i)
        rows.append((f"clips/c{i}.wav", f"a voice says {'one two three'.split()[i % 3]}", f"s{i % 4}"))
    with open(tmp_path / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "caption", "speaker"))
        w.writerows(rows)
    return tmp_path / name


def samples(folder):
    """{key: {ext: bytes}} over every shard of a folder."""
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        for name, data in iter_tar(open(tar, "rb")):
            key, ext = name.split(".", 1)
            out.setdefault(key, {})[ext] = data
    return out


def test_entry_input_names_tables_and_folders_of_pairs_only(tmp_path):
    table = speech_csv(tmp_path)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert entry_input(str(table)) == table
    assert entry_input(str(tmp_path / "clips")) == tmp_path / "clips"        # a folder without .tar
    for kept in ("synthetic", str(tmp_path / "shards"), str(tmp_path / "shards" / "shard-000000.tar"),
                 str(tmp_path / "shards" / "shard-{000000..000001}.tar"), str(tmp_path / "shards/*.tar"),
                 "https://example.com/train.csv", "pipe:cat speech.csv", str(tmp_path / "notes.txt"),
                 str(tmp_path / "missing.csv"), f"{table}::{table}"):
        assert entry_input(kept) is None, kept


def test_val_input_names_tables_but_not_a_clip_benchmark_folder(tmp_path):
    """data.val: a CSV or folder of pairs is an input to write; a folder with test/nshards.txt is read as it is."""
    table = speech_csv(tmp_path)
    (tmp_path / "cb" / "test").mkdir(parents=True)
    (tmp_path / "cb" / "test" / "0.tar").write_bytes(b"")
    assert val_input(str(table)) == table and val_input(str(tmp_path / "clips")) == tmp_path / "clips"
    assert val_input(str(tmp_path / "cb")) == tmp_path / "cb"            # no nshards.txt: not a finished set
    (tmp_path / "cb" / "test" / "nshards.txt").write_text("1\n")
    for kept in (str(tmp_path / "cb"), "https://example.com/val.csv", str(tmp_path / "missing.csv")):
        assert val_input(kept) is None, kept


def test_the_same_table_as_an_eval_set_is_another_folder_in_clip_benchmarks_layout(tmp_path):
    """data.train=x.csv and data.val=x.csv: the val folder is CLIP_benchmark's layout, never the training shards."""
    table = speech_csv(tmp_path)
    train = Path(cached_shards(table, tmp_path / "cache", progress=False, printer=lambda s: None))
    val = Path(cached_shards(table, tmp_path / "cache", progress=False, printer=lambda s: None,
                             layout="clip_benchmark"))
    assert train != val and not (train / "test").exists()
    assert (val / "test" / "nshards.txt").is_file() and (val / "dataset_type.txt").read_text() == "retrieval\n"
    assert len(samples(val / "test")) == len(samples(train)) == 20


def test_a_column_of_audio_file_names_is_audio_whatever_its_name(tmp_path):
    """`path` is among the names an image column is guessed by; its .wav values make it audio."""
    inp = open_input(speech_csv(tmp_path))
    assert inp.kinds == {"path": "audio"}
    assert resolve_columns(inp, {}) == {"audio": "path", "text": "caption"}
    # two columns of image files: the one with an image column's name wins, whatever the order
    (tmp_path / "two.csv").write_text("thumb,image,caption\na.jpg,b.jpg,x\n")
    assert resolve_columns(open_input(tmp_path / "two.csv"), {})["image"] == "image"


def test_a_csv_is_written_once_then_read_and_a_changed_csv_gets_its_own_folder(tmp_path):
    table, lines = speech_csv(tmp_path), []
    out = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lines.append)
    got = samples(tmp_path / "cache" / "shards" / os.path.basename(out))
    assert len(got) == 20 and len(list((tmp_path / "cache" / "shards").iterdir())) == 1
    row3 = got["shard-000001-000001"]                   # 2 rows a shard
    assert sorted(row3) == ["flac", "json", "txt"] and row3["txt"] == b"a voice says one"
    assert json.loads(row3["json"])["extra"]["speaker"] == "s3"     # kept for data.val_split's groups
    assert len(list((tmp_path / "cache" / "shards" / os.path.basename(out)).glob("*.tar"))) == 10   # 20 / 16 -> 2 a shard
    assert lines[-1] == "data.train: 20 samples in 10 shards"
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "shards").rglob("*.tar")}
    again = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lines.append)
    assert again == out and "(written earlier)" in lines[-1]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "shards").rglob("*.tar")} == first
    # the user corrects a caption (same rows): another folder with the new caption, the first one kept
    table.write_text(table.read_text().replace("c3.wav,a voice says one", "c3.wav,a voice says uno"))
    changed = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lines.append)
    assert changed != out and samples(Path(changed))["shard-000001-000001"]["txt"] == b"a voice says uno"
    assert samples(Path(out))["shard-000001-000001"]["txt"] == b"a voice says one"


def test_a_folder_of_pairs_with_broken_rows_is_written_with_them_skipped_and_counted(tmp_path):
    voices = tmp_path / "voices"
    for spk in ("anna", "ben"):
        for i in range(3):
            write_wav(voices / spk / f"{i}.wav", i)
            (voices / spk / f"{i}.txt").write_text(f"digit {i}")
    (voices / "ben" / "2.wav").write_bytes(b"RIFF not a wave")          # undecodable
    lines = []
    out = cached_shards(voices, str(tmp_path / "cache"), progress=False, printer=lines.append)
    got = samples(Path(out))
    assert len(got) == 5 and lines[-1].startswith("data.train: 5 samples in 6 shards, 1 rows skipped (see ")
    cache = json.loads(open(os.path.join(out, CACHE_FILE)).read())
    assert cache["written"] == 5 and cache["skipped"] == 1 and cache["input"] == str(voices)


def test_a_build_cut_short_is_finished_not_redone(tmp_path):
    table = speech_csv(tmp_path)
    out = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lambda s: None)
    tars = sorted(Path(out).glob("*.tar"))
    os.remove(os.path.join(out, CACHE_FILE))            # as if killed after shard 3 of 10
    for t in tars[4:]:
        t.unlink()
        (t.parent / ".done" / (t.name[:-4] + ".json")).unlink()
    kept = {t.name: t.stat().st_mtime_ns for t in tars[:4]}
    assert cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lambda s: None) == out
    assert {t.name: t.stat().st_mtime_ns for t in tars[:4]} == kept and all(t.exists() for t in tars)


def test_another_run_building_the_same_folder_is_waited_for(tmp_path):
    table = speech_csv(tmp_path)
    cache = str(tmp_path / "cache")
    name = os.path.basename(cached_shards(table, str(tmp_path / "probe"), progress=False, printer=lambda s: None))
    folder = os.path.join(cache, "shards", name)
    with pytest.raises(DataError, match=r"this process does not see them; data.shards_cache must be a folder every"):
        check_cached(folder)                            # what the other ranks check: not written yet
    lines, result = [], {}
    lock = RunLock(folder, what="shard job (align data shards)").acquire()
    t = threading.Thread(target=lambda: result.update(out=cached_shards(
        table, cache, progress=False, printer=lines.append, wait_s=0.05)))
    t.start()
    for _ in range(300):                                # RunLock tries for a few seconds before it refuses
        if len(lines) > 1:
            break
        time.sleep(0.05)
    assert "out" not in result and lines[-1].startswith(f"data.train: another process is writing {folder} (host ")
    assert lines[-1].endswith("waiting for it to finish")
    lock.release()
    t.join(60)
    assert result["out"] == folder and len(samples(Path(folder))) == 20
    assert check_cached(folder) == folder


def test_an_unreadable_table_is_one_line(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"path,caption\n\xff\xfe,x\n")
    with pytest.raises(DataError) as e:
        cached_shards(tmp_path / "bad.csv", str(tmp_path / "cache"), progress=False)
    assert "bad.csv" in str(e.value) and "\n" not in str(e.value)


def test_shards_are_sized_for_sixteen_readers():
    assert [shard_size_for(n) for n in (1, 16, 17, 459, 8044, 10 ** 6)] == [1, 1, 2, 29, 503, 1000]


def test_other_data_limits_get_other_shards(tmp_path):
    """data.limits decides which rows are skipped: a run with a stricter limit must not read shards of rows it
    would have refused, nor a later run without it the stricter run's."""
    table = speech_csv(tmp_path, n=4)
    write_wav(tmp_path / "clips" / "c0.wav", 0, seconds=0.3)             # the others are 0.1 s
    quiet = lambda s: None                                  # noqa: E731
    plain = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet)
    strict = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet,
                           limits={"max_audio_seconds": 0.2})
    assert strict != plain and len(samples(Path(plain))) == 4 and len(samples(Path(strict))) == 3
    assert cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet) == plain


def test_the_audio_is_written_at_the_rate_the_tower_reads_in_its_own_folder(tmp_path):
    """A 48 kHz tower must not train on 16 kHz audio: the rate is a setting of the folder (its key), the default
    folder stays where it was, and both are current for the cache listing."""
    import io
    import soundfile
    from align.data.write.cached import cache_folder, cached_folders
    table, quiet = speech_csv(tmp_path, n=4), (lambda s: None)
    plain = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet)
    wide = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet, sample_rate=48000)
    assert wide != plain and cache_folder(table, str(tmp_path / "cache"), sample_rate=48000) == wide
    assert cached_shards(table, str(tmp_path / "cache"), progress=False, printer=quiet, sample_rate=16000) == plain

    def rates(folder):
        return {soundfile.info(io.BytesIO(data)).samplerate for f in sorted(Path(folder).glob("*.tar"))
                for name, data in iter_tar(open(f, "rb")) if name.endswith(".flac")}
    assert rates(plain) == {16000} and rates(wide) == {48000}
    assert json.load(open(Path(wide) / CACHE_FILE))["sample_rate"] == 48000
    assert {r["folder"]: r["status"] for r in cached_folders(str(tmp_path / "cache"))} == {plain: "current",
                                                                                          wide: "current"}


def test_the_cache_lists_which_folders_a_run_still_reads_and_prunes_only_the_others(tmp_path, capsys):
    """Runs never remove a folder (an edited CSV leaves its old one); `align data cache --prune` removes those no run
    reads -- input edited, input gone, a build cut short -- and keeps the current ones, one being written, and any
    folder align did not write (the user's own shards, should --cache name their parent)."""
    from align.cli import main
    from align.data.write.cached import cached_folders, prune_cached
    cache, quiet = str(tmp_path / "cache"), dict(progress=False, printer=lambda s: None)
    kept = cached_shards(speech_csv(tmp_path / "a"), cache, **quiet)
    kept_val = cached_shards(speech_csv(tmp_path / "a"), cache, layout="clip_benchmark", **quiet)
    edited = speech_csv(tmp_path / "b")
    old = cached_shards(edited, cache, **quiet)
    edited.write_text(edited.read_text().replace("a voice says", "someone says"))
    new = cached_shards(edited, cache, **quiet)
    gone_input = speech_csv(tmp_path / "c")
    gone = cached_shards(gone_input, cache, **quiet)
    gone_input.unlink()
    cut_short = Path(cached_shards(speech_csv(tmp_path / "d"), cache, **quiet))
    (cut_short / CACHE_FILE).unlink()                   # as a build killed before its end leaves it
    busy = Path(cache) / "shards" / "e-0123456789abcdef"
    busy.mkdir()
    mine = Path(cache) / "shards" / "mine"              # the user's own shards, where --cache was pointed
    mine.mkdir()
    (mine / "shard-000000.tar").write_bytes(b"\0" * 10)
    status = {r["folder"]: r["status"] for r in cached_folders(cache)}
    assert status == {kept: "current", kept_val: "current", old: "input changed", new: "current",
                      gone: "input gone", str(cut_short): "incomplete", str(busy): "not a cache folder, kept",
                      str(mine): "not a cache folder, kept"}
    assert main(["data", "cache", "--cache", cache]) in (0, None)
    out = capsys.readouterr().out.splitlines()
    mb = sum(_size(f) for f in (old, gone, cut_short)) / 1e6
    assert out[-1] == f"8 folders in {cache}/shards, 3 no run reads ({mb:.1f} MB); `align data cache --prune` removes them"
    lock = RunLock(str(busy), what="shard job (align data shards)").acquire()
    try:
        assert {r["status"] for r in cached_folders(cache) if r["folder"] == str(busy)} == {"being written"}
        removed = {r["folder"] for r in prune_cached(cached_folders(cache))}
    finally:
        lock.release()
    assert removed == {old, gone, str(cut_short)}
    assert sorted(os.listdir(Path(cache) / "shards")) == sorted(os.path.basename(f) for f in (kept, kept_val, new, busy, mine))
    assert len(samples(Path(new))) == 20                     # what runs read is untouched


def _size(folder):
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


@pytest.mark.parametrize("full_at", [".tar", CACHE_FILE])
def test_a_full_disk_while_the_cache_is_written_is_one_line_and_never_taken_as_complete(tmp_path, monkeypatch,
                                                                                        full_at):
    """ENOSPC while a table's shards go to the cache (a shard, or the completion record written last): one line
    naming the file, no partial file; the folder is not taken as complete, and the next run finishes it with a
    clean cache's samples."""
    from align.writes import StorageError
    from tests.diskfull import files_under, full_disk
    table = speech_csv(tmp_path)
    clean = cached_shards(table, str(tmp_path / "clean"), progress=False, printer=lambda s: None)
    disk = full_disk(monkeypatch, full_at, free=3000 if full_at == ".tar" else 0)    # mid-shard, or the record
    with pytest.raises(StorageError) as e:
        cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lambda s: None)
    line = str(e.value)
    assert disk.failed and line.startswith(f"{disk.failed[0].split('.tmp')[0]}: No space left on device ("), line
    assert not [f for f in files_under(tmp_path / "cache") if ".tmp" in f]
    assert not [f for f in files_under(tmp_path / "cache") if f.endswith(CACHE_FILE)]
    monkeypatch.undo()
    out = cached_shards(table, str(tmp_path / "cache"), progress=False, printer=lambda s: None)
    assert samples(Path(out)) == samples(Path(clean))
