"""Shipped quality suites (align/bench/suites/*.yaml): found by name from any directory, valid, and their
relative paths resolved against the working directory (where `align demo` wrote align_demo/)."""
import os

import pytest

from align.bench.suite import SUITES_DIR, load_suite, resolve_suite, shipped_suites
from align.errors import ConfigError


def test_demo_suite_ships_and_resolves_by_name(tmp_path, monkeypatch):
    assert "demo" in shipped_suites()
    monkeypatch.chdir(tmp_path)
    assert resolve_suite("demo") == os.path.join(SUITES_DIR, "demo.yaml")
    entries = load_suite("demo")
    assert {e["task"] for e in entries} == {"zeroshot", "retrieval", "emergent_retrieval"}
    assert all(e["dataset"] == str(tmp_path / "align_demo" / "data" / "val") for e in entries)


@pytest.mark.parametrize("name", shipped_suites())
def test_every_shipped_suite_is_valid(name):
    assert load_suite(name)


def test_a_suite_file_keeps_paths_relative_to_itself(tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "demo.yaml").write_text("- {dataset: data/val, type: wds, task: zeroshot}\n")
    monkeypatch.chdir(tmp_path)
    (e,) = load_suite("s/demo.yaml")          # a path wins over the shipped name
    assert e["dataset"] == str(tmp_path / "s" / "data" / "val")


def test_unknown_suite_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"suite not found: demoo .*shipped suite: demo"):
        load_suite("demoo")
