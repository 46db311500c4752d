"""align.data.stream.features: the audio log-mel (and the log-mel augmentation) computed in the training step gives
the tensors the data workers gave, and `align train` trains the same weights either way."""
import json

import pytest
import torch

from align.data.stream.features import StepFeatures
from align.data.stream.keys import AUG, PENDING, SEED
from align.data.stream.build import build_train_loader
from align.errors import DataError
from align.towers.audio_features import AudioFrontend, AudioPreprocess
from tests.data.stream.test_augment import _loader_kw, _mixed_shards, _tensors
from tests.wds_helpers import TRANSFORMS

# wave stages run in the workers either way; the log-mel stages (SpecAugment, VTLP) and the tower's own
# SpecAugment (freq_mask / time_mask, drawn from per-sample generators) move with the log-mel
AUG_CFG = {"audio": [{"type": "gain"}, {"type": "speed"}, {"type": "noise", "p": 0.5},
                     {"type": "spec_augment", "freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 2},
                     {"type": "vtlp"}]}


def _kw(num_workers, augment=AUG_CFG):
    return _loader_kw(num_workers, augment, freq_mask=3, time_mask=2)   # the tower's own SpecAugment draws too


@pytest.mark.parametrize("num_workers", [0, 1])
def test_features_in_the_step_equal_the_workers_features_bitwise(tmp_path, num_workers):
    paths = _mixed_shards(tmp_path / "d")
    ref = [_tensors(b) for b in build_train_loader(paths, **_kw(num_workers))]
    loader = build_train_loader(paths, features_in_step=True, **_kw(num_workers))
    finish = loader.step_features("cpu")
    raw, got = [], []
    for b in loader:
        assert b[PENDING] == ["audio"] and b["audio"].ndim == 3          # clips [B, C, samples]
        assert len(b[SEED]) == len(b[AUG]) == b["audio"].shape[0]
        raw.append(b["audio"].clone())
        got.append(_tensors(finish(b)))
        assert PENDING not in b and SEED not in b and AUG not in b
    assert len(ref) == len(got) >= 5
    for want, have in zip(ref, got):
        assert want.keys() == have.keys()
        for name in want:
            assert torch.equal(want[name], have[name]), name
    assert ref[0]["audio"].shape[1:] != raw[0].shape[1:]                  # the loader did hand out clips
    # the masks were drawn: some features were zeroed by SpecAugment in every batch that has audio
    assert any(bool((h["audio"] == 0).any()) for h in got)


def test_features_in_the_step_resume_exactly(tmp_path):
    paths = _mixed_shards(tmp_path / "d")
    kw = dict(_kw(0), features_in_step=True)
    first = build_train_loader(paths, **kw)
    finish = first.step_features("cpu")
    ref = [_tensors(finish(b)) for b in first]
    loader = build_train_loader(paths, **kw)
    it = iter(loader)
    next(it), next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    del it
    resumed = build_train_loader(paths, resume_state=state, **kw)
    tail = [_tensors(resumed.step_features("cpu")(b)) for b in resumed]
    assert len(tail) == len(ref) - 2
    for want, have in zip(ref[2:], tail):
        assert all(torch.equal(want[k], have[k]) for k in want)


def test_a_loader_without_features_in_step_or_eval_finishes_its_own_batches(tmp_path):
    paths = _mixed_shards(tmp_path / "d")
    loader = build_train_loader(paths, **_kw(0))
    assert loader.step_features("cpu") is None
    assert all(PENDING not in b and b["audio"].ndim == 3 and b["audio"].shape[1] == 16 for b in loader)
    ev = build_train_loader(paths, train=False, features_in_step=True, **dict(_kw(0), augment=None))
    assert ev.step_features("cpu") is None                                 # eval streams are finished in collate


def test_step_features_leaves_a_finished_batch_alone_and_names_a_failing_transform():
    fe = AudioFrontend(clip_seconds=0.05, n_mels=16)
    finish = StepFeatures({"audio": AudioPreprocess(fe, train=True), "text": TRANSFORMS["text"]},
                          ["audio", "text"], None, "cpu")
    done = {"audio": torch.zeros(2, 16, 6), "__key__": ["a", "b"]}
    assert finish(dict(done)).keys() == done.keys()

    class Broken(AudioPreprocess):
        def per_batch(self, clips, generator=None):
            raise ValueError("bad window")

    finish = StepFeatures({"audio": Broken(fe, train=True)}, ["audio"], None, "cpu")
    batch = {"audio": torch.zeros(2, 1, 800), "__key__": ["k1", "k2"], PENDING: ["audio"], SEED: [1, 2], AUG: [3, 4]}
    with pytest.raises(DataError, match=r"^transforms\['audio'\]\.per_batch failed on a batch of 2 \(k1, \.\.\.\): "
                                        r"ValueError\('bad window'\)$"):
        finish(batch)


def test_step_features_own_their_transform_so_the_loader_copy_stays_on_the_host():
    fe = AudioFrontend(clip_seconds=0.05, n_mels=16)
    tf = AudioPreprocess(fe, train=True)
    finish = StepFeatures({"audio": tf}, ["audio"], None, "meta")
    assert finish.transforms["audio"] is not tf
    assert finish.transforms["audio"].logmel.fb.device.type == "meta"
    assert tf.logmel.fb.device.type == "cpu"


def test_align_train_trains_the_same_weights_with_the_log_mel_in_the_step(tmp_path, monkeypatch):
    """Three towers through `train()` (0 workers, log-mel augmentation on): data.features_in=step (the default)
    against data.features_in=workers. Bit-identical weights, so moving the log-mel changed no draw and no order
    (also of the global RNG the training's own dropout draws from); each reaches the loader."""
    import align.data.stream.build as loader_mod
    from tests.switch_helpers import final_weights, recipe, train_dict
    from tests.wds_helpers import audio_text, image_text, write_shard

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_shard(data / f"s-{i}.tar", [image_text(f"i{i}_{j}", 10 * i + j) for j in range(6)]
                    + [audio_text(f"a{i}_{j}", 10 * i + j) for j in range(6)])
    audio = {"type": "audio", "clip_seconds": 0.25, "n_mels": 16, "patch": 8, "width": 32, "layers": 1, "heads": 2,
             "freq_mask": 3, "time_mask": 2}
    aug = {"audio": [{"type": "gain"}, {"type": "spec_augment", "freq_masks": 1, "freq_width": 4}]}
    calls = []
    real = loader_mod.build_train_loader

    def spy(*a, **kw):
        calls.append(kw.get("features_in_step"))
        return real(*a, **kw)

    monkeypatch.setattr(loader_mod, "build_train_loader", spy)
    weights = {}
    for where in ("step", "workers"):
        data_cfg = {"train": str(data / "s-{0..1}.tar"), "shuffle_buffer": 4, "augment": aug}
        if where == "workers":
            data_cfg["features_in"] = "workers"
        r = recipe(tmp_path, where, data=data_cfg, train={"max_steps": 3},
                   loss={"pairs": [["image", "text"], ["audio", "text"]]})
        r["model"]["towers"] = {"audio": audio}
        train_dict(r)
        weights[where] = final_weights(r["output_dir"])
    assert calls == [True, False]
    assert weights["step"].keys() == weights["workers"].keys()
    assert all(torch.equal(weights["step"][k], weights["workers"][k]) for k in weights["step"])
