"""train.ema (align/train/ema.py): the weight average against a plain reference, on random tensors and on a real
run's checkpoints; it survives a SIGKILL and resume bitwise; evaluation, align.load and export read it."""
import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import align
from align.config import parse_recipe
from align.errors import AlignError
from align.train import metrics
from align.train.ema import WeightEMA
from tests.train.test_train import _run


class Net(torch.nn.Module):
    """Parameters, a float buffer and an integer buffer (BatchNorm's), as a tower has."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)
        self.bn = torch.nn.BatchNorm1d(3)


def _randomise(net, gen):
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=gen))
            else:
                v.add_(1)


def test_update_matches_a_plain_float64_reference_with_the_warm_up():
    gen = torch.Generator().manual_seed(0)
    net = Net()
    ema = WeightEMA(net, 0.9)
    ref = {k: v.double().clone() for k, v in net.state_dict().items()}
    for n in range(1, 40):
        _randomise(net, gen)
        ema.update(net, n)
        d = min(0.9, (1 + n) / (10 + n))           # TF / timm warm-up: 0.18, 0.27, ... then 0.9
        for k, v in net.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double() if v.is_floating_point() else v.double().clone()
    for k, v in ema.state_dict().items():
        assert torch.allclose(v.double(), ref[k], rtol=1e-6, atol=1e-6), k
    assert ema.state_dict()["bn.num_batches_tracked"].item() == 39       # copied, not averaged
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10 ** 6) == 0.9


def test_applied_puts_the_average_in_and_the_trained_weights_back():
    gen = torch.Generator().manual_seed(1)
    net = Net()
    ema = WeightEMA(net, 0.5)
    for n in range(1, 5):
        _randomise(net, gen)
        ema.update(net, n)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.applied(net):
        inside = {k: v.clone() for k, v in net.state_dict().items()}
    for k, v in net.state_dict().items():
        assert torch.equal(v, own[k]), k
        assert torch.equal(inside[k], ema.state_dict()[k].to(v.dtype)), k
    assert not torch.equal(inside["lin.weight"], own["lin.weight"])


def test_evaluation_scores_the_average(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    net = Net()
    ema = WeightEMA(net, 0.5)
    _randomise(net, gen)
    ema.update(net, 5)
    seen = {}
    monkeypatch.setattr(metrics, "run_val", lambda core, r, acc, step: seen.update(w=core.lin.weight.clone()) or {})
    eng = SimpleNamespace(ema=ema, core=net, fsdp=False, acc=SimpleNamespace(is_main_process=True))
    metrics.evaluate(eng, None, 5)
    assert torch.equal(seen["w"], ema.state_dict()["lin.weight"])
    assert not torch.equal(net.lin.weight, seen["w"])              # the trained weights are back


def test_bad_decay_is_one_line():
    with pytest.raises(AlignError, match=r"train.ema=1.5: the decay must be in \(0, 1\)"):
        WeightEMA(Net(), 1.5)
    with pytest.raises(AlignError, match="train.ema"):
        parse_recipe({"model": {"open_clip": "x"}, "train": {"ema": 1.0}})


def _ema_on_a_sharded_model(tmp_path):
    """In a forked child (an FSDP backward's threads must stay out of pytest's process): a gloo group of one."""
    import torch.distributed as dist
    from align.train.checkpoint import load_sharded_ema, load_weights, save_checkpoint
    from align.train.sharding import shard_model, unshard_shapes
    from tests.conftest import TINY_OPEN_CLIP
    from tests.train.test_sharding import _step, _tiny_model

    model = _tiny_model()
    shard_model(model)
    ema = WeightEMA(model, 0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def full(sd):     # copies: in a group of one, full_tensor() may be the shard itself
        return unshard_shapes({k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in sd.items()})
    ref = {k: v.double() for k, v in full(model.state_dict()).items()}
    for n in range(1, 4):
        _step(model, opt, n)
        ema.update(model, n)
        d = ema.decay_at(n)
        ref = {k: d * ref[k] + (1 - d) * v.double() for k, v in full(model.state_dict()).items()}
    assert all(hasattr(v, "to_local") for k, v in ema.state_dict().items() if k.endswith("weight"))   # shards
    avg = full(ema.state_dict())
    for k, v in ref.items():                # the plain float64 reference of the gathered weights
        torch.testing.assert_close(avg[k].double(), v, rtol=1e-6, atol=1e-7, msg=k)
    trained = full(model.state_dict())
    with ema.applied(model):
        inside = full(model.state_dict())
    for k in avg:
        torch.testing.assert_close(inside[k], avg[k].to(inside[k].dtype), rtol=0, atol=0, msg=k)
    after = full(model.state_dict())
    assert all(torch.equal(after[k], trained[k]) for k in trained)
    assert any(not torch.equal(avg[k], trained[k]) for k in avg)          # the swap was a change
    # evaluation gathers a plain copy that holds the average, then the trained shards are back
    seen = {}
    metrics_run_val = metrics.run_val
    metrics.run_val = lambda core, r, acc, step: seen.update(sd=dict(core.state_dict())) or {}
    try:
        eng = SimpleNamespace(ema=ema, core=model, fsdp=True, acc=SimpleNamespace(is_main_process=True))
        r = parse_recipe({"output_dir": str(tmp_path / "run"), "train": {"max_steps": 1},
                          "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)}})
        metrics.evaluate(eng, r, 3)
    finally:
        metrics.run_val = metrics_run_val
    for k in avg:
        torch.testing.assert_close(seen["sd"][k], avg[k].to(seen["sd"][k].dtype), rtol=0, atol=0, msg=k)
    assert all(torch.equal(v, trained[k]) for k, v in full(model.state_dict()).items())
    # the checkpoint's DCP store holds the average: load_weights (align.load, export, init_from) reads it, and
    # resume reads it back into another sharded model's average
    path = save_checkpoint(str(tmp_path), "step-00000003", None, opt, {"step": 3, "world_size": 1},
                           sharded=(model, opt), ema_sd=ema.state_dict())
    loaded = load_weights(os.path.join(path, "dcp"))
    for k in avg:
        assert torch.equal(loaded[k], avg[k]), k
    other = _tiny_model()
    shard_model(other)
    ema_o = WeightEMA(other, 0.5)
    assert load_sharded_ema(path, ema_o.state_dict())
    assert all(torch.equal(v, avg[k]) for k, v in full(ema_o.state_dict()).items())
    bare = save_checkpoint(str(tmp_path), "step-00000004", None, opt, {"step": 4, "world_size": 1},
                           sharded=(model, opt))
    assert not load_sharded_ema(bare, ema_o.state_dict())
    assert all(torch.equal(v, trained[k]) for k, v in load_weights(os.path.join(bare, "dcp")).items())
    dist.destroy_process_group()


def test_train_ema_on_fsdp_shards_averages_evaluates_and_checkpoints(tmp_path):
    from tests.train.test_sharding import _in_forked_child
    _in_forked_child(_ema_on_a_sharded_model, tmp_path)


def _ckpt(run, step):
    return os.path.join(run, "checkpoints", f"step-{step:08d}")


def test_a_run_keeps_the_average_of_its_own_weights_and_load_reads_it(tiny_recipe):
    """Every checkpoint holds the trained weights and their average; step to step the average follows the
    recurrence from the checkpointed weights (float64 reference); align.load and init_from get the average."""
    tiny_recipe["train"].update(ema=0.6, max_steps=6, checkpoint_every=1, keep_last=10)
    assert _run(tiny_recipe) == 0
    run = tiny_recipe["output_dir"]
    for n in range(2, 7):
        prev, w, avg = (load_file(os.path.join(_ckpt(run, s), f)) for s, f in
                        ((n - 1, "ema.safetensors"), (n, "model.safetensors"), (n, "ema.safetensors")))
        d = min(0.6, (1 + n) / (10 + n))
        for k in w:
            want = d * prev[k].double() + (1 - d) * w[k].double() if w[k].is_floating_point() else w[k].double()
            assert torch.allclose(avg[k].double(), want, rtol=1e-5, atol=1e-6), (n, k)
    w6, avg6 = load_file(os.path.join(_ckpt(run, 6), "model.safetensors")), load_file(os.path.join(_ckpt(run, 6),
                                                                                       "ema.safetensors"))
    loaded = align.load(run).state_dict()
    moved = [k for k in w6 if w6[k].is_floating_point() and not torch.equal(w6[k], avg6[k])]
    assert moved                                       # the average is not the trained weights
    for k in avg6:
        assert torch.equal(loaded[k], avg6[k].to(loaded[k].dtype)), k
    assert json.load(open(os.path.join(run, "summary.json")))["weights"] == "ema 0.6"


def test_sigkill_then_resume_continues_the_same_average_bitwise(tiny_recipe, tmp_path):
    ref = dict(tiny_recipe, output_dir=str(tmp_path / "ref"))
    ref["train"] = dict(tiny_recipe["train"], max_steps=6, checkpoint_every=2, ema=0.7)
    assert _run(ref) == 0
    run = dict(ref, output_dir=str(tmp_path / "killed"))
    assert _run(run, kill_at=3) == -signal.SIGKILL      # dies after step 3 (checkpoint at 2)
    assert _run(run) == 0
    for f in ("ema.safetensors", "model.safetensors"):
        a, b = load_file(os.path.join(_ckpt(ref["output_dir"], 6), f)), load_file(os.path.join(_ckpt(
            run["output_dir"], 6), f))
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)


def test_resuming_a_checkpoint_without_an_average_starts_it_there(tiny_recipe, capsys):
    from align.train.loop import train
    tiny_recipe["train"].update(max_steps=3, checkpoint_every=3)
    train(parse_recipe(tiny_recipe), progress=False)
    assert not os.path.exists(os.path.join(_ckpt(tiny_recipe["output_dir"], 3), "ema.safetensors"))
    tiny_recipe["train"].update(max_steps=5, ema=0.9)
    train(parse_recipe(tiny_recipe), progress=False)
    assert "has no weight average; it starts at the weights of step 3" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(_ckpt(tiny_recipe["output_dir"], 5), "ema.safetensors"))
