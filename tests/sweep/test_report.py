"""align/sweep/report.py: the sweep plot shows its whole title however few panels it has; a full disk at the
summary files is one line."""
import os

import numpy as np
import pytest
from PIL import Image

from align.sweep.report import CSV, MARKDOWN, PLOT, write_plot, write_tables
from align.sweep.space import Param


def test_the_plot_of_a_one_key_sweep_shows_its_whole_title(tmp_path):
    """One key: a 4-inch-wide figure, and the suptitle ran off both edges ('age/zeroshot/acc1 on the held-out
    set against each setti'). Nothing may be drawn in the outermost columns of the image."""
    rows = [{"trial": i, "state": "COMPLETE", "value": v, "train.lr": lr}
            for i, (v, lr) in enumerate([(0.17, 1e-4), (0.2, 1.7e-4)])]
    out = tmp_path / "sweep.png"
    assert write_plot(rows, [Param("train.lr", "float", 1e-4, 1e-2, log=True)], "image/zeroshot/acc1", str(out),
                      best=1) == str(out)
    gray = np.asarray(Image.open(out).convert("L"))
    assert gray.std() > 10                                          # something is drawn
    edges = np.concatenate([gray[:, :3], gray[:, -3:]], axis=1)
    assert edges.min() > 240, "the plot is cut at its left or right edge"


@pytest.mark.parametrize("full_at", [CSV, MARKDOWN, PLOT])
def test_a_full_disk_at_the_sweep_summary_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, full_at):
    """ENOSPC at sweep.csv, sweep.md or sweep.png (written after the study, outside its storage's guard): a
    traceback and a cut table or half a PNG under its name. Now one line naming the file, nothing partial, and
    written again (the same command) the files are a clean run's."""
    from align.writes import StorageError
    from tests.diskfull import files_under, full_disk
    rows = [{"trial": i, "state": "COMPLETE", "value": v, "step": 10, "retry_of": None, "run_dir": f"t{i}",
             "train.lr": lr} for i, (v, lr) in enumerate([(0.17, 1e-4), (0.2, 1.7e-4)])]
    params = [Param("train.lr", "float", 1e-4, 1e-2, log=True)]

    def summary(folder):
        folder.mkdir(exist_ok=True)
        write_tables(rows, "acc1", str(folder))
        write_plot(rows, params, "acc1", str(folder / PLOT), best=1)
    summary(tmp_path / "clean")
    disk = full_disk(monkeypatch, full_at, free=10)
    with pytest.raises(StorageError) as e:
        summary(tmp_path / "out")
    path = str(tmp_path / "out" / full_at)
    assert disk.failed[0].startswith(path + ".tmp") and str(e.value).startswith(f"{path}: No space left on device (")
    assert "the trials are kept in the study" in str(e.value) and not os.path.exists(path)
    assert not [f for f in files_under(tmp_path / "out") if ".tmp" in f]
    monkeypatch.undo()
    summary(tmp_path / "out")
    for name in (CSV, MARKDOWN):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "clean" / name).read_text()
    assert Image.open(tmp_path / "out" / PLOT).size == Image.open(tmp_path / "clean" / PLOT).size
