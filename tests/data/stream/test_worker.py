"""The one decode loop (align.data.stream.worker): a sample's random transforms do not depend on who reads it,
the all-skipped guard holds for ordinary epochs and elastic segments, training drops the short last batch."""
import pytest
import torch
from torchvision import transforms as T

import align.data.stream.worker as stream_worker
from align.data.stream.build import build_train_loader
from align.errors import DataError
from align.towers.audio_features import AudioFrontend, AudioPreprocess
from tests.wds_helpers import TRANSFORMS, audio_text, image_text, make_shards, write_shard

MODS = ["image", "text", "audio"]
# every augmentation stage there is, on both modalities
AUG = {"image": [{"type": "random_resized_crop", "scale": [0.3, 1]}, {"type": "affine"},
                 {"type": "color_jitter"}, {"type": "grayscale"}, {"type": "blur"}, {"type": "random_erasing"}],
       "audio": [{"type": "gain"}, {"type": "time_shift", "max_seconds": 0.01}, {"type": "speed"},
                 {"type": "noise"}, {"type": "spec_augment", "freq_masks": 1, "freq_width": 4,
                                                     "time_masks": 1, "time_width": 2}]}


def _shards(root):
    root.mkdir()
    paths = []
    for i in range(4):
        samples = [image_text(f"i{i}_{j}", seed=10 * i + j) for j in range(4)]
        samples += [audio_text(f"a{i}_{j}", seed=10 * i + j) for j in range(4)]
        paths.append(write_shard(root / f"s{i}.tar", samples))
    return paths


def _kw(rank=0, world=1, workers=0, **over):
    # The towers' own random transforms: open_clip's RandomResizedCrop (torch's global RNG) on images;
    # the audio front end's random crop and its SpecAugment (freq_mask / time_mask).
    image = T.Compose([T.RandomResizedCrop(4, scale=(0.2, 1.0)), T.PILToTensor(), T.ConvertImageDtype(torch.float)])
    audio = AudioPreprocess(AudioFrontend(clip_seconds=0.02, n_mels=16, freq_mask=4, time_mask=2), train=True)
    kw = dict(transforms=dict(TRANSFORMS, image=image, audio=audio), batch_size=2, modalities=MODS, rank=rank,
              world_size=world, num_workers=workers, shuffle_buffer=6, augment=AUG, seed=5)
    return dict(kw, **over)


def _per_sample(batches, into):
    for b in batches:
        for i, key in enumerate(b["__key__"]):
            m = "image" if b["image_mask"][i] else "audio"
            assert key not in into, f"{key} trained twice"
            into[key] = b[m][i].clone()
    return into


def test_a_samples_random_transforms_do_not_depend_on_the_layout_or_a_resume(tmp_path):
    paths = _shards(tmp_path / "d")
    one = _per_sample(build_train_loader(paths, **_kw()), {})                      # 1 process, 0 workers
    two = {}
    for r in range(2):                                                             # 2 ranks x 2 workers
        _per_sample(build_train_loader(paths, **_kw(r, 2, 2)), two)
    head, states = {}, []
    for r in range(2):                                                             # 2 ranks, 1 step ...
        ld = build_train_loader(paths, **_kw(r, 2, 2))
        _per_sample([next(iter(ld))], head)
        states.append(ld.state_dict())
        ld.close()
    elastic = _per_sample(build_train_loader(paths, resume_state=states, **_kw(0, 1, 1)), dict(head))  # ... then 1
    plain = _per_sample(build_train_loader(paths, **_kw(augment=None)), {})
    for run in (two, elastic):
        common = set(one) & set(run)
        assert len(common) >= 24                                                  # of 32 (short batches dropped)
        for key in common:
            # Images bit for bit. Audio to 1e-5: its log-mel is a matmul over the whole batch, and on some CPUs
            # (seen on an AMD EPYC) BLAS picks another kernel for another batch make-up, 1 ulp apart; a crop
            # or a mask drawn differently moves values by far more than that.
            if key.startswith("a"):
                assert torch.allclose(one[key], run[key], rtol=0, atol=1e-5), key
            else:
                assert torch.equal(one[key], run[key]), key
    assert any(not torch.equal(one[k], plain[k]) for k in set(one) & set(plain))  # augmentation is on
    assert len({tuple(one[k].flatten().tolist()) for k in one if k.startswith("i")}) > 1


