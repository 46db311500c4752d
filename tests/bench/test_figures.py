"""`align bench` draws a figure beside each result JSON (align.bench.figures): the confusion matrix of a zero-shot
run (the most-confused classes when there are many), a few queries and their top gallery items, marked right/wrong,
for every modality pair; from the scores the run computed (no second encode), never over a user's file."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import align.bench.figures as figures
from align.bench.datasets import open_dataset, open_wds
from align.bench.embed import embed_dataset
from align.bench.retrieval import emergent_retrieval, retrieval
from align.bench.zeroshot import zeroshot_classification
from align.cli import main
from tests.bench.conftest import FakeModel, classification_wds, retrieval_wds


def _fake_models(monkeypatch):
    import align.bench.models as models
    monkeypatch.setattr(models, "load_model", lambda spec, pretrained=None, device="cpu", limits=None:
                        FakeModel(name=str(spec)))


@pytest.fixture
def fake_cli(monkeypatch):
    """`align bench` with every --model loaded as a FakeModel."""
    _fake_models(monkeypatch)


def _valid_png(path) -> tuple:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def _spy(monkeypatch):
    """Every write_retrieval_figure call's (examples, query side, gallery side), the real figure still drawn."""
    seen, real = [], figures.write_retrieval_figure

    def spy(examples, query, gallery, out_png, *a, **k):
        seen.append((examples, query, gallery))
        return real(examples, query, gallery, out_png, *a, **k)
    monkeypatch.setattr(figures, "write_retrieval_figure", spy)
    return seen


def test_bench_zeroshot_and_retrieval_write_a_png_beside_the_json_never_over_a_users_file(tmp_path, capsys, fake_cli):
    cls = classification_wds(tmp_path / "cls", n=12, n_classes=4)
    ret = retrieval_wds(tmp_path / "ret", n=8)
    for cmd, ds in (("zeroshot", cls), ("retrieval", ret)):
        out = tmp_path / cmd / "r.json"
        base = ["bench", cmd, "--model", "m", "--dataset", ds, "--out", str(out), "--num-workers", "0"]
        assert main(base) == 0
        png = tmp_path / cmd / "r.png"
        assert json.load(open(out))["metrics"] and _valid_png(png)[0] == "PNG"
        assert f"(figure {png})" in capsys.readouterr().out
        out.unlink()
        png.write_bytes(b"mine")            # a file of the user's where the figure goes: refused before any work
        assert main(base) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{png} exists (the figure beside the result); pass --overwrite" in err[0], err
        assert png.read_bytes() == b"mine" and not out.exists()
        assert main(base + ["--no-plot"]) == 0 and png.read_bytes() == b"mine" and out.exists()
        assert main(base + ["--overwrite"]) == 0 and _valid_png(png)[0] == "PNG"


def test_a_figure_that_cannot_be_drawn_is_one_warning_and_the_results_are_still_written(tmp_path, capsys, fake_cli,
                                                                                         monkeypatch):
    """The figure is drawn inside the runner, before the result JSON is written: a full disk (or any matplotlib
    fault) while drawing it cost the whole benchmark's results. Now one warning line; the JSON is written, exit 0,
    and no figure is named or left (not even the one --overwrite replaces)."""
    import errno

    import matplotlib.figure
    cls = classification_wds(tmp_path / "cls", n=12, n_classes=4)
    ret = retrieval_wds(tmp_path / "ret", n=8)

    def full(fig, target, *a, **k):        # writes a little, then the disk is full
        if hasattr(target, "write"):
            target.write(b"cut")
        else:
            open(target, "wb").write(b"cut")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    for cmd, ds in (("zeroshot", cls), ("retrieval", ret)):
        out, png = tmp_path / cmd / "r.json", tmp_path / cmd / "r.png"
        png.parent.mkdir()
        png.write_bytes(b"old figure")
        assert main(["bench", cmd, "--model", "m", "--dataset", ds, "--out", str(out), "--num-workers", "0",
                     "--overwrite"]) == 0
        cap = capsys.readouterr()
        warned = [ln for ln in cap.err.splitlines() if "no figure (the results are not affected)" in ln]
        assert len(warned) == 1 and str(png) in warned[0] and "No space left on device" in warned[0], cap.err
        assert json.load(open(out))["metrics"] and not png.exists() and "(figure" not in cap.out


