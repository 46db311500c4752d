"""benchmarks/clap_compare.py without LAION-CLAP's environment: its --help, the seeded training subset both sides
train on, and the one line a missing .clap_env gives (the runs themselves need .clap_env: not in this suite)."""
import csv
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import clap_compare  # noqa: E402


def built(tmp_path, n=40):
    root = tmp_path / "built"
    root.mkdir()
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "caption", "group"])
        w.writerows([f"/x/{i}.wav", f"caption {i}", f"spk{i % 4}"] for i in range(n))
    return root


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_help_names_every_step(capsys):
    with pytest.raises(SystemExit) as e:
        clap_compare.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("subset", "clap", "align", "table", "make_clap_env.sh"):
        assert word in out


def test_subset_is_a_seeded_draw_of_distinct_rows(tmp_path):
    root = built(tmp_path)
    for seed, out in ((0, "a"), (0, "b"), (1, "c")):
        clap_compare.main(["subset", "--built", str(root), "--samples", "12", "--seed", str(seed),
                           "--out", str(tmp_path / out)])
    a, b, c = (rows(tmp_path / o / "train.csv") for o in "abc")
    assert len(a) == 12 and len({r["audio"] for r in a}) == 12
    assert a == b and a != c                                  # seeded: same seed, same rows
    every = rows(root / "train.csv")
    assert [r for r in every if r in a] == a                  # kept in the file's order, columns unchanged
    clap_compare.main(["subset", "--built", str(root), "--samples", "0", "--out", str(tmp_path / "all")])
    assert rows(tmp_path / "all" / "train.csv") == every


def test_clap_without_its_env_is_one_line(tmp_path):
    root = built(tmp_path)
    clap_compare.main(["subset", "--built", str(root), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        clap_compare.main(["clap", "--built", str(root), "--out", str(tmp_path / "o"), "--env", str(tmp_path / "no")])
    assert "make_clap_env.sh" in str(e.value) and "no such interpreter" in str(e.value)
