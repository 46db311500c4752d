"""Suite runner: YAML entries x models -> JSON per result (CLIP_benchmark shape), CSV and Markdown."""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from align.bench import BENCHMARKS
from align.bench.report import markdown_table, result_filename
from align.bench.suite import load_suite, run_suite
from align.errors import AlignError, ConfigError, DataError
from tests.bench.conftest import FakeModel, classification_wds, retrieval_wds

SUITE = """
- {dataset: cls, type: wds, task: zeroshot}
- {dataset: aud, type: audiofolder, task: zeroshot, modality: audio, templates: audio, name: sounds}
- {dataset: ret, type: wds, task: retrieval, query: text, gallery: image, index: hnsw}
- dataset: aud
  type: audiofolder
  task: emergent_retrieval
  query: audio
  gallery: image
  gallery_dataset: cls
  gallery_type: wds
  ks: [1, 5]
"""


@pytest.fixture
def suite_dir(tmp_path):
    classification_wds(tmp_path / "cls", n=20, n_classes=5)
    rng = np.random.default_rng(0)
    for c in ("CLASS0 THING0", "class3 thing10"):
        os.makedirs(tmp_path / "aud" / c)
        for j in range(3):
            sf.write(str(tmp_path / "aud" / c / f"{j}.wav"), rng.standard_normal(64).astype(np.float32), 8000)
    retrieval_wds(tmp_path / "ret", n=12)
    (tmp_path / "suite.yaml").write_text(SUITE)
    return tmp_path


def test_one_model_encodes_class_prompts_once_for_datasets_that_share_them(tmp_path):
    classification_wds(tmp_path / "a", n=12, n_classes=4, seed=0)
    classification_wds(tmp_path / "b", n=10, n_classes=4, seed=1)        # the same class names and templates
    (tmp_path / "s.yaml").write_text("- {dataset: a, type: wds, task: zeroshot}\n"
                                     "- {dataset: b, type: wds, task: zeroshot}\n")
    model = FakeModel(name="m")
    results = run_suite(str(tmp_path / "s.yaml"), [model], str(tmp_path / "out"), progress=False)
    plain = FakeModel(name="m")                                          # the same weights, no suite
    from align.bench.datasets import open_dataset
    from align.bench.zeroshot import zeroshot_classification
    ref = [zeroshot_classification(plain, open_dataset(str(tmp_path / d), "wds"), progress=False) for d in "ab"]
    assert [r["metrics"] for r in results] == [r["metrics"] for r in ref]
    assert model.calls["text"] * 2 == plain.calls["text"] > 0           # prompts encoded once, not twice


def test_registry_has_the_three_benchmarks():
    assert {"zeroshot", "retrieval", "emergent_retrieval"} <= set(BENCHMARKS.names())


def test_two_models_side_by_side(suite_dir, capsys):
    loaded = []

    def load_fn(path):
        loaded.append(path)
        return FakeModel(seed=1, modalities=("image", "text"), name="fakeB")

    a = FakeModel(name="fakeA")
    out = str(suite_dir / "out")
    results = run_suite(str(suite_dir / "suite.yaml"), [a, "ckpt/b.safetensors"], out, load_fn=load_fn,
                        cache_dir=str(suite_dir / "cache"), progress=False)
    assert loaded == ["ckpt/b.safetensors"]
    # model A runs all 4 entries; model B has no audio tower: 2 entries
    assert [(r["model"], r["task"]) for r in results] == [
        ("fakeA", "zeroshot_classification"), ("fakeA", "zeroshot_classification"), ("fakeA", "zeroshot_retrieval"),
        ("fakeA", "emergent_retrieval"), ("fakeB", "zeroshot_classification"), ("fakeB", "zeroshot_retrieval")]
    printed = capsys.readouterr().out
    assert printed.count("skip:") == 2 and "6 results for 2 model(s)" in printed
    jsons = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert len(jsons) == 6
    r = json.load(open(os.path.join(out, result_filename(results[4]))))
    assert list(r)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert r["pretrained"] == "ckpt/b.safetensors" and r["language"] == "en" and r["dataset"] == "cls"
    assert results[1]["dataset"] == "sounds" and results[1]["templates"] == "audio"
    assert results[2]["index"]["type"] == "hnsw" and "recall_vs_exact@10" in results[2]["index"]["text->image"]
    assert set(results[3]["metrics"]) == {f"{m}_retrieval_recall@{k}" for m in ("image", "audio") for k in (1, 5)}
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    assert len(rows) == 6 and float(rows[0]["acc1"]) == pytest.approx(results[0]["metrics"]["acc1"], rel=1e-5)
    md = open(os.path.join(out, "results.md")).read()
    assert "| dataset | task | modalities | metric | fakeA | fakeB |" in md
    line = [l for l in md.splitlines() if l.startswith("| cls | zeroshot_classification | image | acc1 |")][0]
    assert line.endswith(f"| {100 * results[0]['metrics']['acc1']:.2f} | {100 * results[4]['metrics']['acc1']:.2f} |")


