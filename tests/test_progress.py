"""align/progress.py: a tqdm bar on a terminal; one plain line per interval in a log file, never a \\r."""

import io
import os
import subprocess
import sys

import pytest

from align.progress import PlainProgress, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_progress_prints_one_line_per_interval_with_rate_eta_and_postfix():
    out, clock = io.StringIO(), _Clock()
    bar = PlainProgress(total=100, desc="train", unit="step", every_s=10, file=out, clock=clock)
    for i in range(100):
        clock.t += 1.0                       # one step a second
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10                  # t = 10, 20, ..., 100 s; close adds none (already printed)
    assert lines[0] == "train: 10/100 step (10%), 1 step/s, ETA 1m30s, loss=0.111"  # postfix of the step before
    assert lines[-1].startswith("train: 100/100 step (100%)")


def test_close_prints_the_final_count_once_and_disable_prints_nothing():
    out, clock = io.StringIO(), _Clock()
    with PlainProgress(total=5, desc="x", every_s=100, file=out, clock=clock) as bar:
        bar.update(5)
    assert out.getvalue().splitlines() == ["x: 5/5 it (100%), 0 it/s, elapsed 0s"]
    quiet = io.StringIO()
    for _ in progress(range(3), disable=True, file=quiet):
        pass
    assert quiet.getvalue() == ""


