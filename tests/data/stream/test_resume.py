"""Elastic data resume: an epoch checkpointed at one (world size, batch, workers) and finished at another
trains every sample of the epoch exactly once, as an uninterrupted run does (in one process: each rank's
loader is built separately, as the ranks of a launch would build theirs)."""
import itertools
from collections import Counter

import pytest
import torch

from align.data.stream import resume as elastic
from align.data.stream.build import build_train_loader
from tests.wds_helpers import TRANSFORMS, make_shards, write_shard, image_text

MODS = ["image", "text"]


def _loaders(paths, world, bs, workers, spe, resume=None, transforms=TRANSFORMS, **kw):
    return [build_train_loader(paths, transforms=transforms, batch_size=bs, modalities=MODS, rank=r,
                               world_size=world, num_workers=workers, shuffle_buffer=8, samples_per_epoch=spe,
                               resume_state=resume, **kw) for r in range(world)]


def _run(loaders, steps=None):
    """Steps of the launch in lockstep (one batch per rank per step); -> keys trained, states after."""
    its = [iter(ld) for ld in loaders]
    keys = []
    for _ in (range(steps) if steps is not None else itertools.count()):
        batches = [next(it, None) for it in its]
        if all(b is None for b in batches):
            break
        assert all(b is not None for b in batches), "ranks ran different numbers of steps"
        keys += [k for b in batches for k in b["__key__"]]
    states = [ld.state_dict() for ld in loaders]
    for ld in loaders:
        ld.close()
    return keys, states


@pytest.mark.parametrize("before,after", [
    ((2, 4, 0), (1, 8, 0)),      # 2 -> 1 process, global batch kept
    ((1, 4, 0), (2, 4, 0)),      # 1 -> 2 processes (global batch doubles)
    ((2, 4, 2), (4, 2, 1)),      # other world size, per-rank batch and num_workers
    ((2, 4, 1), (2, 4, 2)),      # only num_workers changes
])
def test_no_sample_lost_or_repeated_across_a_change(tmp_path, before, after):
    paths, keys = make_shards(tmp_path, 8, 6)                    # 48 samples, 8 shards: even splits
    spe = 48
    ref, _ = _run(_loaders(paths, *before, spe))                 # one uninterrupted epoch
    assert Counter(ref) == Counter(keys)
    first, states = _run(_loaders(paths, *before, spe), steps=2)
    rest, _ = _run(_loaders(paths, *after, spe, resume=states))
    assert not set(first) & set(rest)
    assert Counter(first + rest) == Counter(ref)                 # each sample exactly once


def test_a_rest_that_does_not_fill_a_global_batch_drops_less_than_one(tmp_path, caplog):
    paths, keys = make_shards(tmp_path, 8, 6)
    first, states = _run(_loaders(paths, 2, 4, 2, 48), steps=2)           # 16 trained, 32 left
    rest, _ = _run(_loaders(paths, 3, 2, 1, 48, resume=states))           # global batch 6: 30 of the 32
    assert len(rest) == 30 and not set(first) & set(rest) and len(set(rest)) == 30
    assert "2 samples left in epoch 0 do not fill a global batch of 6" in caplog.text


def test_second_change_in_the_same_epoch_and_skipped_samples(tmp_path):
    paths, keys = make_shards(tmp_path, 4, 10)
    bad = write_shard(tmp_path / "bad.tar", [dict(image_text(f"b{i}"), jpg=b"not a jpeg") if i % 3 == 0
                                             else image_text(f"b{i}", seed=i) for i in range(10)])
    paths = paths + [bad]
    good = [k for k in keys] + [f"b{i}" for i in range(10) if i % 3]
    spe = 40
    ref, _ = _run(_loaders(paths, 2, 4, 0, spe))
    a, s1 = _run(_loaders(paths, 2, 4, 0, spe), steps=1)
    b, s2 = _run(_loaders(paths, 1, 4, 2, spe, resume=s1), steps=3)
    c, s3 = _run(_loaders(paths, 2, 2, 1, spe, resume=s2))
    assert Counter(a + b + c) == Counter(ref) and set(ref) <= set(good)
    assert sum(s3[0]["skipped"].values()) + sum(s3[1]["skipped"].values()) >= 1


def test_plan_cuts_segments_into_equal_ranks():
    segs = [[0, 0, 5, 0, 7, 2, 1], [1, 0, 3, 0, 9, 2, 1]]        # 16 good samples left
    per = [elastic.plan(segs, rank=r, world_size=3, num_workers=2, batch_size=2) for r in range(3)]
    assert all(sum(q) == 2 for _, q, _ in per) and per[0][2] == 16 - 12
    pieces = [s for mine, _, _ in per for w in mine for s in w]
    assert sum(s[4] for s in pieces) == 12
    assert pieces[0] == [0, 0, 5, 0, 2, 2, 1] and [0, 0, 5, 6, 1, 2, 1] in pieces and [1, 0, 3, 0, 1, 2, 1] in pieces


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_plan_quotas_keep_the_remainder_of_a_ranks_batches(workers):
    # 7 batches per rank do not divide over the workers: the first workers take one more each, so
    # the rank's batches (and every sample but the reported remainder) are still all trained.
    segs = [[0, 0, 0, 0, 15, 2, 1], [1, 0, 4, 0, 14, 2, 1]]      # 29 good samples, global batch 4
    per = [elastic.plan(segs, rank=r, world_size=2, num_workers=workers, batch_size=2) for r in range(2)]
    assert [sum(q) for _, q, _ in per] == [7, 7] and per[0][2] == 29 - 28
    for mine, quotas, _ in per:
        assert [sum(s[4] for s in w) for w in mine] == [2 * q for q in quotas]
    covered = sorted((s[0], s[2] + s[3] + i) for mine, _, _ in per for w in mine for s in w for i in range(s[4]))
    assert len(covered) == len(set(covered)) == 28


