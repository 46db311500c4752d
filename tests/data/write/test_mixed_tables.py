"""One table of image-text, audio-text and image-audio rows (empty cells for the modality a row lacks) -> mixed
shards in one `align data shards`: each row with two or more modalities becomes a sample of those, a row with fewer
is skipped and counted as training counts it; `align data inspect` and training read the shards as they are."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from align.cli import main
from align.data.stream.build import build_train_loader
from align.data.stream.keys import mask_key
from align.data.stream.faults import FEW_MODALITIES
from align.data.tools.inspect import inspect_shards
from align.data.write.shards import write_shards
from tests.wds_helpers import TRANSFORMS


def _table(tmp_path, fmt):
    """4 image-text, 4 audio-text and 4 image-audio rows, then one caption-only and one image-only row."""
    rng = np.random.default_rng(0)
    (tmp_path / "m").mkdir()
    rows = []
    for i in range(12):
        img, aud = f"m/{i}.png", f"m/{i}.wav"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / img)
        sf.write(str(tmp_path / aud), (0.3 * np.sin(np.arange(8000) * (0.05 + 0.01 * i))).astype(np.float32), 16000)
        kind = i // 4
        rows.append({"image": img if kind != 1 else None, "audio": aud if kind != 0 else None,
                     "caption": f"thing {i}" if kind != 2 else None})
    rows += [{"image": None, "audio": None, "caption": "alone"}, {"image": "m/0.png", "audio": None, "caption": ""}]
    df = pd.DataFrame(rows)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_three_modality_table_becomes_mixed_shards(tmp_path, fmt):
    stats = write_shards(_table(tmp_path, fmt), tmp_path / "out", shard_size=5, progress=False)
    assert stats["written"] == 12 and stats["skipped"] == 2, stats
    assert stats["by_reason"] == {FEW_MODALITIES: 2}
    assert stats["modalities"] == {"image": 8, "text": 8, "audio": 8, "label": 0}
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["row"] for s in skipped] == [12, 13]
    assert "only text left" in skipped[0]["reason"] and "only image left" in skipped[1]["reason"]
    res = inspect_shards(str(tmp_path / "out"), n=0, quiet=True, progress=False)
    assert res["samples"] == 12 and res["usable"] == 12 and res["skipped"] == {}
    assert sorted(res["checked"]) == ["audio", "image", "text"]


def test_a_two_column_table_still_skips_a_row_with_an_empty_cell(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    pd.DataFrame({"image": ["a.png", None], "caption": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    stats = write_shards(tmp_path / "t.csv", tmp_path / "out", progress=False)
    assert stats["written"] == 1 and stats["by_reason"] == {"image: missing": 1}


def test_training_reads_the_mixed_shards_of_one_table(tmp_path, capsys):
    table = _table(tmp_path, "csv")
    assert main(["data", "shards", str(table), "--out", str(tmp_path / "out"), "--shard-size", "6"]) == 0
    line = capsys.readouterr().out
    assert "wrote 12 image+text+audio samples" in line and "fewer than 2 modalities" in line
    assert main(["data", "inspect", str(tmp_path / "out"), "-n", "0"]) == 0
    assert "12 samples" in capsys.readouterr().out
    loader = build_train_loader(str(tmp_path / "out"), transforms=TRANSFORMS, batch_size=4, num_workers=0,
                                modalities=["image", "text", "audio"], shuffle_buffer=1, train=False)
    masks = {m: [] for m in ("image", "text", "audio")}
    for batch in loader:
        for m in masks:
            masks[m] += batch[mask_key(m)].tolist()
    assert len(masks["image"]) == 12 and not loader.skipped
    assert [sum(v) for v in masks.values()] == [8, 8, 8]
    # each sample holds exactly two of the three
    assert all(a + b + c == 2 for a, b, c in zip(*masks.values()))


def test_a_folder_whose_stems_hold_two_of_three_kinds_becomes_mixed_shards(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "a.jpg")
    (d / "a.txt").write_text("cap a")
    sf.write(str(d / "b.wav"), np.zeros(8000, np.float32), 16000)
    (d / "b.txt").write_text("cap b")
    Image.new("RGB", (8, 8)).save(d / "c.jpg")
    sf.write(str(d / "c.wav"), np.zeros(8000, np.float32), 16000)
    (d / "e.txt").write_text("alone")
    stats = write_shards(d, tmp_path / "out", progress=False)
    assert stats["written"] == 3 and stats["by_reason"] == {FEW_MODALITIES: 1}
    assert stats["modalities"] == {"image": 2, "text": 2, "audio": 2, "label": 0}
