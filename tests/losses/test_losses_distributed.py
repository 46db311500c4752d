"""2 gloo processes x half batch == 1 process x full batch, for every loss.

Each rank holds a copy of a tiny three-tower linear model and its slice of
the batch (sometimes of uneven size, sometimes with a modality missing on a
whole rank), computes its loss, backprops, and averages gradients over ranks
as DDP does. Rank 0 saves the results; the tests compare them with a single
process on the full batch. The last case runs gradcache_step on a real DDP
model (no_sync for all but the last micro-batch).
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from align.train.gradcache import gradcache_step
from align.losses import build_loss, gather_features, gather_masks
from tests.losses.gloo import run_workers

N = 10
PAIRS_IT = [("image", "text")]
PAIRS_3 = [("image", "text"), ("audio", "text")]
# name: (loss type, options, pairs, weights, local sizes per rank, use masks)
CASES = {
    "clip": ("clip", {}, PAIRS_IT, None, [5, 5], False),
    "clip_gather_no_grad": ("clip", {"gather_with_grad": False}, PAIRS_IT, None, [5, 5], False),
    "clip_local": ("clip", {"local_loss": True}, PAIRS_IT, None, [5, 5], False),
    "siglip": ("siglip", {}, PAIRS_IT, None, [5, 5], False),
    "chunked_clip": ("chunked_clip", {"chunk_size": 3}, PAIRS_IT, None, [5, 5], False),
    "chunked_clip_local": ("chunked_clip", {"chunk_size": 2, "local_loss": True}, PAIRS_IT, None, [5, 5], False),
    "chunked_siglip": ("chunked_siglip", {"chunk_size": 2}, PAIRS_IT, None, [5, 5], False),
    "multipair_clip_masks": ("clip", {}, PAIRS_3, [1.0, 0.5], [5, 5], True),
    "multipair_siglip_masks": ("siglip", {}, PAIRS_3, [1.0, 0.5], [5, 5], True),
    "multipair_chunked_masks_uneven": ("chunked_clip", {"chunk_size": 3}, PAIRS_3, [0.3, 1.0], [6, 4], True),
    "multipair_clip_local_masks_uneven": ("clip", {"local_loss": True}, PAIRS_3, None, [7, 3], True),
    "multipair_nograd_masks_uneven": ("clip", {"gather_with_grad": False}, PAIRS_3, None, [4, 6], True),
    "multipair_chunked_local_masks_uneven": ("chunked_clip", {"chunk_size": 2, "local_loss": True}, PAIRS_3,
                                             [1.0, 2.0], [7, 3], True),
    # SigLIP (its bias too) on uneven ranks, and a rank that holds no rows at all (an exhausted shard)
    "multipair_siglip_masks_uneven": ("siglip", {}, PAIRS_3, [1.0, 0.5], [7, 3], True),
    "multipair_chunked_siglip_rank_without_rows": ("chunked_siglip", {"chunk_size": 3}, PAIRS_3, None, [10, 0], True),
    "multipair_clip_local_rank_without_rows": ("clip", {"local_loss": True}, PAIRS_3, None, [0, 10], True),
    # a rank holding a single row (the last, short batch of an epoch)
    "chunked_siglip_one_row_on_a_rank": ("chunked_siglip", {"chunk_size": 4}, PAIRS_IT, None, [9, 1], False),
    "clip_local_one_row_on_a_rank": ("clip", {"local_loss": True}, PAIRS_IT, None, [1, 9], False),
    "chunked_clip_nograd_one_row_on_a_rank": ("chunked_clip", {"chunk_size": 3, "gather_with_grad": False},
                                              PAIRS_IT, None, [9, 1], False),
}
REFERENCE_TYPE = {"clip": "clip", "chunked_clip": "clip", "siglip": "siglip", "chunked_siglip": "siglip"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.towers = nn.ModuleDict({"image": nn.Linear(6, 4), "text": nn.Linear(5, 4), "audio": nn.Linear(3, 4)})
        self.logit_scale = nn.Parameter(torch.tensor(1.5))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0))
        self.double()

    def forward(self, batch):
        out = {m: F.normalize(t(batch[m]), dim=-1) for m, t in self.towers.items()}
        out["logit_scale"], out["logit_bias"] = self.logit_scale.exp(), self.logit_bias
        return out


def full_batch():
    g = torch.Generator().manual_seed(7)
    batch = {"image": torch.randn(N, 6, generator=g, dtype=torch.float64),
             "text": torch.randn(N, 5, generator=g, dtype=torch.float64),
             "audio": torch.randn(N, 3, generator=g, dtype=torch.float64)}
    image = torch.ones(N, dtype=torch.bool)
    image[2] = image[8] = False
    audio = torch.ones(N, dtype=torch.bool)
    audio[5:] = False                       # no audio at all on the second half (rank 1 when even)
    audio[0] = False
    return batch, {"image": image, "audio": audio}


def slice_batch(batch, masks, lo, hi):
    return {k: v[lo:hi] for k, v in batch.items()}, {k: v[lo:hi] for k, v in masks.items()}


def run_case(model, case, batch, masks, rank, world):
    typ, opts, pairs, weights, _, use_masks = CASES[case]
    if world == 1:
        typ, opts = REFERENCE_TYPE[typ], {}
    loss_fn = build_loss(typ, pairs, weights, rank=rank, world_size=world, **opts)
    f = model(batch)
    total, _ = loss_fn(f, masks if use_masks else None, f["logit_scale"], f["logit_bias"])
    model.zero_grad()
    total.backward()
    return total.detach(), {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                            for k, p in model.named_parameters()}


def gradcache_loss(rank, world):
    loss = build_loss("siglip", PAIRS_3, [1.0, 0.5], rank=rank, world_size=world)
    return lambda f, m: loss(f, m, f["logit_scale"], f["logit_bias"])[0]


def gather_checks(rank, world, mask):
    """gather_features / gather_masks on their own. Rank r holds rows filled with r + 1;
    each rank's loss is (rank + 1) * sum(gathered), so with_grad the local gradient is
    sum_s (s + 1) = 3 and without it only this rank's own factor, rank + 1."""
    out = {}
    for with_grad in (True, False):
        x = torch.full((3, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        g = gather_features(x, rank, world, with_grad=with_grad)
        ((rank + 1) * g.sum()).backward()
        out[f"values_{with_grad}"], out[f"grad_{with_grad}"] = g.detach(), x.grad
    out["mask"] = gather_masks(mask[rank * 5:rank * 5 + 5], rank, world)
    return out


def _worker(rank, world, init_file, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batch, masks = full_batch()
    results = {"gather": gather_checks(rank, world, masks["audio"])}
    for case, spec in CASES.items():
        sizes = spec[4]
        lo = sum(sizes[:rank])
        local, local_masks = slice_batch(batch, masks, lo, lo + sizes[rank])
        loss, grads = run_case(Tiny(), case, local, local_masks, rank, world)
        for g in grads.values():            # what DDP does: average over ranks
            dist.all_reduce(g)
            g /= world
        losses = [torch.zeros(()).double() for _ in range(world)]
        dist.all_gather(losses, loss)
        results[case] = {"losses": torch.stack(losses), "grads": grads}
    # GradCache on a real DDP model: 2 micro-batches per rank, averaged by DDP itself
    ddp = nn.parallel.DistributedDataParallel(Tiny())
    local, local_masks = slice_batch(batch, masks, rank * 5, rank * 5 + 5)
    mbs = [dict(slice_batch(local, local_masks, i, j)[0], masks=slice_batch(local, local_masks, i, j)[1])
           for i, j in ((0, 3), (3, 5))]
    for _ in range(2):                       # twice: DDP would fail the 2nd step if a reduction was left open
        ddp.zero_grad()
        loss = gradcache_step(ddp, mbs, gradcache_loss(rank, world), no_sync=ddp.no_sync)
    losses = [torch.zeros(()).double() for _ in range(world)]
    dist.all_gather(losses, loss)
    results["gradcache_ddp"] = {"losses": torch.stack(losses),
                                "grads": {k: p.grad.clone() for k, p in ddp.module.named_parameters()}}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    return run_workers(_worker, tmp_path_factory.mktemp("dist"))


def reference(case):
    batch, masks = full_batch()
    return run_case(Tiny(), case, batch, masks, 0, 1)


def assert_grads_close(got, want):
    for k, w in want.items():
        err = (got[k] - w).abs().max().item()
        assert err <= 1e-10 + 1e-8 * w.abs().max().item(), f"{k}: max abs error {err}"


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process(distributed_results, case):
    got = distributed_results[case]
    want_loss, want_grads = reference(case)
    # mean over ranks is the global loss; global-mode CLIP losses hold it exactly on every rank
    # (local_loss and SigLIP return world_size x this rank's share)
    assert abs(got["losses"].mean().item() - want_loss.item()) < 1e-10
    typ, opts = CASES[case][0], CASES[case][1]
    if "clip" in typ and not opts.get("local_loss"):
        assert torch.allclose(got["losses"], want_loss.expand(2), atol=1e-10)
    assert_grads_close(got["grads"], want_grads)


def test_gather_features_and_masks(distributed_results):
    got = distributed_results["gather"]           # rank 0's view
    want = torch.cat([torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)]).double()
    for with_grad, grad in ((True, 3.0), (False, 1.0)):
        assert torch.equal(got[f"values_{with_grad}"], want)
        assert torch.equal(got[f"grad_{with_grad}"], torch.full((3, 2), grad).double())
    assert torch.equal(got["mask"], full_batch()[1]["audio"])


def test_gradcache_with_ddp_no_sync_equals_one_process(distributed_results):
    got = distributed_results["gradcache_ddp"]
    batch, masks = full_batch()
    model = Tiny()
    f = model(batch)
    loss = gradcache_loss(0, 1)(f, masks)
    loss.backward()
    assert abs(got["losses"].mean().item() - loss.item()) < 1e-10
    assert_grads_close(got["grads"], {k: p.grad for k, p in model.named_parameters()})
