"""SPACE.yaml (align/sweep/space.py): distributions parsed, and every bad key refused in one line naming the
file and the key, by the recipe's own schema (align.config); nothing here trains."""
import pytest
import yaml

from align.errors import ConfigError
from align.sweep.space import Param, check_key, load_space, override, parse_distribution
from tests.conftest import TINY_OPEN_CLIP

RECIPE = {"output_dir": "unused", "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
          "data": {"train": "synthetic"}, "train": {"max_steps": 6}}


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_a_good_space_parses_into_distributions(tmp_path):
    space = _space(tmp_path, "train.lr: {log_uniform: [1e-4, 3.0e-3]}\n"
                             "train.max_steps: {int: [100, 400], step: 50}\n"
                             "train.weight_decay: {uniform: [0.0, 0.3], step: 0.1}\n"
                             "model.open_clip.vision_cfg.width: {choice: [32, 64]}\n"
                             "data.augment: {choice: [null, {image: [{type: blur}]}]}\n"
                             "train.tower_lr.text: {choice: {slow: 1.0e-5, fast: 1.0e-3}}\n")
    p = {x.key: x for x in load_space(space, RECIPE)}
    assert (p["train.lr"].kind, p["train.lr"].low, p["train.lr"].high, p["train.lr"].log) == \
        ("log_uniform", 1e-4, 3e-3, True)                    # 1e-4 (no dot) is a string to PyYAML: read as a number
    assert (p["train.max_steps"].kind, p["train.max_steps"].low, p["train.max_steps"].step) == ("int", 100, 50)
    assert p["train.weight_decay"].step == 0.1 and not p["train.weight_decay"].log
    aug = p["data.augment"]
    assert aug.values == [None, {"image": [{"type": "blur"}]}]
    assert aug.labels == [None, "{image: [{type: blur}]}"]   # what Optuna can store: scalars or a YAML line
    assert aug.value_of("{image: [{type: blur}]}") == {"image": [{"type": "blur"}]}
    assert p["train.tower_lr.text"].labels == ["slow", "fast"] and p["train.tower_lr.text"].value_of("fast") == 1e-3


def test_suggest_draws_within_the_range_and_maps_labels_back():
    optuna = pytest.importorskip("optuna")
    params = [parse_distribution("train.lr", {"log_uniform": [1e-4, 1e-2]}),
              parse_distribution("train.max_steps", {"int": [100, 400], "step": 50}),
              parse_distribution("data.augment", {"choice": [None, {"image": [{"type": "blur"}]}]})]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        t = study.ask()
        seen.append({p.key: p.suggest(t) for p in params})
        study.tell(t, 0.0)
    assert all(1e-4 <= v["train.lr"] <= 1e-2 for v in seen)
    assert {v["train.max_steps"] for v in seen} <= {100, 150, 200, 250, 300, 350, 400}
    assert {yaml.safe_dump(v["data.augment"]) for v in seen} == {yaml.safe_dump(None),
                                                                 yaml.safe_dump({"image": [{"type": "blur"}]})}


def test_override_round_trips_through_the_recipe_parser():
    from align.config import apply_override
    for value in (None, 3e-4, 250, "x y", {"image": [{"type": "blur", "sigma": [0.2, 1.0]}]}):
        data = {}
        apply_override(data, override("data.augment", value))
        assert data["data"]["augment"] == value


