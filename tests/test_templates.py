"""Prompt templates: built-in sets, .txt/.json files, class-specific prompts, clear errors."""
import json
import unicodedata

import pytest

from align.templates import (BUILTIN_TEMPLATES, OPENAI_IMAGENET, check_classnames, get_templates, load_classnames,
                             prompts_for)
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


@pytest.mark.parametrize("template, named", [("a {c} shaped like {}", "IndexError"),
                                             ("a {c} at {place}", "KeyError: 'place'"),
                                             ("a photo of a {c} }", "ValueError")])
def test_a_template_with_another_brace_is_one_line_naming_it(tmp_path, template, named):
    """Only {c} is filled: another brace used to pass the check and fail later in str.format (a bare KeyError /
    IndexError / ValueError from align bench). Doubled braces stay literal; braces and % in a class name are text."""
    (tmp_path / "t.txt").write_text(f"a photo of a {{c}}.\n{template}\n")
    with pytest.raises(DataError, match=r"t.txt.*holds a brace other than the '\{c\}' placeholder \(" + named):
        get_templates(str(tmp_path / "t.txt"))
    with pytest.raises(DataError, match="brace other than"):
        get_templates([template])
    assert prompts_for("{x} 100%", get_templates(["a {{literal}} {c}."])) == ["a {literal} {x} 100%."]


def test_files_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Notepad / Excel start a UTF-8 file with a BOM: it was kept in the first class name ('\\ufeffcat'), so
    `align data shards --classnames` skipped every 'cat' row and class-specific prompts had none for it."""
    bom = "\ufeff".encode("utf-8")
    (tmp_path / "c.txt").write_bytes(bom + "кіт\nবিড়াল\n猫\n".encode("utf-8"))
    assert load_classnames(str(tmp_path / "c.txt")) == ["кіт", "বিড়াল", "猫"]
    (tmp_path / "t.txt").write_bytes(bom + b"a photo of a {c}.\n")
    assert get_templates(str(tmp_path / "t.txt")) == ["a photo of a {c}."]
    (tmp_path / "c.json").write_bytes(bom + json.dumps(["кіт", "猫"]).encode("utf-8"))
    assert load_classnames(str(tmp_path / "c.json")) == ["кіт", "猫"]


def test_check_classnames_names_the_first_name_listed_twice():
    assert check_classnames(["кіт", "猫", "Кіт"], "x") == ["кіт", "猫", "Кіт"]
    with pytest.raises(DataError, match=r"^x: class name 'кіт' is listed twice \(classes 0 and 2\)"):
        check_classnames(["кіт", "猫", "кіт"], "x")
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    with pytest.raises(DataError, match=r"class name 'cafe\u0301' is listed twice \(as 'café' and 'cafe\u0301', two "
                                        r"Unicode forms\) \(classes 0 and 1\)"):
        check_classnames([nfc, nfd], "x")
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


def test_a_list_file_line_ends_at_newlines_only(tmp_path):
    """classnames.txt / templates .txt are one entry per line: \\n, \\r\\n or \\r. A U+2028 (or U+0085, \\x0c...)
    inside a name cut it in two with str.splitlines, and the class count no longer matched the labels."""
    (tmp_path / "c.txt").write_bytes("new\u2028york\r\nsão\x85paulo\rberlin\x0cmitte\n\ntokyo".encode())
    assert load_classnames(str(tmp_path / "c.txt")) == ["new\u2028york", "são\x85paulo", "berlin\x0cmitte", "tokyo"]
    (tmp_path / "t.txt").write_bytes("a photo\u2029of a {c}.\r\nthe {c}.\n".encode())
    assert get_templates(str(tmp_path / "t.txt")) == ["a photo\u2029of a {c}.", "the {c}."]


def test_a_class_name_or_prompt_with_a_lone_surrogate_is_one_line_naming_it(tmp_path):
    """JSON's "\\ud800" escape in class names or templates: the prompts failed in a Hugging Face tokenizer with a
    TypeError (open_clip's read U+FFFD instead); refused before anything is encoded, naming the entry and position."""
    (tmp_path / "c.json").write_text('["cat", "d\\ud800g"]')
    with pytest.raises(DataError, match=r"c\.json': class name 1: lone surrogate at position 1 \("):
        load_classnames(str(tmp_path / "c.json"))
    with pytest.raises(DataError, match=r"^x: class name 2: lone surrogate at position 0 \("):
        check_classnames(["cat", "dog", "\udc80"], "x")
    (tmp_path / "t.json").write_text('["a photo of a {c}.", "a \\udfff {c}."]')
    with pytest.raises(DataError, match=r"t\.json': template 1: lone surrogate at position 2 \("):
        get_templates(str(tmp_path / "t.json"))
    with pytest.raises(DataError, match=r"^templates: prompt 1 of class 'cat': lone surrogate at position 4 \("):
        get_templates({"cat": ["a cat", "the \ud800 cat"]})