def test_existing_results_are_not_overwritten_unless_asked(suite_dir):
    """(plot=False: the result JSONs are what is kept or replaced; the figures beside them, never over a file
    either, are tests/bench/test_figures.py's, and drawing them took 95% of this test's time.)"""
    out, suite = str(suite_dir / "out"), str(suite_dir / "suite.yaml")
    cache = str(suite_dir / "cache")
    first = run_suite(suite, [FakeModel(name="m")], out, cache_dir=cache, progress=False, plot=False)
    with pytest.raises(AlignError, match=r"exists; pass --overwrite \(overwrite=True\) to replace it or --skip-existing"):
        run_suite(suite, [FakeModel(name="m")], out, cache_dir=cache, progress=False, plot=False)
    m = FakeModel(name="m")
    again = run_suite(suite, [m], out, skip_existing=True, progress=False, plot=False)
    assert sum(m.calls.values()) == 0 and [r["metrics"] for r in again] == [r["metrics"] for r in first]
    m = FakeModel(name="m")
    run_suite(suite, [m], out, cache_dir=cache, overwrite=True, progress=False, plot=False)
    assert sum(m.calls.values()) == 0  # overwritten from the embedding cache
    # each result records how it was encoded; kept results encoded otherwise are not mixed into a bf16 table
    assert {(r["precision"], r["engine"]) for r in first} == {("fp32", "torch")}
    with pytest.raises(AlignError, match=r"--skip-existing keeps a result encoded with precision fp32 \(this run: bf16\)"):
        run_suite(suite, [FakeModel(name="m")], out, skip_existing=True, precision="bf16", progress=False, plot=False)


def test_suite_validation_errors(suite_dir):
    bad = suite_dir / "bad.yaml"
    bad.write_text("- {dataset: cls, type: wds, task: zeroshot, query: text}\n")
    with pytest.raises(ConfigError, match=r"entry 0: key 'query' is not valid for task 'zeroshot'"):
        load_suite(str(bad))
    bad.write_text("- {dataset: cls, type: wds}\n")
    with pytest.raises(ConfigError, match="missing required key 'task'"):
        load_suite(str(bad))
    bad.write_text("- {dataset: cls, type: wds, task: knn}\n")
    with pytest.raises(ConfigError, match="unknown benchmark type 'knn'"):
        load_suite(str(bad))
    bad.write_text("{tasks: []}\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'tasks'"):
        load_suite(str(bad))
    bad.write_text("- {dataset: cls, type: wds, task: zeroshot}\n- {dataset: missing, type: wds, task: zeroshot}\n")
    called = []
    with pytest.raises(DataError, match=r"entry 1: dataset '.*missing' does not exist"):
        run_suite(str(bad), ["x"], str(suite_dir / "o"), load_fn=called.append, progress=False)
    assert called == []  # datasets are checked before any model is loaded
    with pytest.raises(ConfigError, match="need load_fn"):
        run_suite(str(suite_dir / "suite.yaml"), ["x"], str(suite_dir / "o"), progress=False)


