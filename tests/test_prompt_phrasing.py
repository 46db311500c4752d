"""benchmarks/prompt_phrasing.py: one split scored under several template sets; the split's own set read from
its folder gives the same figure as the same templates given by name; the split is never written."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import prompt_phrasing  # noqa: E402


def test_each_template_set_scores_the_same_split_and_its_own_set_reproduces_the_splits_figure(tmp_path, capsys):
    import numpy as np
    from tests.bench.conftest import png_bytes, write_wds
    from tests.export.conftest import make_run
    run, _ = make_run(tmp_path)
    rng = np.random.default_rng(0)
    samples = [(f"v{i:03d}", {"png": png_bytes(rng), "cls": str(i % 3), "txt": f"a photo number {i}"})
               for i in range(12)]
    split = write_wds(str(tmp_path / "val"), samples, classnames=["cat", "dog", "car"], templates=["a photo of a {c}."])
    before = sorted(os.listdir(split))
    out = prompt_phrasing.main(["--split", split, "--runs", run, "--templates", "same=a photo of a {c}.",
                                "other={c}|the {c}, seen from far away|{c} {c} {c}"])
    (row,) = out["rows"]
    assert set(row) == {"run", "split's own", "same", "other"} and row["same"] == row["split's own"]
    assert all(0 <= row[k] <= 1 for k in ("split's own", "other"))
    assert out["templates"] == {"same": ["a photo of a {c}."], "other": ["{c}", "the {c}, seen from far away",
                                                                        "{c} {c} {c}"]}
    assert f"{run}: split's own " in capsys.readouterr().out and sorted(os.listdir(split)) == before


@pytest.mark.parametrize("bad", ["no-equals-sign", "=the {c}", "x=the digit|{c}"])
def test_a_template_set_without_a_name_or_a_class_slot_is_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prompt_phrasing.main(["--split", str(tmp_path), "--runs", "r", "--templates", bad])
    assert e.value.code == 2 and f"--templates {bad!r}" in capsys.readouterr().err