def test_not_a_terminal_means_plain_lines_and_a_terminal_means_tqdm(monkeypatch):
    monkeypatch.delenv("ALIGN_PROGRESS", raising=False)
    assert isinstance(progress(total=3, file=io.StringIO()), PlainProgress)
    monkeypatch.setenv("ALIGN_PROGRESS", "bar")
    from tqdm.auto import tqdm
    bar = progress(total=3, file=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()


def test_a_piped_run_writes_no_carriage_return():
    code = ("from align.progress import progress\n"
            "for _ in progress(range(50), desc='work', every_s=0.0): pass\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("ALIGN_PROGRESS", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "\r" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("work: 50/50 it (100%)")


# Slow (~10 s, an `align train` process): the plain lines themselves are checked in-process above.
@pytest.mark.slow
def test_align_train_piped_to_a_file_prints_plain_progress_lines(tiny_recipe, tmp_path):
    import yaml
    path = tmp_path / "r.yaml"
    tiny_recipe["train"]["max_steps"] = 4
    path.write_text(yaml.safe_dump(tiny_recipe))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("ALIGN_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "align.cli", "train", str(path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr and "\r" not in r.stdout
    lines = [l for l in r.stderr.splitlines() if l.startswith("train: ")]
    assert len(lines) == 1                      # a short run: the closing line only (one per 30 s otherwise)
    assert lines[0].startswith("train: 4/4 step (100%)") and "loss=" in lines[0] and "data_wait=" in lines[0]


def test_a_resumed_run_drops_metrics_rows_past_its_checkpoint(tiny_recipe):
    import json
    from tests.train.test_train import _run
    run = tiny_recipe["output_dir"]
    assert _run(tiny_recipe, kill_at=4) != 0    # checkpoint at 3, row for step 4 written, then SIGKILL
    steps = [json.loads(l)["step"] for l in open(os.path.join(run, "metrics.jsonl"))]
    assert steps == [2, 4]
    assert _run(tiny_recipe) == 0               # resumes from step 3: logs 4 and 6 again
    steps = [json.loads(l)["step"] for l in open(os.path.join(run, "metrics.jsonl"))]
    assert steps == [2, 4, 6]                   # strictly increasing, no step twice


def test_a_non_utf8_stdout_escapes_a_caption_instead_of_crashing(monkeypatch, tmp_path):
    """LC_ALL=C with PYTHONUTF8=0 (or an ISO-8859-1 locale) gave `align data inspect` a UnicodeEncodeError
    traceback at the first caption it could not encode."""
    from align.cli import main
    from tests.wds_helpers import image_text, write_shard
    shard = write_shard(tmp_path / "s-000.tar", [image_text("k0", caption="一张照片 café")])
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")            # strict, as Python's stdout in such a locale
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["data", "inspect", shard]) == 0
    out.flush()
    text = raw.getvalue().decode("ascii")
    assert "'\\u4e00\\u5f20\\u7167\\u7247 caf\\xe9'" in text and "1 shards, 1 samples" in text


def test_warnings_are_one_line_each_and_start_clear_of_a_bar_on_a_terminal(monkeypatch):
    """A data worker's warning was written after the bar's text on the bar's line (`... 4.58step/s]skipping
    shard ...`); in a log file it stays the bare line."""
    import logging
    from align.progress import setup_console
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    setup_console()
    setup_console()                                      # idempotent: one handler, one line per warning
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")        # a log file
    logging.getLogger("align.data.stream.faults").warning("skipping s-000.tar: missing shard")
    logging.getLogger("align.data.stream.faults").info("not shown")
    assert err.getvalue() == "skipping s-000.tar: missing shard\n"
    err.seek(0), err.truncate()
    monkeypatch.setenv("ALIGN_PROGRESS", "bar")          # a terminal (StringIO: 80 columns assumed)
    logging.getLogger("align.data.stream.faults").warning("skipping s-001.tar: missing shard")
    assert err.getvalue() == "\r" + " " * 79 + "\r" + "skipping s-001.tar: missing shard\n"


def test_stdout_to_a_log_file_is_written_line_by_line_in_order_with_stderr(monkeypatch):
    """Without PYTHONUNBUFFERED, stdout redirected to a file is block-buffered: a job log showed 'resumed from ...'
    after the run's progress lines (at exit, or 8 KB later), out of order with stderr."""
    from align.progress import setup_console
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8"))   # as Python opens a file
    setup_console()
    print("resumed from run/checkpoints/step-00000010 at step 10")
    assert raw.getvalue() == b"resumed from run/checkpoints/step-00000010 at step 10\n"   # no flush needed


def _as_rank(monkeypatch, rank, world=2):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_a_launch_wide_fatal_line_is_said_once_and_a_ranks_own_with_its_rank(tmp_path, monkeypatch, capsys):
    """Under `accelerate launch --num_processes 2` a bad recipe made both processes print `align: error: ...`:
    the same line twice. The launch says it once (rank 0's); a line only rank 1 has is said, naming rank 1."""
    import tempfile
    import align.progress as P
    from align.cli import main
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(P, "LAUNCH_GRACE_S", 0.0)
    monkeypatch.setenv("MASTER_PORT", "29517")
    for rank in (0, 1):                                 # what each process of the launch does with a bad recipe
        _as_rank(monkeypatch, rank)
        assert main(["train", str(tmp_path / "no-such.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("align: error: ") and "no-such.yaml" in err[0], err
    assert P.launch_line("align: error: ", "data: shard b.tar of rank 1 cannot be read") == \
        "align: error: data: shard b.tar of rank 1 cannot be read"        # names its rank already
    assert P.launch_line("align: error: ", "data: shard c.tar cannot be read") == \
        "align: error: rank 1 of 2: data: shard c.tar cannot be read"     # rank 1's own: said, with its rank
    _as_rank(monkeypatch, 0)
    assert P.launch_line("align: error: ", "data: shard c.tar cannot be read") is None   # rank 1 said it first
    monkeypatch.setenv("MASTER_PORT", "29518")           # another launch says its lines again
    assert P.launch_line("align: ", "interrupted") == "align: interrupted"
    _as_rank(monkeypatch, 0, world=1)                   # no launch: every line is said
    assert P.launch_line("align: ", "interrupted") == P.launch_line("align: ", "interrupted") == "align: interrupted"


def test_every_bar_in_align_says_what_it_counts():
    """The ONNX export, index add, search and probe bars counted "it" (tqdm's default unit): every progress bar in
    align names its unit."""
    import ast
    import glob
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    unnamed = []
    for path in glob.glob(os.path.join(root, "align", "**", "*.py"), recursive=True):
        if path.endswith(os.path.join("align", "progress.py")):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("tqdm", "progress_bar") or \
                    isinstance(node, ast.Call) and getattr(node.func, "id", None) == "progress" and node.keywords:
                if not any(k.arg == "unit" for k in node.keywords):
                    unnamed.append(f"{os.path.relpath(path, root)}:{node.lineno}")
    assert unnamed == [], unnamed
