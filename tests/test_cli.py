"""CLI: user errors come out as one line on stderr (no traceback), exit status 2."""
import os
import subprocess
import sys

import pytest
import yaml

from align.cli import main
from align.errors import ConfigError


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_unknown_recipe_key_is_one_line(capsys, tmp_path, tiny_recipe):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_recipe))
    code, err = _run(["train", str(p), "train.lr_max=3"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "train.lr_max" in lines[0] and "valid keys" in lines[0]


def test_shard_pattern_matching_nothing_is_one_line(capsys, tmp_path, tiny_recipe):
    tiny_recipe["data"]["train"] = str(tmp_path / "nope-{000..009}.tar")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_recipe))
    code, err = _run(["train", str(p), "--no-progress"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("align: error:") and "nope-" in last and "Traceback" not in err


def test_missing_dataset_dir_for_bench(capsys, tmp_path):
    code, err = _run(["bench", "zeroshot", "--model", str(tmp_path), "--dataset", str(tmp_path / "none"),
                      "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and "none" in err and "Traceback" not in err


def align_script():
    """The installed `align` console script: next to this interpreter, else on PATH."""
    import os
    import shutil
    here = os.path.join(os.path.dirname(sys.executable), "align")
    return here if os.path.exists(here) else shutil.which("align")


def test_installed_console_script():
    """The `align` executable pip installed (pyproject [project.scripts]), not `python -m align.cli`."""
    import os
    script = align_script()
    assert script, "no installed `align` script next to sys.executable or on PATH (pip install -e .)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([script, "recipes"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "demo" in out.stdout and "bind" in out.stdout, out.stderr[-2000:]
    # its error path (exit 2, one line): tests/train/test_train_data_switches.py's pipe: refusal


def test_recipes_come_from_the_package_or_the_checkout(monkeypatch, tmp_path, capsys):
    from align import config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert config.recipes_dir() == os.path.join(root, "recipes")          # source checkout / editable install
    assert config.resolve_recipe("demo") == os.path.join(root, "recipes", "demo.yaml")
    monkeypatch.chdir(tmp_path)                                           # any working directory
    assert main(["recipes"]) == 0 and "bind " in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"recipe not found: dmeo .*shipped recipe: .*demo"):
        config.resolve_recipe("dmeo")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "mine.yaml").write_text("# mine: a recipe of my own\n")
    monkeypatch.setenv("ALIGN_RECIPES", str(tmp_path / "own"))
    assert main(["recipes"]) == 0 and "mine: a recipe of my own" in capsys.readouterr().out


def test_missing_recipes_folder_is_one_line(monkeypatch, tmp_path, capsys):
    """A broken install (no recipes anywhere) used to crash `align recipes` with a traceback."""
    from align import config
    monkeypatch.setattr(config, "_PKG", str(tmp_path / "site-packages" / "align"))
    code, err = _run(["recipes"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no shipped recipes" in err and "ALIGN_RECIPES" in err


def test_recipes_piped_into_a_reader_that_leaves_ends_quietly():
    """`align recipes | head -1`: the reader closed the pipe; one quiet exit, no BrokenPipeError traceback.
    (Deterministic: stdout is a pipe whose read end is already closed, unbuffered so print meets it in main.)"""
    import subprocess
    import sys
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
            "from align.cli import main; sys.exit(main(['recipes']))")
    p = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True)
    assert p.returncode == 141, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
