"""Val-set evaluation (align/train/evaluate.py): eval.tasks are names of the benchmark registry, expanded over the
modalities; what runs produces exactly the metric names config.py accepts for eval.best_metric."""
import fnmatch

import numpy as np
import pytest
import torch

from align.bench import BENCHMARKS
from align.errors import DataError
from align.train.evaluate import check_val_set, eval_entries, evaluate_model, metric_keys
from tests.bench.conftest import FakeModel, png_bytes, wav_bytes, write_wds

NAMES = ["zero", "one", "two", "three", "four", "five"]


def _val_set(root, n=36, train=True):
    """Image + audio + caption + class per item; a `train` split too (for the probes)."""
    rng = np.random.default_rng(0)
    for split in (["test", "train"] if train else ["test"]):
        samples = [(f"s{i:05d}", {"cls": str(i % 6), "png": png_bytes(rng), "flac": wav_bytes(rng, fmt="FLAC"),
                                  "txt": f"a {NAMES[i % 6]} {i}"}) for i in range(n)]
        write_wds(root, samples, split=split, classnames=NAMES, templates=["a {c}."])
    return str(root)


def test_every_registered_task_runs_on_the_val_set_with_the_declared_metric_names(tmp_path):
    val = _val_set(tmp_path / "val")
    model = FakeModel()
    tasks = BENCHMARKS.names()
    flat = evaluate_model(model, val, tasks=tasks, batch_size=16)
    expected = metric_keys(tasks, model.modalities)
    for task in tasks:                      # each task produced something
        assert any(k.split("/")[1] == task for k in flat), (task, sorted(flat))
    undeclared = [k for k in flat if not any(fnmatch.fnmatchcase(k, e) for e in expected)]
    assert not undeclared, undeclared      # best_metric validation at load knows every name the eval writes
    assert 0 <= flat["image/zeroshot/acc1"] <= 1 and 0 <= flat["image/linear_probe/acc1"] <= 1
    assert "text-image/retrieval/image_retrieval_recall@1" in flat
    assert "audio-image/emergent_retrieval/audio_retrieval_recall@5" in flat


def test_expansion_over_modalities():
    e = eval_entries(["zeroshot", "retrieval", "fusion_probe"], ["image", "text", "audio"])
    assert {"task": "zeroshot", "modality": "audio"} in e
    assert {"task": "retrieval", "query": "text", "gallery": "image"} in e
    assert {"task": "emergent_retrieval", "query": "audio", "gallery": "image"} in e   # no captions between them
    assert {"task": "fusion_probe", "modalities": ["image", "audio"]} in e
    by_class = eval_entries(["retrieval"], ["image", "text"], by_class=True)
    assert by_class == [{"task": "emergent_retrieval", "query": "text", "gallery": "image"}]
    assert eval_entries(["zeroshot"], ["image"], prompts=False) == []     # no class prompts: nothing to score
    assert eval_entries(["linear_probe"], ["image"], prompts=False) == [{"task": "linear_probe", "modality": "image"}]


def test_val_set_checked_before_training(tmp_path):
    val = _val_set(tmp_path / "val", n=12, train=False)
    assert check_val_set(val, ["zeroshot", "retrieval"], ["image", "text"]) == (["zeroshot", "retrieval"], [])
    with pytest.raises(DataError, match=r"'linear_probe' fits on the val set's train split.*train/nshards.txt"):
        check_val_set(val, ["linear_probe"], ["image", "text"])
    with pytest.raises(DataError, match=r"'zeroshot' has nothing to score"):
        check_val_set(val, ["zeroshot"], ["audio", "image"])      # no text tower: no class prompts
    # a task with nothing to score is left out while another has something (the run says so)
    assert check_val_set(val, ["zeroshot", "retrieval"], ["audio", "image"]) == (["retrieval"], ["zeroshot"])
    with pytest.raises(DataError, match=r"'zeroshot', 'retrieval' have nothing to score"):
        check_val_set(val, ["zeroshot", "retrieval"], ["audio", "depth"])


def test_best_metric_the_val_set_cannot_give_fails_before_training(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"s{i}", {"cls": str(i % 6), "png": png_bytes(rng), "txt": "x"}) for i in range(6)]   # no audio
    val = write_wds(tmp_path / "val", samples, classnames=NAMES)
    check_val_set(val, ["zeroshot"], ["image", "text", "audio"], best_metric="image/zeroshot/acc1")
    with pytest.raises(DataError, match=r"eval.best_metric: 'audio/zeroshot/acc1' cannot come out of data.val"):
        check_val_set(val, ["zeroshot"], ["image", "text", "audio"], best_metric="audio/zeroshot/acc1")


