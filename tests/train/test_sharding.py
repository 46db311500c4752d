"""train.sharding=fsdp (torch FSDP2 over gloo, 2 CPU processes) against DDP, DCP checkpoints, elastic resume.

In-process (fast): FSDP units per tower block, a sharded checkpoint round trip in a group of one, the
DCP reader refusing a metadata file that carries code. Launched (slow): FSDP vs DDP parity, export and
align.load from a DCP checkpoint, a kill in the middle of a checkpoint write, and elastic resume 2->1
(fsdp, global batch kept) and 1->2 (ddp, global batch doubled) with the sample keys of the epoch compared
against an uninterrupted run.
"""
import json
import os
import pickle
import shutil
from collections import Counter

import pytest
import torch

from align.train.checkpoint import list_checkpoints, load_checkpoint, load_dcp_tensors, load_weights, save_checkpoint
from align.config import parse_recipe
from align.errors import AlignError
from align.model import build_model
from tests.conftest import TINY_OPEN_CLIP
from tests.train.test_train_multiprocess import (EXIT_BOUND_S, assert_same_weights, final_weights, killed_launch, launch,
                                           write_recipe)
from tests.wds_helpers import make_shards


def _tiny_model():
    return build_model(parse_recipe({"output_dir": "/tmp/x", "train": {"max_steps": 1},
                                     "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)}}).model)


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    b = {m: t.dummy_input(4) + 0.1 * torch.randn(t.dummy_input(4).shape, generator=g)
         if t.dummy_input(4).is_floating_point() else t.dummy_input(4) for m, t in model.towers.items()}
    out = model(b)
    (out["image"] @ out["text"].T * out["logit_scale"]).logsumexp(-1).mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)          # as train.grad_clip does, on DTensors
    opt.step()
    opt.zero_grad()


def _in_forked_child(fn, *args):
    """Runs fn in a forked child and re-raises its failure here. An FSDP backward starts autograd threads that
    a later fork (the training tests fork their runs) cannot inherit, so it must not run in pytest's process."""
    import gc
    import multiprocessing as mp
    import traceback
    # Collect garbage here, not in the child: an onnxruntime session an earlier test left unreachable (an export's
    # parity check) destroyed in the forked child waits forever on its thread pool, which the child does not have
    gc.collect()
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            torch.set_num_threads(1)   # the parent's OpenMP pool does not survive the fork (a child using it hangs)
            fn(*args)
            send.send(None)
        except BaseException:   # noqa: BLE001  handed to the parent
            send.send(traceback.format_exc())
    p = ctx.Process(target=child)
    p.start()
    send.close()                # ours: a child that dies (a segfault) then ends the wait at once, with EOFError
    try:
        err = recv.recv() if recv.poll(300) else "child gave no answer in 300 s"
    except EOFError:
        p.join(10)
        err = f"child died without an answer (exit code {p.exitcode})"
    if p.is_alive():
        p.kill()
    p.join()
    assert err is None, err


def test_blocks_are_fsdp_units_and_dcp_checkpoint_round_trips(tmp_path):
    _in_forked_child(_round_trip, tmp_path)


def _round_trip(tmp_path):
    import torch.distributed as dist
    from align.train.sharding import blocks, is_sharded, shard_model
    model = _tiny_model()
    names = [n for n, _ in blocks(model)]
    assert names == ["towers.image.net.transformer.resblocks.0", "towers.text.net.transformer.resblocks.0"]
    shard_model(model)                                   # no launch: a gloo group of one
    assert is_sharded(model) and all(is_sharded(dict(model.named_modules())[n]) for n in names)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _step(model, opt, 0)
    path = save_checkpoint(str(tmp_path), "step-00000001", None, opt, {"step": 1, "world_size": 1},
                           sharded=(model, opt))
    assert list_checkpoints(str(tmp_path)) == [path] and not os.path.exists(tmp_path / ".step-00000001.tmp")
    other = _tiny_model()
    shard_model(other)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    _step(other, opt2, 1)                                # different state, to be overwritten
    assert load_checkpoint(path, other, opt2, sharded=True)["step"] == 1
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a.full_tensor(), b.full_tensor(), msg=k)
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[i][k].full_tensor(), sb[i][k].full_tensor())
    # The full weights, gathered in one process, load into a plain model (scalars back to 0-dim).
    plain = _tiny_model()
    plain.load_state_dict(load_weights(os.path.join(path, "dcp")))
    torch.testing.assert_close(plain.logit_scale, model.logit_scale.full_tensor().reshape(()))
    with pytest.raises(AlignError, match="same train.sharding"):
        load_checkpoint(path, _tiny_model())
    dist.destroy_process_group()


