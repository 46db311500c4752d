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
    bad = subprocess.run([script, "recipes", "--show", "no_such_recipe"], capture_output=True, text=True, env=env,
                         timeout=300)                             # its error path: exit 2, one line
    assert bad.returncode == 2 and bad.stderr.startswith("align: error: recipe not found: no_such_recipe") \
        and len(bad.stderr.splitlines()) == 1, (bad.returncode, bad.stderr[-2000:])


def test_python_dash_m_align_is_the_align_command(tmp_path):
    """`python -m align ...` where the console script is not on PATH (a --user or --target install, a venv not
    activated): before, "No module named align.__main__". Its exit status is the command's (2: a bad argument)."""
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-m", "align", "recipes"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "demo" in out.stdout, out.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "align", "train", "no_such_recipe.yaml"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("align: error: recipe not found: no_such_recipe.yaml"), \
        (bad.returncode, bad.stderr[-2000:])


def test_the_parsers_import_no_torch_so_help_and_recipes_start_at_once(fresh_align_bench):
    """Every `align` command builds every parser; torch (and FAISS) come with the command that needs them, not
    with `align --help` or `align recipes` (2.2-2.8 s before on a 2-core machine, 0.1 s after). The benchmark
    registry is still whole when asked for (the fresh interpreter is tests/conftest.py's, shared)."""
    loaded, seen = fresh_align_bench
    assert loaded == "[]", loaded
    names = ["cca_retrieval", "emergent_retrieval", "fusion_probe", "linear_probe", "retrieval", "zeroshot"]
    assert seen == str([names, names]), seen


def test_recipes_come_from_the_package_or_the_checkout(monkeypatch, tmp_path, capsys):
    from align import shipped as config
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
    (tmp_path / "own" / "a-much-longer-recipe-name.yaml").write_text("# a-much-longer-recipe-name: the other one\n")
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one column of names, each description after it once (names longer than 16 characters pushed theirs along)
    assert lines[:2] == ["a-much-longer-recipe-name  the other one", "mine                       a recipe of my own"]


def test_missing_recipes_folder_is_one_line(monkeypatch, tmp_path, capsys):
    """A broken install (no recipes anywhere) used to crash `align recipes` with a traceback."""
    from align import shipped
    monkeypatch.setattr(shipped, "_PKG", str(tmp_path / "site-packages" / "align"))
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