def test_markdown_labels_disambiguate_same_model_name():
    rs = [{"dataset": "d", "model": "m", "pretrained": p, "task": "t", "metrics": {"acc1": v}}
          for p, v in (("a.pt", 0.5), ("b.pt", 0.25))]
    md = markdown_table(rs)
    assert "| m (a.pt) | m (b.pt) |" in md and "| d | t |  | acc1 | 50.00 | 25.00 |" in md
    # long paths that share a prefix and even a file name still get one column each
    rs = [{"dataset": "d", "model": "m", "pretrained": p, "task": "t", "metrics": {"acc1": v}}
          for p, v in (("/tmp/runs/start/model.pt", 0.5), ("/tmp/runs/tuned/model.pt", 0.25))]
    md = markdown_table(rs)
    assert "| m (model.pt) #1 | m (model.pt) #2 |" in md and "| acc1 | 50.00 | 25.00 |" in md


def test_run_entry_single_benchmark_from_keywords(suite_dir):
    from align.bench.suite import run_entry

    out = str(suite_dir / "one.json")
    r = run_entry(FakeModel(), dataset=str(suite_dir / "ret"), type="wds", task="retrieval", query="text",
                  gallery="image", ks=[1, 2], out_path=out, progress=False)
    assert json.load(open(out))["metrics"] == r["metrics"] and "image_retrieval_recall@2" in r["metrics"]
    with pytest.raises(AlignError, match="one.json exists"):
        run_entry(FakeModel(), dataset=str(suite_dir / "ret"), type="wds", task="retrieval", out_path=out)
    with pytest.raises(ConfigError, match="key 'modality' is not valid for task 'retrieval'"):
        run_entry(FakeModel(), dataset=str(suite_dir / "ret"), type="wds", task="retrieval", modality="image")


def test_markdown_keeps_rows_of_different_modalities_apart():
    """Image and audio zero-shot on one dataset are two rows, not one overwritten by the other."""
    res = [{"dataset": "d", "model": "m", "pretrained": "p", "task": "zeroshot_classification", "modality": m,
            "metrics": {"acc1": v}} for m, v in (("image", 0.5), ("audio", 0.25))]
    table = markdown_table(res)
    assert "| d | zeroshot_classification | image | acc1 | 50.00 |" in table
    assert "| d | zeroshot_classification | audio | acc1 | 25.00 |" in table


def test_precision_reaches_every_suite_task(tmp_path):
    """run_suite(precision=...) encodes each task's images under that autocast (the CLI's --precision)."""
    import torch

    class Probe(FakeModel):
        seen = []

        def encode_image(self, x):
            Probe.seen.append(torch.is_autocast_enabled("cpu"))
            return super().encode_image(x)

    classification_wds(tmp_path / "cls", n=8, n_classes=4)
    retrieval_wds(tmp_path / "ret", n=6)
    (tmp_path / "suite.yaml").write_text("- {dataset: cls, type: wds, task: zeroshot}\n"
                                         "- {dataset: ret, type: wds, task: retrieval, query: text, gallery: image}\n")
    run_suite(str(tmp_path / "suite.yaml"), [Probe(name="p")], str(tmp_path / "out"), precision="bf16",
              progress=False)
    assert Probe.seen and all(Probe.seen)
    Probe.seen.clear()
    run_suite(str(tmp_path / "suite.yaml"), [Probe(name="p")], str(tmp_path / "out2"), progress=False)
    assert Probe.seen and not any(Probe.seen)