def test_a_sharded_siglip_model_steps_like_the_plain_one_with_and_without_gradcache():
    _in_forked_child(_sharded_siglip_steps)


def _sharded_siglip_steps():
    """FSDP2 stores logit_scale/logit_bias as [1]: forward returned them so, and the bias as the unsharded
    parameter itself, whose storage FSDP frees when forward ends. GradCache refused the [1] scale ("embeddings
    disagree on batch size") and the SigLIP loss read the freed bias (a segfault, or garbage)."""
    import copy

    import torch.distributed as dist
    from align.losses import build_loss
    from align.train.gradcache import gradcache_step
    from align.train.sharding import full_value, shard_model
    plain = build_model(parse_recipe({"output_dir": "/tmp/x", "train": {"max_steps": 1}, "loss": {"type": "siglip"},
                                      "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP),
                                                "init_logit_bias": -2.0}}).model)
    sharded = shard_model(copy.deepcopy(plain))          # no launch: a gloo group of one
    loss = build_loss("siglip", [["image", "text"]])

    def fn(f, masks):
        return loss(f, masks, f["logit_scale"], f["logit_bias"])[0]
    g = torch.Generator().manual_seed(0)
    batch = {m: t.dummy_input(4) + 0.1 * torch.randn(t.dummy_input(4).shape, generator=g)
             if t.dummy_input(4).is_floating_point() else t.dummy_input(4) for m, t in plain.towers.items()}
    fn(plain(batch), None).backward()
    for step in ("plain", "gradcache"):
        sharded.zero_grad()
        if step == "plain":
            fn(sharded(batch), None).backward()
        else:
            gradcache_step(sharded, [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}], fn)
        for (k, p), q in zip(plain.named_parameters(), sharded.parameters()):
            err = (full_value(q.grad).reshape(p.shape) - p.grad).abs().max().item()   # fp32: relative to the largest
            assert err <= 1e-5 * p.grad.abs().max().item() + 1e-7, (step, k, err)
    dist.destroy_process_group()