# -- a CLI that explains itself ------------------------------------------------------------------
def _walk(parser, path=("align",)):
    """(command path, action) for every option/positional of every (sub)command, and the subcommands."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, child in action.choices.items():
                yield path + (name,), ("subcommand", helps.get(name))
                yield from _walk(child, path + (name,))
            continue
        yield path, (action.option_strings[0] if action.option_strings else action.dest, action.help)


def test_every_subcommand_and_option_has_help():
    from align.cli import build_parser
    seen = list(_walk(build_parser()))
    missing = [f"{' '.join(p)} {name}" for p, (name, h) in seen if not (h and h.strip())]
    assert not missing, f"options without a help line: {missing}"
    cmds = {" ".join(p) for p, (name, _) in seen if name == "subcommand"}
    assert {"align data shards", "align bench suite", "align export", "align train", "align recipes"} <= cmds
    assert len(seen) > 80


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["data", "shards", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for line in ("samples per shard (default: 1000)", "jpg/webp quality, 1-100 (default: 95)",
                 "(default: detected from the column names)"):
        assert line in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_keys_lists_every_recipe_key_with_type_default_and_help(capsys):
    from align.config_keys import recipe_keys
    assert main(["train", "--help-keys"]) == 0
    out = capsys.readouterr().out
    for k in recipe_keys():
        assert k["help"] and k["help"] in out, k["key"]
    lines = out.splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["train.batch_size"])
    assert lines[row].split()[1:] == ["int", "default", "64"] and "per step" in lines[row + 1]
    assert any(ln.split()[:3] == ["data.train[].weight", "number", "default"] for ln in lines)
    assert "rnn_text" in out and "open_clip" in out                 # the tower types
    # with a recipe: the values it sets, overrides applied
    assert main(["train", "demo", "train.lr=0.01", "--help-keys"]) == 0
    out = capsys.readouterr().out
    assert any(ln.split()[0] == "train.lr" and ln.rstrip().endswith("= 0.01") for ln in out.splitlines() if ln.strip())
    assert any(ln.split()[0] == "train.max_steps" and ln.rstrip().endswith("= 600")
               for ln in out.splitlines() if ln.strip())


def test_recipes_show_prints_the_recipe_with_its_header(capsys):
    from align.shipped import resolve_recipe
    assert main(["recipes", "--show", "demo"]) == 0
    out = capsys.readouterr().out
    text = open(resolve_recipe("demo")).read()
    assert out.splitlines()[0] == f"# {resolve_recipe('demo')}" and out.endswith(text)
    assert text.startswith("# demo:")
    code, err = _run(["recipes", "--show", "nope"], capsys)
    assert code == 2 and "recipe not found: nope" in err


@pytest.mark.parametrize("option", ["--max-text-bytes=-1", "--max-image-pixels=0", "--max-audio-seconds=0"])
def test_a_limit_option_out_of_its_bounds_is_one_line_as_in_a_recipe(capsys, tmp_path, option):
    """`align data inspect --max-text-bytes -1` used to run and report every caption "over the limit of -1"."""
    code, err = _run(["data", "inspect", str(tmp_path), option], capsys)
    name = option.split("=")[0][2:].replace("-", "_")
    assert code == 2 and err.count("\n") == 1 and f"data.limits.{name}: must be >" in err


def test_demo_into_a_file_and_recipes_show_of_a_non_recipe_are_one_line(capsys, tmp_path):
    """`align demo --out FILE` ended in FileExistsError's traceback (the check looked at FILE/data), and
    `align recipes --show` of a file that is not UTF-8 in UnicodeDecodeError's; --show '' listed the recipes."""
    (tmp_path / "afile").write_text("hi")
    code, err = _run(["demo", "--no-progress", "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and err.count("\n") == 1 and "afile: exists and is not a directory" in err
    (tmp_path / "bad.yaml").write_bytes(b"a: \xff\n")
    code, err = _run(["recipes", "--show", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot show it as a recipe" in err
    code, err = _run(["recipes", "--show", ""], capsys)
    assert code == 2 and "give a recipe name or a path" in err


# -- the README's commands -----------------------------------------------------------------------
def _readme_commands():
    """argv (after `align`) of every `align ...` and `... -m align.cli ...` line of README's bash blocks."""
    import re
    import shlex
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in line.split("&&"):
                toks = shlex.split(part, comments=True)
                if "align.cli" in toks:
                    toks = ["align"] + toks[toks.index("align.cli") + 1:]
                if toks[:1] == ["align"]:       # `...` stands for the rest; `[--prune]` for an optional flag
                    cmds.append([t.strip("[]") for t in toks[1:] if t != "..."])
    return readme, cmds


def test_the_readmes_commands_parse_set_recipe_keys_and_read_the_shards_they_wrote():
    """Every README command parses with `align`'s own parser and its KEY=VALUE overrides are recipe keys; a
    pattern over a folder that README's `align data shards --out DIR` wrote names the files written there:
    `shards/{000000..000007}.tar` (text_keys, `align embed`, `align.embed`) matched none of shard-NNNNNN.tar."""
    import re
    from align.cli import build_parser
    from align.config_keys import recipe_keys
    readme, cmds = _readme_commands()
    parser, keys = build_parser(), {k["key"] for k in recipe_keys()}
    assert len(cmds) > 40, "README's bash blocks were not found"
    wrong, outs = [], set()
    for argv in cmds:
        try:
            ns = parser.parse_args(argv)
        except SystemExit:
            wrong.append(f"`align {' '.join(argv)}` does not parse")
            continue
        for o in getattr(ns, "overrides", None) or []:
            parts = o.split("=", 1)[0].split(".")
            if not any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1)):
                wrong.append(f"`align {' '.join(argv)}`: {o.split('=', 1)[0]} is no recipe key")
        if argv[:2] == ["data", "shards"] and ns.layout == "shards" and not ns.val_groups:
            outs.add((ns.out.rstrip("/"), ns.prefix))
    for out, prefix in sorted(outs):
        for m in re.finditer(rf"(?<![\w/.-]){re.escape(out)}/\{{", readme):
            wrong.append(f"README reads {readme[m.start():m.start() + 30]!r}...: `align data shards --out {out}/` "
                         f"wrote {out}/{prefix}-NNNNNN.tar")
    assert not wrong, "\n".join(wrong)


README_PLACEHOLDER_RUNS = {"runs/x", "runs/y"}      # "a run of yours", as README's step 3 names them


def _readme_models_and_writes(readme, cmds):
    """(models README's commands and snippets read, run/export folders README's commands write)."""
    import re
    from align.cli import build_parser
    from align.config import load_recipe
    from align.shipped import resolve_recipe
    parser, models, written = build_parser(), [], set(README_PLACEHOLDER_RUNS)
    for argv in cmds:
        ns = parser.parse_args(argv)
        if argv[0] == "demo":
            written.add(os.path.join(ns.out, "run"))
        elif argv[0] == "train":
            out = [o.split("=", 1)[1] for o in ns.overrides if o.startswith("output_dir=")]
            try:
                written.add(out[-1] if out else load_recipe(resolve_recipe(ns.recipe)).output_dir)
            except (ConfigError, OSError):
                pass                                 # the user's own recipe file (my_student.yaml)
        elif argv[0] == "export":
            written.add(ns.out.rstrip("/"))
        if argv[0] in ("embed", "search", "serve", "export", "bench") or argv[:2] == ["data", "filter"]:
            models += ns.model if isinstance(ns.model, list) else [ns.model]
        if argv[:2] == ["data", "reinforce"]:
            models.append(ns.teacher)
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        models += re.findall(r"align\.(?:load|embed)\(\"([^\"]+)\"", block)
    return models, written


def test_the_readmes_commands_read_models_that_a_readme_command_writes():
    """`align embed runs/demo`, `align.load("runs/demo")`, ...: no README command wrote runs/demo (`align demo`
    writes align_demo/run), so from an empty directory every retrieval command failed with "no such model"."""
    readme, cmds = _readme_commands()
    models, written = _readme_models_and_writes(readme, cmds)
    assert "align_demo/run" in written and "runs/x" in models
    names = [m.split(":", 1)[1] if m.startswith("local-dir:") else m for m in models if not m.startswith("open_clip:")]
    unknown = sorted({m for m in names if not any(m.rstrip("/") == w or m.startswith(w + "/") for w in written)})
    assert not unknown, f"README reads models that no README command writes: {unknown} (written: {sorted(written)})"


@pytest.mark.parametrize("args, msg", [(["stats", "-n", "-3"], "-n -3: at most this many samples must be >= 1"),
                                       (["stats", "-n", "0"], "-n 0: at most this many samples must be >= 1"),
                                       (["inspect", "-n", "-1"], "-n -1: the samples to print must be >= 0")])
def test_data_stats_and_inspect_refuse_a_sample_count_out_of_range(capsys, tmp_path, args, msg):
    """`align data stats -n -3` read 1 image and 9 clips ("9/-3 clip (-300%)"); `-n 0` meant 2000 images;
    `align data inspect -n -1` printed nothing and said nothing."""
    from tests.wds_helpers import image_text, make_shards
    make_shards(tmp_path / "s", 1, 2, kind=image_text)
    code, err = _run(["data", args[0], str(tmp_path / "s"), *args[1:]], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"align: error: {msg}"), err
    assert main(["data", "inspect", str(tmp_path / "s"), "-n", "0"]) == 0     # 0: the summary only


def test_data_demo_ends_with_one_summary_line_not_the_manifest(monkeypatch, capsys, tmp_path):
    """`align data demo` printed its 230-line manifest (also in OUT/demo.json) and, on data already built, no line
    saying what it holds or where."""
    import align.demo.data as demo_data
    counts = {"train": 1343, "val": 454, "selection": 454, "heldout": 454, "total": 1797}
    monkeypatch.setattr(demo_data, "build_demo", lambda out, **kw: {"counts": counts, "per_class": {"train": [1] * 10}})
    assert main(["data", "demo", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"demo data: 1343 train / 454 val samples (selection/, heldout/: 454 / 454 val copies) -> "
                   f"{tmp_path / 'd'} (manifest: {tmp_path / 'd' / 'demo.json'})"]


def test_data_demo_says_its_end_line_once(monkeypatch, capsys, tmp_path):
    """`align data demo` ended with two lines saying the same counts: the builder's `demo: wrote ...` and the
    command's `demo data: ...`: one line now (the command's)."""
    import align.demo.data as demo_data
    real = demo_data.build_demo
    monkeypatch.setattr(demo_data, "build_demo", lambda out, **kw: real(out, **dict(kw, limit=20, workers=1)))
    assert main(["data", "demo", "--out", str(tmp_path / "d")]) == 0
    said = capsys.readouterr()
    ends = [ln for ln in (said.out + said.err).splitlines() if "train /" in ln]
    assert len(ends) == 1 and ends[0].startswith("demo data: "), said


def test_checkpoints_ends_with_one_summary_line(tmp_path, capsys):
    """`align checkpoints RUN` listed each checkpoint (hashing every file: minutes on a large run) and ended without
    a word on the whole: one line counts them, ok and damaged."""
    import torch
    from align.train.checkpoint import save_checkpoint
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        save_checkpoint(str(ckpts), f"step-{step:08d}", {"w": torch.zeros(4)}, state={"step": step})
    assert main(["checkpoints", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 checkpoint(s) in {tmp_path / 'run'}: 2 ok, 0 damaged"
    with open(ckpts / "step-00000002" / "model.safetensors", "ab") as f:
        f.write(b"x")
    assert main(["checkpoints", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (f"2 checkpoint(s) in {tmp_path / 'run'}: 1 ok, 1 damaged "
                                                        f"(resume=auto carries on from the newest intact one)")


def test_a_full_disk_no_writer_guards_is_still_one_line_and_status_74(tmp_path, capsys, monkeypatch):
    """A write outside align's guarded writers (a library's file: tensorboard's events) ended in a traceback on a
    full disk; the command line says it in one line naming the file and exits 74, as the guarded writers do. Other
    OS errors are not hidden."""
    import errno

    import align.cli as cli
    events = str(tmp_path / "run" / "tb" / "events.out")

    def full(a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), events)
    monkeypatch.setattr(cli, "cmd_recipes", full)
    assert main(["recipes"]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"align: error: {events}: No space left on device; free space and run the same command again"]

    def other(a):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    monkeypatch.setattr(cli, "cmd_recipes", other)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["recipes"])
