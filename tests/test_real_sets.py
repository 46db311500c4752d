"""benchmarks/real_sets.py: the writer / speaker split of the real development sets is disjoint and complete.

Tiny fake inputs written here (an idx image file, QMNIST-style writer labels, wav files named like the
speaker folders the builder reads); --no-shards keeps it fast (no `align data shards` run).
"""
import csv
import gzip
import json
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import real_sets  # noqa: E402


def groups_of(path):
    with open(path, newline="") as f:
        return {row["group"] for row in csv.DictReader(f)}


def assert_disjoint_and_complete(out, all_groups):
    seen = {s: groups_of(out / f"{s}.csv") for s in real_sets.SPLITS}
    split = json.loads((out / "split.json").read_text())
    listed = {s: set(split["groups"][s]) for s in real_sets.SPLITS}
    for a, b in (("train", "selection"), ("train", "report"), ("selection", "report")):
        assert not seen[a] & seen[b], f"{a} and {b} share groups {seen[a] & seen[b]}"
        assert not listed[a] & listed[b]
    assert set().union(*listed.values()) == {str(g) for g in all_groups}
    for s in real_sets.SPLITS:
        assert seen[s] and seen[s] <= listed[s]


@pytest.mark.parametrize("seed", [0, 3])
def test_split_groups_is_disjoint_seeded_and_gives_every_split_a_group(seed):
    groups = [f"w{i % 7}" for i in range(50)]
    cut = real_sets.split_groups(groups, (0.6, 0.2, 0.2), seed)
    assert set(cut) == set(groups) and set(cut.values()) == set(real_sets.SPLITS)
    assert cut == real_sets.split_groups(list(reversed(groups)), (0.6, 0.2, 0.2), seed)   # order-free
    with pytest.raises(ValueError):
        real_sets.split_groups(["a", "b", "a"])


def test_scans_split_writers_disjointly_and_reads_a_truncated_gzip(tmp_path):
    n, rng = 60, np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    blob = gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) - 900])    # a cut-off download
    writers = [f"{i % 10}\t{i % 10}\t{100 + i % 9}\t0\t0\t0\t0\t0" for i in range(n)]
    with gzip.open(tmp_path / "labels.tsv.gz", "wt") as f:
        f.write("\n".join(writers) + "\n")
    out = tmp_path / "scans"
    summary = real_sets.main(["scans", "--images", str(tmp_path / "train-images-idx3-ubyte.gz"), "--writers",
                              str(tmp_path / "labels.tsv.gz"), "--out", str(out), "--n-train", "30",
                              "--n-eval", "8", "--no-shards"])
    read = summary["source"]["images_read"]
    assert 0 < read < n                     # the complete images before the cut
    assert_disjoint_and_complete(out, {100 + i % 9 for i in range(read)})
    with pytest.raises(SystemExit):          # MNIST's test split is reserved
        real_sets.main(["scans", "--images", str(tmp_path / "t10k-images-idx3-ubyte.gz"), "--writers",
                        str(tmp_path / "labels.tsv.gz"), "--out", str(tmp_path / "x"), "--no-shards"])


def write_wav(path, seconds=0.2, sr=8000, seed=None):
    """A short WAV: silence, or seeded noise (distinct bytes per seed)."""
    import soundfile
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sr)
    wave = np.zeros(n, np.float32) if seed is None else 0.1 * np.random.default_rng(seed).standard_normal(n)
    soundfile.write(str(path), wave.astype(np.float32), sr)


def test_speech_split_speakers_disjointly_and_refuses_reserved_speakers(tmp_path):
    rec = tmp_path / "recordings"
    speakers = [f"man_{i}" for i in range(4)] + [f"woman_{i}" for i in range(4)]
    for i, spk in enumerate(speakers):
        for d in range(3):
            write_wav(rec / spk / f"{spk}_0{d}.wav", seed=10 * i + d)
    (rec / "man_9").mkdir()
    (rec / "man_9" / "man_9_01.mp3").write_bytes(b"\x00\x00\x00\x18ftypM4A ")   # undecodable: left out
    out = tmp_path / "speech"
    summary = real_sets.main(["speech", "--recordings", str(rec), "--out", str(out), "--no-shards"])
    assert summary["source"]["undecodable_left_out"] == 1
    assert summary["source"]["copies_across_splits_left_out"] == 0
    assert_disjoint_and_complete(out, set(speakers))
    write_wav(rec / "jackson" / "jackson_3.wav")       # a Free Spoken Digit Dataset speaker
    with pytest.raises(SystemExit, match="reserved"):
        real_sets.main(["speech", "--recordings", str(rec), "--out", str(tmp_path / "y"), "--no-shards"])


