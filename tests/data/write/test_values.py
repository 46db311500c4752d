"""align.data.write.values (and the shard writer over it): a caption's line ends are \\n, \\r\\n and \\r only (a
U+2028 stays inside its caption, from the table to training and `align bench`); a caption, extra caption column,
hard negative or label holding a lone surrogate (a JSON "\\ud800" escape) is a skipped row that names it."""
import json

import pytest
from PIL import Image

from align.bench.datasets import open_dataset
from align.data.stream.decode import captions
from align.data.stream.faults import UNDECODABLE_TEXT
from align.data.write.shards import write_shards
from align.data.write.values import SkipRow, read_captions, read_label
from tests.wds_helpers import all_tar_members

SEP = "a photo\u2028of a\u2029cat\x85on\x0bthe\x0cmat\x1cand\x1da\x1edog"     # str.splitlines cut it 9 times


def test_a_caption_cell_or_file_ends_a_line_at_newlines_only(tmp_path):
    assert read_captions(f"{SEP}\nsecond\r\nthird\rfourth\n", tmp_path) == [SEP, "second", "third", "fourth"]
    assert read_captions([SEP, "x\ny"], tmp_path) == [SEP, "x", "y"]
    (tmp_path / "c.txt").write_bytes(f"{SEP}\r\nsecond\n".encode())
    assert read_captions(tmp_path / "c.txt", tmp_path) == [SEP, "second"]


def test_a_lone_surrogate_in_a_caption_or_a_label_is_a_skipped_row_naming_the_position(tmp_path):
    with pytest.raises(SkipRow) as e:
        read_captions(["fine", "a \ud800 cat"], tmp_path)
    assert (e.value.reason, e.value.detail) == (UNDECODABLE_TEXT, "text: lone surrogate at position 2 (caption 2 of 2)")
    with pytest.raises(SkipRow, match="label: lone surrogate at position 3"):
        read_label("  cat\udc80 ", tmp_path)
    assert read_label(" cat ", tmp_path) == "cat"


def test_jsonl_rows_with_lone_surrogates_are_skipped_and_a_line_separator_reaches_training_and_bench(tmp_path):
    """json.loads turns "\\ud800" into a lone surrogate; such a row failed later with UnicodeEncodeError writing
    the txt (a caption), or its negatives / second caption column were dropped without a word."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "x.jpg")
    rows = [{"img": "x.jpg", "caption": SEP, "alt": "", "negs": "", "cls": "cat"},
            {"img": "x.jpg", "caption": "bad \ud800", "alt": "", "negs": "", "cls": "cat"},
            {"img": "x.jpg", "caption": "fine", "alt": "also \udfff", "negs": "", "cls": "cat"},
            {"img": "x.jpg", "caption": "fine", "alt": "", "negs": ["a dog", "\udc80"], "cls": "cat"},
            {"img": "x.jpg", "caption": "fine", "alt": "", "negs": "", "cls": "d\ud800g"},
            {"img": "x.jpg", "caption": "fine too", "alt": "", "negs": "", "cls": "dog"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    kw = dict(image_col="img", text_col="caption,alt", label_col="cls", neg_col="negs", progress=False)
    stats = write_shards(tmp_path / "d.jsonl", tmp_path / "o", **kw)
    assert (stats["written"], stats["by_reason"]) == (2, {UNDECODABLE_TEXT: 4})
    skipped = [json.loads(line) for line in (tmp_path / "o" / "skipped.jsonl").read_text("utf-8").split("\n") if line]
    assert [(s["row"], s["reason"]) for s in skipped] == [
        (1, "text: lone surrogate at position 4 (caption 1 of 1)"),
        (2, "alt: lone surrogate at position 5 (caption 1 of 1)"),
        (3, "neg.txt: lone surrogate at position 0 (caption 2 of 2)"),
        (4, "label: lone surrogate at position 1")]
    txt = {k: v for k, v in all_tar_members(tmp_path / "o").items() if k.endswith(".txt")}
    assert sorted(captions(v) for v in txt.values()) == [[SEP], ["fine too"]]
    # the CLIP_benchmark layout `align bench` reads: one caption, as training reads it
    write_shards(tmp_path / "d.jsonl", tmp_path / "cb", layout="clip_benchmark", **kw)
    ds = open_dataset(str(tmp_path / "cb"), "wds")
    assert sorted(c for it in ds.items for c in it.captions) == [SEP, "fine too"]
