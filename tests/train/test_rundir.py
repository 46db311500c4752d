"""align/train/rundir.py: the run-dir layout, finding a model from a path, and the one sharded-checkpoint test.

A sharded (DCP) checkpoint is written here in one process by save_checkpoint itself (a plain model: DCP needs
no process group for it), then read through every path that takes a checkpoint: align.load, export and
model.init_from.
"""
import json
import os

import pytest
import torch

from align.errors import AlignError
from align.train import rundir
from align.train.checkpoint import save_checkpoint
from tests.export.conftest import make_run


def _dcp_checkpoint(run, model, name="step-00000002"):
    """RUN/checkpoints/NAME written as a sharded run writes it: dcp/ (model + optimizer) and state.json."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = save_checkpoint(rundir.checkpoints_dir(run), name, None, opt, {"step": 2, "world_size": 1},
                           sharded=(model, opt))
    assert os.path.isfile(os.path.join(path, rundir.DCP_DIR, rundir.DCP_METADATA))
    assert not os.path.exists(os.path.join(path, rundir.MODEL))
    return path


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    run, model = make_run(root, seed=5, summary={"steps": 2, "wall_time_s": 1.0, "samples_per_s": 16.0})
    return run, model, _dcp_checkpoint(run, model)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_sharded_checkpoint_is_read_by_align_load(dcp_run):
    import align
    run, model, ckpt = dcp_run
    assert rundir.is_sharded_checkpoint(ckpt) and rundir.is_checkpoint_dir(ckpt)
    assert rundir.weights_path(ckpt) == os.path.join(ckpt, rundir.DCP_DIR)
    _same(align.load(ckpt), model)                       # the checkpoint dir itself
    _same(align.load(run), model)                        # the run: its newest checkpoint is the DCP one
    where = rundir.locate(ckpt)
    assert (where.kind, where.run_dir, where.checkpoint) == ("checkpoint", run, ckpt)


def test_sharded_checkpoint_is_read_by_export(dcp_run, tmp_path):
    from align.export import export
    run, model, ckpt = dcp_run
    out = export(ckpt, str(tmp_path / "exp"), fmt="open_clip", progress=False)
    assert "open_clip" in out["formats"]
    import align
    _same(align.load(str(tmp_path / "exp")), model)
    card = open(tmp_path / "exp" / "README.md").read()
    assert "- steps: 2" in card                          # the run's summary.json was found from the DCP checkpoint
    assert "step 2" in card and "weights: the trained weights" in card


def test_a_sharded_checkpoint_with_a_weight_average_exports_the_average_and_says_so(tmp_path):
    """train.ema under fsdp: the DCP store's "ema." tensors are exported, and the card says they are the average."""
    from align.export import export
    run, model = make_run(tmp_path, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    avg = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(rundir.checkpoints_dir(run), "step-00000002", None, opt, {"step": 2}, sharded=(model, opt),
                    ema_sd=avg)
    export(run, str(tmp_path / "exp"), fmt="onnx", progress=False)
    import align
    got = align.load(str(tmp_path / "exp")).state_dict()
    assert all(torch.equal(got[k], avg[k]) for k in avg)
    card = open(tmp_path / "exp" / "README.md").read()
    assert "the checkpoint of step 2" in card and "weights: the moving average of the trained weights" in card


def test_sharded_checkpoint_is_read_by_init_from(dcp_run):
    from align.model import build_model
    from align.config import parse_recipe
    from align.train.init_from import apply_init_from
    import yaml
    run, model, ckpt = dcp_run
    cfg = yaml.safe_load(open(os.path.join(run, rundir.CONFIG)))
    fresh = build_model(parse_recipe(cfg).model)
    report = apply_init_from(fresh, ckpt, printer=None)
    assert report["ignored"] == [] and not report["new"]
    _same(fresh, model)


def test_the_sharded_flag_of_state_json_decides_and_old_checkpoints_fall_back(tmp_path):
    run, model = make_run(tmp_path, seed=1)
    plain = rundir.newest_checkpoint(run)
    assert rundir.read_state(plain)["sharded"] is False and not rundir.is_sharded_checkpoint(plain)
    ckpt = _dcp_checkpoint(run, model)
    # A checkpoint holding both: the recorded flag says which one is the model (a guess from files could not).
    open(os.path.join(ckpt, rundir.MODEL), "wb").write(open(os.path.join(plain, rundir.MODEL), "rb").read())
    assert rundir.weights_path(ckpt) == os.path.join(ckpt, rundir.DCP_DIR)
    state_file = os.path.join(ckpt, rundir.STATE)
    state = json.load(open(state_file))
    json.dump(dict(state, sharded=False), open(state_file, "w"))
    assert rundir.weights_path(ckpt) == os.path.join(ckpt, rundir.MODEL)
    # Written before the flag existed: a DCP store and no single-file model.
    os.remove(os.path.join(ckpt, rundir.MODEL))
    json.dump({k: v for k, v in state.items() if k != "sharded"}, open(state_file, "w"))
    assert rundir.is_sharded_checkpoint(ckpt) and rundir.weights_path(ckpt).endswith(rundir.DCP_DIR)
    del state["sharded"]
    json.dump(state, open(os.path.join(plain, rundir.STATE), "w"))
    assert not rundir.is_sharded_checkpoint(plain)


def test_locate_names_what_it_cannot_read(tmp_path):
    with pytest.raises(AlignError, match="no such model"):
        rundir.locate(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignError, match="not an align run, checkpoint or export"):
        rundir.locate(str(tmp_path / "empty"))
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("{}")
    with pytest.raises(AlignError, match="no complete checkpoint yet"):
        rundir.locate(str(run))
    assert rundir.find_run_dir(str(run)) == str(run)
    assert rundir.step_name(12) == "step-00000012" and rundir.STEP_RE.match(rundir.step_name(12))


@pytest.mark.slow
def test_export_and_load_during_a_run_read_its_last_complete_checkpoint_and_say_which(tiny_recipe, tmp_path):
    """A live `align train` writes checkpoints every 2 steps; `align export RUN` and align.load(RUN) taken
    meanwhile read a complete one (never the .tmp being written), say it is a run in progress and name it.
    Slow (about a minute on 2 cores): a real training process runs beside them."""
    import subprocess
    import sys
    import time

    import yaml

    import align
    from tests.conftest import checkout_env
    run = tiny_recipe["output_dir"]
    tiny_recipe["train"].update(max_steps=100000, checkpoint_every=2, keep_last=100)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    env = checkout_env()
    trainer = subprocess.Popen([sys.executable, "-m", "align.cli", "train", str(path), "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 240
        while not rundir.list_checkpoints(rundir.checkpoints_dir(run)) and time.time() < deadline:
            time.sleep(0.5)
        assert trainer.poll() is None, "the run ended before the readers came"
        out = tmp_path / "exported"
        r = subprocess.run([sys.executable, "-m", "align.cli", "export", run, "--out", str(out), "--format",
                            "open_clip"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        said = [ln for ln in r.stderr.splitlines() if "a run is in progress" in ln]
        assert said and f"pid {trainer.pid}" in said[0], r.stderr
        name = said[0].rsplit(", ", 1)[1].strip()                 # "... its last complete checkpoint, step-N"
        assert rundir.STEP_RE.match(name)
        ckpt = os.path.join(rundir.checkpoints_dir(run), name)
        _same(align.load(str(out)), align.load(ckpt))             # the export is that checkpoint's model
        model = align.load(run)                                   # in-process: also a complete checkpoint
        assert trainer.poll() is None
        assert any(rundir.STEP_RE.match(n) for n in os.listdir(rundir.checkpoints_dir(run)))
        assert model.logit_scale.numel() == 1
    finally:
        trainer.kill()
        trainer.wait()


def test_another_librarys_model_is_named_with_how_align_takes_it(tmp_path):
    """An open_clip folder, a Hugging Face folder (its model.safetensors made it look like an align checkpoint:
    `cannot find the run's config.yaml at PARENT/config.yaml`) or a weights file given to align.load / init_from."""
    oc, hf, ckpt = tmp_path / "oc", tmp_path / "hf", tmp_path / "ckpt"
    for d, files in ((oc, ("open_clip_config.json", "open_clip_model.safetensors")),
                     (hf, ("config.json", "model.safetensors")), (ckpt, (rundir.STATE, rundir.MODEL))):
        d.mkdir()
        for f in files:
            (d / f).write_text("{}")
    with pytest.raises(AlignError, match=f"not an align run, checkpoint or export but an open_clip folder: load it as "
                                         f"local-dir:{oc}"):
        rundir.locate(str(oc))
    with pytest.raises(AlignError, match=r"but a Hugging Face model folder \(config.json\): it is a tower of its own"):
        rundir.locate(str(hf))
    with pytest.raises(AlignError, match="but a weights file: an open_clip checkpoint is benchmarked as open_clip:"):
        rundir.locate(str(oc / "open_clip_model.safetensors"))
    with pytest.raises(AlignError, match=f"but a file of one: load its folder {ckpt}"):
        rundir.locate(str(ckpt / rundir.MODEL))


def test_config_yaml_names_the_models_local_files_absolutely_so_the_run_loads_from_anywhere(tmp_path, monkeypatch):
    """A recipe naming its open_clip JSON and a Hugging Face folder relative to where `align train` ran wrote them
    so into RUN/config.yaml: align.load / export from another directory said `no such file 'arch.json'`."""
    import yaml
    from align.config import parse_recipe, recipe_to_dict
    from align.model import build_model
    from align.train.rundir import write_config
    from tests.conftest import TINY_OPEN_CLIP
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "hf_folder").mkdir(parents=True)
    elsewhere.mkdir()
    (work / "arch.json").write_text(json.dumps({"model_cfg": dict(TINY_OPEN_CLIP, embed_dim=16)}))
    monkeypatch.chdir(work)
    r = parse_recipe({"output_dir": "run", "model": {"open_clip": "arch.json", "towers": {"audio": {
        "type": "hf_audio", "model": "hf_folder"}}}, "loss": {"pairs": [["image", "text"]]}, "train": {"max_steps": 1}})
    write_config(r.output_dir, recipe_to_dict(r), True)
    monkeypatch.chdir(elsewhere)
    cfg = yaml.safe_load(open(work / "run" / rundir.CONFIG))
    assert cfg["model"]["towers"]["audio"]["model"] == str(work / "hf_folder")
    del cfg["model"]["towers"]["audio"]
    build_model(parse_recipe(cfg).model)           # the open_clip JSON is found from another directory


def test_an_inline_configs_local_hf_text_folders_are_made_absolute(tmp_path, monkeypatch):
    """text_cfg.hf_model_name / hf_tokenizer_name naming local folders inside an inline open_clip config (the
    model's or a tower's) stayed relative in RUN/config.yaml; a hub id (no such folder) is left as it is."""
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    recipe = {"model": {"open_clip": {"text_cfg": {"hf_tokenizer_name": "tok", "hf_model_name": "org/bert"}},
                        "towers": {"text": {"type": "open_clip", "config": {"text_cfg": {"hf_model_name": "tok"}}}}}}
    m = rundir.absolute_model_paths(recipe)["model"]
    assert m["open_clip"]["text_cfg"] == {"hf_tokenizer_name": str(tmp_path / "tok"), "hf_model_name": "org/bert"}
    assert m["towers"]["text"]["config"]["text_cfg"] == {"hf_model_name": str(tmp_path / "tok")}


def test_a_local_dir_architecture_is_recorded_with_an_absolute_path(tmp_path, monkeypatch):
    """model.open_clip / a tower's model `local-dir:DIR` relative to where training ran: align.load elsewhere
    looked for DIR under its own working directory."""
    from align.train.rundir import absolute_model_paths
    (tmp_path / "oc").mkdir()
    monkeypatch.chdir(tmp_path)
    r = absolute_model_paths({"model": {"open_clip": "local-dir:oc", "towers": {
        "image": {"type": "open_clip", "model": "local-dir:oc"}, "text": {"type": "open_clip", "model": "ViT-B-32"}}}})
    assert r["model"]["open_clip"] == f"local-dir:{tmp_path / 'oc'}"
    assert r["model"]["towers"]["image"]["model"] == f"local-dir:{tmp_path / 'oc'}"
    assert r["model"]["towers"]["text"]["model"] == "ViT-B-32"


def test_an_open_clip_towers_pretrained_path_and_tokenizer_folder_are_recorded_absolutely(tmp_path, monkeypatch):
    """A loaded run reads the tokenizer files beside a tower's `pretrained` weights (or its tokenizer_folder): named
    relative to where training ran, align.load elsewhere did not find them. A tag is left as it is."""
    from align.train.rundir import absolute_model_paths
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "w.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    towers = absolute_model_paths({"model": {"towers": {
        "image": {"type": "open_clip", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        "text": {"type": "open_clip", "model": "ViT-B-32", "pretrained": "dl/w.safetensors", "tokenizer_folder": "dl"},
        "audio": {"type": "open_clip", "model": "ViT-B-32", "pretrained": "local-dir:dl"}}}})["model"]["towers"]
    assert towers["image"]["pretrained"] == "laion2b_s34b_b79k"
    assert towers["text"]["pretrained"] == str(tmp_path / "dl" / "w.safetensors")
    assert towers["text"]["tokenizer_folder"] == str(tmp_path / "dl")
    assert towers["audio"]["pretrained"] == f"local-dir:{tmp_path / 'dl'}"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_the_lines_every_rank_would_say_alike_at_resume_and_init_from_are_rank_0s(tmp_path, monkeypatch, caplog,
                                                                                rank):
    """Every rank of a launch resolves resume=auto and locates model.init_from over the same files, so each said
    "checkpoint ... is damaged; using ..." and "RUN: a run is in progress ...": the same line once per process.
    Rank 0 says them for the launch (align.progress.main_process); the choice itself is every rank's."""
    import logging

    import align.runlock
    import align.train.manifest as manifest
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(manifest, "verify", lambda c: "model.safetensors: size differs" if c.endswith("2") else None)
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run / rundir.CONFIG).write_text("{}")
    monkeypatch.setattr(rundir, "list_checkpoints", lambda d: [os.path.join(d, f"step-0000000{i}") for i in (1, 2)])
    monkeypatch.setattr(align.runlock, "live_holder", lambda p: "host h pid 123 since 10:00")
    with caplog.at_level(logging.WARNING, logger="align"):
        found = rundir.locate(str(run))
    assert found.checkpoint.endswith("step-00000001")
    said = [r.getMessage() for r in caplog.records]
    if rank == "0":
        assert len(said) == 2 and "step-00000002 is damaged" in said[0] and "a run is in progress" in said[1], said
    else:
        assert said == []
