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


def _logger_at(tmp_path, step: int):
    """A RunLogger of a run resumed at `step` (its engine and accelerator reduced to what the logger reads)."""
    from types import SimpleNamespace

    from align.train.metrics import RunLogger
    acc = SimpleNamespace(is_main_process=True, init_trackers=lambda name: None, log=lambda *a, **k: None)
    eng = SimpleNamespace(acc=acc, total_steps=40, init_row=None)
    state = SimpleNamespace(step=step, elapsed_s=0.0)
    return RunLogger(SimpleNamespace(output_dir=str(tmp_path)), eng, state, progress=False)


def test_a_resumed_run_reads_metrics_jsonl_once_for_its_cut_and_its_final_loss(tmp_path, monkeypatch):
    """Resuming, the logger cut the rows past the checkpoint (one read of metrics.jsonl) and then read the file
    again for the loss logged at that step. One read now; the same rows kept and the same loss (the last row of
    the step, after a cut line and a row past it are dropped)."""
    import builtins
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.7}, {"step": 20, "loss": 0.5}, {"step": 30, "loss": 0.3}]
    real_open, reads = builtins.open, []

    def counting_open(file, mode="r", *a, **k):
        if str(file) == str(path) and "r" in mode:
            reads.append(mode)
        return real_open(file, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", counting_open)
    for tail, step, loss, kept in (('{"step": 4', 20, 0.5, [10, 20, 20]), ("", 30, 0.3, [10, 20, 20, 30]),
                                   ("", 25, None, [10, 20, 20])):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
        reads.clear()
        logger = _logger_at(tmp_path, step)
        logger.f.close()
        assert len(reads) == 1, (step, reads)
        assert logger.loss == loss if loss is not None else logger.loss != logger.loss      # NaN: no row at 25
        assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == kept


def test_the_loss_plot_has_a_legend_naming_the_loss_and_the_lr_curves(tmp_path, monkeypatch):
    """The loss and the lr curves shared one panel on two y axes with no legend: which line was the loss was
    a guess (both y labels black)."""
    import matplotlib.figure
    seen = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: seen.append(fig))
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10, "lr": 1e-3}) + "\n" for s in range(1, 11)))
    write_loss_plot(str(m), str(tmp_path / "a.png"))
    legend = seen[0].axes[0].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["train loss", "lr"]


def test_the_end_summary_sums_the_skips_of_every_rank_of_a_launch():
    """Each rank's loader counts only the shards it reads; the summary counted rank 0's alone."""
    from types import SimpleNamespace

    from align.train.metrics import run_counts
    loader = SimpleNamespace(skipped={"undecodable image": 1}, noted={"duplicate file": 1})
    rank1 = {"skipped": {"undecodable image": 2, "missing shard": 1}, "noted": {}}
    assert run_counts(loader, lambda mine: [mine, rank1]) == {               # rank 0 of two
        "skipped": {"undecodable image": 3, "missing shard": 1}, "noted": {"duplicate file": 1}}
    assert run_counts(loader, lambda mine: [mine]) == {                      # one process: its own
        "skipped": {"undecodable image": 1}, "noted": {"duplicate file": 1}}


def test_each_mid_run_evaluation_is_one_line_and_the_bar_stays_after_the_overfit_warning(tmp_path, capsys):
    """A mid-run evaluation said nothing on the console (eval.jsonl only), and the overfitting warning closed the
    progress bar: on a terminal the run went on without one. The warning read this rank's own loss of the last step
    (under SigLIP world_size x its rows' share) instead of the last metrics row's, the mean over ranks."""
    from types import SimpleNamespace
    log = _logger_at(tmp_path, 0)
    log.r = SimpleNamespace(output_dir=str(tmp_path), eval=SimpleNamespace(best_metric=None))
    closed = []
    log.bar.close = lambda: closed.append(True)
    for step, acc, loss in ((10, 0.6, 2.0), (20, 0.5, 1.8), (30, 0.4, 1.6)):
        # the trend is the metrics rows' loss (the mean over ranks), not this rank's own, which may rise meanwhile
        log.row_loss, log.loss = loss, 5.0 + step
        log.heldout({"image/zeroshot/acc1": acc, "image/zeroshot/acc5": 0.9}, step)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"step {s}: val image/zeroshot/acc1 {a}" for s, a in ((10, "0.6000"), (20, "0.5000"),
                                                                             (30, "0.4000"))]
    assert len(out) == 4 and out[3].startswith("warning: held-out image/zeroshot/acc1 fell at 2 evaluations")
    assert closed == []


