"""benchmarks/prompt_phrasing.py: the split is scored through a linked copy whose templates are replaced, and
the split itself is never written."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import prompt_phrasing  # noqa: E402


def test_the_copy_links_every_file_and_replaces_only_the_templates(tmp_path):
    split = tmp_path / "selection"
    (split / "test").mkdir(parents=True)
    (split / "test" / "0.tar").write_bytes(b"shard")
    (split / "classnames.txt").write_text("zero\none\n")
    (split / prompt_phrasing.TEMPLATES_FILE).write_text("a recording of someone saying {c}.\n")
    out = prompt_phrasing.with_templates(str(split), ["{c}", "someone saying {c}"], str(tmp_path))
    assert sorted(os.listdir(out)) == sorted(os.listdir(split))
    assert (open(os.path.join(out, prompt_phrasing.TEMPLATES_FILE)).read().splitlines()
            == ["{c}", "someone saying {c}"])
    assert open(os.path.join(out, "test", "0.tar"), "rb").read() == b"shard"
    assert os.path.islink(os.path.join(out, "classnames.txt"))
    assert (split / prompt_phrasing.TEMPLATES_FILE).read_text() == "a recording of someone saying {c}.\n"


@pytest.mark.parametrize("bad", ["no-equals-sign", "=the {c}", "x=the digit|{c}"])
def test_a_template_set_without_a_name_or_a_class_slot_is_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prompt_phrasing.main(["--split", str(tmp_path), "--runs", "r", "--templates", bad])
    assert e.value.code == 2 and f"--templates {bad!r}" in capsys.readouterr().err
