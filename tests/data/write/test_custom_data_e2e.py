"""A user's own pairs end to end: a CSV of image paths + captions and a folder of audio + captions
become shards in one command each (broken inputs skipped and listed), then `align train` runs on
both sources mixed, with a corrupted shard's skips counted in metrics.jsonl and summary.json."""
import json
import os

import numpy as np
import soundfile as sf
from PIL import Image

from align.cli import main

WORDS = ["zero", "one", "two", "three"]


def _make_inputs(root):
    rng = np.random.default_rng(0)
    os.makedirs(root / "img")
    rows = ["path,caption"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a picture of {WORDS[i % 4]}")
    (root / "img" / "bad.png").write_bytes(b"not an image")
    rows += ["img/bad.png,broken image", "img/missing.png,no such file", "img/0.png,"]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    os.makedirs(root / "audio")
    for i in range(40):
        t = np.arange(8000) / 16000
        sf.write(str(root / "audio" / f"a{i}.wav"), (0.3 * np.sin(2 * np.pi * (200 + 100 * (i % 4)) * t)).astype(
            np.float32), 16000)
        (root / "audio" / f"a{i}.txt").write_text(f"the sound of {WORDS[i % 4]}")
    (root / "audio" / "b.wav").write_bytes(b"RIFF garbage")
    (root / "audio" / "b.txt").write_text("broken audio")


def test_csv_and_audio_folder_to_training(tmp_path, capsys):
    _make_inputs(tmp_path)
    assert main(["data", "shards", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "img_shards"),
                 "--image-col", "path", "--text-col", "caption", "--shard-size", "10"]) == 0
    stats = json.load(open(tmp_path / "img_shards" / "stats.json"))
    assert stats["written"] == 40 and stats["skipped"] == 3
    skipped = [json.loads(l) for l in open(tmp_path / "img_shards" / "skipped.jsonl")]
    assert len(skipped) == 3
    assert main(["data", "shards", str(tmp_path / "audio"), "--out", str(tmp_path / "aud_shards"),
                 "--shard-size", "10"]) == 0
    astats = json.load(open(tmp_path / "aud_shards" / "stats.json"))
    assert astats["written"] == 40 and astats["skipped"] == 1
    out = capsys.readouterr().out
    assert "skipped" in out

    # corrupt one image shard after the fact: cut it inside the 6th sample, so it yields exactly its first
    # 5 samples and one "corrupt tar" fault. Training must skip and count, not crash.
    import tarfile
    shard = tmp_path / "img_shards" / sorted(p for p in os.listdir(tmp_path / "img_shards") if p.endswith(".tar"))[1]
    with tarfile.open(shard) as tf:
        members = tf.getmembers()
    keys = list(dict.fromkeys(m.name.split(".")[0] for m in members))
    assert len(keys) == 10
    sixth = next(m for m in members if m.name.split(".")[0] == keys[5])
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: sixth.offset_data + 10])

    run = tmp_path / "run"
    recipe = {
        "output_dir": str(run), "resume": "none",
        "model": {"embed_dim": 16,
                  "open_clip": {"vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                               "head_width": 16},
                                "text_cfg": {"context_length": 12, "width": 32, "heads": 2, "layers": 1}},
                  "towers": {"audio": {"type": "audio", "clip_seconds": 0.5, "n_mels": 16, "patch": 8, "width": 32,
                                       "layers": 1, "heads": 2}}},
        "loss": {"pairs": [["image", "text"], ["audio", "text"]]},
        "data": {"train": [{"urls": str(tmp_path / "img_shards"), "weight": 1.0},
                           {"urls": str(tmp_path / "aud_shards"), "weight": 1.0}],
                 "num_workers": 0, "shuffle_buffer": 20},
        # one epoch: 30 + 5 image samples and 40 audio samples = 9 batches of 8 (3 dropped)
        "train": {"batch_size": 8, "max_steps": 9, "log_every": 3, "num_threads": 1},
    }
    import yaml
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--no-progress"]) == 0
    summary = json.load(open(run / "summary.json"))
    assert summary["steps"] == 9 and summary["skipped"] == {"corrupt tar": 1}, summary["skipped"]
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    assert rows[-1]["skipped"] == sum(summary["skipped"].values())
    assert rows[-1]["skipped_by_reason"] == summary["skipped"]
