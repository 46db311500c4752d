"""The streaming loader: batch layout, epochs, resampling, mixing, eval order and exact resume."""

import itertools
import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from align.data.stream.decode import decode_image
from align.data.stream.build import build_eval_loader, build_train_loader
from align.data.stream.receive import RECEIVE_DEPTH
from align.data.stream.sources import SourceSpec
from align.errors import DataError
from tests.wds_helpers import (
    TRANSFORMS, all_keys, audio_text, flat, image_text, image_tf, jpeg_bytes, make_shards, member_offset, text_tf,
    write_shard,
)

MODS = ["image", "text", "audio"]


def _kw(**over):
    kw = dict(transforms=TRANSFORMS, batch_size=4, modalities=MODS, num_workers=0, shuffle_buffer=16)
    kw.update(over)
    return kw


def test_mixed_image_text_and_audio_text_batches_with_masks(tmp_path):
    img, ikeys = make_shards(tmp_path / "i", 2, 6)
    aud, akeys = make_shards(tmp_path / "a", 2, 6, kind=audio_text, prefix="au")
    loader = build_train_loader([SourceSpec(img), SourceSpec(aud)], **_kw(drop_last=False))
    batches = list(loader)
    assert sorted(flat([b["__key__"] for b in batches])) == sorted(ikeys + akeys)
    assert any(b["image_mask"].any() and b["audio_mask"].any() for b in batches)  # one batch mixes both kinds
    sample_img = {k: image_text(k, seed=int(k[1:3]) * 1000 + int(k[4:]))["jpg"] for k in ikeys}
    for b in batches:
        is_img = torch.tensor([not k.startswith("au") for k in b["__key__"]])
        assert torch.equal(b["image_mask"], is_img) and torch.equal(b["audio_mask"], ~is_img)
        assert b["text_mask"].all() and b["image"].shape[1:] == (3, 4, 4) and b["audio"].shape[1:] == (2, 8)
        assert not b["image"][~is_img].any() and not b["audio"][is_img].any()  # zeros where missing
        for i, k in enumerate(b["__key__"]):
            cap = f"a sound {k}" if k.startswith("au") else f"a photo {k}"
            assert torch.equal(b["text"][i], text_tf([cap])[0])
            if not k.startswith("au"):
                assert torch.equal(b["image"][i], image_tf(decode_image(sample_img[k])))
        assert (b["cls"] == -1).all()


def test_epochs_reshuffle_and_are_reproducible(tmp_path):
    paths, keys = make_shards(tmp_path, 4, 6)
    loader = build_train_loader(paths, **_kw())
    e0 = flat(all_keys(loader))
    assert loader.epoch == 1  # moved on at the natural end
    e1 = flat(all_keys(loader))
    assert len(e0) == len(e1) == 24 and e0 != e1 and sorted(e0) == sorted(e1) == sorted(keys)
    loader.set_epoch(0)
    assert flat(all_keys(loader)) == e0
    other_seed = build_train_loader(paths, **_kw(seed=1))
    assert flat(all_keys(other_seed)) != e0


def _pid_tf(x):
    """An image transform that records which process decoded the sample."""
    import os
    return torch.full((1,), os.getpid(), dtype=torch.int64)


def _pids(batches):
    return {int(p) for b in batches for p in b["image"].flatten()}