def test_bengali_reads_speakers_from_every_spelling_and_splits_them_disjointly(tmp_path):
    rec = tmp_path / "bengali"
    rng = np.random.default_rng(1)

    def noise_wav(path):            # distinct bytes per file (write_wav's silence would make copies)
        import soundfile
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), (0.1 * rng.standard_normal(400)).astype(np.float32), 8000)
    speakers = [f"spk{c}" for c in "abcdefgh"]
    for i, spk in enumerate(speakers):
        for folder, digit in real_sets.BENGALI_FOLDERS.items():
            for take in range(3):
                name = (f"{folder}_{spk}_{take}.wav" if i % 3 == 0 else
                        f"{spk.upper()}_M_40_{folder.upper()}_0{take}.wav" if i % 3 == 1 else
                        f"{spk}_{folder}_ ({take}).wav")
                noise_wav(rec / folder / name)
    for folder in real_sets.BENGALI_FOLDERS:          # the same person as "subhendhu", in the other session's spelling
        noise_wav(rec / folder / f"{folder}_subha_1.wav")
        noise_wav(rec / folder / f"SUBHENDHU_M_40_{folder.upper()}_01.wav")
    write_wav(rec / "ek" / "My recording 3.wav")                                  # no speaker: left out
    (rec / "dui" / "spka_dui_ (9).wav").write_bytes((rec / "dui" / "dui_spka_0.wav").read_bytes())  # a copy
    noise_wav(rec / "tin" / "typo_tin_1.wav")                                      # one digit only: left out
    out = tmp_path / "built"
    summary = real_sets.main(["bengali", "--recordings", str(rec), "--out", str(out), "--no-shards",
                              "--eval-per-digit", "2"])
    src = summary["source"]
    assert (src["without_speaker_left_out"], src["identical_copies_left_out"]) == (1, 1)
    assert src["speakers_left_out"] == ["typo"]
    assert_disjoint_and_complete(out, set(speakers) | {"subhendhu"})
    with open(out / "selection.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per = {}
    for row in rows:
        per[(row["group"], row["label"])] = per.get((row["group"], row["label"]), 0) + 1
    assert set(per.values()) <= {1, 2} and max(per.values()) == 2      # at most --eval-per-digit takes each
    noise_wav(rec / "ek" / "ek_jackson_1.wav")                          # a Free Spoken Digit Dataset speaker
    with pytest.raises(SystemExit, match="reserved"):
        real_sets.main(["bengali", "--recordings", str(rec), "--out", str(tmp_path / "z"), "--no-shards"])


def test_speech_leaves_out_a_held_out_recording_that_is_a_copy_of_one_in_an_earlier_split(tmp_path):
    """One voice filed under two speakers (the Ukrainian repo's woman_50 and woman_51 hold the same ten files):
    when the two speakers fall in different splits, the copy in the later split (selection after train, report
    after both) is left out and counted; copies within one split stay."""
    rec = tmp_path / "recordings"
    speakers = [f"spk_{i}" for i in range(6)]
    for i, spk in enumerate(speakers):
        for d in range(2):
            write_wav(rec / spk / f"{spk}_0{d}.wav", seed=10 * i + d)
    cut = real_sets.split_groups(speakers + ["twin"], seed=0)
    source = next(s for s in speakers if cut[s] != cut["twin"])       # a speaker in another split than "twin"
    for d in range(2):
        (rec / "twin").mkdir(exist_ok=True)
        (rec / "twin" / f"twin_0{d}.wav").write_bytes((rec / source / f"{source}_0{d}.wav").read_bytes())
    write_wav(rec / "twin" / "twin_05.wav", seed=99)                  # twin's own recording: kept
    summary = real_sets.main(["speech", "--recordings", str(rec), "--out", str(tmp_path / "o"), "--no-shards"])
    assert summary["source"]["copies_across_splits_left_out"] == 2
    later = "twin" if real_sets.SPLITS.index(cut["twin"]) > real_sets.SPLITS.index(cut[source]) else source
    import csv
    rows = {s: list(csv.DictReader(open(tmp_path / "o" / f"{s}.csv"))) for s in real_sets.SPLITS}
    kept = [r["audio"] for r in rows[cut[later]] if r["group"] == later]
    assert len(kept) == (1 if later == "twin" else 0), kept
    assert sum(len(v) for v in rows.values()) == 6 * 2 + 3 - 2


@pytest.mark.parametrize("argv", [["speech", "--recordings", "{tmp}/no_such_repo/recordings"],
                                  ["bengali", "--recordings", "{tmp}/no_such_repo"],
                                  ["scans", "--images", "{tmp}/train-images-idx3-ubyte.gz", "--writers", "{tmp}/w.gz"]])
def test_a_missing_download_is_one_line_naming_it(tmp_path, capsys, argv):
    """The recipes' headers give these commands for sets that must be downloaded: without the download, one line."""
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        real_sets.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "no such file or folder" in err[-1] and argv[2] in err[-1]
    assert not (tmp_path / "out").exists()
