"""align/train/metrics.py and plots.py: the held-out figure, the overfitting warning, the loss plot's panels."""
import json

from align.train.metrics import OverfitWatch, heldout_metric, skipped_words
from align.train.plots import write_loss_plot


def test_the_held_out_figure_is_best_metric_else_zero_shot_else_retrieval_r1():
    res = {"text-image/retrieval/image_retrieval_recall@5": 0.5, "text-image/retrieval/image_retrieval_recall@1": 0.2,
           "image/zeroshot/acc5": 0.9, "image/zeroshot/acc1": 0.7}
    assert heldout_metric(res, "image/zeroshot/acc5") == "image/zeroshot/acc5"
    assert heldout_metric(res, None) == "image/zeroshot/acc1"
    del res["image/zeroshot/acc1"]
    assert heldout_metric(res, "not/there") == "text-image/retrieval/image_retrieval_recall@1"
    assert heldout_metric({}, None) is None


def test_the_warning_fires_once_when_held_out_falls_twice_while_the_loss_falls():
    w = OverfitWatch(patience=2)
    seq = [(0.5, 2.0), (0.6, 1.8), (0.55, 1.6), (0.58, 1.5),   # a fall, then a rise: the count restarts
           (0.57, 1.4), (0.56, 1.3), (0.50, 1.2), (0.40, 1.1)]
    said = [w.check("m", m, loss, step) for step, (m, loss) in enumerate(seq)]
    assert [i for i, s in enumerate(said) if s] == [5]
    assert "held-out m fell at 2 evaluations in a row (now 0.5600 at step 5)" in said[5]
    calm = OverfitWatch()     # the metric falls while the loss rises too (a bad lr, not overfitting): no warning
    assert not any(calm.check("m", m, loss, i) for i, (m, loss) in enumerate([(0.5, 1.0), (0.4, 1.1), (0.3, 1.2)]))
    assert OverfitWatch().check(None, None, 1.0, 0) is None


def test_the_loss_plot_gets_a_held_out_panel_only_when_there_are_evaluations(tmp_path):
    import matplotlib.image as mpimg
    m, e = tmp_path / "metrics.jsonl", tmp_path / "eval.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10, "lr": 1e-3}) + "\n" for s in range(1, 11)))
    e.write_text("".join(json.dumps({"step": s, "x/acc1": s / 20}) + "\n" for s in (3, 6, 9)) + '{"step": 1')
    one = write_loss_plot(str(m), str(tmp_path / "a.png"))
    two = write_loss_plot(str(m), str(tmp_path / "b.png"), eval_path=str(e), metric="x/acc1")
    h1, h2 = mpimg.imread(one).shape[0], mpimg.imread(two).shape[0]
    assert h2 > h1 * 1.4                                   # a second panel below the loss
    assert write_loss_plot(str(m), str(tmp_path / "c.png"), eval_path=str(e), metric="other") and \
        mpimg.imread(str(tmp_path / "c.png")).shape[0] == h1


def test_the_end_line_counts_skipped_samples_not_duplicate_files_or_shards():
    """A shard with two samples skipped and two duplicate files (each dropping a file, not its sample) ended with
    "skipped 4 samples"; inspect said 2."""
    from align.data.stream.faults import CORRUPT_TAR, DUPLICATE_FILE, UNDECODABLE_IMAGE
    assert skipped_words({UNDECODABLE_IMAGE: 2, DUPLICATE_FILE: 2}) == \
        f", skipped 2 samples, 2 {DUPLICATE_FILE}"
    assert skipped_words({CORRUPT_TAR: 1}) == f", skipped 0 samples, 1 {CORRUPT_TAR}"
    assert skipped_words({}) == ", skipped 0 samples"