def test_workers_go_on_into_the_next_epoch_and_give_the_same_stream(tmp_path):
    # The same worker processes read every epoch (no new processes per epoch); every epoch's batches must be
    # exactly those of a loader that starts each epoch with its own workers, or starts that epoch afresh.
    paths, keys = make_shards(tmp_path, 4, 6)
    tf = dict(TRANSFORMS, image=_pid_tf)
    kept = build_train_loader(paths, **_kw(num_workers=2, transforms=tf))
    own = build_train_loader(paths, **_kw(num_workers=2, transforms=tf, keep_workers=False))
    k_epochs = [list(kept) for _ in range(3)]
    o_epochs = [list(own) for _ in range(3)]
    assert kept.epoch == own.epoch == 3
    for ke, oe in zip(k_epochs, o_epochs):
        assert [list(b["__key__"]) for b in ke] == [list(b["__key__"]) for b in oe]
        assert sorted(flat(b["__key__"] for b in ke)) == sorted(keys)
        for kb, ob in zip(ke, oe):
            assert torch.equal(kb["text"], ob["text"])
    assert len(_pids(flat(k_epochs))) == 2                     # two processes for all three epochs
    assert len(_pids(flat(o_epochs))) == 6                     # two per epoch
    fresh = build_train_loader(paths, **_kw(num_workers=2))
    fresh.set_epoch(2)
    assert all_keys(fresh) == [list(b["__key__"]) for b in k_epochs[2]]
    kept.set_epoch(0)             # a jump elsewhere restarts the workers from that position
    assert kept._items is None and all_keys(kept) == [list(b["__key__"]) for b in k_epochs[0]]
    receiver = kept._items.receiver
    for loader in (kept, own, fresh):
        loader.close()
    assert not receiver.is_alive()
    for pid in _pids(flat(k_epochs)):                           # close() leaves no worker behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_loader_keeps_no_reference_to_a_batch_it_handed_out(tmp_path):
    # The training loop frees each batch after its step; a reference left in the loader would free it inside the
    # next take instead (unmapping its shared memory there: ~1 ms a step counted as waiting for data). (With 0
    # workers the in-process stream's generators hold the last batch until the next take: no shared memory there.)
    import weakref
    paths, _ = make_shards(tmp_path, 2, 8)
    loader = build_train_loader(paths, **_kw(num_workers=2))
    it = iter(loader)
    batch = next(it)
    image, text = weakref.ref(batch["image"]), weakref.ref(batch["text"])
    del batch
    assert image() is None and text() is None          # freed when the consumer lets go, not at the next take
    assert len(next(it)["__key__"]) == 4
    loader.close()


def test_start_reading_has_the_workers_make_batches_before_the_first_is_asked_for(tmp_path):
    paths, keys = make_shards(tmp_path, 2, 8)
    loader = build_train_loader(paths, **_kw(num_workers=1))
    first = build_train_loader(paths, **_kw(num_workers=1))
    loader.start_reading()
    deadline = time.monotonic() + 20
    while loader._items.receiver.q.qsize() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loader._items.receiver.q.qsize() > 0 and loader.batches == 0      # made, not yet handed out
    assert all_keys(loader) == all_keys(first)                               # the same stream
    loader.close()
    first.close()


def test_a_worker_whose_shards_end_early_is_held_back(tmp_path):
    # One shard of 1 batch, one of 12, one per worker: the worker with the short one goes on into the next
    # epochs long before the other ends this one. The gate must bound what the training process holds (2
    # per worker, plus what was in flight), not let it fill with an epoch ahead; the order stays the same.
    short, _ = make_shards(tmp_path / "s", 1, 4, prefix="s")
    long_, _ = make_shards(tmp_path / "l", 1, 48, prefix="l")
    kw = _kw(num_workers=2, prefetch_factor=1)
    kept = build_train_loader(short + long_, **kw)
    epochs = [all_keys(kept) for _ in range(3)]
    own = build_train_loader(short + long_, **dict(kw, keep_workers=False))
    assert epochs == [all_keys(own) for _ in range(3)]
    assert 0 < kept._items.ahead_max <= 2 * 2 + 2 + RECEIVE_DEPTH    # cap + prefetch + the receiver's queue
    kept.close()
    own.close()


def test_resampled_is_infinite_and_deterministic(tmp_path):
    paths, keys = make_shards(tmp_path, 3, 4)  # 12 samples; we draw 80

    def draw(**over):
        loader = build_train_loader(paths, **_kw(resampled=True, **over))
        return flat([b["__key__"] for b in itertools.islice(iter(loader), 20)])

    a = draw()
    assert len(a) == 80 and set(a) <= set(keys) and len(set(a)) > 6
    assert draw() == a
    assert draw(seed=3) != a and draw(epoch=1) != a
    loader = build_train_loader(paths, **_kw(resampled=True, samples_per_epoch=40))
    assert len(loader) == 10 and len(list(loader)) == 10 and len(list(loader)) == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_readings_of_a_sample_get_their_own_augmentation_and_resume_exactly(tmp_path, workers):
    # A resampled stream never ends its epoch, so each reading of a sample is told apart by its shard's draw:
    # seeded by the epoch alone, every reading repeated the first one's augmentation for the whole run (the
    # demo lost 10 points of val accuracy to it). A resume must give the same readings again.
    paths, keys = make_shards(tmp_path, 2, 3)           # 6 samples; 64 readings below
    aug = {"image": [{"type": "affine", "degrees": 40, "translate": [0.3, 0.3], "scale": [0.5, 1.0]}]}
    kw = _kw(resampled=True, augment=aug, modalities=["image", "text"], num_workers=workers)
    it = iter(build_train_loader(paths, **kw))
    batches = [next(it) for _ in range(16)]
    readings = {}
    for b in batches:
        for k, img in zip(b["__key__"], b["image"]):
            readings.setdefault(k, []).append(img.numpy().tobytes())
    assert sum(map(len, readings.values())) == 64 and min(map(len, readings.values())) >= 3
    # every reading differs, also between the two workers' streams, which draw the same shards at the same draws
    assert all(len(set(v)) == len(v) for v in readings.values())
    resumed = build_train_loader(paths, **kw)
    resumed.load_state_dict(_state_after(paths, kw, 5))
    for want, got in zip(batches[5:], itertools.islice(iter(resumed), 11)):
        assert want["__key__"] == got["__key__"] and torch.equal(want["image"], got["image"])


