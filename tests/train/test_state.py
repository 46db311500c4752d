"""align/train/state.py: TrainState owns the counters a checkpoint saves; "step" counts optimizer steps only.

The on-disk names are those of the dict the loop used before TrainState (a golden list below), so checkpoints
written before it resume; a NaN/Inf step advances neither the step count nor the schedule.
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from align.errors import AlignError
from align.train import rundir
from align.train.state import TrainState
from tests.switch_helpers import Spy, checkpoints, metrics, recipe, train_dict

# The keys state.json has held since before TrainState (align/train.py's `state` dict and its save()).
STATE_JSON_KEYS = {"step", "epoch", "data", "bad_steps_total", "elapsed_s", "samples", "best", "data_wait_s",
                   "scheduler", "world_size", "global_batch", "scaler", "rng", "sharded"}


def test_from_checkpoint_takes_the_saved_counters_and_ignores_the_rest():
    saved = {"step": 7, "epoch": 1, "samples": 56, "bad_steps_total": 2, "elapsed_s": 3.5, "best": 0.25,
             "data": {"x": 1}, "scheduler": {}, "rng": {}, "something_new": 1}
    st = TrainState.from_checkpoint(saved)
    assert (st.step, st.epoch, st.samples, st.bad_steps_total, st.elapsed_s, st.best, st.data_wait_s,
            st.bad_in_row) == (7, 1, 56, 2, 3.5, 0.25, 0.0, 0)
    assert TrainState.from_checkpoint({"step": 3}) == TrainState(step=3)        # the oldest: counters default
    out = st.to_checkpoint(data={"x": 2})
    assert out["data"] == {"x": 2} and "bad_in_row" not in out and out["step"] == 7


def test_record_step_counts_only_optimizer_steps_and_stops_after_max_bad_steps():
    st = TrainState()
    assert st.record_step(True, 16, 3, None) and (st.step, st.samples) == (1, 16)
    assert not st.record_step(False, 16, 3, None) and (st.step, st.samples, st.bad_steps_total) == (1, 16, 1)
    assert st.record_step(True, 16, 3, None) and (st.step, st.bad_in_row) == (2, 0)
    st.record_step(False, 16, 3, "ck")
    st.record_step(False, 16, 3, "ck")
    with pytest.raises(AlignError, match=r"NaN/Inf for 3 steps in a row .* last good checkpoint: ck"):
        st.record_step(False, 16, 3, "ck")
    assert st.step == 2 and st.bad_steps_total == 4


def test_checkpoint_written_before_train_state_resumes_bitwise(tmp_path):
    """state.json keeps its keys; one holding only the keys of the oldest checkpoints (no world_size,
    global_batch, data_wait_s, best, sharded flag) resumes to the same weights as the uninterrupted run."""
    base = recipe(tmp_path, "ref", resume="auto", train={"max_steps": 4, "checkpoint_every": 2})
    train_dict(base)
    ref = load_file(os.path.join(base["output_dir"], "checkpoints", "step-00000004", rundir.MODEL))
    ck = os.path.join(base["output_dir"], "checkpoints", "step-00000002")
    state = json.load(open(os.path.join(ck, rundir.STATE)))
    assert set(state) == STATE_JSON_KEYS
    old = {k: state[k] for k in ("step", "epoch", "data", "bad_steps_total", "elapsed_s", "samples",
                                 "scheduler", "scaler", "rng")}
    run = tmp_path / "old"
    os.makedirs(run / "checkpoints")
    import shutil
    shutil.copytree(ck, run / "checkpoints" / "step-00000002")
    json.dump(old, open(run / "checkpoints" / "step-00000002" / rundir.STATE, "w"))
    os.remove(run / "checkpoints" / "step-00000002" / "manifest.json")   # the oldest checkpoints had none
    train_dict(dict(base, output_dir=str(run)))
    assert checkpoints(str(run)) == ["step-00000002", "step-00000004"]
    got = load_file(os.path.join(run, "checkpoints", "step-00000004", rundir.MODEL))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_nan_step_advances_neither_the_step_nor_the_schedule(tmp_path, monkeypatch):
    """The second training forward gives a NaN temperature: that step is skipped, and the run still takes
    max_steps optimizer steps; step count, schedule, logged rows and the checkpoint agree on what a step is."""
    from align.model import AlignModel
    spy = Spy(monkeypatch)
    spied_forward, calls = AlignModel.forward, []

    def forward(model, batch):
        out = spied_forward(model, batch)
        if model.training and torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 2:
                out = dict(out, logit_scale=out["logit_scale"] * float("nan"))
        return out
    monkeypatch.setattr(AlignModel, "forward", forward)
    r = recipe(tmp_path, "nan", train={"max_steps": 4, "max_bad_steps": 2, "log_every": 1, "checkpoint_every": 4})
    summary = train_dict(r)
    assert len(calls) == 5 and len(spy.steps) == 4                  # 5 attempts, 4 optimizer steps
    assert summary["steps"] == 4 and summary["bad_steps"] == 1
    rows = metrics(r["output_dir"])
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and rows[-1]["bad_steps"] == 1
    state = json.load(open(os.path.join(r["output_dir"], "checkpoints", "step-00000004", rundir.STATE)))
    assert state["step"] == state["scheduler"]["last_epoch"] == 4 and state["samples"] == 4 * 8
    # each step's lr is the schedule's at that step, as in a run without the NaN: the skipped attempt moved nothing
    lrs = [s["groups"][0]["lr"] for s in spy.steps]
    spy.steps.clear()
    monkeypatch.setattr(AlignModel, "forward", spied_forward)
    train_dict(recipe(tmp_path, "ref", train={"max_steps": 4, "log_every": 1, "checkpoint_every": 0}))
    assert lrs == [s["groups"][0]["lr"] for s in spy.steps]


def test_resume_restores_the_rng_states_the_checkpoint_saved(tiny_recipe):
    """restore_rng puts back torch's, Python's and numpy's RNGs as the checkpoint saved them (the tiny models
    draw nothing random after resuming, so only a direct check sees a resume that forgot them)."""
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from align.train.checkpoint import set_rng_state
    from align.train.setup import restore_rng
    from tests.train.test_train import _run
    assert _run(tiny_recipe) == 0
    ckpt = rundir.newest_checkpoint(tiny_recipe["output_dir"])
    set_rng_state(load_file(os.path.join(ckpt, rundir.rng_file(0))),
                  json.load(open(os.path.join(ckpt, rundir.STATE)))["rng"])
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    scrambled = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    restore_rng(SimpleNamespace(rank=0, acc=SimpleNamespace(print=lambda *a: None)), ckpt, SimpleNamespace(step=6))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]
    assert not torch.equal(got[0], scrambled[0])


def test_a_nan_metric_is_never_the_best_and_does_not_make_later_ones_best():
    """One process gets the evaluation's NaN as it is (StepWatch.share passes it through; other ranks get None):
    it must not replace the best (checkpoints/best would be overwritten by the model that scored NaN) nor make
    the next metric a best whatever its value."""
    st = TrainState()
    assert st.improves(float("nan")) is False and st.best is None
    assert st.improves(0.5) is True and st.best == 0.5
    assert st.improves(float("nan")) is False and st.best == 0.5
    assert st.improves(0.4) is False and st.improves(None) is False and st.best == 0.5
    assert st.improves(0.6) is True and st.best == 0.6


def test_the_cuda_rng_states_go_back_to_their_own_devices_on_a_node_of_twelve_gpus(monkeypatch):
    """Saved as torch_cuda_0..11 and put back in device order: sorted by name, device 2 got device 10's state."""
    import torch

    from align.train.checkpoint import rng_state, set_rng_state
    states = [torch.full((8,), i, dtype=torch.uint8) for i in range(12)]
    put = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: put.extend(s))
    set_rng_state(*rng_state())
    assert [int(s[0]) for s in put] == list(range(12))
