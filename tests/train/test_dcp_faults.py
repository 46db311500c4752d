"""train.sharding=fsdp under faults, induced: DCP checkpoints (torch.distributed.checkpoint) that are damaged, cut
short or half-written, a disk that fills during a DCP save, SIGTERM during one, a hung rank, and a resume into
another number of processes.

In-process (fast; FSDP in forked children, gloo groups of one or two over a file store): a damaged shard or a
missing .metadata is named in one line (resume=auto falls back to the previous checkpoint, `align checkpoints` marks
it; without a manifest the load refuses with one line, not DCP's traceback per rank); ENOSPC inside DCP's own write
is one StorageError line with the previous checkpoint intact; a DCP checkpoint of 2 processes loads into 1 and of 1
into 2 with the saved weights and optimizer moments; a SIGTERM that came during a step's save stops the run on that
checkpoint without writing it again. Launched (slow, `pytest -m slow`): SIGTERM during a 2-process DCP save, then
resume on the uninterrupted run's weights; a rank stopped (SIGSTOP) inside FSDP's collectives named in one line.
"""
import contextlib
import errno
import io
import logging
import os
import shutil
import uuid
from types import SimpleNamespace

import pytest
import torch

from align.errors import AlignError
from align.train import rundir
from align.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from tests.train.test_sharding import _in_forked_child, _step, _tiny_model


def _sharded(seed=0):
    from align.train.sharding import shard_model
    torch.manual_seed(seed)
    model = shard_model(_tiny_model())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _two_checkpoints(run):
    """A run dir with DCP checkpoints step-1 and step-2 (a gloo group of one)."""
    model, opt = _sharded()
    ckpts = os.path.join(run, "checkpoints")
    for s in (1, 2):
        _step(model, opt, s)
        save_checkpoint(ckpts, rundir.step_name(s), None, opt, {"step": s, "world_size": 1}, sharded=(model, opt))
    return model, opt, ckpts


def _warnings_of(fn):
    lines = []
    handler = logging.Handler()
    handler.emit = lambda rec: lines.append(rec.getMessage())
    logging.getLogger("align").addHandler(handler)
    try:
        return fn(), lines
    finally:
        logging.getLogger("align").removeHandler(handler)


def _one_line_refusal(fn, match):
    with pytest.raises(AlignError) as e:
        fn()
    assert "\n" not in str(e.value) and match in str(e.value), str(e.value)


def test_a_cut_dcp_shard_or_a_missing_metadata_is_named_in_one_line_and_resume_falls_back(tmp_path):
    _in_forked_child(_damaged, str(tmp_path / "run"))


def _damaged(run):
    from align.cli import main
    model, opt, ckpts = _two_checkpoints(run)
    newest = os.path.join(ckpts, "step-00000002")
    store = os.path.join(newest, "dcp")
    shard = os.path.join(store, sorted(n for n in os.listdir(store) if n.endswith(".distcp"))[0])
    keep = newest + ".copy"
    shutil.copytree(newest, keep)
    with open(shard, "r+b") as f:
        f.truncate(100)                               # a copy cut short
    found, said = _warnings_of(lambda: rundir.newest_checkpoint(run))
    assert found == os.path.join(ckpts, "step-00000001")
    assert len(said) == 1 and shard in said[0] and "100 bytes" in said[0], said
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["checkpoints", run]) == 1
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("step-00000002") and "DAMAGED" in lines[1] and shard in lines[1], lines
    assert lines[-1].endswith("1 ok, 1 damaged (resume=auto carries on from the newest intact one)"), lines
    # Without a manifest to check against (an older align's checkpoint, a bare dcp/ folder): one line naming the
    # file, not DCP's CheckpointException (a BaseException, a traceback per rank, no file named).
    os.remove(os.path.join(newest, "manifest.json"))
    _one_line_refusal(lambda: load_checkpoint(newest, model, opt, sharded=True), f"{shard}: 100 bytes, the DCP")
    _one_line_refusal(lambda: load_weights(store), f"{shard}: 100 bytes")
    size = os.path.getsize(os.path.join(keep, "dcp", os.path.basename(shard)))
    with open(shard, "wb") as f:
        f.write(b"\0" * size)                         # its size kept, its bytes lost: DCP's own read fails
    _one_line_refusal(lambda: load_weights(store), f"{store}: cannot read the DCP checkpoint (rank 0: ")
    shutil.rmtree(newest)
    shutil.copytree(keep, newest)
    shutil.rmtree(keep)
    os.remove(os.path.join(store, ".metadata"))        # the file DCP writes last, lost
    found, said = _warnings_of(lambda: rundir.newest_checkpoint(run))
    assert found == os.path.join(ckpts, "step-00000001") and ".metadata: missing" in said[0], said
    os.remove(os.path.join(newest, "manifest.json"))
    _one_line_refusal(lambda: load_checkpoint(newest, model, opt, sharded=True), ".metadata: cannot read the DCP")
    assert load_checkpoint(os.path.join(ckpts, "step-00000001"), model, opt, sharded=True)["step"] == 1