def test_a_result_that_cannot_be_written_takes_its_figure_with_it_and_the_rerun_draws_again(tmp_path, capsys,
                                                                                            fake_cli, monkeypatch):
    """The figure is drawn before the JSON: a full disk at the JSON left the figure of results nobody has, and the
    rerun refused to draw over it ("exists"). Now the figure goes with the failed result; the rerun completes."""
    from tests.diskfull import full_disk
    cls = classification_wds(tmp_path / "cls", n=12, n_classes=4)
    out, png = tmp_path / "z" / "r.json", tmp_path / "z" / "r.png"
    cmd = ["bench", "zeroshot", "--model", "m", "--dataset", cls, "--out", str(out), "--num-workers", "0"]
    disk = full_disk(monkeypatch, str(out), free=10)                 # only the result JSON's writes fail
    assert main(cmd) == 74
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("align:")]   # (not the bars)
    assert len(err) == 1 and str(out) in err[0] and "No space left on device" in err[0], err
    assert disk.failed and not out.exists() and not png.exists()
    monkeypatch.undo()                                               # space freed (and the fake models gone)
    _fake_models(monkeypatch)
    assert main(cmd) == 0 and json.load(open(out))["metrics"] and _valid_png(png)[0] == "PNG"


def test_zeroshot_without_class_names_is_one_line_and_writes_no_figure(tmp_path, capsys, fake_cli):
    ret = retrieval_wds(tmp_path / "ret", n=6)
    assert main(["bench", "zeroshot", "--model", "m", "--dataset", ret, "--out", str(tmp_path / "z.json"),
                 "--num-workers", "0"]) == 2
    assert "has no class names" in capsys.readouterr().err
    assert not (tmp_path / "z.png").exists() and not (tmp_path / "z.json").exists()


@pytest.mark.parametrize("q,g", [("text", "image"), ("image", "text"), ("text", "audio"), ("audio", "image")])
def test_the_retrieval_figure_shows_the_items_the_scores_ranked_first_with_no_second_encode(tmp_path, monkeypatch,
                                                                                            q, g):
    ds = open_wds(retrieval_wds(tmp_path / "ret", n=12, audio=True))
    seen = _spy(monkeypatch)
    plain, drawn = FakeModel(), FakeModel()
    r0 = retrieval(plain, ds, query_modality=q, gallery_modality=g, progress=False)
    r1 = retrieval(drawn, ds, query_modality=q, gallery_modality=g, progress=False, figure=str(tmp_path / "f.png"))
    assert r0["metrics"] == r1["metrics"] and drawn.calls == plain.calls == {q: 1, g: 1}    # encoded once each
    assert _valid_png(tmp_path / "f.png")[0] == "PNG"
    (examples, qs, gs), = seen
    # the reference ranking, from the embeddings themselves
    qe, ge = (embed_dataset(FakeModel(), ds, m, progress=False) for m in (q, g))
    scores = qe.vectors @ ge.vectors.T                                           # [Q, G]
    assert len(examples) == figures.N_QUERIES and len({e["query"] for e in examples}) == figures.N_QUERIES
    for e in examples:
        row = e["query"]
        item = int(qs.ids[row])
        ref = [int(ge.ids[j]) for j in np.argsort(-scores[row], kind="stable")[:figures.TOP_K]]
        assert [int(gs.ids[j]) for j, _ in e["shown"]] == ref
        assert [hit for _, hit in e["shown"]] == [i == item for i in ref]
        kind, what = figures.load_cell(qs, row)
        assert kind == q and (what in ds.items[item].captions if q == "text" else what is not None)
        if q == "text":       # the query drawn is the caption that was scored (its row), not its item's first one
            assert what == ds.items[item].captions[row - int(np.flatnonzero(qe.ids == item)[0])]
        assert {figures.load_cell(gs, j)[0] for j, _ in e["shown"]} == {g}
    wrong = [ge.ids[np.argmax(scores[r])] != qe.ids[r] for r in range(len(qe.ids))]          # a top-1 miss
    assert any(wrong) and any(not e["shown"][0][1] for e in examples)    # the figure shows one of them