def test_the_same_model_twice_keeps_every_result(tmp_path):
    """Two entries with one dataset name and task, run for one model given twice: four results, four files
    (the second model's second entry used to map to the first's `_1.json` and be refused as existing)."""
    classification_wds(tmp_path / "cls", n=8, n_classes=4)
    (tmp_path / "s.yaml").write_text("- {dataset: cls, type: wds, task: zeroshot}\n"
                                     "- {dataset: cls, type: wds, task: zeroshot, modality: image}\n")
    out = tmp_path / "out"
    results = run_suite(str(tmp_path / "s.yaml"), [FakeModel(name="m"), FakeModel(name="m")], str(out),
                        progress=False)
    files = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert len(results) == 4 and len(files) == 4, files
    again = run_suite(str(tmp_path / "s.yaml"), [FakeModel(name="m"), FakeModel(name="m")], str(out),
                      skip_existing=True, progress=False)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in results]
    assert sorted(f for f in os.listdir(out) if f.endswith(".json")) == files


@pytest.mark.parametrize("ks", ["[]", "[0]", "[-1, 5]", "5", "[1, two]", "[1.5]", "[true]", "'1,5'", "null"])
def test_ks_must_be_a_non_empty_list_of_positive_ints_at_load(tmp_path, ks):
    (tmp_path / "s.yaml").write_text(f"- {{dataset: nowhere, type: wds, task: retrieval, ks: {ks}}}\n"
                                     f"- {{dataset: nowhere, type: wds, task: emergent_retrieval, ks: [1]}}\n")
    with pytest.raises(ConfigError, match=r"entry 0: 'ks' must be a non-empty list of positive integers"):
        load_suite(str(tmp_path / "s.yaml"))     # at load: the dataset (which does not exist) is never opened
    (tmp_path / "s.yaml").write_text(f"- {{dataset: nowhere, type: wds, task: emergent_retrieval, ks: {ks}}}\n")
    with pytest.raises(ConfigError, match=r"entry 0: 'ks' must be"):
        load_suite(str(tmp_path / "s.yaml"))


def test_a_suite_that_is_not_valid_yaml_is_one_line_with_its_place(tmp_path):
    """PyYAML's message spans several lines; the suite's error quoted it whole."""
    from align.bench.suite import read_suite
    p = tmp_path / "s.yaml"
    p.write_text("benchmarks:\n  - {task: zeroshot, dataset: x\n")
    with pytest.raises(ConfigError) as e:
        read_suite(str(p))
    assert "\n" not in str(e.value) and "s.yaml: not valid YAML at line 3, column 1" in str(e.value)


def test_a_failed_entry_or_model_does_not_stop_the_others(tmp_path, capsys):
    """An entry whose every image is broken and a model that cannot load: before, the first error ended the suite
    and results.md was never written. Now each is one `fail:` line, the other entries run and are written,
    results.md lists the failures under 'Not run', and the suite still ends in an error naming the first."""
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / "broken" / c)
        (tmp_path / "broken" / c / "0.png").write_bytes(b"not a png at all")
    classification_wds(tmp_path / "good", n=12, n_classes=4)
    (tmp_path / "s.yaml").write_text("- {dataset: broken, type: imagefolder, task: zeroshot}\n"
                                     "- {dataset: good, type: wds, task: zeroshot}\n")

    def load_fn(path):
        raise DataError(f"{path}: not a model folder")

    out = tmp_path / "out"
    with pytest.raises(AlignError, match=r"^suite: 2 failed \(listed under 'Not run' in .*results\.md\); first: "
                                         r"suite .*entry 0 \(zeroshot on broken\) for m: .*no image could be encoded"):
        run_suite(str(tmp_path / "s.yaml"), [FakeModel(name="m"), "nowhere"], str(out), load_fn=load_fn,
                  progress=False)
    printed = capsys.readouterr().out
    assert printed.count("fail: ") == 2 and "model 'nowhere': nowhere: not a model folder" in printed
    assert [f for f in os.listdir(out) if f.endswith(".json")] == ["good_fake-0-16_m_en_zeroshot_classification.json"]
    md = (out / "results.md").read_text()
    not_run = md[md.index("## Not run"):].splitlines()[2:]
    assert len(not_run) == 2 and "no image could be encoded" in not_run[0] and "nowhere" in not_run[1]
    assert "| good | zeroshot_classification | image | acc1 |" in md