def test_a_full_disk_inside_dcps_own_write_is_one_storage_line_and_the_previous_checkpoint_stays(tmp_path):
    _in_forked_child(_full_disk, str(tmp_path / "run"))


def _full_disk(run):
    import torch.distributed.checkpoint.filesystem as fs

    from align.train.manifest import verify
    from align.train.storage import checkpoint_write
    from align.writes import StorageError
    model, opt, ckpts = _two_checkpoints(run)
    real = fs._write_item

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    fs._write_item = full
    try:
        with pytest.raises(StorageError) as e:
            with checkpoint_write(ckpts, "step-00000003", True, None):
                save_checkpoint(ckpts, "step-00000003", None, opt, {"step": 3, "world_size": 1}, sharded=(model, opt))
    finally:
        fs._write_item = real
    line = str(e.value)
    assert "\n" not in line and "No space left on device" in line and line.endswith("run the same command to resume")
    assert "the intact checkpoint is " + os.path.join(ckpts, "step-00000002") in line, line
    assert sorted(os.listdir(ckpts)) == ["step-00000001", "step-00000002"]          # no partial .tmp left
    assert verify(os.path.join(ckpts, "step-00000002")) is None


def test_an_interrupted_checkpoint_write_is_named_once_by_resume_and_by_align_checkpoints(tmp_path, capsys):
    """A save that a kill or a full disk interrupted leaves `.step-N.tmp` (a sharded one: every rank's DCP shards
    so far); resume=auto ignored it without a word and `align checkpoints` did not list it (the space it takes
    unexplained). Resume now says one line naming it, `align checkpoints` lists it as PARTIAL."""
    from align.cli import main
    from align.train.setup import resolve_resume
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    save_checkpoint(str(ckpts), "step-00000002", {"w": torch.ones(2)}, state={"step": 2, "world_size": 2})
    os.makedirs(ckpts / ".step-00000004.tmp" / "dcp")
    (ckpts / ".step-00000004.tmp" / "dcp" / "__1_0.distcp").write_bytes(b"\0" * 1000)
    found, said = _warnings_of(lambda: resolve_resume(SimpleNamespace(resume="auto", output_dir=str(run))))
    assert found == str(ckpts / "step-00000002")
    assert said == ["ignored 1 unfinished checkpoint write(s) (.step-00000004.tmp: a save interrupted by a kill, a "
                    "full disk or a crash; not checkpoints); resuming from step-00000002"], said
    assert main(["checkpoints", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(".step-00000004.tmp") and "PARTIAL: an interrupted write" in lines[1], lines
    assert lines[-1] == f"1 checkpoint(s) in {run}: 1 ok, 0 damaged, 1 partial write(s) ignored", lines


# -- elastic: a DCP checkpoint of 2 processes into 1, and of 1 into 2 -----------------------------------------
def _in_forked_ranks(fn, world, *args):
    """fn(rank, *args) in `world` forked children joined in one gloo group (a file store); each one's failure here."""
    import multiprocessing as mp
    import traceback
    ctx = mp.get_context("fork")
    store = os.path.join(args[0], f".store-{uuid.uuid4().hex}")     # one a group: a used one's keys would hang it

    def child(rank, send):
        try:
            import torch.distributed as dist
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
            fn(rank, *args)
            dist.destroy_process_group()
            send.send(None)
        except BaseException:   # noqa: BLE001  handed to the parent
            send.send(traceback.format_exc())
    pipes, procs = [], []
    for rank in range(world):
        recv, send = ctx.Pipe(duplex=False)
        procs.append(ctx.Process(target=child, args=(rank, send)))
        procs[-1].start()
        send.close()
        pipes.append(recv)
    errs = []
    for recv, p in zip(pipes, procs):
        try:
            errs.append(recv.recv() if recv.poll(300) else "no answer in 300 s")
        except EOFError:
            errs.append("died without an answer")
        if p.is_alive():
            p.kill()
        p.join()
    assert errs == [None] * world, "\n".join(e for e in errs if e)


def _full_state(model, opt) -> dict:
    """Every weight and AdamW moment as a whole tensor (collective)."""
    out = {f"w.{k}": v.full_tensor().clone() for k, v in model.state_dict().items()}
    for i, st in sorted(opt.state_dict()["state"].items()):
        out.update({f"o.{i}.{k}": st[k].full_tensor().clone() for k in ("exp_avg", "exp_avg_sq")})
    return out


def _train_save(rank, tmp, step):
    """Load the previous checkpoint when there is one, train a step, save step `step` and the whole state."""
    import torch.distributed as dist
    model, opt = _sharded(seed=step)
    ckpts = os.path.join(tmp, "checkpoints")
    if step > 1:
        prev = os.path.join(ckpts, rundir.step_name(step - 1))
        load_checkpoint(prev, model, opt, rank=rank, sharded=True, restore_rng=False)
        saved = torch.load(os.path.join(tmp, f"full-{step - 1}.pt"))
        got = _full_state(model, opt)
        assert saved.keys() == got.keys()
        for k in saved:                            # resharded to this world size: the very same values
            assert torch.equal(saved[k], got[k]), k
    _step(model, opt, step)
    save_checkpoint(ckpts, rundir.step_name(step), None, opt, {"step": step, "world_size": dist.get_world_size()},
                    rank=rank, barrier=dist.barrier, sharded=(model, opt))
    full = _full_state(model, opt)
    if rank == 0:
        torch.save(full, os.path.join(tmp, f"full-{step}.pt"))


# Slow (~30 s on a loaded 2-core machine: five forked FSDP processes in three gloo groups); the default suite
# round-trips a DCP checkpoint in a group of one (test_sharding.py), whose launched 2->1 resume is slow too.
@pytest.mark.slow
def test_a_dcp_checkpoint_of_2_processes_resumes_in_1_and_of_1_in_2_with_the_saved_weights_and_moments(tmp_path):
    _in_forked_ranks(_train_save, 2, str(tmp_path), 1)     # saved by 2
    _in_forked_ranks(_train_save, 1, str(tmp_path), 2)     # loaded (checked) and saved by 1
    _in_forked_ranks(_train_save, 2, str(tmp_path), 3)     # loaded (checked) by 2


# -- SIGTERM during a save -------------------------------------------------------------------------------------
def test_a_sigterm_during_the_steps_own_save_stops_on_that_checkpoint_without_writing_it_again(monkeypatch):
    """A SIGTERM that arrives during step N's checkpoint write (a DCP save of a large model takes minutes) was
    honoured at the step boundary by writing step N a second time: twice the time in the scheduler's grace
    period, and a SIGKILL in it lost nothing only by luck. The checkpoint just written is the one to resume from."""
    from align.train import setup
    from align.train.guard import Preempted
    saved = []
    monkeypatch.setattr(setup, "save", lambda *a, **k: saved.append(a) or "/run/checkpoints/step-00000005")
    eng = SimpleNamespace(watch=SimpleNamespace(collective=contextlib.nullcontext))
    preempt = SimpleNamespace(agreed=lambda _reduce: True, name=lambda: "SIGTERM")
    log = SimpleNamespace(elapsed=lambda: 1.0, close_bar=lambda: None)
    state = SimpleNamespace(step=4, elapsed_s=0.0)
    just = "/run/checkpoints/step-00000004"
    with pytest.raises(Preempted, match=f"at step 4, checkpoint written to {just};"):
        setup.stop_if_preempted(eng, state, None, None, log, preempt, written=just)
    assert saved == []
    state.step = 5                                              # signalled between checkpoints: written here
    with pytest.raises(Preempted, match="at step 5, checkpoint written to /run/checkpoints/step-00000005;"):
        setup.stop_if_preempted(eng, state, None, None, log, preempt, written=just)
    assert len(saved) == 1


# -- launched: 2 processes over gloo, train.sharding=fsdp (slow: ~40 s a launch on a loaded 2-core machine) ------
@pytest.fixture(scope="module")
def fsdp_ref(tmp_path_factory):
    """One uninterrupted 2-process FSDP run of 6 steps (DCP checkpoints every 2), shared by the tests below."""
    from tests.train.test_train_multiprocess import reference_run
    return reference_run(tmp_path_factory, "fsdp-ref", max_steps=6, sharding="fsdp")


@pytest.mark.slow
def test_sigterm_during_a_two_process_dcp_save_stops_on_that_checkpoint_and_resume_matches(fsdp_ref, tmp_path):
    """Rank 1 alone gets SIGTERM while DCP writes step 4 (its shards written): the save completes on both ranks,
    each says one line and stops on step-00000004 (no partial dir left); resume=auto ends on the uninterrupted
    run's weights. Three launches (~2 min here)."""
    from tests.train.test_train_multiprocess import assert_same_weights, final_weights, launch, write_recipe
    base, ref = fsdp_ref
    path = write_recipe(base, tmp_path, "term")
    writes = tmp_path / "writes"                  # a line each time rank 1 writes its part of step-00000004
    res = launch(path, {"ALIGN_TEST_SIGTERM_IN_SAVE": "step-00000004", "ALIGN_TEST_SIGKILL_RANK": "1",
                        "ALIGN_TEST_KILL_STAMP": str(writes)})
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("align: ") and ": preempted (SIGTERM" in ln]
    assert len(lines) == 2 and all(" at step 4, checkpoint written to " in ln for ln in lines), out[-3000:]
    step4 = tmp_path / "term" / "checkpoints" / "step-00000004"
    assert all(f"written to {step4};" in ln for ln in lines), lines
    # no traceback of align's (torchrun adds its own ChildFailedError report of rank 0's exit 75: the launcher
    # itself was not signalled)
    assert "align/train/" not in out and "CheckpointException" not in out, out[-3000:]
    assert writes.read_text() == "1 step-00000004\n"          # written once: not again at the step boundary
    assert sorted(os.listdir(tmp_path / "term" / "checkpoints")) == ["step-00000002", "step-00000004"]
    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "resumed from" in out and "step-00000004" in out, out[-2000:]
    assert_same_weights(final_weights(ref, 6), final_weights(tmp_path / "term", 6))


@pytest.mark.slow
def test_a_rank_stopped_inside_fsdps_collectives_is_named_and_resume_carries_on(fsdp_ref, tmp_path):
    """Rank 1 stops (SIGSTOP) after step 3; rank 0 waits in the next step's FSDP all-gather. Its watchdog names
    rank 1 in one line within train.dist_timeout_s, the launch ends (exit HUNG_EXIT on rank 0), and resume=auto
    from step-00000002 ends on the uninterrupted run's weights. Two launches (~1.5 min here)."""
    from align.train.guard import HUNG_EXIT
    from tests.train.test_faults_multiprocess import MARGIN_S, SHUTDOWN_GRACE_S, _stopped_launch
    from tests.train.test_train_multiprocess import assert_same_weights, final_weights, launch, write_recipe
    base, ref = fsdp_ref
    path = write_recipe(base, tmp_path, "hung", dist_timeout_s=10)
    proc, out, took = _stopped_launch(path, tmp_path / "stopped", {"ALIGN_TEST_SIGSTOP_AT_STEP": "3",
                                                                   "ALIGN_TEST_SIGKILL_RANK": "1"})
    print(f"fsdp launch ended {took:.1f}s after rank 1 stopped; exit {proc.returncode}")
    lines = [ln for ln in out.splitlines() if "made no progress" in ln]
    assert proc.returncode != 0 and len(lines) == 1, out[-3000:]
    assert lines[0].startswith("align: error: rank 1 on host ") and "(last step 3)" in lines[0], lines[0]
    assert f"exitcode  : {HUNG_EXIT}" in out and took < 10 + SHUTDOWN_GRACE_S + MARGIN_S
    resumed = launch(path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "resumed from" in out and "step-00000002" in out, out[-2000:]
    assert_same_weights(final_weights(ref, 6), final_weights(tmp_path / "hung", 6))