def test_retrieval_examples_are_seeded_and_show_a_failure_when_there_is_one():
    top = np.arange(40).reshape(20, 2) % 7                                       # [Q=20, K=2]
    hits = np.ones((20, 2), bool)
    hits[13, 0] = False                                                          # the one wrong top-1
    a = figures.retrieval_examples(top, hits, n_queries=4, k=2)
    assert a == figures.retrieval_examples(top, hits, n_queries=4, k=2)          # the same queries every run
    assert [e["query"] for e in a][:3] == list(np.random.default_rng(figures.SEED).permutation(20)[:3])
    assert any(e["query"] == 13 and e["shown"][0] == (int(top[13, 0]), False) for e in a)
    top[5, 1] = -1                                                               # an approximate index found 1 item
    every = {e["query"]: e["shown"] for e in figures.retrieval_examples(top, hits, n_queries=20, k=2)}
    assert every[5] == [(int(top[5, 0]), True)]


def test_fewer_items_than_k_and_emergent_audio_to_image_draw(tmp_path, monkeypatch):
    ds = open_wds(classification_wds(tmp_path / "cls", n=3, n_classes=3, audio=True))
    seen = _spy(monkeypatch)
    emergent_retrieval(FakeModel(), ds, query_modality="audio", gallery_modality="image", progress=False,
                       figure=str(tmp_path / "e.png"))
    (examples, qs, gs), = seen
    assert _valid_png(tmp_path / "e.png")[0] == "PNG" and len(examples) == 3
    assert all(len(e["shown"]) == 3 for e in examples)                           # 3 items, k 5: all 3 shown
    labels = ds.labels
    assert all(hit == (labels[gs.ids[j]] == labels[qs.ids[e["query"]]]) for e in examples for j, hit in e["shown"])


def test_a_broken_item_is_a_placeholder_naming_it_not_a_crash(tmp_path):
    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / f"{i}.png")
    ds = open_dataset(str(tmp_path / "imgs"), "imagefolder")
    (root / "1.png").write_bytes(b"not a png any more")     # changed after it was encoded (a cached embedding)
    side = figures.Side(ds, "image", np.array([0, 1]))
    kind, why = figures.load_cell(side, 1)
    assert kind == "broken" and "1.png" in why
    png = figures.write_retrieval_figure([{"query": 0, "shown": [(0, True), (1, False)]}], side, side,
                                         str(tmp_path / "b.png"), "t")
    assert _valid_png(png)[0] == "PNG"


def test_many_classes_show_the_most_confused_ones_and_say_so(tmp_path, monkeypatch):
    c = 50
    labels = np.repeat(np.arange(c), 4)                                          # [200]
    pred = labels.copy()
    pred[labels == 7] = 31                                                       # class 7 taken for 31, 4 times
    pred[(labels == 12) & (np.arange(200) % 4 == 0)] = 40                        # 12 for 40, once
    pred[3] = -1                                                                 # one item no class was found for
    names = [f"c{i}" for i in range(c)]
    view = figures.confusion_view_of(pred, labels, names, max_classes=6)
    assert len(view["classes"]) == 6 and {7, 31, 12, 40} <= set(view["classes"])
    s = view["classes"]
    ref = np.zeros((c, c), np.int64)
    for t, p in zip(labels, pred):
        if p >= 0:
            ref[t, p] += 1
    assert np.array_equal(view["counts"], ref[np.ix_(s, s)])
    assert view["scored"] == 200 and view["correct"] == int((pred == labels).sum()) and view["n_classes"] == c
    titles = []
    import matplotlib.axes
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, t, *a, **k: titles.append(t) or real(ax, t, *a, **k))
    assert _valid_png(figures.write_confusion_figure(view, str(tmp_path / "c.png"), "set"))[0] == "PNG"
    assert "the 6 most-confused of 50 classes" in titles[-1]
    small = figures.confusion_view_of(pred[:20], labels[:20], names[:5])         # 5 classes: all of them
    assert small["classes"] == list(range(5))


def test_zeroshot_figure_is_drawn_from_the_run_with_no_second_encode(tmp_path, monkeypatch):
    ds = open_wds(classification_wds(tmp_path / "cls", n=30, n_classes=30))
    views = []
    real = figures.write_confusion_figure
    monkeypatch.setattr(figures, "write_confusion_figure", lambda v, *a, **k: views.append(v) or real(v, *a, **k))
    plain, drawn = FakeModel(), FakeModel()
    zeroshot_classification(plain, ds, progress=False)
    r = zeroshot_classification(drawn, ds, progress=False, figure=str(tmp_path / "z.png"))
    assert drawn.calls == plain.calls and _valid_png(tmp_path / "z.png")[0] == "PNG"
    (v,) = views
    assert len(v["classes"]) == figures.MAX_CLASSES_SHOWN and v["n_classes"] == 30
    assert v["correct"] == round(r["metrics"]["acc1"] * 30)