# ---- ranks in different epochs: uneven shards, no samples_per_epoch -----------------------------

LAST = 4      # the epochs checked: 0..LAST


def _uneven(tmp_path):
    # 3 shards of 4 samples, batch 2: with 2 ranks rank 0 reads 2 shards (4 steps an epoch), rank 1 one (2
    # steps), so the ranks cross epoch boundaries at different steps.  Batches divide every stream exactly,
    # so no short batch is dropped and every sample of every epoch must be trained exactly once.
    return make_shards(tmp_path, 3, 4)


def _rank_loaders(paths, world, resume=None):
    return [build_train_loader(paths, transforms=TRANSFORMS, batch_size=2, modalities=MODS, rank=r, world_size=world,
                               num_workers=0, shuffle_buffer=3, resume_state=resume) for r in range(world)]


def _train(loaders, record, steps=None):
    """Each rank takes `steps` batches (None: until it is past epoch LAST), moving on to its next epoch
    when one ends, as the training loop does; record[epoch] gets the keys trained.  -> states."""
    for ld in loaders:
        it, taken = iter(ld), 0
        while (steps is None and ld.epoch <= LAST) or (steps is not None and taken < steps):
            batch = next(it, None)
            if batch is None:
                it = iter(ld)                               # the loader has moved on to its next epoch
                continue
            record.setdefault(ld.epoch, []).extend(batch["__key__"])
            taken += 1
    return [ld.state_dict() for ld in loaders]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_at_every_checkpoint_of_ranks_in_different_epochs(tmp_path, before, after):
    paths, keys = _uneven(tmp_path)
    ref = {}
    _train(_rank_loaders(paths, before), ref)
    assert all(sorted(ref[e]) == sorted(keys) for e in range(LAST + 1))
    epochs_seen = set()
    for k in range(1, 9):                                   # every checkpoint of an 8-step run
        record = {}
        states = _train(_rank_loaders(paths, before), record, steps=k)
        epochs_seen.add(tuple(st["epoch"] for st in states))
        _train(_rank_loaders(paths, after, resume=states), record)
        for e in range(LAST + 1):
            assert sorted(record[e]) == sorted(keys), f"checkpoint after step {k}, epoch {e}"
    if before == 2:
        assert any(len(set(e)) > 1 for e in epochs_seen)    # some checkpoints had ranks in different epochs


def test_a_resume_during_the_rest_of_older_epochs_resumes_again(tmp_path):
    # 2 -> 1 from ranks in epochs (1, 3), one step of the rest, then 1 -> 2 and 2 -> 2 (the exact path).
    paths, keys = _uneven(tmp_path)
    for then in (2, 1):
        record = {}
        s1 = _train(_rank_loaders(paths, 2), record, steps=7)
        assert sorted(st["epoch"] for st in s1) == [1, 3]
        s2 = _train(_rank_loaders(paths, 1, resume=s1), record, steps=1)
        assert s2[0]["later"]                               # epochs 2 and 3 still hold the old layout's work
        s3 = _train(_rank_loaders(paths, then, resume=s2), record, steps=1)
        _train(_rank_loaders(paths, 2 if then == 1 else 1, resume=s3), record)
        for e in range(LAST + 1):
            assert sorted(record[e]) == sorted(keys), (then, e)


# ---- kill and resume inside a segmented (elastic) epoch ------------------------------------------

def _tensors(batch):
    return {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_and_resume_inside_a_segmented_epoch_is_bitwise(tmp_path, workers):
    from torchvision import transforms as T
    paths, keys = make_shards(tmp_path, 8, 6)
    crop = T.Compose([T.RandomResizedCrop(4, scale=(0.2, 1.0)), T.PILToTensor(), T.ConvertImageDtype(torch.float)])
    kw = dict(transforms=dict(TRANSFORMS, image=crop), augment={"image": [{"type": "affine"}, {"type": "blur"}]})
    _, states = _run(_loaders(paths, 2, 4, 2, 48, **kw), steps=2)                  # 2 ranks, 2 steps, then 1 rank:
    ref = [_tensors(b) for b in _loaders(paths, 1, 8, workers, 48, resume=states, **kw)[0]]   # uninterrupted
    assert len(ref) == 4
    for k in (1, 2, 3):
        first = _loaders(paths, 1, 8, workers, 48, resume=states, **kw)[0]
        it = iter(first)
        head = [_tensors(next(it)) for _ in range(k)]
        mid = first.state_dict()                                                   # killed here
        assert mid.get("segments") or mid.get("segments_left")      # (either name: also checked on the old code)
        del it
        first.close()
        tail = [_tensors(b) for b in _loaders(paths, 1, 8, workers, 48, resume=[mid], **kw)[0]]
        assert len(head + tail) == len(ref)
        for i, (want, got) in enumerate(zip(ref, head + tail)):
            assert want.keys() == got.keys()
            for name in want:
                assert torch.equal(want[name], got[name]), (k, i, name)


def test_segments_written_before_they_carried_their_layout_still_load():
    old = {"segments_left": [[0, 1, 5, 0, 7], [1, 0, 3, 2, None]], "streams": [2, 2]}
    assert elastic.segments_of(old) == [[0, 1, 5, 0, 7, 2, 2], [1, 0, 3, 2, None, 2, 2]]