def _image_readings(batches, into):
    for b in batches:
        for i, key in enumerate(b["__key__"]):
            if b["image_mask"][i]:
                into.append((key, b["image"][i].numpy().tobytes()))
    return into


def test_resampled_readings_belong_to_their_stream_not_to_the_reader(tmp_path):
    # data.resampled seeds a reading by (epoch, its stream RANK.WORKER, its shard's draw): an elastic resume on
    # another layout reads the checkpoint's streams on, so it must give the readings those streams would have
    # given (seeded by the reader instead, they would differ).
    paths = _shards(tmp_path / "d")
    kw = dict(resampled=True, samples_per_epoch=64)               # per rank and epoch: 16 batches of 2
    cont, head, states = [], [], []
    for r in range(2):                                            # 2 ranks x 2 workers: the whole epoch ...
        _image_readings(build_train_loader(paths, **_kw(r, 2, 2, **kw)), cont)
        ld = build_train_loader(paths, **_kw(r, 2, 2, **kw))       # ... and a checkpoint after 3 steps
        it = iter(ld)
        _image_readings([next(it) for _ in range(3)], head)
        states.append(ld.state_dict())
        ld.close()
    rest = _image_readings(build_train_loader(paths, resume_state=states, **_kw(0, 1, 1, **kw)), [])
    assert set(head) <= set(cont) and len(rest) >= 20 and set(rest) <= set(cont)   # 1 process: the same readings
    keys = [k for k, _ in cont]
    assert len(set(keys)) < len(keys) == len(set(cont))               # samples read more than once, each differently


@pytest.mark.parametrize("workers", [0, 2])
def test_reading_leaves_the_training_processs_rngs_alone(tmp_path, workers):
    # 0 workers: decoding runs here; 2: the DataLoader's base seed and the next epoch started early.
    # Either way a resumed run's dropout must not depend on where in the epoch it resumed.
    paths = _shards(tmp_path / "d")
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    loader = build_train_loader(paths, **_kw(workers=workers))
    list(loader)
    loader.close()
    assert torch.equal(torch.rand(3), want)


def _all_broken(tmp_path):
    bad = T.Lambda(lambda img: 1 / 0)
    root = tmp_path / "d"
    paths, _ = make_shards(root, 4, 12)
    return paths, dict(TRANSFORMS, image=bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_everything_skipped_stops_ordinary_epochs_and_elastic_segments(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(stream_worker, "MAX_ALL_SKIPPED", 10)
    paths, broken = _all_broken(tmp_path)
    kw = dict(batch_size=2, modalities=["image", "text"], shuffle_buffer=4)
    with pytest.raises(DataError, match=r"first 10 samples .* were all skipped \(image transform failed"):
        list(build_train_loader(paths, transforms=broken, num_workers=workers, **kw))
    # a checkpoint of 2 healthy ranks resumed on 1 process whose image codec (here: transform) is broken
    states = []
    for r in range(2):
        ld = build_train_loader(paths, transforms=TRANSFORMS, rank=r, world_size=2, num_workers=2, **kw)
        next(iter(ld))
        states.append(ld.state_dict())
        ld.close()
    resumed = build_train_loader(paths, transforms=broken, num_workers=workers, resume_state=states, **kw)
    st = resumed.state_dict()
    assert st.get("segments") or st.get("segments_left")                         # it reads elastic segments
    with pytest.raises(DataError, match=r"first 10 samples .* were all skipped \(image transform failed"):
        list(resumed)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_drops_each_workers_short_last_batch_eval_keeps_it(tmp_path, workers):
    paths, keys = make_shards(tmp_path, 2, 5)                   # per worker (or for 1): 5 or 10 samples
    kw = dict(transforms=TRANSFORMS, batch_size=4, modalities=["image", "text"], num_workers=workers)
    train = [b["__key__"] for b in build_train_loader(paths, **kw)]
    assert all(len(b) == 4 for b in train) and len(train) == 2
    kept = [b["__key__"] for b in build_train_loader(paths, train=False, **kw)]
    assert sorted(k for b in kept for k in b) == sorted(keys) and min(len(b) for b in kept) < 4