def test_suite_writes_each_entrys_figure_beside_its_json(tmp_path, capsys, fake_cli):
    classification_wds(tmp_path / "cls", n=6, n_classes=3, audio=True)
    retrieval_wds(tmp_path / "ret", n=6, audio=True)
    (tmp_path / "s.yaml").write_text("- {dataset: cls, type: wds, task: zeroshot}\n"
                                     "- {dataset: ret, type: wds, task: retrieval, query: text, gallery: audio}\n"
                                     "- {dataset: cls, type: wds, task: linear_probe, train_dataset: cls}\n")
    base = ["bench", "suite", str(tmp_path / "s.yaml"), "--model", "m", "--num-workers", "0", "--out"]
    assert main(base + [str(tmp_path / "out")]) == 0
    jsons = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".json"))
    pngs = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".png"))
    drawn = [f for f in jsons if "zeroshot" in f]
    assert len(jsons) == 3 and pngs == sorted(f[:-5] + ".png" for f in jsons if "probe" not in f), (jsons, pngs)
    assert all(_valid_png(tmp_path / "out" / p)[0] == "PNG" for p in pngs) and drawn
    assert main(base + [str(tmp_path / "none"), "--no-plot"]) == 0
    assert not [f for f in os.listdir(tmp_path / "none") if f.endswith(".png")]
    (tmp_path / "none" / pngs[0]).write_bytes(b"mine")                         # a user's file where a figure goes
    for f in jsons:
        os.unlink(tmp_path / "none" / f)
    capsys.readouterr()
    assert main(base + [str(tmp_path / "none")]) == 2
    assert f"{pngs[0]} exists (the figure beside" in capsys.readouterr().err
    assert (tmp_path / "none" / pngs[0]).read_bytes() == b"mine"


@pytest.mark.parametrize("backend", ["TkAgg", "module://a_backend_not_installed_here"])
def test_the_figure_needs_no_display(tmp_path, backend):
    """A machine without a display, or whose matplotlib is set to a backend that cannot load there (an interactive
    toolkit, a third-party module backend missing on a batch node), still draws: the figures ask for Agg. (For TkAgg
    matplotlib falls back to Agg by itself; the module backend fails at `import matplotlib.pyplot` without it.)"""
    from tests.conftest import checkout_env
    code = ("import numpy as np, align.bench.figures as f\n"
            "v = f.confusion_view_of(np.array([0, 1, 1]), np.array([0, 1, 0]), ['a', 'b'])\n"
            f"f.write_confusion_figure(v, {str(tmp_path / 'x.png')!r}, 't')\n")
    env = {k: v for k, v in checkout_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND=backend)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert _valid_png(tmp_path / "x.png")[0] == "PNG"


def test_an_image_or_audio_query_is_named_by_its_class_or_its_first_caption(tmp_path, monkeypatch):
    """A query cell said only "audio query": a wrong row could not be read (which digit was asked for?). It names
    the query's class when the set has classes, else its item's first caption; a text query shows itself."""
    cls = open_wds(classification_wds(tmp_path / "cls", n=12, n_classes=4))
    ret = open_wds(retrieval_wds(tmp_path / "ret", n=6))
    at = figures.Side(cls, "image", np.arange(len(cls)))
    assert [figures.query_name(at, r) for r in range(4)] == [cls.classnames[cls.items[r].label] for r in range(4)]
    by_caption = figures.Side(ret, "image", np.arange(len(ret)))
    assert figures.query_name(by_caption, 2) == ret.items[2].captions[0][:24]
    assert figures.query_name(figures.Side(ret, "text", np.arange(len(ret))), 0) == ""
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out_png, **kw: drawn.append(fig))
    figures.write_retrieval_figure([{"query": 1, "shown": [(0, False)]}], at, at, str(tmp_path / "f.png"), "t")
    assert drawn[0].axes[0].get_title() == f"image query\n{cls.classnames[cls.items[1].label]}"
    import matplotlib.pyplot as plt
    plt.close(drawn[0])
