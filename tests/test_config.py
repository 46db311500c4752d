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


# -- every recipe mistake fails at load, in one line naming the key and the valid values ------------------
def _one_line_error(recipe_dict, *fragments):
    with pytest.raises(ConfigError) as e:
        parse_recipe(recipe_dict)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_unknown_loss_type_lists_the_registry(tiny_recipe):
    tiny_recipe["loss"] = {"type": "infonce"}
    _one_line_error(tiny_recipe, "loss.type", "'infonce'", "clip, siglip", "chunked_siglip")


def test_chunked_siglip_needs_logit_bias(tiny_recipe):
    tiny_recipe["loss"] = {"type": "chunked_siglip"}
    _one_line_error(tiny_recipe, "model.init_logit_bias", "loss.type=chunked_siglip")
    tiny_recipe["model"]["init_logit_bias"] = -10
    assert parse_recipe(tiny_recipe).loss.type == "chunked_siglip"


def test_unknown_eval_task_lists_the_benchmark_registry(tiny_recipe):
    tiny_recipe["eval"] = {"tasks": ["zershot"]}
    _one_line_error(tiny_recipe, "eval.tasks[0]", "'zershot'", "zeroshot", "retrieval", "linear_probe")


def test_any_registered_benchmark_is_a_valid_eval_task(tiny_recipe):
    from align.bench import BENCHMARKS
    tiny_recipe["eval"] = {"tasks": BENCHMARKS.names()}
    assert parse_recipe(tiny_recipe).eval.tasks == BENCHMARKS.names()


def test_best_metric_must_be_a_metric_the_eval_produces(tiny_recipe):
    tiny_recipe["eval"] = {"tasks": ["zeroshot"], "best_metric": "acc1"}
    _one_line_error(tiny_recipe, "eval.best_metric", "'acc1'", "image/zeroshot/acc1")
    tiny_recipe["eval"]["best_metric"] = "audio/zeroshot/acc1"          # the model has no audio tower
    _one_line_error(tiny_recipe, "eval.best_metric", "image/zeroshot/mean_per_class_recall")
    tiny_recipe["eval"]["best_metric"] = "text-image/retrieval/image_retrieval_recall@1"   # task not in eval.tasks
    _one_line_error(tiny_recipe, "eval.best_metric")
    for ok in ("image/zeroshot/acc1", "image/zeroshot/acc5"):
        tiny_recipe["eval"]["best_metric"] = ok
        assert parse_recipe(tiny_recipe).eval.best_metric == ok
    tiny_recipe["eval"] = {"tasks": ["retrieval", "linear_probe"],
                           "best_metric": "text-image/retrieval/text_retrieval_recall@5"}
    parse_recipe(tiny_recipe)
    tiny_recipe["eval"]["best_metric"] = "image/linear_probe/acc1"
    parse_recipe(tiny_recipe)


@pytest.mark.parametrize("key,value,expect", [
    ("train.lr", -1e-3, "train.lr: must be >= 0"),
    ("train.warmup_steps", -5, "train.warmup_steps: must be >= 0"),
    ("train.max_steps", 0, "train.max_steps: must be >= 1"),
    ("train.epochs", -1, "train.epochs: must be >= 1"),
    ("train.batch_size", 0, "train.batch_size: must be >= 1"),
    ("train.accum_steps", -2, "train.accum_steps: must be >= 1"),
    ("train.weight_decay", -0.1, "train.weight_decay: must be >= 0"),
    ("train.grad_clip", 0, "train.grad_clip: must be > 0"),
    ("train.checkpoint_every", -1, "train.checkpoint_every: must be >= 0"),
    ("train.log_every", 0, "train.log_every: must be >= 1"),
    ("train.min_lr_ratio", 1.5, "train.min_lr_ratio: must be >= 0 and <= 1"),
    ("train.betas", [0.9, 1.2], "train.betas: expected two numbers in [0, 1)"),
    ("data.num_workers", -1, "data.num_workers: must be >= 0"),
    ("data.max_skip_frac", 2, "data.max_skip_frac: must be >= 0 and <= 1"),
    ("data.samples_per_epoch", 0, "data.samples_per_epoch: must be >= 1"),
    ("eval.every", -10, "eval.every: must be >= 0"),
    ("loss.chunk_size", 0, "loss.chunk_size: must be >= 1"),
    ("loss.weights", [-1.0], "loss.weights: must be finite and >= 0"),
])
def test_negative_and_out_of_range_values_fail_at_load(tiny_recipe, key, value, expect):
    section, name = key.split(".")
    tiny_recipe.setdefault(section, {})[name] = value
    _one_line_error(tiny_recipe, expect)


