"""align.train.step.train_step: masks that say nothing are dropped on the host, masks that exclude rows still
do, the NaN guard reads the loss once, and the synthetic loader's batches follow the model's device."""
import copy

import pytest
import torch

from align.config import parse_recipe
from align.data.stream.synthetic import SyntheticLoader
from align.losses import ClipLoss
from align.train import step as step_mod
from align.train.setup import build_accelerator, build_engine


def make_engine(recipe):
    torch.manual_seed(0)
    r = parse_recipe(recipe)
    eng = build_engine(r, build_accelerator(r), None)
    eng.model.train()
    return eng


@pytest.fixture
def engine(tiny_recipe):
    return make_engine(tiny_recipe)


def a_batch(eng, b=8):
    loader = SyntheticLoader(eng.core, b, samples_per_epoch=b * 4)
    return next(iter(loader))            # image [b, 3, 16, 16], text [b, 12], "<m>_mask" bool [b] on the host


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def spy_masks(monkeypatch, eng):
    seen = []
    orig = eng.objective.loss_fn

    def loss_fn(feats, mask, *a):
        seen.append(mask)
        return orig(feats, mask, *a)
    monkeypatch.setattr(eng.objective, "loss_fn", loss_fn)
    return seen


def test_all_true_host_masks_are_dropped_and_change_nothing(engine, tiny_recipe, monkeypatch):
    batch = a_batch(engine)
    assert any(k.endswith("mask") for k in batch)
    twin = make_engine(tiny_recipe)                 # the same weights (same seed)
    for p, q in zip(params(engine.model), params(twin.model)):
        assert torch.equal(p, q)
    seen = spy_masks(monkeypatch, engine)
    res = step_mod.train_step(engine, [batch])
    assert seen == [None]                          # nothing for the loss to read back from the device
    bare = {k: v for k, v in batch.items() if not k.endswith("mask")}
    res2 = step_mod.train_step(twin, [bare])
    assert res.stepped and res2.stepped
    assert torch.equal(res.loss, res2.loss)
    for p, q in zip(params(engine.model), params(twin.model)):
        assert torch.equal(p, q)


def test_a_mask_with_false_rows_still_excludes_them(engine, monkeypatch):
    batch = a_batch(engine)
    keep = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    mkey = [k for k in batch if k.startswith("image") and k.endswith("mask")][0]
    batch[mkey] = keep.clone()
    with torch.no_grad():
        engine.model.eval()                        # the reference from the same weights (no dropout here)
        feats = engine.model({k: v for k, v in batch.items() if k in ("image", "text")})
        want = ClipLoss()(feats["image"][keep], feats["text"][keep], feats["logit_scale"])
        engine.model.train()
    seen = spy_masks(monkeypatch, engine)
    res = step_mod.train_step(engine, [batch])
    assert torch.equal(seen[0]["image"], keep)
    assert torch.allclose(res.loss, want, atol=1e-5)


def test_nan_loss_updates_nothing_and_reads_the_loss_once(engine, monkeypatch):
    batch = a_batch(engine)
    before = params(engine.model)
    orig = engine.objective.loss_fn
    monkeypatch.setattr(engine.objective, "loss_fn",
                        lambda *a: (lambda t, p: (t * float("nan"), p))(*orig(*a)))
    reads = []
    real = step_mod.is_finite
    monkeypatch.setattr(step_mod, "is_finite", lambda loss: reads.append(1) or real(loss))
    res = step_mod.train_step(engine, [batch])
    assert not res.stepped and len(reads) == 1
    for p, q in zip(before, params(engine.model)):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in engine.model.parameters())


def test_a_finite_step_reads_the_loss_once(engine, monkeypatch):
    reads = []
    real = step_mod.is_finite
    monkeypatch.setattr(step_mod, "is_finite", lambda loss: reads.append(1) or real(loss))
    assert step_mod.train_step(engine, [a_batch(engine)]).stepped
    assert len(reads) == 1


def test_synthetic_batches_follow_the_model_device(engine):
    core = copy.deepcopy(engine.core).to("meta")   # a device other than the host, without a GPU
    batch = next(iter(SyntheticLoader(core, 4, samples_per_epoch=16)))
    assert batch["image"].device.type == "meta" and batch["text"].device.type == "meta"
    assert all(v.device.type == "cpu" for k, v in batch.items() if k.endswith("mask"))


