"""Checkpoints: safetensors round trip, atomic replacement, pickles with code refused."""
import os
import pickle

import pytest
import torch

from align.train.checkpoint import (list_checkpoints, load_checkpoint, load_weights, prune_checkpoints,
                              save_checkpoint)
from align.errors import AlignError


class Evil:
    """Unpickling runs `touch MARKER`: whether the code ran is visible afterwards."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_roundtrip_model_optimizer_rng(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    path = save_checkpoint(str(tmp_path), "step-00000001", model.state_dict(), opt, {"step": 1, "epoch": 0})
    expect_rand = torch.rand(3)
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    st = load_checkpoint(path, model2, opt2)
    assert st["step"] == 1
    assert torch.equal(torch.rand(3), expect_rand)           # RNG restored
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert torch.equal(s1[0]["exp_avg"], s2[0]["exp_avg"]) and float(s1[0]["step"]) == float(s2[0]["step"])


def test_a_checkpoint_of_another_architecture_is_one_line_naming_the_tensor(tmp_path):
    """resume=auto into an output_dir that holds a run of another model: one AlignError line, model untouched."""
    path = save_checkpoint(str(tmp_path), "step-00000001", torch.nn.Linear(4, 3).state_dict(), None, {"step": 1})
    other = torch.nn.Linear(5, 3)
    before = other.weight.detach().clone()
    with pytest.raises(AlignError) as e:
        load_checkpoint(path, other)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit" in msg and "weight: [3, 4] saved, [3, 5] in the model" in msg
    assert "1 tensor(s)" in msg and "another output_dir" in msg
    assert torch.equal(other.weight, before)


def test_interrupted_write_leaves_previous_loadable(tmp_path):
    m = torch.nn.Linear(2, 2)
    save_checkpoint(str(tmp_path), "step-00000001", m.state_dict(), None, {"step": 1})
    os.makedirs(tmp_path / ".step-00000002.tmp")            # a write killed half way
    (tmp_path / ".step-00000002.tmp" / "model.safetensors").write_bytes(b"partial")
    found = list_checkpoints(str(tmp_path))
    assert [os.path.basename(p) for p in found] == ["step-00000001"]
    assert load_checkpoint(found[-1], torch.nn.Linear(2, 2))["step"] == 1


def test_prune_keeps_last(tmp_path):
    m = torch.nn.Linear(2, 2)
    for s in range(1, 5):
        save_checkpoint(str(tmp_path), f"step-{s:08d}", m.state_dict(), None, {"step": s})
    prune_checkpoints(str(tmp_path), 2)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000003", "step-00000004"]


def test_pickle_with_code_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"w": Evil(marker)}, f)
    with pytest.raises(AlignError, match="refused to load"):
        load_weights(str(bad))
    assert not marker.exists()
    # the payload is live: an unsafe unpickle of the same file does run it (so the check above can fail)
    with open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_plain_torch_weights_load(tmp_path):
    p = tmp_path / "ok.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    assert torch.equal(load_weights(str(p))["w"], torch.ones(2))


# -- sharded/elastic resume support (issue 14) ---------------------------------------------------------
def test_data_states_of_every_rank_also_for_checkpoints_without_world_size(tmp_path):
    import json as _json
    from align.train.checkpoint import data_states
    m = torch.nn.Linear(2, 2)
    path = save_checkpoint(str(tmp_path), "step-00000001", m.state_dict(), None,
                           {"step": 1, "data": {"r": 0}, "world_size": 1})
    assert data_states(path, load_checkpoint(path)) == [{"r": 0}]
    (tmp_path / "step-00000001" / "rank-1.json").write_text(_json.dumps({"data": {"r": 1}}))
    st = load_checkpoint(path)
    del st["world_size"]                          # written before world_size was recorded
    assert data_states(path, st) == [{"r": 0}, {"r": 1}]


def test_a_leftover_tmp_dir_of_the_same_step_is_replaced_by_the_next_save(tmp_path):
    """A run killed while writing step 2 leaves `.step-00000002.tmp/`; the resumed run saves step 2 again."""
    m = torch.nn.Linear(2, 2)
    leftover = tmp_path / ".step-00000002.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    (leftover / "rank-1.json").write_text("{}")                # a part the new save does not write
    path = save_checkpoint(str(tmp_path), "step-00000002", m.state_dict(), None, {"step": 2})
    assert not leftover.exists() and sorted(os.listdir(path)) == ["manifest.json", "model.safetensors",
                                                                   "rng-0.safetensors", "state.json"]
    m2 = torch.nn.Linear(2, 2)
    assert load_checkpoint(path, m2)["step"] == 2 and torch.equal(m2.weight, m.weight)


@pytest.mark.parametrize("full_on", [0, 1])
def test_a_full_disk_seen_by_one_rank_ends_every_rank_with_one_line_and_no_partial_checkpoint(tmp_path, monkeypatch,
                                                                                              full_on):
    """Two ranks (threads here) write step-2 after step-1; one of them alone gets ENOSPC for its part. Before,
    the failing rank removed the shared .tmp dir at once while rank 0 still wrote into it (rank 1 full: rank 0
    crashed with 'No such file or directory', a bare traceback) or waited in the barrier for it. Now every rank
    finishes its part, they agree, the failing rank raises its own error, the other one line naming it, and
    rank 0 alone removes the partial dir: step-1 stays the newest checkpoint."""
    import errno

    import align.train.checkpoint as ck
    from align.writes import StorageError
    model = torch.nn.Linear(4, 3)
    save_checkpoint(str(tmp_path), "step-00000001", model.state_dict(), state={"step": 1, "world_size": 2})
    doomed = "model.safetensors" if full_on == 0 else "rng-1.safetensors"
    real = ck.save_file

    def save_file(t, path, *a, **k):
        if ".step-00000002.tmp" in path and path.endswith(doomed):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(t, path, *a, **k)
    monkeypatch.setattr(ck, "save_file", save_file)
    raised = _two_ranks_save(tmp_path, model.state_dict(), None)
    other = 1 - full_on
    assert isinstance(raised[full_on], OSError) and raised[full_on].errno == errno.ENOSPC, raised
    assert isinstance(raised[other], StorageError), raised
    line = str(raised[other])
    assert f"rank {full_on} could not write its part" in line and "\n" not in line
    assert line.endswith(os.path.join(str(tmp_path), "step-00000001"))
    assert sorted(os.listdir(tmp_path)) == ["step-00000001"]


def _two_ranks_save(tmp_path, model_sd, sharded):
    """save_checkpoint of step-2 by ranks 0 and 1 (threads, a shared barrier and MAX) -> {rank: what it raised}.
    sharded: None, or a function giving each rank its own (model, optimizer): DCP's state dict initialises an
    optimizer that has not stepped by stepping it, and two threads doing that to one optimizer race (one read
    `exp_avg` the other had not yet made: KeyError, 1 run in ~1,800)."""
    import threading
    gate, codes, raised = threading.Barrier(2, timeout=5), [], {}

    def agree(code):
        codes.append(code)
        gate.wait()
        return max(codes)

    def rank(r):
        try:
            save_checkpoint(str(tmp_path), "step-00000002", model_sd, state={"step": 2}, rank=r, barrier=gate.wait,
                            agree=agree, rank_state={"data": None}, sharded=sharded and sharded())
        except BaseException as exn:
            raised[r] = exn
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    return raised


def test_a_full_disk_in_one_ranks_dcp_shards_is_its_one_line_not_a_checkpoint_exception(tmp_path, monkeypatch):
    """train.sharding=fsdp: DCP raises CheckpointException -- a BaseException, which the full-disk guard never
    saw -- on every rank when rank 1 alone could not write its shards: each rank printed a traceback, exit 1, the
    .tmp dir left. Now rank 1 raises its own OSError (one line, exit 74 in the CLI), rank 0 one line naming rank
    1, and the partial dir is removed."""
    import errno
    import traceback

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from align.writes import StorageError, is_storage_error
    save_checkpoint(str(tmp_path), "step-00000001", torch.nn.Linear(4, 3).state_dict(),
                    state={"step": 1, "world_size": 2})
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "__1_0.distcp")

    def save(*a, **k):
        raise CheckpointException("failed", {1: (full, traceback.StackSummary())})

    def own_model_and_optimizer():
        model = torch.nn.Linear(4, 3)
        return model, torch.optim.AdamW(model.parameters())
    monkeypatch.setattr(dcp, "save", save)
    raised = _two_ranks_save(tmp_path, None, own_model_and_optimizer)
    assert isinstance(raised[1], OSError) and is_storage_error(raised[1]), raised
    assert isinstance(raised[0], StorageError) and "rank 1 could not write its part" in str(raised[0]), raised
    assert sorted(os.listdir(tmp_path)) == ["step-00000001"]


def test_an_older_steps_interrupted_write_is_removed_by_the_next_step_save_and_named(tmp_path, caplog):
    """A run killed writing step 3 and resumed with another checkpoint_every never writes step 3 again: its
    `.step-00000003.tmp` stayed forever. The next successful step save removes interrupted writes of older steps
    (one line naming them); a newer step's and a named checkpoint's stay (a later save of that name replaces them)."""
    m = torch.nn.Linear(2, 2)
    for n in (".step-00000003.tmp", ".step-00000009.tmp", ".best.tmp"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="align.train"):
        save_checkpoint(str(tmp_path), "step-00000004", m.state_dict(), None, {"step": 4})
    assert sorted(os.listdir(tmp_path)) == [".best.tmp", ".step-00000009.tmp", "step-00000004"]
    assert [r.getMessage() for r in caplog.records] == [
        "removed 1 interrupted checkpoint write(s) older than step-00000004 (.step-00000003.tmp; not checkpoints)"]
    caplog.clear()
    save_checkpoint(str(tmp_path), "best", m.state_dict(), None, {"step": 4})   # a named save removes no other
    assert sorted(os.listdir(tmp_path)) == [".step-00000009.tmp", "best", "step-00000004"] and not caplog.records


def _best_replace_killed(tmp_path, monkeypatch):
    """`best` of step 1, then a save of `best` for step 2 killed between its two renames (the old one moved
    aside, the new one not yet in place): what a SIGKILL there leaves."""
    import align.train.checkpoint as ck
    m = torch.nn.Linear(2, 2)
    ckpts = tmp_path / "run" / "checkpoints"
    save_checkpoint(str(ckpts), "step-00000001", m.state_dict(), None, {"step": 1})
    save_checkpoint(str(ckpts), "best", m.state_dict(), None, {"step": 1})
    real = os.replace

    def killed(src, dst):
        if str(src).endswith(".best.tmp"):
            raise KeyboardInterrupt("killed")
        real(src, dst)
    monkeypatch.setattr(ck.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(ckpts), "best", m.state_dict(), None, {"step": 2})
    monkeypatch.setattr(ck.os, "replace", real)
    assert sorted(os.listdir(ckpts)) == [".best.old", ".best.tmp", "step-00000001"]
    return tmp_path / "run", ckpts


def test_a_best_checkpoint_moved_aside_by_a_killed_replace_is_listed_and_restored_at_resume(tmp_path, monkeypatch,
                                                                                            caplog, capsys):
    """`.best.old` (the only complete `best`) was neither listed by `align checkpoints` nor named at resume; now it is
    listed as LEFTOVER and resume=auto renames it back to `best`, saying so in one line."""
    from types import SimpleNamespace
    from align.cli import main
    from align.train.rundir import read_state
    from align.train.setup import resolve_resume
    run, ckpts = _best_replace_killed(tmp_path, monkeypatch)
    assert main(["checkpoints", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if ln.startswith(".best.old")][0].endswith(
        "LEFTOVER: the replaced copy of best, which is missing: resume=auto restores it"), lines
    assert lines[-1] == (f"1 checkpoint(s) in {run}: 1 ok, 0 damaged, 1 partial write(s) ignored, "
                         f"1 replaced copy(ies) left over"), lines
    with caplog.at_level("WARNING", logger="align.train"):
        found = resolve_resume(SimpleNamespace(resume="auto", output_dir=str(run)))
    assert found == str(ckpts / "step-00000001")
    assert sorted(os.listdir(ckpts)) == [".best.tmp", "best", "step-00000001"]
    assert read_state(str(ckpts / "best"))["step"] == 1
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == ("restored checkpoint best from .best.old (a save that replaces it was interrupted between "
                       "its two renames)") and len(said) == 2 and ".best.tmp" in said[1], said


def test_a_replaced_copy_left_beside_its_successor_is_named_and_kept(tmp_path, caplog, capsys):
    """A kill after the new `best` was in place but before `.best.old` was removed: listed, named at resume, kept
    (not the only copy of anything the run reads; the next save of `best` removes it)."""
    from types import SimpleNamespace
    from align.cli import main
    from align.train.setup import resolve_resume
    m = torch.nn.Linear(2, 2)
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    save_checkpoint(str(ckpts), "step-00000001", m.state_dict(), None, {"step": 1})
    save_checkpoint(str(ckpts), "best", m.state_dict(), None, {"step": 1})
    save_checkpoint(str(ckpts), ".best.old", m.state_dict(), None, {"step": 0})
    assert main(["checkpoints", str(run)]) == 0
    out = capsys.readouterr().out
    assert "LEFTOVER: the replaced copy of best (its successor is in place)" in out, out
    with caplog.at_level("WARNING", logger="align.train"):
        resolve_resume(SimpleNamespace(resume="auto", output_dir=str(run)))
    assert [r.getMessage() for r in caplog.records] == [
        "left in place 1 replaced checkpoint copy(ies) (.best.old: a kill after its replacement was in place; the "
        "next save of that name removes it)"]
    assert sorted(os.listdir(ckpts)) == [".best.old", "best", "step-00000001"]
    save_checkpoint(str(ckpts), "best", m.state_dict(), None, {"step": 2})
    assert sorted(os.listdir(ckpts)) == ["best", "step-00000001"]