def test_a_second_run_into_the_same_out_tables_the_first_runs_results_beside_its_own(suite_dir, capsys):
    """`align bench suite --out DIR` run again with another model kept the first run's JSON files, but results.md
    and results.csv listed only the second run's: the folder held results its tables did not show. Both runs'
    results are now tabled side by side, named; those encoded otherwise (another precision) are marked."""
    out, suite = str(suite_dir / "out"), str(suite_dir / "suite.yaml")
    first = run_suite(suite, [FakeModel(name="fakeA")], out, progress=False, plot=False)     # (tables, not figures)
    capsys.readouterr()
    second = run_suite(suite, [FakeModel(seed=1, name="fakeB")], out, progress=False, precision="bf16", plot=False)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"; the tables also hold {len(first)} result(s) of earlier runs in that folder (fakeA), "
                         f"{len(first)} of them encoded otherwise (listed in results.md)"), line
    md = open(os.path.join(out, "results.md")).read()
    assert "| dataset | task | modalities | metric | fakeB | fakeA |" in md
    row = [ln for ln in md.splitlines() if ln.startswith("| cls | zeroshot_classification | image | acc1 |")][0]
    assert row.endswith(f"| {100 * second[0]['metrics']['acc1']:.2f} | {100 * first[0]['metrics']['acc1']:.2f} |")
    assert (f"- fakeA: {len(first)} result(s) (aud+cls, cls, ret, sounds), precision fp32, engine torch -- NOT as this "
            f"run encoded (precision bf16, engine torch)") in md
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    assert sorted(r["model"] for r in rows) == ["fakeA"] * len(first) + ["fakeB"] * len(second)
    assert len([f for f in os.listdir(out) if f.endswith(".json")]) == len(first) + len(second)   # none replaced


@pytest.mark.parametrize("full_at", ["_zeroshot_retrieval.json", "results.csv", "results.md"])
def test_a_full_disk_while_a_suite_writes_is_one_line_and_a_rerun_with_skip_existing_finishes(suite_dir, monkeypatch,
                                                                                             full_at):
    """ENOSPC at a result JSON left it empty (or cut) under its name: the rerun said it "exists", and with
    --skip-existing failed reading it; at results.csv/.md a traceback and a cut table. Now one line naming the
    file, no partial file, and the rerun (--skip-existing) tables the same results as a clean run. Figures are drawn
    where a result JSON fails (its figure, drawn before it, must go with it: else the rerun refused to draw over it);
    at results.csv/.md, written after every figure, they would change nothing but this test's time (plot=False)."""
    from align.writes import StorageError
    from tests.diskfull import files_under, full_disk
    suite, plot = str(suite_dir / "suite.yaml"), full_at.endswith(".json")
    if plot:   # the suite but its last entry: a second retrieval figure (~2 s) drawn by the clean run and the rerun
        suite = str(suite_dir / "three.yaml")
        (suite_dir / "three.yaml").write_text(SUITE[:SUITE.index("- dataset: aud\n")])
    run_suite(suite, [FakeModel(name="m")], str(suite_dir / "clean"), progress=False, plot=plot)
    out = suite_dir / "out"
    disk = full_disk(monkeypatch, full_at, free=10)
    with pytest.raises(StorageError) as e:
        run_suite(suite, [FakeModel(name="m")], str(out), progress=False, plot=plot)
    failed = disk.failed[0].split(".tmp")[0]
    assert str(e.value).startswith(f"{failed}: No space left on device (") and "--skip-existing" in str(e.value)
    assert not [f for f in files_under(out) if ".tmp" in f] and not os.path.exists(failed), files_under(out)
    for name in files_under(out):
        json.load(open(out / name)) if name.endswith(".json") else None      # what is there is whole
    monkeypatch.undo()                                                          # space freed
    run_suite(suite, [FakeModel(name="m")], str(out), skip_existing=True, progress=False, plot=plot)
    assert files_under(out) == files_under(suite_dir / "clean")
    assert (out / "results.csv").read_text() == (suite_dir / "clean" / "results.csv").read_text()