def test_dcp_metadata_with_code_is_refused(tmp_path):
    d = tmp_path / "dcp"
    d.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    (d / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(AlignError, match="refused to read the DCP metadata"):
        load_weights(str(d))


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


@pytest.mark.slow
def test_fsdp_matches_ddp_then_export_and_load_read_the_sharded_checkpoint(tiny_recipe, tmp_path):
    base = dict(tiny_recipe)
    base["data"] = dict(base["data"], synthetic_size=512)
    base["train"] = dict(base["train"], max_steps=6, checkpoint_every=3, log_every=1)
    runs = {}
    for sharding in ("ddp", "fsdp"):
        res = launch(write_recipe(base, tmp_path, sharding, sharding=sharding))
        assert res.returncode == 0, res.stderr[-3000:]
        runs[sharding] = tmp_path / sharding
    assert os.path.isfile(runs["fsdp"] / "checkpoints" / "step-00000006" / "dcp" / ".metadata")
    ld, lf = _metrics(runs["ddp"]), _metrics(runs["fsdp"])
    assert [m["step"] for m in lf] == list(range(1, 7))
    # Tolerance: same fp32 math, but FSDP reduce-scatters gradients where DDP all-reduces them.
    for a, b in zip(ld, lf):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    assert_same_weights(final_weights(runs["ddp"], 6), final_weights(runs["fsdp"], 6), rtol=1e-5, atol=1e-5)
    import align
    from align.export import export
    model = align.load(str(runs["fsdp"]))
    assert_same_weights(dict(model.state_dict()), final_weights(runs["ddp"], 6), rtol=1e-5, atol=1e-5)
    out = export(str(runs["fsdp"] / "checkpoints" / "step-00000006"), str(tmp_path / "export"), progress=False)
    assert "open_clip" in out["formats"]


@pytest.mark.slow
def test_fsdp_with_ema_matches_ddp_with_ema_and_a_resumed_run_continues_the_average(tiny_recipe, tmp_path):
    from align.train.sharding import unshard_shapes
    base = dict(tiny_recipe)
    base["data"] = dict(base["data"], synthetic_size=512)
    base["train"] = dict(base["train"], max_steps=6, checkpoint_every=3, log_every=1, ema=0.7)
    for name in ("ddp", "fsdp"):
        res = launch(write_recipe(base, tmp_path, name, sharding=name))
        assert res.returncode == 0, res.stderr[-3000:]
    cut = write_recipe(base, tmp_path, "cut", sharding="fsdp")          # rank 1 SIGKILLed at step 5: resume at 3
    res, _ = killed_launch(cut, tmp_path / "stamp", {"ALIGN_TEST_SIGKILL_AT_STEP": "5", "ALIGN_TEST_SIGKILL_RANK": "1"})
    assert res.returncode != 0
    resumed = launch(cut)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "no weight average" not in resumed.stdout
    dcp_dir = str(tmp_path / "fsdp" / "checkpoints" / "step-00000006" / "dcp")
    avg, trained = (unshard_shapes(load_dcp_tensors(dcp_dir, p)) for p in ("ema.", "model."))
    assert avg.keys() == trained.keys() and any(not torch.allclose(avg[k], trained[k]) for k in avg)
    # what align.load / export read (final_weights: weights_path + load_weights) is the average, on both
    assert_same_weights(final_weights(tmp_path / "fsdp", 6), avg, rtol=0, atol=0)
    assert_same_weights(final_weights(tmp_path / "ddp", 6), avg, rtol=1e-5, atol=1e-5)
    assert_same_weights(final_weights(tmp_path / "cut", 6), avg)
    import align
    assert_same_weights(dict(align.load(str(tmp_path / "fsdp")).state_dict()), avg, rtol=0, atol=0)


@pytest.mark.slow
def test_kill_in_the_middle_of_a_sharded_checkpoint_write_then_resume(tiny_recipe, tmp_path):
    base = dict(tiny_recipe)
    base["data"] = dict(base["data"], synthetic_size=512)
    base["train"] = dict(base["train"], max_steps=6, checkpoint_every=2, sharding="fsdp")
    ref = launch(write_recipe(base, tmp_path, "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    path = write_recipe(base, tmp_path, "run")
    # Rank 1 dies after writing its shards of step 4, before the barrier that makes it visible.
    env = {"ALIGN_TEST_SIGKILL_IN_SAVE": "step-00000004"}
    res = launch(path, env)
    assert res.returncode != 0
    ckpts = tmp_path / "run" / "checkpoints"
    assert [os.path.basename(p) for p in list_checkpoints(str(ckpts))] == ["step-00000002"]
    assert os.path.isdir(ckpts / ".step-00000004.tmp")          # the partial write, never listed
    resumed = launch(path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "step-00000002" in resumed.stdout + resumed.stderr
    said = [ln for ln in (resumed.stdout + resumed.stderr).splitlines() if "unfinished checkpoint write" in ln]
    assert len(said) == 1 and "(.step-00000004.tmp: " in said[0], said      # named once, by rank 0
    assert not os.path.exists(ckpts / ".step-00000004.tmp")          # replaced by the step's new write
    assert_same_weights(final_weights(tmp_path / "ref", 6), final_weights(tmp_path / "run", 6))
    # And a plain SIGKILL of one of the two sharded workers ends the launch within the bound.
    path2 = write_recipe(base, tmp_path, "one")
    res, took = killed_launch(path2, tmp_path / "stamp", {"ALIGN_TEST_SIGKILL_AT_STEP": "3",
                                                          "ALIGN_TEST_SIGKILL_RANK": "1"})
    print(f"fsdp launch ended {took:.1f}s after the SIGKILL of rank 1")
    assert res.returncode != 0 and took < EXIT_BOUND_S
    resumed = launch(path2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "ref", 6), final_weights(tmp_path / "one", 6))


def _keys(prefix):
    out = []
    d, name = os.path.split(prefix)
    for f in sorted(os.listdir(d)):
        if f.startswith(name + ".rank"):
            out += [k for line in open(os.path.join(d, f)) for k in json.loads(line)["keys"]]
    return out


@pytest.mark.slow
def test_elastic_resume_2_to_1_and_1_to_2_trains_each_sample_of_the_epoch_once(tiny_recipe, tmp_path):
    _, keys = make_shards(tmp_path / "shards", 8, 6)                 # 48 samples, one epoch
    base = dict(tiny_recipe)
    base["data"] = {"train": str(tmp_path / "shards" / "s-{000..007}.tar"), "samples_per_epoch": 48,
                    "shuffle_buffer": 8, "num_workers": 1}
    base["train"] = dict(base["train"], batch_size=4, max_steps=6, checkpoint_every=2)
    ref = launch(write_recipe(base, tmp_path, "ref"), {"ALIGN_TEST_RECORD_KEYS": str(tmp_path / "ref-keys")})
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_keys = _keys(str(tmp_path / "ref-keys"))
    assert Counter(ref_keys) == Counter(keys)

    # fsdp, 2 processes of batch 4 -> 1 process of batch 8, 2 workers: global batch kept, so silent.
    path = write_recipe(base, tmp_path, "shrink", sharding="fsdp")
    res = launch(path, {"ALIGN_TEST_SIGKILL_AT_STEP": "2", "ALIGN_TEST_RECORD_KEYS": str(tmp_path / "a")})
    assert res.returncode != 0
    ckpt = tmp_path / "shrink" / "checkpoints" / "step-00000002"
    saved = load_dcp_tensors(str(ckpt / "dcp"), "optim.state.")
    shutil.copytree(ckpt, tmp_path / "saved-at-2")
    # Resume with nothing left to train: the final checkpoint re-saves what was restored, at world size 1.
    same = launch(path, nproc=1, overrides=["train.max_steps=2", "train.batch_size=8", "data.num_workers=2"])
    assert same.returncode == 0, same.stderr[-3000:]
    assert "global batch changed" not in same.stdout + same.stderr
    again = load_dcp_tensors(str(ckpt / "dcp"), "optim.state.")
    assert saved.keys() == again.keys() and len(saved) > 0
    for k in saved:                                                  # optimizer state restored across 2 -> 1
        torch.testing.assert_close(saved[k], again[k], rtol=0, atol=0, msg=k)
    res = launch(path, {"ALIGN_TEST_RECORD_KEYS": str(tmp_path / "b")}, nproc=1,
                 overrides=["train.batch_size=8", "data.num_workers=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global batch changed" not in res.stdout + res.stderr
    before, after = _keys(str(tmp_path / "a")), _keys(str(tmp_path / "b"))
    assert len(before) == 16 and not set(before) & set(after)
    assert Counter(before + after) == Counter(ref_keys)

    # ddp, 1 process of batch 4 -> 2 processes of batch 4: the global batch doubles, one line says so.
    path = write_recipe(base, tmp_path, "grow")
    res = launch(path, {"ALIGN_TEST_SIGKILL_AT_STEP": "2", "ALIGN_TEST_RECORD_KEYS": str(tmp_path / "c")}, nproc=1,
                 overrides=["train.max_steps=12"])
    assert res.returncode != 0
    res = launch(path, {"ALIGN_TEST_RECORD_KEYS": str(tmp_path / "d")}, overrides=["train.max_steps=12"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    notes = [line for line in out.splitlines() if "global batch changed from 4 to 8" in line]
    assert len(notes) == 1 and "samples seen (8 of 48)" in notes[0] and "ends at step 7" in notes[0]
    before, after = _keys(str(tmp_path / "c")), _keys(str(tmp_path / "d"))
    assert len(before) == 8 and Counter(before + after) == Counter(ref_keys)
    m = json.load(open(tmp_path / "grow" / "summary.json"))
    assert m["steps"] == 7 and m["world_size"] == 2


def _keys_by_epoch(prefix):
    out = {}
    d, name = os.path.split(prefix)
    for f in sorted(os.listdir(d)):
        if f.startswith(name + ".rank"):
            for line in open(os.path.join(d, f)):
                rec = json.loads(line)
                out.setdefault(rec["epoch"], []).extend(rec["keys"])
    return out


@pytest.mark.slow
def test_fsdp_resume_2_to_1_from_ranks_in_different_epochs_trains_each_sample_of_each_epoch_once(tiny_recipe,
                                                                                               tmp_path):
    # 3 shards of 4, batch 2, no samples_per_epoch: rank 0 reads 2 shards (4 steps an epoch), rank 1 one (2).
    # Killed after step 6 (checkpoint step-6): rank 0 is in epoch 1, rank 1 has finished epoch 2.  Before
    # issue 19 the 1-process resume stopped with "the ranks of the checkpoint are in different epochs".
    _, keys = make_shards(tmp_path / "shards", 3, 4)
    base = dict(tiny_recipe)
    base["data"] = {"train": str(tmp_path / "shards" / "s-{000..002}.tar"), "shuffle_buffer": 3, "num_workers": 0}
    base["train"] = dict(base["train"], batch_size=2, max_steps=12, checkpoint_every=2)
    path = write_recipe(base, tmp_path, "uneven", sharding="fsdp")
    res = launch(path, {"ALIGN_TEST_SIGKILL_AT_STEP": "6", "ALIGN_TEST_RECORD_KEYS": str(tmp_path / "k")})
    assert res.returncode != 0
    saved = [json.load(open(tmp_path / "uneven" / "checkpoints" / "step-00000006" / f))["data"]["epoch"]
             for f in ("state.json", "rank-1.json")]
    assert saved == [1, 2]
    res = launch(path, {"ALIGN_TEST_RECORD_KEYS": str(tmp_path / "k")}, nproc=1, overrides=["train.batch_size=4"])
    assert res.returncode == 0, res.stderr[-3000:]
    trained = _keys_by_epoch(str(tmp_path / "k"))
    for epoch in range(4):                       # 6 steps x 4 + 6 x 4 = 48 samples = epochs 0..3 (12 each)
        assert Counter(trained[epoch]) == Counter(keys), epoch
