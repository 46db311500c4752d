"""`align bench` from the command line: open_clip models, --device / --num-workers / --precision, suites
that put a starting model and its fine-tuned version side by side."""
import json
import os
import re

import pytest
import torch
import yaml

from align.bench.cli import default_workers
from align.cli import main
from tests.bench.conftest import classification_wds


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, oc_arch, oc_net):
    """A 'start' checkpoint (open_clip's state_dict) and a 'fine-tuned' one (weights moved), as .pt / .safetensors."""
    from safetensors.torch import save_file
    d = tmp_path_factory.mktemp("ckpt")
    torch.save(oc_net.state_dict(), d / "start.pt")
    g = torch.Generator().manual_seed(5)
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in oc_net.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tuned.items()}, str(d / "tuned.safetensors"))
    return d


def _err(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_default_decode_workers_follow_the_usable_cpus(monkeypatch):
    for cpus, want in ((1, 1), (2, 2), (6, 6), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert default_workers() == want


def test_zeroshot_with_an_open_clip_model_workers_and_bf16(tmp_path, capsys, oc_arch, two_checkpoints):
    ds = classification_wds(tmp_path / "cls", n=24, n_classes=6)
    base = ["bench", "zeroshot", "--model", f"open_clip:{oc_arch}", "--pretrained", str(two_checkpoints / "start.pt"),
            "--dataset", ds, "--batch-size", "5"]
    assert main(base + ["--out", str(tmp_path / "a.json"), "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "device cpu, precision fp32, engine torch, 0 decode worker(s)" in out
    assert re.search(r"^time: open dataset [0-9.e-]+ s, load model [0-9.e-]+ s, encode image [0-9.e-]+ s, "
                     r"encode prompts [0-9.e-]+ s, index [0-9.e-]+ s, search [0-9.e-]+ s$", out, re.M), out
    assert main(base + ["--out", str(tmp_path / "b.json"), "--device", "cpu"]) == 0       # default: sized to the CPUs
    assert f"{default_workers()} decode worker(s)" in capsys.readouterr().out
    a, b = json.load(open(tmp_path / "a.json")), json.load(open(tmp_path / "b.json"))
    assert a["model"] == oc_arch and a["pretrained"] == str(two_checkpoints / "start.pt")
    assert list(a["seconds"])[:2] == ["open_dataset", "load_model"] and a["seconds"]["load_model"] > 0
    assert a["metrics"] == b["metrics"] and a["n"] == b["n"]          # parallel decoding changes nothing
    cache = tmp_path / "cache"
    assert main(base + ["--out", str(tmp_path / "c.json"), "--precision", "bf16", "--cache-dir", str(cache)]) == 0
    c = json.load(open(tmp_path / "c.json"))
    assert c["n"] == a["n"] and abs(c["metrics"]["acc1"] - a["metrics"]["acc1"]) <= 0.25
    assert [p.name.endswith("-bf16") for p in cache.iterdir()] == [True]   # bf16 embeddings cached apart
    assert (a["precision"], a["engine"], c["precision"]) == ("fp32", "torch", "bf16")  # the result says how


def test_bad_settings_are_one_line(tmp_path, capsys, oc_arch, two_checkpoints):
    ds = classification_wds(tmp_path / "cls", n=6, n_classes=3)
    base = ["bench", "zeroshot", "--dataset", ds, "--out", str(tmp_path / "o.json")]
    m = ["--model", f"open_clip:{oc_arch}", "--pretrained", str(two_checkpoints / "start.pt")]
    for extra, msg in [(["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA device"),
                       (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
                        "--device cuda"),
                       (["--device", "tpu9"], "is not a torch device"),
                       (["--num-workers", "-1"], "--num-workers must be >= 0")]:
        assert main(base + m + extra) == 2
        err = _err(capsys)
        assert len(err) == 1 and msg in err[0] and err[0].startswith("align: error:"), (extra, err)
    assert main(base + ["--model", f"open_clip:{oc_arch}"]) == 2
    assert "needs pretrained weights" in _err(capsys)[0]
    assert main(base + ["--model", "open_clip:Nope-1", "--pretrained", "x"]) == 2
    assert "unknown open_clip architecture" in _err(capsys)[0]


def test_suite_start_and_finetuned_side_by_side(tmp_path, capsys, oc_arch, two_checkpoints):
    classification_wds(tmp_path / "cls", n=20, n_classes=5)
    suite = {"models": [{"model": f"open_clip:{oc_arch}", "pretrained": str(two_checkpoints / "start.pt"),
                         "name": "start"},
                        {"model": f"open_clip:{oc_arch}", "pretrained": str(two_checkpoints / "tuned.safetensors"),
                         "name": "finetuned"}],
             "benchmarks": [{"dataset": "cls", "type": "wds", "task": "zeroshot"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["bench", "suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"),
                 "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| dataset"))
    assert header.endswith("| start | finetuned |")                    # one table, a column per model
    rows = [line for line in out.splitlines() if line.startswith("| cls | zeroshot_classification")]
    assert [r.split("|")[4].strip() for r in rows] == ["acc1", "acc5", "mean_per_class_recall"]
    assert "| start | finetuned |" in (tmp_path / "out" / "results.md").read_text()
    timed = re.findall(r"zeroshot_classification: acc1=[^\n]*\(encode image [0-9.e-]+ s, encode prompts [0-9.e-]+ s, "
                       r"index [0-9.e-]+ s, search [0-9.e-]+ s\)$", out, re.M)
    assert len(timed) == 2, out                                         # each result with its stages' seconds
    # the same two columns from the command line (--model repeated, --pretrained paired in order)
    assert main(["bench", "suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out2"),
                 "--model", f"open_clip:{oc_arch}", "--pretrained", str(two_checkpoints / "start.pt"),
                 "--model", f"open_clip:{oc_arch}", "--pretrained", str(two_checkpoints / "tuned.safetensors")]) == 0
    out2 = capsys.readouterr().out
    header2 = next(line for line in out2.splitlines() if line.startswith("| dataset"))
    # same name: told apart by the checkpoint file's name
    assert header2.endswith(f"| {oc_arch} (start.pt) | {oc_arch} (tuned.safetensors) |")
    vals1 = [r.split("|")[5:7] for r in rows]
    vals2 = [r.split("|")[5:7] for r in out2.splitlines() if r.startswith("| cls | zeroshot_classification")]
    assert vals1 == vals2


def test_suite_export_as_start_next_to_an_align_run(tmp_path, capsys):
    """The fine-tuning flow's table: the start model in open_clip's layout (local-dir:) beside an align run."""
    from align.export import export
    from tests.export.conftest import make_run
    run, _ = make_run(tmp_path, name="finetuned")
    export(run, str(tmp_path / "start"), fmt="open_clip", progress=False)
    classification_wds(tmp_path / "cls", n=12, n_classes=4)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "models": [{"model": "local-dir:start", "name": "start"}, "run"],      # relative to the YAML
        "benchmarks": [{"dataset": "cls", "type": "wds", "task": "zeroshot"}]}))
    assert main(["bench", "suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("| dataset")).endswith("| start | finetuned |")
    acc1 = next(line for line in lines if line.startswith("| cls |") and "| acc1 |" in line).split("|")[5:7]
    assert acc1[0] == acc1[1]                      # the export is the run's weights: same numbers


@pytest.fixture
def fake_cli(monkeypatch):
    """`align bench` with every --model loaded as a FakeModel (fast); the models loaded are listed."""
    import align.bench.models as models
    from tests.bench.conftest import FakeModel
    loaded = []
    monkeypatch.setattr(models, "load_model", lambda spec, pretrained=None, device="cpu", limits=None:
                        loaded.append(spec) or FakeModel(name=str(spec)))
    return loaded


def _no_work(monkeypatch):
    """Opening a dataset or loading a model fails the test: the arguments must be refused before."""
    import align.bench.datasets as datasets
    import align.bench.models as models

    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(datasets, "open_dataset", boom)
    monkeypatch.setattr(models, "load_model", boom)


@pytest.mark.parametrize("cmd", ["zeroshot", "retrieval"])
def test_out_and_batch_size_are_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, cmd):
    _no_work(monkeypatch)
    (tmp_path / "old.json").write_text("mine")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    base = ["bench", cmd, "--model", "m", "--dataset", str(tmp_path), "--device", "cpu", "--num-workers", "0"]
    for extra, msg in [(["--out", str(tmp_path / "old.json")], "old.json exists; pass --overwrite to replace it"),
                       (["--out", str(tmp_path / "adir")], "adir is a folder; give a file name"),
                       (["--out", str(tmp_path / "afile" / "x.json")], "afile is a file, not a folder"),
                       (["--out", str(tmp_path / "n.json"), "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                       (["--out", str(tmp_path / "n.json"), "--batch-size", "-1"], "--batch-size must be >= 1"),
                       (["--out", str(tmp_path / "n.json"), "--type", "imagefolder", "--split", "val"],
                        "--split val: a --type imagefolder dataset has no splits (only wds and hf)"),
                       (["--out", str(tmp_path / "n.json"), "--index", "bogus"],     # was: after the encoding
                        "unknown index type 'bogus'; valid: flat, flat_faiss, hnsw, ivf, ivfpq")]:
        assert main(base + extra) == 2
        err = _err(capsys)
        assert len(err) == 1 and err[0].startswith("align: error: ") and msg in err[0], (extra, err)
    assert (tmp_path / "old.json").read_text() == "mine" and not (tmp_path / "n.json").exists()


def test_out_folders_are_created_and_overwrite_replaces(tmp_path, capsys, fake_cli):
    ds = classification_wds(tmp_path / "cls", n=6, n_classes=3)
    out = tmp_path / "new" / "deeper" / "r.json"
    base = ["bench", "zeroshot", "--model", "m", "--dataset", ds, "--out", str(out), "--num-workers", "0"]
    assert main(base) == 0 and json.load(open(out))["n"]
    out.write_text("{}")
    assert main(base) == 2 and "pass --overwrite" in _err(capsys)[-1] and out.read_text() == "{}"
    assert main(base + ["--overwrite"]) == 0 and json.load(open(out))["n"]
    assert main(base + ["--overwrite", "--split", "test"]) == 0      # a wds dataset has splits
    assert main(base + ["--overwrite", "--split", "val"]) == 2 and "val" in _err(capsys)[-1]


def test_suite_out_and_existing_results_name_the_cli_flags(tmp_path, capsys, monkeypatch, fake_cli):
    classification_wds(tmp_path / "cls", n=6, n_classes=3)
    (tmp_path / "s.yaml").write_text("- {dataset: cls, type: wds, task: zeroshot}\n")
    (tmp_path / "notes.txt").write_text("mine")
    base = ["bench", "suite", str(tmp_path / "s.yaml"), "--model", "m", "--num-workers", "0"]
    assert main(base + ["--out", str(tmp_path / "notes.txt")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "notes.txt: exists and is not a folder" in err[0] and fake_cli == [], err
    out = ["--out", str(tmp_path / "out")]
    assert main(base + out + ["--overwrite", "--skip-existing"]) == 2 and "give one" in _err(capsys)[0]
    assert main(base + out) == 0
    assert main(base + out) == 2
    err = _err(capsys)[-1]
    assert "exists; pass --overwrite (overwrite=True) to replace it or --skip-existing (skip_existing=True)" in err
    import align.bench.zeroshot as zs
    monkeypatch.setattr(zs, "zeroshot_classification", lambda *a, **k: pytest.fail("an existing result re-run"))
    assert main(base + out + ["--skip-existing"]) == 0                 # the result on disk is reused
    assert "suite: 1 results for 1 model(s) in " in capsys.readouterr().out


def test_suite_ends_with_its_table_then_one_end_line(tmp_path, capsys, fake_cli):
    """`align bench suite` said its end twice: run_suite's `suite: N results for M model(s) in OUT ...`, then the
    table, then `N results -> OUT`. The table comes first, then the one end line."""
    classification_wds(tmp_path / "cls", n=6, n_classes=3)
    (tmp_path / "s.yaml").write_text("- {dataset: cls, type: wds, task: zeroshot}\n")
    assert main(["bench", "suite", str(tmp_path / "s.yaml"), "--model", "m", "--num-workers", "0", "--out",
                 str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ends = [ln for ln in lines if "results" in ln and str(tmp_path / "out") in ln]
    assert ends == [lines[-1]] and lines[-1].startswith("suite: 1 results for 1 model(s) in "), lines
    assert any(ln.startswith("| dataset | task | modalities | metric | m |") for ln in lines[:-1])
