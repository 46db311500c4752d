"""Training loop: runs, logs, and resumes exactly after SIGKILL (bitwise on CPU, one process)."""
import gc
import json
import multiprocessing as mp
import os
import signal

import open_clip  # noqa: F401  imported once here, so the forked training runs do not pay for it
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter  # noqa: F401
from safetensors.torch import load_file

from align.config import parse_recipe
from align.errors import AlignError
from align.train.loop import train


def _run(recipe_dict, kill_at=None):
    """Trains in a forked child (optionally SIGKILLed after step `kill_at`); returns its exit code."""
    def child():
        if kill_at:
            os.environ["ALIGN_TEST_SIGKILL_AT_STEP"] = str(kill_at)
        torch.set_num_threads(1)
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(True)  # a fresh process's state, not the one forked from pytest
        train(parse_recipe(recipe_dict), progress=False)
    # Collect garbage here, not in the child: an unreachable object of a native library (e.g. an
    # onnxruntime session left by an export test) destroyed in a forked child can wait forever on
    # its thread pool, whose threads the child does not have.
    gc.collect()
    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join()
    return p.exitcode


def _final_weights(run_dir):
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    return load_file(os.path.join(run_dir, "checkpoints", ckpts[-1], "model.safetensors"))


def test_metrics_and_summary(tiny_recipe):
    assert _run(tiny_recipe) == 0
    out = tiny_recipe["output_dir"]
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for k in ("step", "epoch", "loss", "lr", "logit_scale", "samples_per_s", "data_wait_frac"):
        assert k in rows[0]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["steps"] == 6 and summary["samples_per_s"] > 0 and summary["mfu"] > 0
    assert os.path.isfile(os.path.join(out, "config.yaml")) and os.path.isfile(os.path.join(out, "loss.png"))
    # the per-pair loss (one pair here: it is the total), in metrics.jsonl and, through Accelerate's
    # TensorBoard tracker, in output_dir/tb
    assert all(abs(r["loss/image-text"] - r["loss"]) < 1e-5 for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(os.path.join(out, "tb")).Reload()
    assert {"train/loss", "train/loss/image-text", "train/lr"} <= set(tb.Tags()["scalars"])
    assert [e.step for e in tb.Scalars("train/loss/image-text")] == [2, 4, 6]
    # killed after its final checkpoint, before its summary: the rerun takes no step, and its final loss is the
    # one logged at step 6 (it was NaN)
    os.remove(os.path.join(out, "summary.json"))
    assert _run(tiny_recipe) == 0
    again = json.load(open(os.path.join(out, "summary.json")))
    assert again["steps"] == 6 and again["final_loss"] == rows[-1]["loss"] == summary["final_loss"]


# Slow (four `align train` processes): tests/train/test_train_resume_shards.py kills and resumes twice on shards,
# with and without data workers, in the default suite.
@pytest.mark.slow
def test_sigkill_twice_then_resume_is_bitwise_identical(tiny_recipe, tmp_path):
    ref = dict(tiny_recipe, output_dir=str(tmp_path / "ref"))
    ref["train"] = dict(tiny_recipe["train"], max_steps=8, checkpoint_every=2)
    assert _run(ref) == 0
    run = dict(ref, output_dir=str(tmp_path / "killed"))
    assert _run(run, kill_at=3) == -signal.SIGKILL      # dies after step 3 (checkpoint at 2)
    assert _run(run, kill_at=6) == -signal.SIGKILL      # resumes at 2, dies after 6 (checkpoint at 6)
    assert _run(run) == 0                               # resumes at 6, finishes
    a, b = _final_weights(ref["output_dir"]), _final_weights(run["output_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_skipped_then_stops(tiny_recipe, capsys):
    """Each skipped attempt is said in one line (before, only the JSON files knew); the third stops the run."""
    tiny_recipe["model"]["init_logit_scale"] = float("nan")
    tiny_recipe["train"]["max_bad_steps"] = 3
    with pytest.raises(AlignError, match=r"NaN/Inf for 3 steps in a row .* last good checkpoint"):
        train(parse_recipe(tiny_recipe), progress=False)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "skipped without an update" in ln]
    assert said == [f"step 1: loss NaN/Inf, skipped without an update ({n} in a row; the run stops at "
                    f"train.max_bad_steps=3)" for n in (1, 2)], said


def test_gradcache_accumulation_trains(tiny_recipe):
    """accum_steps > 1 goes through GradCache (every accumulated sample is a negative) and learns."""
    tiny_recipe["train"].update(accum_steps=2, batch_size=4, max_steps=4, checkpoint_every=0, log_every=1)
    summary = train(parse_recipe(tiny_recipe), progress=False)
    assert summary["steps"] == 4 and summary["final_loss"] == summary["final_loss"]   # finite, not NaN
    rows = [json.loads(l) for l in open(os.path.join(tiny_recipe["output_dir"], "metrics.jsonl"))]
    assert len(rows) == 4 and all(r["samples_per_s"] > 0 for r in rows)


def test_wandb_logging_when_enabled(tiny_recipe, monkeypatch):
    """train.wandb_project logs every metrics row to wandb (a stand-in module records the calls)."""
    import sys
    import types
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        summary = {}

        def log(self, row, step):
            calls["log"].append((step, row))

        def finish(self):
            calls["finish"] += 1

    import importlib.machinery
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)   # libraries probe find_spec("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tiny_recipe["train"].update(wandb_project="align-test", checkpoint_every=0)
    train(parse_recipe(tiny_recipe), progress=False)
    assert calls["init"][0]["project"] == "align-test" and calls["finish"] == 1
    assert [s for s, _ in calls["log"]] == [2, 4, 6] and "train/loss" in calls["log"][0][1]
    assert "train/loss/image-text" in calls["log"][0][1] and Run.summary["steps"] == 6


def test_wandb_missing_is_one_line(tiny_recipe, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "wandb", None)      # import wandb -> ImportError
    tiny_recipe["train"]["wandb_project"] = "x"
    with pytest.raises(AlignError, match="pip install wandb"):
        train(parse_recipe(tiny_recipe), progress=False)


def _losses(run_dir):
    return [json.loads(l)["loss"] for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def _variant(tiny_recipe, tmp_path, name, **train):
    r = dict(tiny_recipe, output_dir=str(tmp_path / name))
    r["train"] = dict(tiny_recipe["train"], max_steps=4, log_every=1, checkpoint_every=0, **train)
    return r


def test_grad_checkpointing_trains_to_the_same_weights(tiny_recipe, tmp_path):
    plain, ckpt = _variant(tiny_recipe, tmp_path, "plain"), _variant(tiny_recipe, tmp_path, "ckpt",
                                                                      grad_checkpointing=True)
    assert _run(plain) == 0 and _run(ckpt) == 0
    a, b = _final_weights(plain["output_dir"]), _final_weights(ckpt["output_dir"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_bf16_autocast_runs_on_cpu(tiny_recipe, tmp_path):
    fp32, bf16 = _variant(tiny_recipe, tmp_path, "fp32"), _variant(tiny_recipe, tmp_path, "bf16", precision="bf16")
    assert _run(fp32) == 0 and _run(bf16) == 0
    a, b = _losses(fp32["output_dir"]), _losses(bf16["output_dir"])
    assert a != b                                             # autocast really ran in bfloat16
    assert all(abs(x - y) < 0.05 for x, y in zip(a, b))       # ... and trained the same model


@pytest.mark.skipif(torch.cuda.is_available(), reason="assumes no CUDA: fp16 is refused only without a GPU")
def test_fp16_is_refused_without_a_gpu(tiny_recipe, tmp_path):
    fp16 = _variant(tiny_recipe, tmp_path, "fp16", precision="fp16")
    with pytest.raises(AlignError, match="fp16 needs a GPU"):
        train(parse_recipe(fp16), progress=False)


@pytest.mark.slow  # inductor compiles for ~50 s on 2 CPU cores
def test_torch_compile_trains_like_eager(tiny_recipe, tmp_path):
    eager, comp = _variant(tiny_recipe, tmp_path, "eager"), _variant(tiny_recipe, tmp_path, "comp", compile=True)
    assert _run(eager) == 0 and _run(comp) == 0
    for x, y in zip(_losses(eager["output_dir"]), _losses(comp["output_dir"])):
        assert abs(x - y) < 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="assumes no CUDA: with GPUs Accelerate can honour the launch")
@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharded_launch_that_accelerate_cannot_honour_is_refused(tiny_recipe, monkeypatch, flag):
    monkeypatch.setenv(flag, "true")  # what `accelerate launch --use_fsdp / --use_deepspeed` sets
    with pytest.raises(AlignError, match="needs CUDA|DeepSpeed is not installed"):
        train(parse_recipe(tiny_recipe), progress=False)


def test_max_steps_and_epochs_both_set_says_which_one_stops_the_run(tiny_recipe):
    from align.train.setup import _total_steps
    said = []
    tiny_recipe["train"]["epochs"] = 5                         # 256 samples / batch 8 = 32 steps an epoch
    r = parse_recipe(tiny_recipe)
    assert _total_steps(r, 1, said.append) == 6
    assert len(said) == 1 and "max_steps=6 and epochs=5" in said[0] and "max_steps=null" in said[0]
    tiny_recipe["train"]["max_steps"] = None                     # as `train.max_steps=null` on the command line
    said.clear()
    assert _total_steps(parse_recipe(tiny_recipe), 1, said.append) == 5 * 32 and said == []
