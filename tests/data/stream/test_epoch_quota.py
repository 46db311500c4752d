"""data.samples_per_epoch: an epoch is that many samples per launch at any data.num_workers (a worker without a
shard gives its batches to the others), and epochs go on through the shards, pass after pass, so every sample is
trained (they used to restart at the start of each reader's shards: samples past the quota were never read)."""
import json
from collections import Counter

import pytest

from align.data.stream.build import build_train_loader
from tests.data.stream.test_loader import resume_dataset
from tests.wds_helpers import TRANSFORMS, flat, image_text, make_shards, write_shard

MODS = ["image", "text"]


def _loader(paths, spe, workers=0, rank=0, world=1, **kw):
    kw = dict(dict(transforms=TRANSFORMS, batch_size=2, modalities=MODS, shuffle_buffer=4), **kw)
    return build_train_loader(paths, rank=rank, world_size=world, num_workers=workers, samples_per_epoch=spe, **kw)


def _epochs(loader, n):
    """n epochs of the loader -> per epoch its batches' key lists."""
    out = [[list(b["__key__"]) for b in loader] for _ in range(n)]
    loader.close()
    return out


@pytest.mark.parametrize("world,workers,shards", [(1, 0, 1), (1, 1, 1), (1, 2, 1), (2, 0, 3), (2, 1, 3), (2, 2, 3)])
def test_an_epoch_has_its_batches_at_any_worker_count(tmp_path, world, workers, shards):
    # 1 shard for 2 workers, or 3 shards for 2 ranks of 2 workers (rank 1 has one): a worker without a shard
    # used to keep its share of the quota, so the rank's epoch was short (2 batches of the 4).
    paths, _ = make_shards(tmp_path, shards, 24 // shards)
    for rank in range(world):
        loader = _loader(paths, 8 * world, workers, rank, world)
        assert len(loader) == 4
        assert [len(e) for e in _epochs(loader, 3)] == [4, 4, 4], f"rank {rank}"


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 1), (1, 2), (2, 0), (2, 2)])
def test_epochs_go_on_through_the_shards_so_every_sample_is_trained(tmp_path, world, workers):
    # 24 samples, 8 an epoch: 3 epochs are one pass, each sample trained once; the next 3 the next pass.
    paths, keys = make_shards(tmp_path, 2 * world, 24 // (2 * world))
    runs = [_epochs(_loader(paths, 8, workers, r, world), 6) for r in range(world)]
    passes = [flat([k for run in runs for e in run[p:p + 3] for k in e]) for p in (0, 3)]
    for got in passes:
        assert Counter(got) == Counter(keys)                      # every sample once per pass
    assert passes[0] != passes[1]                                 # each pass in its own order


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_epochs_read_their_draws_on(tmp_path, workers):
    # 2 shards of 40, 8 samples an epoch: each epoch drew new shards and read them from their start, so 20
    # epochs (160 readings) saw 22 of the 80 samples; a pass is now 2 draws, each read on across epochs.
    paths, keys = make_shards(tmp_path, 2, 40)
    got = flat(k for e in _epochs(_loader(paths, 8, workers, resampled=True), 20) for k in e)
    assert len(got) == 160 and set(got) == set(keys)


def test_resampled_readings_in_two_passes_of_one_epoch_get_their_own_augmentation(tmp_path):
    # 1 shard of 4: a pass is one draw, so an epoch of 16 reads it 4 times, each time as draw 0 of its pass.
    paths, _ = make_shards(tmp_path, 1, 4)
    aug = {"image": [{"type": "affine", "degrees": 40, "translate": [0.3, 0.3], "scale": [0.5, 1.0]}]}
    readings = {}
    for b in _loader(paths, 16, resampled=True, augment=aug):
        for k, img in zip(b["__key__"], b["image"]):
            readings.setdefault(k, []).append(img.numpy().tobytes())
    assert sorted(map(len, readings.values())) == [4, 4, 4, 4]
    assert all(len(set(v)) == 4 for v in readings.values())


def _run_epochs(loader, until, taken=None):
    """Batches through the epochs up to `until` (or only `taken` of them), as a training loop takes them."""
    out = []
    while loader.epoch < until and (taken is None or len(out) < taken):
        for b in loader:
            out.append(list(b["__key__"]))
            if taken is not None and len(out) == taken:
                break
    return out


def test_0_and_1_workers_and_kept_or_own_workers_read_the_same_passes(tmp_path):
    # 20 samples, 6 an epoch: epochs cross the passes' ends in their middle.
    paths, _ = make_shards(tmp_path, 2, 10)
    ref = _run_epochs(_loader(paths, 6, 0), 7)
    assert len(ref) == 21
    assert _run_epochs(_loader(paths, 6, 1), 7) == ref
    two = _run_epochs(_loader(paths, 6, 2), 7)
    assert _run_epochs(_loader(paths, 6, 2, keep_workers=False), 7) == two and len(two) == 21


def _broken(root):
    """Uneven shards with a broken image and a truncated shard (faults are counted once per reading)."""
    return resume_dataset(root, shards=3, first=5, cut_shard=2)


@pytest.mark.parametrize("workers,resampled", [(0, False), (2, False), (2, True)])
def test_exact_resume_anywhere_in_the_passes(tmp_path, workers, resampled):
    paths = _broken(tmp_path / "d")
    ref_loader = _loader(paths, 10, workers, resampled=resampled)   # 5 batches an epoch; about 2 epochs a pass
    ref = _run_epochs(ref_loader, 5)
    totals = (dict(ref_loader.skipped), ref_loader.seen)
    ref_loader.close()
    assert len(ref) == 25 and totals[0]["undecodable image"] >= 1
    for k in (3, 5, 8, 12, 19):
        first = _loader(paths, 10, workers, resampled=resampled)
        head = _run_epochs(first, 5, taken=k)
        state = json.loads(json.dumps(first.state_dict()))
        first.close()
        resumed = _loader(paths, 10, workers, resampled=resampled, resume_state=state)
        resumed.set_epoch(state["epoch"])                 # an epoch loop's call keeps the position
        assert head + _run_epochs(resumed, 5) == ref, f"resume after {k} batches"
        assert (dict(resumed.skipped), resumed.seen) == totals
        resumed.close()


def test_an_elastic_resume_in_a_later_pass_trains_the_rest_of_its_epoch_once(tmp_path):
    # 1 process of 2 workers -> 2 processes of 1: epoch 1 goes from the end of pass 0 into pass 1.
    paths, _ = make_shards(tmp_path, 2, 10)
    ref = _run_epochs(_loader(paths, 12, 2), 2)[6:]       # epoch 1
    first = _loader(paths, 12, 2)
    head = _run_epochs(first, 2, taken=8)[6:]
    states = [first.state_dict()]
    first.close()
    rest = []
    for rank in range(2):
        loader = _loader(paths, 12, 1, rank, 2, resume_state=states)
        assert loader.epoch == 1
        rest += flat(list(b["__key__"]) for b in loader)
        loader.close()
    assert Counter(flat(head) + rest) == Counter(flat(ref))


def _one_unreadable(root, per_shard=8):
    """2 shards, the second all garbage: its worker reads no sample in a whole pass (found only at run time)."""
    paths, keys = make_shards(root, 2, per_shard)
    with open(paths[1], "wb") as f:
        f.write(b"\x00garbage" * 300)
    return paths, [k for k in keys if k.startswith("s00")]



@pytest.mark.parametrize("keep", [True, False])
def test_a_worker_whose_shards_turn_out_unreadable_reads_its_share_from_its_next_passes(tmp_path, keep, caplog):
    # 8 samples an epoch over 2 workers: the one dealt the garbage shard used to end its part empty, so every
    # epoch trained 2 batches of the 4 declared (only warned). An empty pass is passed over now (each pass deals
    # the shards anew): every epoch has its 4 batches, all of the readable shard.
    paths, good = _one_unreadable(tmp_path)
    loader = _loader(paths, 8, 2, keep_workers=keep)
    epochs = _epochs(loader, 3)
    assert [len(e) for e in epochs] == [4, 4, 4]
    assert set(flat(flat(epochs))) == set(good)
    assert loader.skipped["corrupt tar"] >= 1 and "fewer than the" not in caplog.text


def test_exact_resume_across_a_pass_with_no_readable_shard(tmp_path):
    paths, _ = _one_unreadable(tmp_path)
    ref = _run_epochs(_loader(paths, 8, 2), 3)
    for k in (1, 2, 3, 5, 9):
        first = _loader(paths, 8, 2)
        head = _run_epochs(first, 3, taken=k)
        state = json.loads(json.dumps(first.state_dict()))
        first.close()
        resumed = _loader(paths, 8, 2, resume_state=state)
        assert head + _run_epochs(resumed, 3) == ref, f"resume after {k} batches"
        resumed.close()


def test_shards_that_are_all_unreadable_end_the_epoch_short_after_a_bounded_search(tmp_path, caplog):
    paths, _ = _one_unreadable(tmp_path)
    with open(paths[0], "wb") as f:
        f.write(b"\x00garbage" * 300)
    loader = _loader(paths, 8, 2)
    assert [len(e) for e in _epochs(loader, 2)] == [0, 0]
    assert "fewer than the 4 declared" in caplog.text


def test_uneven_shards_even_out_because_each_pass_deals_the_shards_anew(tmp_path):
    # Shards of 2 and 14 samples, 2 workers, 16 samples an epoch: inside a pass the reader dealt the small shard
    # goes round it 7 times as often, but the next pass deals the shards anew, so over 40 epochs (640 samples, 40
    # a sample on average) each sample is trained 35 to 41 times (dealt alike in every pass: 160 and 23 times):
    # no lasting bias, only a spread of about a pass (README: equal-size shards keep the counts equal).
    paths, keys = [], []
    for i, n in enumerate([2, 14]):
        samples = [image_text(f"s{i}_{j}", seed=100 * i + j) for j in range(n)]
        keys += [s["__key__"] for s in samples]
        paths.append(write_shard(tmp_path / f"s{i}.tar", samples))
    counts = Counter(flat(flat(_epochs(_loader(paths, 16, 2), 40))))
    mean = 40 * 16 / len(keys)
    assert set(counts) == set(keys)
    assert all(0.8 * mean <= counts[k] <= 1.2 * mean for k in keys), counts


def test_after_an_elastic_resume_the_new_layout_starts_a_whole_pass(tmp_path):
    # 20 samples, 4 an epoch (5 epochs a pass): 1 process of 2 workers stops in epoch 1, in the middle of pass 0;
    # 2 processes of 1 worker (batch 1) finish epoch 1 exactly, then start a new pass of their own layout at
    # epoch 2, which trains every sample once in its 5 epochs. The samples pass 0 had not reached wait for it,
    # those it had reached are trained again in it (README): none is lost, none trained more than twice.
    paths, keys = make_shards(tmp_path, 2, 10)
    first = _loader(paths, 4, 2)
    head = flat(_run_epochs(first, 3, taken=3))             # epoch 0 and the first batch of epoch 1
    states = [first.state_dict()]
    first.close()
    rest, new_pass = [], []
    for rank in range(2):
        loader = _loader(paths, 4, 1, rank, 2, resume_state=states, batch_size=1)
        epochs = [flat(list(b["__key__"]) for b in loader) for _ in range(6)]   # the rest of epoch 1, epochs 2-6
        loader.close()
        rest += epochs[0]
        new_pass += flat(epochs[1:])
    assert len(head) + len(rest) == 8                        # epochs 0 and 1: 4 samples each
    assert Counter(new_pass) == Counter(keys)                # the new layout's pass: every sample once
    both = Counter(head + rest + new_pass)
    assert set(both) == set(keys) and max(both.values()) <= 2
    assert sorted(k for k, c in both.items() if c == 2) == sorted(head + rest)