def test_every_bad_key_is_one_line_naming_the_file_and_key(tmp_path):
    space = _space(tmp_path, "train.lrr: {log_uniform: [1e-4, 3e-3]}\n"
                             "train.lr: {log_uniform: [0, 3e-3]}\n"
                             "train: {uniform: [0, 1]}\n"
                             "train.max_steps: {int: [0, 400], step: 50}\n"
                             "train.warmup_steps: {int: [1.5, 4]}\n"
                             "model.towers.foo.width: {choice: [1, 2]}\n"
                             "data.augment: {choice: [null, {image: [{type: nosuch}]}]}\n"
                             "train.weight_decay: {normal: [0, 1]}\n"
                             "train.eps: {uniform: [1, 0]}\n"
                             "train.betas.x: {uniform: [0, 1]}\n"
                             "train.grad_clip: 0.1\n"
                             "model.embed_dim: {choice: []}\n")
    with pytest.raises(ConfigError) as e:
        load_space(space, RECIPE)
    lines = str(e.value).splitlines()
    assert len(lines) == 12 and all(line.startswith(f"{space}: ") for line in lines)
    want = [r"train\.lrr: unknown recipe key; valid keys in train: .*\blr\b",
            r"train\.lr: log_uniform with a log scale needs low > 0",
            r"train: train is a section",
            r"train\.max_steps: the recipe refuses train\.max_steps=0: train\.max_steps: must be >= 1",
            r"train\.warmup_steps: int needs integer bounds",
            r"model\.towers\.foo\.width: model\.towers\.foo is not a mapping of this recipe",
            r"data\.augment: the recipe refuses data\.augment=\{image: \[\{type: nosuch\}\]\}: .*unknown augmentation",
            r"train\.weight_decay: name one distribution of uniform, log_uniform, int, choice",
            r"train\.eps: uniform needs low < high",
            r"train\.betas\.x: unknown recipe key \(train\.betas is a list\[number\], not a section\)",
            r"train\.grad_clip: expected a mapping like",
            r"model\.embed_dim: choice needs at least one value"]
    import re
    for line, pattern in zip(lines, want):
        assert re.search(pattern, line), (pattern, line)


def test_keys_inside_free_form_mappings_need_a_parent_the_recipe_has():
    assert check_key("model.open_clip.vision_cfg.width", RECIPE) is None      # inside model.open_clip's mapping
    assert check_key("data.augment.image", RECIPE) is None                     # data.augment is a mapping
    assert check_key("train.tower_lr.text", RECIPE) is None
    assert "not a mapping of this recipe ('ViT-B-32')" in check_key(
        "model.open_clip.vision_cfg.width", dict(RECIPE, model={"open_clip": "ViT-B-32"}))
    assert check_key("model.init_from", RECIPE) is None and check_key("seed", RECIPE) is None


def test_a_space_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"space\.yaml: a space maps recipe keys to distributions"):
        load_space(_space(tmp_path, "- train.lr\n"), RECIPE)
    with pytest.raises(ConfigError) as e:
        load_space(_space(tmp_path, "train.lr: {log_uniform: [1.0e-4, 1]}\ntrain.eps: {uniform: [0\n"), RECIPE)
    assert str(e.value).endswith("space.yaml: not valid YAML at line 3, column 1: expected ',' or ']', but got "
                                 "'<stream end>' (while parsing a flow sequence at line 2, column 22)")
    assert isinstance(parse_distribution("a", {"int": [1, 8], "log": True}), Param)


def test_a_tower_option_typo_is_refused_before_any_trial(tmp_path):
    """The recipe schema leaves a tower's options to the tower (checked when the model is built): the space
    builds the towers a value changes, so a typo fails here, not in every trial."""
    recipe = dict(RECIPE, model={"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP), "towers": {"image": {}}})
    space = _space(tmp_path, "model.towers.image.widht: {choice: [32, 64]}\n"
                             "model.open_clip.vision_cfg.widht: {choice: [32, 64]}\n"
                             "model.open_clip.vision_cfg.width: {choice: [32, 64]}\n")
    with pytest.raises(ConfigError) as e:
        load_space(space, recipe)
    lines = str(e.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{space}: model.towers.image.widht: the recipe refuses model.towers.image.widht=32: "
                               f"model.towers.image: unknown key(s) ['widht']")
    assert lines[1].startswith(f"{space}: model.open_clip.vision_cfg.widht: the recipe refuses "
                               f"model.open_clip.vision_cfg.widht=32: model.towers.image: TypeError: ") and \
        "'widht'" in lines[1]