def test_the_report_draws_each_zero_shot_confusion_matrix_from_its_counts(tmp_path):
    """write_report (align demo's report) writes confusion_<modality>.png beside each zero-shot JSON, drawn
    from the JSON's counts; a result without counts draws nothing."""
    import glob
    import json
    from PIL import Image
    from align.train.evaluate import write_report
    from align.bench.figures import write_confusion_plot
    val = _val_set(tmp_path / "val", train=False)
    out = tmp_path / "report"
    results = write_report(FakeModel(), val, str(out), progress=False)
    for modality in ("image", "audio"):
        png = out / f"confusion_{modality}.png"
        assert Image.open(png).size[0] > 200
        (path,) = glob.glob(str(out / f"*zeroshot_classification_{modality}.json"))
        counts = np.array(json.load(open(path))["confusion"]["counts"])
        assert counts.shape == (6, 6) and counts.sum() == 36                 # every val item, once
    acc1 = next(r["metrics"]["acc1"] for r in results if r.get("modality") == "image")
    img = next(r for r in results if r.get("modality") == "image")
    assert np.trace(np.array(img["confusion"]["counts"])) / 36 == pytest.approx(acc1)
    assert write_confusion_plot({"metrics": {}}, str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


def test_the_retrieval_figure_names_the_set_it_searched(tmp_path, monkeypatch):
    """The demo draws retrieval.png for val and for heldout; both were titled "on val (top 5)", whatever the set
    and k."""
    import matplotlib.figure
    from PIL import Image
    from align.train.evaluate import retrieval_figure
    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    val = _val_set(tmp_path / "heldout", n=12, train=False)
    png = str(tmp_path / "r.png")
    assert retrieval_figure(FakeModel(), val, png, n_queries=2, k=3) == png
    assert titles == ["text -> image retrieval on heldout (top 3)"]
    assert Image.open(png).size[0] > 100


@pytest.mark.parametrize("n_classes, n_items", [(1, 4), (6, 3)])
def test_the_retrieval_figure_draws_a_set_of_one_class_or_fewer_items_than_k(tmp_path, n_classes, n_items):
    """One class (a 1-row grid) or 3 items under k=5: before, an IndexError from the axes or the top-k ids."""
    from PIL import Image
    from align.train.evaluate import retrieval_figure
    rng = np.random.default_rng(0)
    samples = [(f"s{i:05d}", {"cls": str(i % n_classes), "png": png_bytes(rng)}) for i in range(n_items)]
    val = write_wds(tmp_path / "v", samples, split="test", classnames=NAMES[:n_classes], templates=["a {c}."])
    png = str(tmp_path / "r.png")
    assert retrieval_figure(FakeModel(), str(val), png, n_queries=5, k=5) == png
    w, h = Image.open(png).size
    assert w > 100 and h > 50


def test_the_runs_evaluation_decodes_the_val_set_within_the_recipes_data_limits(tmp_path):
    """run_val (the periodic and final evaluation of `align train`) reads data.val within the recipe's
    data.limits, as training reads its shards (and align bench a trained model's): here max_audio_seconds 0.05
    skips the six 0.1 s clips, which the default limits (600 s) would have scored."""
    import json
    from types import SimpleNamespace

    from align.limits import DataLimits
    from align.train.metrics import run_val
    rng = np.random.default_rng(0)
    samples = [(f"s{i:05d}", {"cls": str(i % 2), "png": png_bytes(rng), "txt": f"a {NAMES[i % 2]}",
                              "flac": wav_bytes(rng, n=80 if i < 6 else 800, fmt="FLAC")}) for i in range(12)]
    val = write_wds(tmp_path / "val", samples, classnames=NAMES[:2], templates=["a {c}."])
    limits = DataLimits(max_audio_seconds=0.05)
    r = SimpleNamespace(data=SimpleNamespace(val=val, limits=limits), output_dir=str(tmp_path),
                        eval=SimpleNamespace(tasks=["zeroshot"], batch_size=4))
    acc = SimpleNamespace(is_main_process=True, log=lambda *a, **k: None)
    core = FakeModel()
    core.eval = lambda: core
    flat = run_val(core, r, acc, step=3)
    within, default = FakeModel(), FakeModel()
    within.data_limits = limits
    assert flat == evaluate_model(within, val, tasks=["zeroshot"], batch_size=4)
    assert flat["audio/zeroshot/acc1"] != evaluate_model(default, val, tasks=["zeroshot"], batch_size=4)[
        "audio/zeroshot/acc1"]
    assert json.loads(open(tmp_path / "eval.jsonl").read())["step"] == 3


def test_evaluating_during_training_leaves_the_trained_weights_as_they_were(tmp_path):
    """An evaluation draws from the global RNG (its DataLoaders' base seeds); left shifted, every later dropout
    mask (the audio CNN's dropout 0.2 here) moved, and eval.every changed the weights trained (1e-3 in 4 steps)."""
    from tests.export.conftest import TINY_AUDIO_CNN
    from tests.retrieval.conftest import tri_shards
    from tests.switch_helpers import final_weights, recipe, train_dict
    tri_shards(tmp_path / "shards", per_shard=8)
    val = _val_set(tmp_path / "val", n=6, train=False)
    weights = []
    for every in (0, 2):
        r = recipe(tmp_path, f"every{every}", model={"towers": {"audio": dict(TINY_AUDIO_CNN)}},
                   data={"train": str(tmp_path / "shards" / "shard-{000..002}.tar"), "shuffle_buffer": 4, "val": val},
                   loss={"pairs": [["image", "text"], ["audio", "text"]]}, train={"max_steps": 4},
                   eval={"every": every, "tasks": ["zeroshot"]})
        train_dict(r)
        weights.append(final_weights(r["output_dir"]))
    assert (tmp_path / "every2" / "eval.jsonl").read_text().count("\n") == 2      # evaluated at steps 2 and 4
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