def _state_after(paths, kw, n):
    loader = build_train_loader(paths, **kw)
    it = iter(loader)
    for _ in range(n):
        next(it)
    return loader.state_dict()


def test_weighted_mixing_follows_weights(tmp_path):
    img, _ = make_shards(tmp_path / "i", 2, 10)
    aud, _ = make_shards(tmp_path / "a", 2, 10, kind=audio_text, prefix="au")
    loader = build_train_loader([SourceSpec(img, weight=3.0), SourceSpec(aud, weight=1.0)],
                                **_kw(resampled=True, samples_per_epoch=400, modalities=["image", "audio", "text"]))
    got = flat(all_keys(loader))
    frac_img = sum(not k.startswith("au") for k in got) / len(got)
    assert len(got) == 400 and abs(frac_img - 0.75) < 0.08  # binomial sd ~0.022
    # epoch mode: weights steer the interleave, and every sample is still read exactly once
    loader = build_train_loader([SourceSpec(img, weight=3.0), SourceSpec(aud, weight=1.0)], **_kw(drop_last=False))
    got = flat(all_keys(loader))
    assert len(got) == len(set(got)) == 40


def test_eval_loader_is_deterministic_in_listed_order(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    samples = [{"__key__": f"k{j}", "jpg": jpeg_bytes(j), "txt": f"first {j}\nsecond {j}\n", "cls": str(j % 3)}
               for j in range(10)]
    paths = [write_shard(root / "a.tar", samples[:6]), write_shard(root / "b.tar", samples[6:])]
    loader = build_eval_loader(paths, transforms=TRANSFORMS, batch_size=4, modalities=["image", "text"])
    batches = list(loader)
    assert [len(b["__key__"]) for b in batches] == [4, 4, 2]  # last partial batch kept
    assert flat([b["__key__"] for b in batches]) == [f"k{j}" for j in range(10)]
    assert torch.equal(torch.cat([b["cls"] for b in batches]), torch.tensor([j % 3 for j in range(10)]))
    assert all(torch.equal(b["text"][i], text_tf([f"first {k[1:]}"])[0])
               for b in batches for i, k in enumerate(b["__key__"]))
    assert flat(all_keys(loader)) == [f"k{j}" for j in range(10)]
    # training picks a caption line at random: both lines show up
    train = build_train_loader(paths, **_kw(modalities=["image", "text"], drop_last=False))
    firsts = [int(torch.equal(b["text"][i], text_tf([f"first {k[1:]}"])[0]))
              for b in train for i, k in enumerate(b["__key__"])]
    assert 0 < sum(firsts) < 10


def resume_dataset(root, shards=5, first=4, cut_shard=3):
    """Uneven shards (so workers end at different times: `first` + 2 i samples in shard i), a broken image in
    shard 1 and shard `cut_shard` truncated inside its sample 6."""
    root.mkdir()
    paths = []
    for i in range(shards):
        samples = [image_text(f"s{i}_{j}", seed=10 * i + j) for j in range(first + 2 * i)]
        if i == 1:
            samples[2] = {"__key__": "s1_bad", "jpg": b"broken", "txt": "x"}
        paths.append(write_shard(root / f"s{i}.tar", samples))
    cut = member_offset(paths[cut_shard], f"s{cut_shard}_6.jpg") + 5
    with open(paths[cut_shard], "r+b") as f:
        f.truncate(cut)
    return paths


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_gives_the_same_next_batches(tmp_path, num_workers):
    paths = resume_dataset(tmp_path / "d")
    kw = _kw(modalities=["image", "text"], batch_size=3, num_workers=num_workers, shuffle_buffer=5)
    ref_loader = build_train_loader(paths, **kw)
    ref = all_keys(ref_loader)
    ref_totals = (dict(ref_loader.skipped), ref_loader.seen)  # totals are cumulative over epochs
    ref_next_epoch = all_keys(ref_loader)
    assert ref_totals[0] == {"undecodable image": 1, "corrupt tar": 1}
    n = len(ref)
    assert n >= 6
    for k in sorted({1, 2, n // 2, n - 1, n}):
        first = build_train_loader(paths, **kw)
        it = iter(first)
        head = [list(next(it)["__key__"]) for _ in range(k)]
        state = json.loads(json.dumps(first.state_dict()))  # checkpoints are JSON-able
        del it
        resumed = build_train_loader(paths, resume_state=state, **kw)
        resumed.set_epoch(0 if k < n else 1)  # the usual call at the top of an epoch loop keeps the position
        tail = all_keys(resumed)
        if k < n:
            assert head + tail == ref, f"resume after {k} batches"
            assert (dict(resumed.skipped), resumed.seen) == ref_totals  # faults counted exactly once
        else:
            assert tail == ref_next_epoch


def test_resume_after_a_worker_finished_counts_its_faults_once(tmp_path):
    # One worker reads a short shard cut inside its 4th sample: without a shuffle buffer the
    # 'corrupt tar' is hit after its only batch, so it travels with that worker's final flush.
    root = tmp_path / "d"
    root.mkdir()
    short = write_shard(root / "short.tar", [image_text(f"a{j}", seed=j) for j in range(4)])
    cut = member_offset(short, "a3.jpg") + 5
    with open(short, "r+b") as f:
        f.truncate(cut)
    long = write_shard(root / "long.tar", [image_text(f"b{j}", seed=j) for j in range(15)])
    kw = _kw(modalities=["image", "text"], batch_size=3, num_workers=2, shuffle_buffer=0)
    ref_loader = build_train_loader([short, long], **kw)
    ref = all_keys(ref_loader)
    assert len(ref) == 6 and dict(ref_loader.skipped) == {"corrupt tar": 1}
    first = build_train_loader([short, long], **kw)
    it = iter(first)
    head = [list(next(it)["__key__"]) for _ in range(4)]
    del it
    assert first.state_dict()["worker_done"].count(True) == 1  # the short worker's flush was consumed
    resumed = build_train_loader([short, long], resume_state=first.state_dict(), **kw)
    assert head + all_keys(resumed) == ref
    assert dict(resumed.skipped) == {"corrupt tar": 1} and resumed.seen == ref_loader.seen


def test_exact_resume_with_epoch_quota(tmp_path):
    paths, _ = make_shards(tmp_path, 4, 5)
    kw = _kw(modalities=["image", "text"], batch_size=2, num_workers=2, samples_per_epoch=14, shuffle_buffer=4)
    ref = all_keys(build_train_loader(paths, **kw))
    assert len(ref) == 7
    first = build_train_loader(paths, **kw)
    it = iter(first)
    head = [list(next(it)["__key__"]) for _ in range(4)]
    state = first.state_dict()
    del it
    assert head + all_keys(build_train_loader(paths, resume_state=state, **kw)) == ref


def test_resume_state_mismatch_is_a_data_error(tmp_path):
    paths, _ = make_shards(tmp_path, 2, 4)
    state = build_train_loader(paths, **_kw(num_workers=2)).state_dict()
    with pytest.raises(DataError, match="saved with max\\(1, num_workers\\)=2 but this run has 1"):
        build_train_loader(paths, resume_state=state, **_kw(num_workers=0))
    with pytest.raises(DataError, match="not a StreamLoader state"):
        build_train_loader(paths, resume_state={"epoch": 1}, **_kw())


def test_bad_arguments_are_data_errors(tmp_path):
    paths, _ = make_shards(tmp_path, 1, 4)
    for over in (dict(modalities=["video"]), dict(transforms={"image": image_tf}), dict(batch_size=0),
                 dict(rank=2, world_size=2), dict(samples_per_epoch=3), dict(max_skip_frac=2.0)):
        with pytest.raises(DataError):
            build_train_loader(paths, **_kw(**over))
    with pytest.raises(TypeError, match="samples_per_epoch"):
        len(build_train_loader(paths, **_kw()))


def test_variable_shape_transform_is_a_clear_error(tmp_path):
    paths, _ = make_shards(tmp_path, 1, 4)
    sizes = iter([3, 4, 3, 4])
    tf = dict(TRANSFORMS, image=lambda img: torch.zeros(3, next(sizes), 2))
    with pytest.raises(DataError, match="must crop/pad to a fixed shape"):
        list(build_train_loader(paths, **_kw(transforms=tf, modalities=["image", "text"])))


def test_worker_transforms_are_seeded_per_stream(tmp_path):
    paths, _ = make_shards(tmp_path, 2, 4)
    tf = dict(TRANSFORMS, image=lambda img: torch.rand(1).expand(3, 4, 4).clone())
    kw = _kw(transforms=tf, modalities=["image", "text"], num_workers=2)
    a = [b["image"] for b in build_train_loader(paths, **kw)]
    b = [b["image"] for b in build_train_loader(paths, **kw)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 2
    assert not np.allclose(a[0][0, 0, 0, 0].item(), a[1][0, 0, 0, 0].item())


def test_in_process_decoding_touches_the_global_rng_only_on_the_training_thread(tmp_path, monkeypatch):
    """0 workers: the stream seeds and restores the global RNGs around each sample (decode._GlobalRngs,
    rng_preserving). Its end of epoch once ran on a background thread, whose restore raced the next
    epoch's seeding and changed random crops at random (a resumed run's weights differed ~1 run in 6)."""
    import threading
    paths, _ = make_shards(tmp_path, 2, 4)
    threads = []
    real = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (threads.append(threading.current_thread()), real(s))[1])
    tf = dict(TRANSFORMS, image=lambda img: torch.rand(1).expand(3, 4, 4).clone())
    loader = build_train_loader(paths, **_kw(transforms=tf, modalities=["image", "text"]))
    a = [b["image"] for _ in range(2) for b in loader]            # two epochs
    assert len(a) == 4 and threads and set(threads) == {threading.main_thread()}
    loader.set_epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(a, [b["image"] for _ in range(2) for b in loader]))


def _hang_tf(captions):
    """A text transform that hangs (a worker stuck in a read or a decoder) from the 5th sample of shard 01 on, so
    each worker makes its first batch."""
    from tests.wds_helpers import text_tf
    if "s01_" in captions[0] and int(captions[0].rsplit("_", 1)[1]) >= 4:
        stuck, release = os.environ["ALIGN_TEST_STUCK"], os.environ["ALIGN_TEST_RELEASE"]
        open(stuck, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
    return text_tf(captions)


def test_close_does_not_hang_on_a_stuck_worker(tmp_path, monkeypatch, caplog):
    import align.data.stream.loader as loader_mod
    paths, _ = make_shards(tmp_path, 2, 8)
    stuck, release = tmp_path / "stuck", tmp_path / "release"
    monkeypatch.setenv("ALIGN_TEST_STUCK", str(stuck))
    monkeypatch.setenv("ALIGN_TEST_RELEASE", str(release))
    monkeypatch.setattr(loader_mod, "CLOSE_WAIT_S", 1.0)
    loader = build_train_loader(paths, **_kw(num_workers=2, shuffle_buffer=0, transforms=dict(TRANSFORMS, text=_hang_tf)))
    it = iter(loader)
    assert len(next(it)["__key__"]) == 4                       # the worker of shard 01 is stuck on its next batch
    deadline = time.monotonic() + 20
    while not stuck.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stuck.exists()
    receiver = loader._items.receiver
    # A close that waited for the stuck worker would wait forever: the worker goes on only when `release` exists.
    # A timer releases it after 60 s so that such a close ends (and fails below) instead of hanging the suite;
    # no wall time is asserted: the close must return while the worker is still stuck.
    freed = threading.Timer(60, release.touch)
    freed.start()
    loader.close()
    returned_while_stuck = not release.exists()
    freed.cancel()
    release.touch()                                            # the worker goes on; its receiver then ends
    assert returned_while_stuck and "did not stop within 1 s" in caplog.text
    receiver.join(30)
    assert not receiver.is_alive()
