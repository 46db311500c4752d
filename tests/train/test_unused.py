"""align.train.unused: a recipe key the run's mode never reads is named in one line before step 1, not ignored."""
import pytest

from tests.switch_helpers import metrics, recipe, train_dict

SHARDS_ONLY = {"shuffle_buffer": 5, "resampled": True, "max_skip_frac": 0.1, "augment": {"image": [{"type": "blur"}]},
               "text_keys": {"txt": 1.0}}


def _unused_lines(capsys) -> list:
    return [line for line in capsys.readouterr().out.splitlines() if ": not used (" in line]


def test_a_plain_recipe_says_nothing(tmp_path, capsys):
    """The tiny recipe with its synthetic keys only, data.num_workers at its default: no line."""
    r = recipe(tmp_path, "plain", train={"max_steps": 1})
    del r["data"]["num_workers"]
    train_dict(r)
    assert _unused_lines(capsys) == []


@pytest.mark.parametrize("sections, said", [
    ({"data": SHARDS_ONLY}, ["data.resampled=True", "data.shuffle_buffer=5", "data.max_skip_frac=0.1",
                             "data.augment=", "data.text_keys=", "data.train is synthetic"]),
    ({"eval": {"every": 1, "best_metric": "image/zeroshot/acc1", "batch_size": 3}},
     ["eval.every=1", "eval.best_metric=image/zeroshot/acc1", "eval.batch_size=3", "no data.val"]),
    ({"train": {"fsdp": {"param_dtype": "bf16"}}}, ["train.fsdp.param_dtype=bf16", "train.sharding is ddp"]),
    ({"loss": {"chunk_size": 2}}, ["loss.chunk_size=2", "loss.type=clip is not chunked"]),
    ({"model": {"init_logit_bias": -10.0}}, ["model.init_logit_bias=-10", "loss.type=clip is a softmax loss"]),
])
def test_a_key_this_mode_does_not_read_is_named(tmp_path, capsys, sections, said):
    r = recipe(tmp_path, "run", train={"max_steps": 1})
    del r["data"]["num_workers"]                   # (the tiny recipe's 0: a shard key, named on synthetic data)
    for section, keys in sections.items():
        r.setdefault(section, {}).update(keys)
    train_dict(r)
    lines = _unused_lines(capsys)
    assert len(lines) == 1 and all(s in lines[0] for s in said), lines


def test_synthetic_keys_are_named_on_shards(tmp_path):
    from align.config import parse_recipe
    from align.train.unused import unused_settings
    r = recipe(tmp_path, "sh", data={"train": str(tmp_path / "shards"), "synthetic_size": 64, "num_workers": 1})
    lines = unused_settings(parse_recipe(r))
    assert lines == ["data.synthetic_size=64: not used (data.train is not synthetic)"]


def test_samples_per_epoch_does_not_set_a_synthetic_epoch(tmp_path):
    """train.epochs=1 of data.synthetic_size=32 at batch 4 is 8 steps, whatever data.samples_per_epoch says (it
    set the step count, 2 steps, while the synthetic loader's epoch stayed 32 samples: the run ended mid-epoch)."""
    r = recipe(tmp_path, "spe", data={"synthetic_size": 32, "samples_per_epoch": 8},
               train={"batch_size": 4, "max_steps": None, "epochs": 1})
    assert train_dict(r)["steps"] == 8
    assert [row["epoch"] for row in metrics(r["output_dir"])] == [0] * 8


def test_fine_tuning_settings_with_nothing_to_act_on_are_named(tmp_path, capsys):
    """train.tower_lr for a tower locked for the whole run; train.layer_decay for a tower without a list of
    layers (bow_text): each one line before step 1. A decay over the image tower's blocks is not named."""
    r = recipe(tmp_path, "ft", train={"max_steps": 1, "tower_lr": {"image": 1e-4, "text": 1e-5}, "layer_decay": 0.8})
    del r["data"]["num_workers"]
    r["model"]["towers"] = {"image": {"lock": True}, "text": {"type": "bow_text", "width": 16}}
    train_dict(r)
    assert _unused_lines(capsys) == [
        "train.tower_lr.image=0.0001: not used (the image tower is locked for the whole run: none of its "
        "parameters trains)",
        "train.layer_decay=0.8: not used (the text tower has no list of layers to decay over: every parameter "
        "there takes the tower's base lr)"]


def test_features_in_without_an_audio_tower_is_named(tmp_path):
    from align.config import parse_recipe
    from align.train.unused import unused_settings
    r = recipe(tmp_path, "fi", data={"train": str(tmp_path / "shards"), "features_in": "workers", "num_workers": 1})
    del r["data"]["synthetic_size"]
    assert unused_settings(parse_recipe(r)) == [
        "data.features_in=workers: not used (no audio tower: it says where the audio log-mel is computed)"]
