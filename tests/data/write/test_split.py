"""Splitting shards over ranks and workers: every sample is read exactly once per epoch."""

import random
from collections import Counter

import pytest

from align.data.stream.build import build_train_loader
from align.data.stream.sources import epoch_shards, split_shards
from tests.wds_helpers import TRANSFORMS, flat, image_text, write_shard

MODS = ["image", "text"]


def _uneven_shards(root, n_shards=7):
    """Shards of different sizes (3..9 samples) so workers run out at different times."""
    root.mkdir()
    paths, keys = [], []
    for i in range(n_shards):
        samples = [image_text(f"s{i}_{j}", seed=10 * i + j) for j in range(3 + i)]
        keys += [s["__key__"] for s in samples]
        paths.append(write_shard(root / f"s{i}.tar", samples))
    return paths, keys


def test_split_shards_is_a_partition():
    rng = random.Random(0)
    for _ in range(50):
        urls = [f"u{i}" for i in range(rng.randint(1, 40))]
        world, workers = rng.randint(1, 4), rng.randint(1, 4)
        parts = [split_shards(urls, rank=r, world_size=world, worker=w, num_workers=workers)
                 for r in range(world) for w in range(workers)]
        assert sorted(u for p in parts for u in p) == sorted(urls)
        # reference: shard i goes to rank i % world, and within it to worker (i // world) % workers
        for r in range(world):
            for w in range(workers):
                ref = [u for i, u in enumerate(urls) if i % world == r and (i // world) % workers == w]
                assert split_shards(urls, rank=r, world_size=world, worker=w, num_workers=workers) == ref


def test_epoch_shard_order_depends_on_seed_and_epoch_only():
    urls = [f"u{i}" for i in range(20)]
    a = epoch_shards(urls, seed=1, epoch=0, source_index=0, shuffle=True)
    assert a == epoch_shards(urls, seed=1, epoch=0, source_index=0, shuffle=True)
    assert a != epoch_shards(urls, seed=1, epoch=1, source_index=0, shuffle=True)
    assert a != epoch_shards(urls, seed=2, epoch=0, source_index=0, shuffle=True)
    assert sorted(a) == sorted(urls)
    assert epoch_shards(urls, seed=1, epoch=5, source_index=0, shuffle=False) == urls


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_read_each_sample_once(tmp_path, epoch):
    paths, keys = _uneven_shards(tmp_path / "d")
    per_rank = []
    for rank in (0, 1):
        loader = build_train_loader(paths, transforms=TRANSFORMS, batch_size=4, modalities=MODS, rank=rank,
                                    world_size=2, num_workers=2, epoch=epoch, drop_last=False, shuffle_buffer=8)
        per_rank.append(flat([b["__key__"] for b in loader]))
        assert loader.skipped == {}
    counts = Counter(per_rank[0] + per_rank[1])
    assert set(counts) == set(keys) and set(counts.values()) == {1}
    assert per_rank[0] and per_rank[1]
    # a rank reads whole shards: no shard is shared between ranks
    shards_of = [{k.split("_")[0] for k in r} for r in per_rank]
    assert not shards_of[0] & shards_of[1]


def test_more_readers_than_shards_still_reads_once(tmp_path, caplog):
    paths, keys = _uneven_shards(tmp_path / "d", n_shards=3)
    got = []
    for rank in (0, 1):
        loader = build_train_loader(paths, transforms=TRANSFORMS, batch_size=2, modalities=MODS, rank=rank,
                                    world_size=2, num_workers=2, drop_last=False)
        got += flat([b["__key__"] for b in loader])
    assert sorted(got) == sorted(keys)
    assert any("some readers get none of it" in r.getMessage() for r in caplog.records)


def test_samples_per_epoch_is_global(tmp_path):
    paths, _ = _uneven_shards(tmp_path / "d", n_shards=8)  # 3+..+10 = 52 samples
    for rank in (0, 1):
        loader = build_train_loader(paths, transforms=TRANSFORMS, batch_size=3, modalities=MODS, rank=rank,
                                    world_size=2, num_workers=2, samples_per_epoch=13)
        assert len(loader) == 2  # 13 // (2 ranks * 3)
        assert len(list(loader)) == 2
