"""Prompt templates: built-in sets, .txt/.json files, class-specific prompts, clear errors."""
import json

import pytest

from align.templates import BUILTIN_TEMPLATES, OPENAI_IMAGENET, get_templates, load_classnames, prompts_for
from align.errors import DataError


def test_builtin_sets():
    assert len(OPENAI_IMAGENET) == 80 and len(set(OPENAI_IMAGENET)) == 80
    assert all("{c}" in t for ts in BUILTIN_TEMPLATES.values() for t in ts)
    assert get_templates("audio")[0] == "the sound of {c}."
    assert prompts_for("dog", get_templates("photo")) == ["a photo of a dog."]


def test_files_and_class_specific_prompts(tmp_path):
    (tmp_path / "t.txt").write_text("a {c}.\n\n  the {c}  \n")
    assert get_templates(str(tmp_path / "t.txt")) == ["a {c}.", "the {c}"]
    (tmp_path / "cupl.json").write_text(json.dumps({"dog": ["a furry dog", "a loyal dog"]}))
    t = get_templates(str(tmp_path / "cupl.json"))
    assert prompts_for("dog", t) == ["a furry dog", "a loyal dog"]
    with pytest.raises(DataError, match="no prompts for class 'cat'"):
        prompts_for("cat", t)
    (tmp_path / "c.json").write_text('["x", "y"]')
    assert load_classnames(str(tmp_path / "c.json")) == ["x", "y"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="neither a built-in set"):
        get_templates("no_such_set")
    (tmp_path / "bad.txt").write_text("a photo of a dog\n")
    with pytest.raises(DataError, match=r"bad.txt.*has no '\{c\}' placeholder"):
        get_templates(str(tmp_path / "bad.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt' is empty"):
        load_classnames(str(tmp_path / "empty.txt"))
    (tmp_path / "broken.json").write_text("[")
    with pytest.raises(DataError, match="not valid JSON"):
        get_templates(str(tmp_path / "broken.json"))


def test_a_binary_file_is_one_line_naming_it(tmp_path):
    """`align bench zeroshot --templates x.png` (or --classnames) was the UTF-8 codec's traceback."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    for name in ("x.png", "x.json"):
        (tmp_path / name).write_bytes(png)
        with pytest.raises(DataError) as e:
            get_templates(str(tmp_path / name))
        assert name in str(e.value) and ("not UTF-8 text" in str(e.value) or "not valid JSON" in str(e.value))
        with pytest.raises(DataError, match=name):
            load_classnames(str(tmp_path / name))
