"""align/sweep/report.py: the sweep plot shows its whole title however few panels it has."""
import numpy as np
from PIL import Image

from align.sweep.report import write_plot
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
