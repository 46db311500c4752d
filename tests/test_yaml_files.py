"""align.yaml_files: the YAML files users write are read with a safe loader that refuses what would hang or crash."""
import pytest

from align.errors import ConfigError
from align.yaml_files import read_yaml

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def test_a_billion_laughs_is_one_line_and_shared_anchors_still_read(tmp_path):
    """Nine lines of aliases stand for 9**9 strings: PyYAML shares them, but the first repr of the value (a recipe
    key's "expected a string, got ...") or JSON dump filled the memory (MemoryError after ~30 s under a 3 GB cap)."""
    p = tmp_path / "bomb.yaml"
    p.write_text(LAUGHS + "output_dir: *i\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: not valid YAML at line 1, column 1: its aliases expand to "
                                          r"more than 1000000 values"):
        read_yaml(str(p))
    # the same bomb with a later list naming the lower levels first: the count summed each level before its
    # children were sized (672,808 for 490 million values) and let it through
    items = ["- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"- &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")] + ["- [*a, *b]"]
    p.write_text("\n".join(items) + "\n")
    with pytest.raises(ConfigError, match=r"its aliases expand to more than 1000000 values"):
        read_yaml(str(p))
    p.write_text("base: &b {lr: 1.0e-3, steps: [1, 2, 3]}\nx: *b\ny: *b\n")      # ordinary anchors are fine
    base = {"lr": 1.0e-3, "steps": [1, 2, 3]}
    assert read_yaml(str(p)) == {"base": base, "x": base, "y": base}


@pytest.mark.parametrize("text", ["model: " + "[" * 3000 + "]" * 3000, "model: " + "{a: " * 3000 + "1" + "}" * 3000])
def test_nesting_deeper_than_the_parser_reads_is_one_line(tmp_path, text):
    """A RecursionError traceback before."""
    p = tmp_path / "deep.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: not valid YAML: nested too deeply to read$"):
        read_yaml(str(p))
