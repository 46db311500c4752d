"""Elastic data resume: an epoch checkpointed at one (world size, batch, workers) and finished at another
trains every sample of the epoch exactly once, as an uninterrupted run does (in one process: each rank's
loader is built separately, as the ranks of a launch would build theirs)."""
import itertools
from collections import Counter

import pytest

from align.data.stream import resume as elastic
from align.data.stream.loader import build_train_loader
from tests.wds_helpers import TRANSFORMS, make_shards, write_shard, image_text

MODS = ["image", "text"]


def _loaders(paths, world, bs, workers, spe, resume=None, **kw):
    return [build_train_loader(paths, transforms=TRANSFORMS, batch_size=bs, modalities=MODS, rank=r,
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