def test_the_loss_plot_reads_rows_one_at_a_time_and_draws_a_bounded_number_of_points(tmp_path, monkeypatch):
    """write_loss_plot held every row of metrics.jsonl as a dict (~1.7 KB each: 1.6 GB at the end of a run of a
    million logged steps) and drew every one into 600 pixels; each curve is thinned to MAX_POINTS now, evenly over
    the run, the first and the last row kept, and the best held-out value marked even when its row is thinned."""
    import matplotlib.figure

    from align.train.plots import MAX_POINTS, curve
    m, e = tmp_path / "metrics.jsonl", tmp_path / "eval.jsonl"
    n = 2 * MAX_POINTS + 7
    m.write_text("".join(json.dumps({"step": s, "loss": 3 - s / n, "lr": 1e-3}) + "\n" for s in range(1, n + 1)))
    e.write_text("".join(json.dumps({"step": s, "x/acc1": 0.9 if s == 51 else 0.5}) + "\n" for s in range(1, 1001)))
    seen = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: seen.append(fig))
    write_loss_plot(str(m), str(tmp_path / "a.png"), eval_path=str(e), metric="x/acc1")
    loss_line = seen[0].axes[0].get_lines()[0]
    steps = list(loss_line.get_xdata())
    assert MAX_POINTS // 2 <= len(steps) <= MAX_POINTS + 1 and steps[0] == 1 and steps[-1] == n
    assert len({b - a for a, b in zip(steps[:-2], steps[1:-1])}) == 1          # evenly spaced (but the last)
    thin = curve(str(e), ("x/acc1",), max_points=100)
    assert len(thin["step"]) <= 101 and thin["step"][-1] == 1000 and 51 not in thin["step"]
    assert thin["best"] == {"step": 51, "x/acc1": 0.9}
    assert curve(str(e), ("x/acc1",))["step"] == list(range(1, 1001))           # fewer rows than MAX_POINTS: all


def _siglip_rank_losses(rank, world, init_file, out_path):
    """Each rank's SigLIP loss (total and per pair) on its half of an 8-row batch, over gloo; rank 0 saves both."""
    import torch
    import torch.distributed as dist

    from align.losses import build_loss
    from tests.losses.loss_reference import embeddings
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    a, b = embeddings(8, 5, seed=4)
    lo, hi = 4 * rank, 4 * rank + 4
    total, pairs = build_loss("siglip", [["image", "text"]], rank=rank, world_size=world)(
        {"image": a[lo:hi].detach(), "text": b[lo:hi].detach()}, None, 10.0, -3.0)
    every = [None] * world
    dist.all_gather_object(every, (float(total), {k: float(v) for k, v in pairs.items()}))
    if rank == 0:
        torch.save(torch.tensor([[t, p["image-text"]] for t, p in every], dtype=torch.float64), out_path)
    dist.destroy_process_group()


def test_the_logged_loss_is_the_global_batchs_mean_over_ranks_not_rank0s_own(tmp_path):
    """With SigLIP on 2 processes each rank's loss is 2 x its own rows' share of the batch's loss: metrics.jsonl,
    the trackers and the end summary showed rank 0's, a noisy figure (x world_size its rows) that is not the loss of
    the batch the step trained on. The row holds the mean over the ranks now: the loop reference on the whole batch."""
    from types import SimpleNamespace

    import torch

    from tests.losses.gloo import run_workers
    from tests.losses.loss_reference import embeddings, ref_siglip
    ranks = run_workers(_siglip_rank_losses, tmp_path)                 # [[loss, loss/image-text] of rank 0, 1]
    a, b = embeddings(8, 5, seed=4)
    want = float(ref_siglip(a, b, 10.0, -3.0).detach())
    assert abs(float(ranks[0, 0]) - want) > 1e-3                        # rank 0's own value is not the batch's
    log = _logger_at(tmp_path, 0)
    seen = []

    def gather(mine):                                                   # rank 0 of two: its row, then rank 1's
        seen.append(mine)
        return [mine, {"counts": {"skipped": {}, "noted": {}},           # rank 1 skipped none
                       "losses": {"loss": float(ranks[1, 0]), "loss/image-text": float(ranks[1, 1])}}]
    core = SimpleNamespace(logit_scale=torch.tensor(2.3), logit_bias=torch.tensor(-3.0))
    log.eng = SimpleNamespace(global_batch=8, total_steps=40, core=core, watch=SimpleNamespace(gather_object=gather),
                              scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]))
    log.r = SimpleNamespace(output_dir=str(tmp_path), train=SimpleNamespace(log_every=1))
    res = SimpleNamespace(loss=ranks[0, 0], pair_losses={"image-text": ranks[0, 1]})
    loader = SimpleNamespace(skipped={}, noted={})
    log.step(SimpleNamespace(step=1, epoch=0, bad_steps_total=0), res, loader)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(row["loss"] - want) < 1e-9 and abs(row["loss/image-text"] - want) < 1e-9
    assert abs(log.loss - want) < 1e-9                                  # the summary's final_loss and the bar's
    assert len(seen) == 1 and seen[0]["losses"]["loss"] == float(ranks[0, 0])   # one gather for the row
