"""`align bench` decodes media within the limits of the recipe the model was trained with (its run, checkpoint or
export), a suite model's `limits:` and `--limit NAME=VALUE` replace single fields, and a skip names `--limit`, the
option these commands have, never the recipe key `data.limits.*`."""
import json
import os

import numpy as np
import pytest
import yaml

import align
from align.bench.models import export_limits, load_model, resolve_specs
from align.cli import main
from align.errors import ConfigError
from align.limits import DEFAULT_LIMITS, DataLimits
from tests.bench.conftest import FakeModel

SR = 16000


def _audio_classes(root, seconds=(0.02, 0.05)) -> str:
    """ROOT/<class>/<clip>.wav: in each of 2 classes one clip per duration (seconds)."""
    import soundfile as sf
    rng = np.random.default_rng(0)
    for c in ("dog", "cat"):
        os.makedirs(root / c, exist_ok=True)
        for s in seconds:
            sf.write(str(root / c / f"{c}_{int(s * 1000)}ms.wav"), (rng.standard_normal(int(s * SR)) * 0.1)
                     .astype(np.float32), SR)
    return str(root)


@pytest.fixture(scope="module")
def strict_run(tmp_path_factory):
    """A tiny image+text+audio run whose recipe allows clips of up to 0.03 s (data.limits.max_audio_seconds)."""
    from tests.export.conftest import TINY_AUDIO_CNN, make_run
    return make_run(tmp_path_factory.mktemp("strict"), towers={"audio": TINY_AUDIO_CNN},
                    limits={"max_audio_seconds": 0.03})[0]