@pytest.mark.parametrize("accum", [1, 2])
def test_a_step_out_of_device_memory_is_one_line_naming_the_batch_and_what_lowers_it(engine, monkeypatch, accum):
    """torch raises OutOfMemoryError from the forward (here induced in the loss: no GPU on this machine);
    align train prints one line instead of CUDA's traceback."""
    from align.errors import AlignError

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
    monkeypatch.setattr(engine.objective, "loss_fn", oom)
    with pytest.raises(AlignError) as e:
        step_mod.train_step(engine, [a_batch(engine, 6) for _ in range(accum)])
    line = str(e.value)
    assert "\n" not in line and line.startswith("train: out of memory on cpu in a step of ")
    assert f"{accum} micro-batch(es) of 6 samples per process" in line
    for key in ("train.batch_size", "train.accum_steps", "train.grad_checkpointing", "chunked_clip",
                "train.precision bf16"):
        assert key in line
    assert all(p.grad is None for p in engine.model.parameters())  # nothing stepped


def test_the_out_of_memory_line_on_cuda_says_the_peak_and_the_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: 70 * 2 ** 30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: type("P", (), {"total_memory": 80 * 2 ** 30}))
    line = str(step_mod.out_of_memory(torch.device("cuda:0"), [256]))
    assert line.startswith("train: out of memory on cuda:0 (70.0 GiB allocated at the peak, of 80.0 GiB) in a step "
                           "of 1 micro-batch(es) of 256 samples per process;")


@pytest.mark.parametrize("message, ours", [
    ("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:5035: Connection reset by peer. This is typically "
     "caused by a remote worker hanging", True),
    ("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)", False)])
def test_a_peer_that_died_mid_step_is_one_line_and_the_hung_peer_exit(engine, monkeypatch, message, ours):
    """A SIGKILLed rank left the survivor with gloo's 30-line traceback and no line naming what happened; any
    other error is raised as it is."""
    from align.train.guard import HUNG_EXIT

    def gone(*a, **k):
        raise RuntimeError(message)
    monkeypatch.setattr(engine.objective, "loss_fn", gone)
    monkeypatch.setattr(type(engine), "world", property(lambda self: 2))
    with pytest.raises(Exception) as e:
        step_mod.train_step(engine, [a_batch(engine, 6)])
    if ours:
        assert isinstance(e.value, step_mod.PeerLost) and e.value.exit_code == HUNG_EXIT == 70
        line = str(e.value)
        assert "\n" not in line and "another process of the launch is gone" in line and "resume=auto" in line
    else:
        assert not isinstance(e.value, step_mod.PeerLost) and str(e.value) == message


def _finite_worker(rank, world, init_file, out_path):
    """SigLIP's loss on 2 gloo processes, rank 1's image rows NaN: what each rank's NaN guard decides."""
    import torch.distributed as dist

    from align.losses import build_loss
    from tests.losses.loss_reference import embeddings
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    a, b = (t.detach() for t in embeddings(8, 5, seed=2))
    a[4:6] = float("nan")                                  # rows of rank 1 (rows 4..7): an fp16 overflow there
    out = {}
    for typ in ("siglip", "clip"):
        loss, _ = build_loss(typ, [["image", "text"]], rank=rank, world_size=world)(
            {"image": a[4 * rank:4 * rank + 4], "text": b[4 * rank:4 * rank + 4]}, None, 10.0, -3.0)
        every = [None] * world
        dist.all_gather_object(every, (bool(torch.isfinite(loss)), step_mod.is_finite(loss)))
        out[typ] = every
    if rank == 0:
        torch.save(out, out_path)
    dist.destroy_process_group()


def test_every_rank_agrees_that_a_step_whose_global_loss_is_nan_is_nan(tmp_path):
    """SigLIP's loss on a rank is its own rows' share: NaN rows on rank 1 left rank 0's finite, so rank 0 ran the
    backward (and the gather's all_reduce in it) while rank 1 skipped it: mismatched collectives, a hung launch.
    The batch's loss (the mean over ranks) is NaN: every rank skips the step now. CLIP's global loss was NaN on
    every rank already."""
    from tests.losses.gloo import run_workers
    got = run_workers(_finite_worker, tmp_path)
    assert got["siglip"] == [(True, False), (False, False)]        # rank 0's own loss was finite: the trap
    assert got["clip"] == [(False, False), (False, False)]