def test_nan_lr_fails(tmp_path, tiny_recipe):
    with pytest.raises(ConfigError, match=r"train.lr: must be a finite number, got nan"):
        load_recipe(_write(tmp_path, tiny_recipe), ["train.lr=.nan"])


def test_data_train_source_with_unknown_key_names_it(tiny_recipe):
    tiny_recipe["data"]["train"] = [{"url": "a"}]
    _one_line_error(tiny_recipe, "unknown key 'data.train[0].url'", "valid keys in data.train[0]: urls, weight")
    tiny_recipe["data"]["train"] = ["x.tar", {"urls": "a", "wieght": 2}]
    _one_line_error(tiny_recipe, "unknown key 'data.train[1].wieght'", "urls, weight")
    tiny_recipe["data"]["train"] = [{"urls": "a", "weight": -1}]
    _one_line_error(tiny_recipe, "data.train[0].weight: must be >= 0")
    tiny_recipe["data"]["train"] = [{"weight": 2}]
    _one_line_error(tiny_recipe, "missing required key 'data.train[0].urls'")
    tiny_recipe["data"]["train"] = ["a.tar", {"urls": ["b.tar", "c.tar"], "weight": 2}]
    r = parse_recipe(tiny_recipe)
    assert r.data.train[0] == "a.tar" and r.data.train[1].urls == ["b.tar", "c.tar"] and r.data.train[1].weight == 2


def test_unknown_tower_type_lists_registered_types(tiny_recipe):
    tiny_recipe["model"] = {"embed_dim": 16, "towers": {"image": {"type": "open_clip", "model": "ViT-B-32"},
                                                        "text": {"type": "bert"}}}
    _one_line_error(tiny_recipe, "model.towers.text.type", "'bert'", "audio, audio_cnn, bow_text, hf, hf_audio, hf_image, open_clip, rnn_audio, rnn_text, timm")
    tiny_recipe["model"]["towers"]["text"] = {"model": "x"}
    _one_line_error(tiny_recipe, "model.towers.text.type: missing", "open_clip")


def test_every_recipe_field_has_help_text():
    """`align train --help-keys` reads field metadata["help"]: a new key without one fails here."""
    import dataclasses
    from align import config
    missing = []
    for cls in (config.Recipe, config.ModelConfig, config.LossConfig, config.SourceConfig, config.DataConfig,
                config.FsdpConfig, config.TrainConfig, config.EvalConfig):
        missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if not (f.metadata or {}).get("help")]
    assert not missing, f"config fields without help=: {missing}"
    from align.config_keys import recipe_keys
    keys = {k["key"]: k for k in recipe_keys()}
    assert keys["train.fsdp.param_dtype"]["type"] == "fp32|bf16|fp16"
    assert keys["model"]["default"] is dataclasses.MISSING and keys["train.betas"]["default"] == [0.9, 0.98]
    # every dataclass reachable from Recipe is listed (so a new section is checked above too)
    assert {k.rsplit(".", 1)[0] for k in keys if "." in k} >= {"model", "loss", "data", "train", "train.fsdp",
                                                                "eval", "data.train[]"}


@pytest.mark.parametrize("text, msg", [
    ("train:\n  max_steps: 10\n lr: 3\n", r"bad.yaml: not valid YAML at line 3, column 2: expected <block end>"),
    ("train:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", r"bad.yaml: not valid YAML at line 3, column 3: key 'lr' is written "
                                             r"twice \(lines 2 and 3\)")])
def test_a_recipe_that_is_not_valid_yaml_names_the_line_once(tmp_path, text, msg):
    """The error kept only PyYAML's first line (no line, no column) and named the file twice; a key written twice
    was taken silently, the last one winning."""
    from align.config import load_recipe
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        load_recipe(str(p))
    assert str(e.value).count("bad.yaml") == 1 and "\n" not in str(e.value)


def test_a_typo_is_answered_with_the_key_meant_and_infinity_is_not_a_number(tmp_path, tiny_recipe):
    """`train.lr=.inf` passed `lr > 0` and failed only at run time (a NaN loss); a typo listed every key but did
    not say which one was meant."""
    with pytest.raises(ConfigError, match=r"unknown key 'train.wramup_steps' \(did you mean 'warmup_steps'\?\)"):
        load_recipe(_write(tmp_path, tiny_recipe), ["train.wramup_steps=3"])
    for bad in (".inf", "-.inf", ".nan"):
        with pytest.raises(ConfigError, match=r"train.lr: must be a finite number"):
            load_recipe(_write(tmp_path, tiny_recipe), [f"train.lr={bad}"])