def test_a_run_is_benched_within_its_recipes_limits_and_limit_replaces_one(tmp_path, capsys, strict_run):
    """The 0.05 s clips, which training skipped, were scored by `align bench` (the default limits: 600 s); under the
    recipe's limits they are skipped, the skip names --limit, and --limit lets them in (also past a cache filled
    under the recipe's limits)."""
    data = _audio_classes(tmp_path / "clips")
    base = ["bench", "zeroshot", "--model", strict_run, "--dataset", data, "--type", "audiofolder", "--modality",
            "audio", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    assert main(base + ["--out", str(tmp_path / "strict.json")]) == 0
    out = capsys.readouterr().out
    r = json.load(open(tmp_path / "strict.json"))
    assert r["skipped"] == {"audio": 2} and r["n"]["scored"] == 2 and r["limits"] == {"max_audio_seconds": 0.03}
    assert "media limits max_audio_seconds=0.03" in out
    assert "audio too long: audio: 0.05 s, over max_audio_seconds=0.03 (--limit max_audio_seconds=VALUE accepts it)" \
        in r["errors"][0] and "data.limits" not in r["errors"][0]
    assert main(base + ["--out", str(tmp_path / "loose.json"), "--limit", "max_audio_seconds=1"]) == 0
    r = json.load(open(tmp_path / "loose.json"))
    assert r["skipped"] == {"audio": 0} and r["n"]["scored"] == 4 and r["limits"] == {"max_audio_seconds": 1.0}


def test_a_bad_limit_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import align.bench.datasets as datasets
    import align.bench.models as models
    import align.bench.suite  # noqa: F401  imported now: one imported under the patch below would keep `boom`

    def boom(*a, **k):
        raise AssertionError("work started before --limit was checked")
    monkeypatch.setattr(datasets, "open_dataset", boom)
    monkeypatch.setattr(models, "load_model", boom)
    for extra in (["--limit", "max_audio_secs=5"], ["--limit", "max_audio_seconds=-5"]):
        assert main(["bench", "zeroshot", "--model", "m", "--dataset", "d", "--out", str(tmp_path / "x.json"),
                     "--device", "cpu"] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--limit" in err and "valid names: max_member_bytes" in err, err


def test_an_export_carries_its_recipes_limits_to_align_load_and_local_dir(tmp_path, strict_run):
    from align.export import export
    export(strict_run, str(tmp_path / "exp"), fmt="open_clip", progress=False)
    assert align.load(strict_run).data_limits.max_audio_seconds == 0.03
    assert align.load(str(tmp_path / "exp")).data_limits.max_audio_seconds == 0.03
    oc = load_model(f"local-dir:{tmp_path / 'exp'}")                  # open_clip's layout + align_config.json
    assert oc.data_limits.max_audio_seconds == 0.03
    assert load_model(f"local-dir:{tmp_path / 'exp'}", limits={"max_audio_seconds": 2.0}).data_limits \
        .max_audio_seconds == 2.0


def test_export_limits_reads_the_recipe_copy_or_says_what_is_wrong(tmp_path):
    assert export_limits(str(tmp_path)) is DEFAULT_LIMITS                 # an open_clip folder of no align run
    (tmp_path / "align_config.json").write_text(json.dumps({"data": {"limits": {"max_text_bytes": 10}}}))
    assert export_limits(str(tmp_path)).max_text_bytes == 10
    (tmp_path / "align_config.json").write_text(json.dumps({"data": {"limits": {"max_text_bytez": 10}}}))
    with pytest.raises(ConfigError, match=r"align_config.json: data.limits.max_text_bytez: unknown limit"):
        export_limits(str(tmp_path))
    (tmp_path / "align_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"align_config.json: not readable as align's recipe copy"):
        export_limits(str(tmp_path))


def test_a_suite_models_limits_go_over_its_recipes_and_the_cli_over_both(monkeypatch):
    from align.bench import models as bm
    trained = FakeModel()
    trained.data_limits = DataLimits(max_audio_seconds=120.0, max_text_bytes=10, max_audio_channels=2)
    monkeypatch.setitem(bm.MODEL_SOURCES._items, "align", lambda rest, pretrained=None, device="cpu": trained)
    m = load_model({"model": "runs/x", "limits": {"max_text_bytes": 20, "max_audio_channels": 4}},
                   limits={"max_audio_channels": 6})
    assert (m.data_limits.max_audio_seconds, m.data_limits.max_text_bytes, m.data_limits.max_audio_channels) == \
        (120.0, 20, 6)
    with pytest.raises(ConfigError, match=r"^suite 's.yaml' models\[0\]: limits: max_audio_secs=3: unknown limit "
                                          r"'max_audio_secs'; valid names: "):
        resolve_specs([{"model": "runs/x", "limits": {"max_audio_secs": 3}}], ".", "suite 's.yaml'")
    with pytest.raises(ConfigError, match=r"models\[0\]: 'limits' must be a mapping"):
        resolve_specs([{"model": "runs/x", "limits": 3}], ".", "suite 's.yaml'")


def test_a_suite_scores_each_model_within_its_own_limits(tmp_path, capsys, strict_run):
    data = _audio_classes(tmp_path / "clips")
    suite = {"models": [{"model": strict_run, "name": "as_trained"},
                        {"model": strict_run, "name": "longer", "limits": {"max_audio_seconds": 1}}],
             "benchmarks": [{"dataset": data, "type": "audiofolder", "task": "zeroshot", "modality": "audio",
                             "name": "clips"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["bench", "suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"),
                 "--num-workers", "0"]) == 0
    got = {r["model"]: r for r in (json.load(open(tmp_path / "out" / f)) for f in os.listdir(tmp_path / "out")
                                   if f.endswith(".json"))}
    assert got["as_trained"]["skipped"] == {"audio": 2} and got["longer"]["skipped"] == {"audio": 0}


def test_skip_existing_refuses_a_result_of_other_limits(tmp_path, capsys, strict_run):
    data = _audio_classes(tmp_path / "clips")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(
        [{"dataset": data, "type": "audiofolder", "task": "zeroshot", "modality": "audio"}]))
    cmd = ["bench", "suite", str(tmp_path / "suite.yaml"), "--model", strict_run, "--out", str(tmp_path / "out"),
           "--num-workers", "0"]
    assert main(cmd) == 0
    assert main(cmd + ["--skip-existing"]) == 0                     # the same limits: kept
    capsys.readouterr()
    assert main(cmd + ["--skip-existing", "--limit", "max_audio_seconds=1"]) != 0
    err = capsys.readouterr().err
    assert "--skip-existing keeps a result encoded with limits {'max_audio_seconds': 0.03}" in err, err


def test_captions_read_when_a_set_opens_follow_the_limits_given(tmp_path):
    """A wds set's captions are read when it is opened, once for every model: within --limit over the defaults
    (the suite and single commands pass them), and a caption past them names --limit."""
    from align.bench.datasets import open_dataset
    from align.bench.suite import run_entry
    from tests.bench.conftest import png_bytes, write_wds
    rng = np.random.default_rng(0)
    write_wds(tmp_path / "set", [("a", {"png": png_bytes(rng), "txt": "short"}),
                                 ("b", {"png": png_bytes(rng), "txt": "a caption of more than forty bytes, " * 2})])
    assert len(open_dataset(str(tmp_path / "set"), "wds")) == 2
    ds = open_dataset(str(tmp_path / "set"), "wds", limits=DataLimits(max_text_bytes=40))
    assert [it.key for it in ds.items] == ["0.tar:a"]
    assert ds.problems == ["0.tar:b: caption too long (txt); sample skipped (--limit max_text_bytes=VALUE accepts it)"]
    with pytest.raises(ConfigError, match=r"options: 'limits' is no dataset option; limits belong to a model"):
        run_entry(FakeModel(), dataset=str(tmp_path / "set"), type="wds", task="retrieval", progress=False,
                  options={"limits": {"max_text_bytes": 9}})
