"""Recipe parsing: typed values, dotted overrides, one-line errors for unknown/mistyped/missing keys."""
import pytest
import yaml

from align.config import apply_override, load_recipe, parse_recipe
from align.errors import ConfigError


def _write(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_overrides_are_typed(tmp_path, tiny_recipe):
    r = load_recipe(_write(tmp_path, tiny_recipe), ["train.batch_size=32", "train.lr=0.01", "loss.type=siglip",
                                                    "model.init_logit_bias=-10", "train.precision=bf16"])
    assert r.train.batch_size == 32 and isinstance(r.train.lr, float) and r.train.lr == 0.01
    assert r.loss.type == "siglip" and r.model.init_logit_bias == -10.0 and r.train.precision == "bf16"


def test_open_clip_shorthand_fills_dual_towers(tiny_recipe):
    r = parse_recipe(tiny_recipe)
    assert set(r.model.towers) == {"image", "text"}
    assert all(t["type"] == "open_clip" for t in r.model.towers.values())


def test_open_clip_shorthand_keeps_tower_options_given_beside_it(tmp_path, tiny_recipe):
    r = load_recipe(_write(tmp_path, tiny_recipe), ["model.towers.text.trim_padding=false",
                                                    "model.towers.image.grad_checkpointing=true"])
    assert r.model.towers["text"] == {"type": "open_clip", "config": tiny_recipe["model"]["open_clip"],
                                      "trim_padding": False}
    assert r.model.towers["image"]["grad_checkpointing"] is True and r.model.towers["image"]["type"] == "open_clip"


def test_open_clip_name_sets_embed_dim(tiny_recipe):
    tiny_recipe["model"] = {"open_clip": "ViT-B-32"}
    assert parse_recipe(tiny_recipe).model.embed_dim == 512


def test_unknown_key_names_key_and_valid_ones(tmp_path, tiny_recipe):
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, tiny_recipe), ["train.batchsize=3"])
    msg = str(e.value)
    assert "train.batchsize" in msg and "batch_size" in msg and "\n" not in msg


def test_wrong_type_names_key(tiny_recipe):
    tiny_recipe["train"]["max_steps"] = "many"
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer"):
        parse_recipe(tiny_recipe)
    tiny_recipe["train"]["max_steps"] = 3
    tiny_recipe["train"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match=r"train.precision: expected one of"):
        parse_recipe(tiny_recipe)


def test_missing_required_and_cross_checks(tiny_recipe):
    del tiny_recipe["train"]["max_steps"]
    with pytest.raises(ConfigError, match="max_steps or train.epochs"):
        parse_recipe(tiny_recipe)
    tiny_recipe["train"]["max_steps"] = 2
    tiny_recipe["loss"] = {"pairs": [["image", "audio"]]}
    with pytest.raises(ConfigError, match=r"no tower for 'audio'"):
        parse_recipe(tiny_recipe)
    tiny_recipe["loss"] = {"type": "siglip"}
    with pytest.raises(ConfigError, match="init_logit_bias"):
        parse_recipe(tiny_recipe)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "train.max_steps")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
