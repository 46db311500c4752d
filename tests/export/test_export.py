"""export(): never overwrites, loads back with align.load, self-contained, model card contents."""
import json
import os

import pytest
import torch
import yaml

import align
from align.errors import AlignError
from align.export import export, summary_lines
from tests.conftest import TINY_OPEN_CLIP
from tests.export.conftest import make_run
from tests.towers.test_open_clip_towers import offline  # noqa: F401  (a fixture)
from tests.test_open_clip_files import no_hub  # noqa: F401  (offline uses it)

SUMMARY = {"steps": 1234, "final_loss": 0.5, "wall_time_s": 3600.0, "samples_per_s": 250.0, "world_size": 2,
           "precision": "bf16"}
EVALS = [{"step": 500, "image/zeroshot/acc1": 0.1}, {"step": 1234, "image/zeroshot/acc1": 0.4321,
                                                     "image/retrieval/image_retrieval_recall@5": 0.777}]
REPORT = {"dataset": "wds/mydata", "model": "demo", "pretrained": "abc", "task": "zeroshot_classification",
          "metrics": {"acc1": 0.625, "mean_per_class_recall": 0.5}, "language": "en"}


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_never_overwrites_without_asking(tmp_path, tiny_run):
    run, model = tiny_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(AlignError, match="exists and is not empty; pass overwrite=True"):
        export(run, str(out), fmt="onnx", progress=False)
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "user data"
    # overwrite replaces an earlier export, never a folder of other files (`--out . --overwrite` in a project)
    with pytest.raises(AlignError, match=r"holds files that are not an align export \(mine.txt; an export has "
                                         r"align_run_info.json\): overwrite replaces only an earlier export"):
        export(run, str(out), fmt="onnx", overwrite=True, progress=False)
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "user data"
    os.remove(out / "mine.txt")
    export(run, str(out), fmt="open_clip", progress=False)
    res = export(run, str(out), fmt="onnx", overwrite=True, progress=False)
    assert "open_clip_model.safetensors" not in os.listdir(out) and "text.onnx" in res["files"]
    assert sorted(os.listdir(tmp_path)) == ["out", "run"]                 # no temp or .old folders left
    empty = tmp_path / "empty"
    empty.mkdir()
    export(run, str(empty), fmt="open_clip", progress=False)             # an empty folder is fine
    with pytest.raises(AlignError, match="contains the model being exported"):
        export(run, str(tmp_path), fmt="onnx", overwrite=True, progress=False)
    with pytest.raises(AlignError, match="unknown format 'tflite'"):
        export(run, str(tmp_path / "x"), fmt="tflite")


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, tiny_run, monkeypatch):
    """--out under a file, or in a folder where mkdir is refused (PermissionError, as for a user without write
    permission there): one line naming it, not a traceback after the model loaded; nothing left behind."""
    run, _ = tiny_run
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(AlignError) as e:
        export(run, str(tmp_path / "afile" / "out"), fmt="onnx", progress=False)
    assert str(e.value) == f"{tmp_path / 'afile'}: cannot create the export's parent folder (a file is on the way)"
    (tmp_path / "ro").mkdir()
    real_mkdir = os.mkdir

    def refused(path, *a, **k):
        if os.path.dirname(os.path.abspath(path)) == str(tmp_path / "ro"):
            raise PermissionError(13, "Permission denied", path)
        return real_mkdir(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", refused)
    with pytest.raises(AlignError) as e:
        export(run, str(tmp_path / "ro" / "out"), fmt="onnx", progress=False)
    assert str(e.value) == f"export: cannot write beside {tmp_path / 'ro' / 'out'} (Permission denied)"
    assert os.listdir(tmp_path / "ro") == []


def test_a_report_that_is_missing_or_no_result_is_one_line(tmp_path, tiny_run):
    """`align export RUN --out O --report nope.json` exported and left the report off the card without a word."""
    run, _ = tiny_run
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for path, msg in ((tmp_path / "nope.json", "no such file or folder"), (tmp_path / "notes.txt", "is not a result"),
                      (tmp_path / "empty", "holds no result JSON")):
        with pytest.raises(AlignError) as e:
            export(run, str(tmp_path / "out"), fmt="onnx", reports=[str(path)], progress=False)
        assert str(e.value).startswith(f"--report {path}: {msg}")
    assert not (tmp_path / "out").exists()
    (tmp_path / "r.json").write_text(json.dumps(REPORT))
    export(run, str(tmp_path / "out"), fmt="onnx", reports=[str(tmp_path / "r.json")], progress=False)
    assert "wds/mydata" in (tmp_path / "out" / "README.md").read_text()


def test_every_export_loads_with_align_load(tmp_path):
    run, model = make_run(tmp_path, logit_bias=-10.0)
    for fmt in ("open_clip", "onnx", "all"):
        out = tmp_path / fmt
        res = export(os.path.join(run, "checkpoints", "step-00000001"), str(out), fmt=fmt, progress=False)
        assert {"align_config.json", "align_model.safetensors", "README.md"} <= set(res["files"])
        again = align.load(str(out))
        assert _weights_equal(again, model) and again.logit_bias.item() == pytest.approx(model.logit_bias.item())
        assert res["parity"]["align"]["max_weight_diff"] == 0.0


def test_align_load_of_weights_that_do_not_fit_the_config_is_one_line(tmp_path):
    """A run dir whose config.yaml was rewritten by a run of another model (resume=none into the same output_dir):
    align.load names the tensor and both shapes in one AlignError line instead of torch's multi-line error."""
    run, _ = make_run(tmp_path, embed_dim=16)
    cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    cfg["model"]["embed_dim"] = 24
    yaml.safe_dump(cfg, open(os.path.join(run, "config.yaml"), "w"))
    with pytest.raises(AlignError) as e:
        align.load(run)
    msg = str(e.value)
    assert "\n" not in msg and "weights do not fit the model" in msg and "saved, [" in msg and "in the model" in msg


def test_export_does_not_depend_on_outside_files(tmp_path):
    """A recipe naming an open_clip config file: the export inlines it, so deleting the file is harmless."""
    cfg_file = tmp_path / "arch.json"
    cfg_file.write_text(json.dumps({"model_cfg": dict(TINY_OPEN_CLIP, embed_dim=16)}))
    run, model = make_run(tmp_path, open_clip=False, towers={
        "image": {"type": "open_clip", "config_file": str(cfg_file)},
        "text": {"type": "open_clip", "config_file": str(cfg_file), "quick_gelu": False}})
    out = tmp_path / "export"
    export(run, str(out), fmt="open_clip", progress=False)
    cfg_file.unlink()
    recipe = json.load(open(out / "align_config.json"))
    assert "config_file" not in json.dumps(recipe) and recipe["resume"] == "none"
    assert recipe["model"]["towers"]["text"]["quick_gelu"] is False      # other tower keys kept
    assert _weights_equal(align.load(str(out)), model)


def test_model_card(tmp_path):
    run, model = make_run(tmp_path, summary=SUMMARY, evals=EVALS, name="tiny-demo")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.json").write_text(json.dumps(REPORT))
    (tmp_path / "reports" / "other.json").write_text(json.dumps({"not": "a result"}))
    out = tmp_path / "export"
    res = export(run, str(out), fmt="all", reports=[str(tmp_path / "reports")], progress=False)
    card = (out / "README.md").read_text()
    assert card.startswith("# tiny-demo\n")
    # recipe as YAML, and it is the run's recipe
    recipe_yaml = card[card.index("```yaml\n") + 8:card.index("```", card.index("```yaml\n") + 8)]
    assert yaml.safe_load(recipe_yaml) == model_config(run)
    assert "- data: `\"synthetic\"`" in card
    for fact in ("- steps: 1234", "- training time: 3600 s", "- throughput: 250 samples/s",
                 "- samples seen: ~900,000", "- processes: 2, precision bf16"):
        assert fact in card, fact
    assert "step 1234" in card and "| image/zeroshot/acc1 | 0.4321 |" in card and "0.777" in card
    assert "| wds/mydata | zeroshot_classification |  | acc1 | 62.50 |" in card
    assert 'logits = PP["logit_scale"] * z_img @ z_txt.T  # [1, 2]' in card     # names the snippet defines
    for how in ("create_model_and_transforms('local-dir:", "onnxruntime", "align.load("):
        assert how in card, how
    assert summary_lines(res)[-1].startswith(f"exported {run} -> {out} (align, open_clip, onnx; ")

    # re-exporting the export keeps the run facts (its align_run_info.json)
    card2 = open(export(str(out), str(tmp_path / "again"), fmt="onnx", progress=False)["out_dir"] + "/README.md").read()
    assert "- steps: 1234" in card2 and "62.50" in card2


def model_config(run):
    return yaml.safe_load(open(os.path.join(run, "config.yaml")))


def test_the_run_is_found_inside_out_through_a_link_and_the_export_is_shared_like_any_file(tmp_path, tiny_run):
    """`--out DIR --overwrite` with the model named through a link to DIR passed the guard (paths were compared
    as strings) and deleted the run. And tempfile.mkdtemp made every export 0700, its weights 0600."""
    import shutil
    import stat
    run, _ = tiny_run
    home = tmp_path / "home"
    shutil.copytree(run, home / "run")
    os.symlink(home, tmp_path / "link")
    with pytest.raises(AlignError, match="contains the model being exported"):
        export(str(tmp_path / "link" / "run"), str(home), fmt="open_clip", overwrite=True, progress=False)
    assert (home / "run" / "config.yaml").is_file()
    old = os.umask(0o022)
    try:
        export(run, str(tmp_path / "shared"), fmt="open_clip", progress=False)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "shared").iterdir()}
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755
    assert modes["align_model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


def test_a_truncated_weights_file_in_an_export_is_one_line_naming_it(tmp_path, tiny_run):
    run, _ = tiny_run
    out = tmp_path / "e"
    export(run, str(out), fmt="open_clip", progress=False)
    w = out / "align_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    for call in (lambda: align.load(str(out)), lambda: export(str(out), str(tmp_path / "again"), progress=False)):
        with pytest.raises(AlignError, match=r"cannot read '.*align_model.safetensors' as a safetensors file "
                                             r"\(damaged or cut short\?\)"):
            call()


def test_the_card_names_the_checkpoint_and_whether_it_holds_the_weight_average(tmp_path):
    """A train.ema run: export takes the average, and the card says so and names the step; exporting an earlier
    checkpoint says the run's figures are not that checkpoint's (the card gave the run's steps and loss as the
    model's, and never said which weights it held). (open_clip format: the card is every format's; ONNX's tracing
    and parity check would cost each of the three exports a second.)"""
    from align.train.checkpoint import save_checkpoint
    run, model = make_run(tmp_path, summary={"steps": 2, "final_loss": 0.5, "wall_time_s": 1.0, "samples_per_s": 8.0})
    avg = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(os.path.join(run, "checkpoints"), "step-00000002", model.state_dict(), state={"step": 2},
                    ema_sd=avg)
    card = open(export(run, str(tmp_path / "last"), fmt="open_clip", progress=False)["out_dir"] + "/README.md").read()
    exported = align.load(str(tmp_path / "last")).state_dict()
    assert all(torch.equal(exported[k], avg[k]) for k in avg)
    assert "- exported: the checkpoint of step 2 (`" in card and "weights: the moving average of the trained" in card
    assert "whole run's" not in card and "- final loss: 0.5 (training loss of the trained weights" in card
    first = os.path.join(run, "checkpoints", "step-00000001")
    card1 = open(export(first, str(tmp_path / "first"), fmt="open_clip", progress=False)["out_dir"] + "/README.md"
                 ).read()
    assert f"- exported: the checkpoint of step 1 (`{first}`); weights: the trained weights" in card1
    assert "- the figures below are the whole run's (to step 2), not the exported step 1's" in card1
    # re-exporting the export keeps the checkpoint it came from
    card2 = open(export(str(tmp_path / "first"), str(tmp_path / "again"), fmt="open_clip", progress=False)["out_dir"]
                 + "/README.md").read()
    assert f"- exported: the checkpoint of step 1 (`{first}`)" in card2


def test_a_checkpoints_card_is_titled_by_its_run_and_step(tmp_path, tiny_run):
    """Exporting RUN/checkpoints/step-00000001 titled the card "# step-00000001", which says nothing of the run."""
    run, _ = tiny_run
    ckpt = os.path.join(run, "checkpoints", "step-00000001")
    export(ckpt, str(tmp_path / "e1"), fmt="open_clip", progress=False)
    assert open(tmp_path / "e1" / "README.md").readline() == "# run step-00000001\n"
    export(run, str(tmp_path / "e2"), fmt="open_clip", progress=False)         # a run dir: its own name
    assert open(tmp_path / "e2" / "README.md").readline() == "# run\n"


def test_a_run_whose_tower_took_its_pretrained_temperature_loads_and_exports(tmp_path):
    """A run trained with a tower's `pretrained` + `pretrained_temperature: true` could be neither loaded nor
    exported: loading drops `pretrained` (the weights are in the checkpoint) and the lone pretrained_temperature
    was refused (`... pretrained_temperature: ... set model.towers.image.pretrained`)."""
    from safetensors.torch import save_file
    from align.export import open_clip_format, self_contained_recipe
    _, src = make_run(tmp_path / "src", seed=5)
    weights = str(tmp_path / "oc.safetensors")
    save_file({k: v.contiguous() for k, v in open_clip_format.state_dict(src).items()}, weights)
    run, model = make_run(tmp_path / "ft", towers={"image": {"pretrained": weights, "pretrained_temperature": True},
                                                   "text": {"pretrained": weights}})
    loaded = align.load(run)
    assert _weights_equal(loaded, model)
    towers = self_contained_recipe(model)["model"]["towers"]        # what an export's align_config.json holds
    assert not {"pretrained", "pretrained_temperature"} & (set(towers["image"]) | set(towers["text"]))


def test_a_format_open_clip_cannot_hold_is_refused_naming_the_command_lines_flag(tmp_path, capsys):
    """`align export RUN --format open_clip` of a run open_clip's format cannot hold said "Use fmt='onnx'", the
    Python keyword, to a command-line user: it names `--format onnx` (and `all`)."""
    from align.cli import main
    run, _ = make_run(tmp_path, towers={"text": {"type": "bow_text", "width": 16, "context_length": 12}})
    assert main(["export", run, "--out", str(tmp_path / "out"), "--format", "open_clip"]) == 2
    err = capsys.readouterr().err
    assert "cannot use format open_clip" in err and "Use --format onnx (or all" in err, err
    assert "fmt='onnx'" not in err and not os.path.exists(tmp_path / "out")


def test_an_export_carries_its_tokenizer_and_loads_moved_without_the_original(tmp_path, monkeypatch, offline):
    """A run fine-tuned from `model: ViT-B-16-SigLIP` + `pretrained: DIR`: align.load asked the Hub for the
    tokenizer (the run's recipe drops `pretrained`), and the align export recorded the tokenizer folder as an
    absolute path, so moving the export (another machine) without that folder broke it. The export holds its own
    copy (tokenizer/, named relative to it); an export written before, whose absolute path is gone, reads it too."""
    import shutil
    from tests.towers.hf_tiny import save_tiny_tokenizer
    from tests.towers.test_open_clip_towers import _hub_folder, tiny_siglip
    d, _ = _hub_folder(tmp_path, tiny_siglip(monkeypatch), {"mean": [0.5] * 3, "std": [0.5] * 3})
    save_tiny_tokenizer(d)
    run, model = make_run(tmp_path, towers={"text": {"type": "open_clip", "model": "ViT-B-16-SigLIP",
                                                     "pretrained": str(d)}})
    texts = ["a photo of a dog", "a red cat on a sofa"]
    want = model.encode_text(model.tokenize(texts))
    loaded = align.load(run)                                                   # the run: offline, from DIR
    assert torch.equal(loaded.tokenize(texts), model.tokenize(texts))
    export(run, str(tmp_path / "e"), fmt="open_clip", progress=False)
    recipe = json.load(open(tmp_path / "e" / "align_config.json"))
    assert recipe["model"]["towers"]["text"]["config"]["tokenizer_folder"] == "tokenizer"
    os.makedirs(tmp_path / "elsewhere")
    moved = shutil.move(str(tmp_path / "e"), str(tmp_path / "elsewhere" / "e"))
    shutil.rmtree(d)
    again = align.load(moved)
    torch.testing.assert_close(again.encode_text(again.tokenize(texts)), want, rtol=0, atol=1e-6)
    recipe["model"]["towers"]["text"]["config"]["tokenizer_folder"] = str(d)  # as written before: gone now
    json.dump(recipe, open(os.path.join(moved, "align_config.json"), "w"))
    old = align.load(moved)
    torch.testing.assert_close(old.encode_text(old.tokenize(texts)), want, rtol=0, atol=1e-6)
    assert offline[0] == []
