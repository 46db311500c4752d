"""A trial's run dir (align/sweep/trial.py): it records whose trial it is, and a run dir holding anything else
is refused in one line instead of being resumed (resume=auto) as this trial; how a trial's process is started and
stopped. Nothing here trains (tests/sweep/test_study.py's sweeps do)."""
import json
import os
import signal
import sys

import pytest

from align.sweep.trial import RECORD, RunDirTaken, claim_run_dir


def test_a_new_or_empty_run_dir_is_claimed_and_the_same_trial_may_come_back(tmp_path):
    run = tmp_path / "s" / "trial-0000"
    claim_run_dir(str(run), "s", 0, "2024-01-01T00:00:00")
    assert json.loads((run / RECORD).read_text()) == {"study": "s", "trial": 0, "started": "2024-01-01T00:00:00"}
    (run / "train.log").write_text("x")
    claim_run_dir(str(run), "s", 0, "2024-01-01T00:00:00")        # the same trial again (a retry): its run dir
    empty = tmp_path / "s" / "trial-0001"
    empty.mkdir()
    claim_run_dir(str(empty), "s", 1, "2024-01-01T00:01:00")      # made, then the sweep died before the record
    assert (empty / RECORD).is_file()


@pytest.mark.parametrize("study, number, started, why", [
    ("s", 0, "2024-02-02T00:00:00", "trial 0 of a study 's' started 2024-01-01T00:00:00"),   # study.db made anew
    ("s", 0, None, "(which has no such trial)"),
    ("t", 0, "2024-01-01T00:00:00", "not trial 0 of this study 't'"),
    ("s", 1, "2024-01-01T00:00:00", "not trial 1 of this study 's'"),
])
def test_a_run_dir_of_another_trial_is_refused_in_one_line(tmp_path, study, number, started, why):
    run = tmp_path / "trial-0000"
    claim_run_dir(str(run), "s", 0, "2024-01-01T00:00:00")
    (run / "summary.json").write_text("{}")                        # a finished run that resume=auto would take
    with pytest.raises(RunDirTaken) as e:
        claim_run_dir(str(run), study, number, started)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(f"{run}: holds ") and why in str(e.value)
    assert json.loads((run / RECORD).read_text())["started"] == "2024-01-01T00:00:00"     # left as it was


def test_a_folder_of_no_trial_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunDirTaken, match=f"holds files of no sweep trial \\(no {RECORD}\\)"):
        claim_run_dir(str(tmp_path), "s", 0, "2024-01-01T00:00:00")
    assert not (tmp_path / RECORD).exists()


def test_last_line_of_the_log_keeps_a_line_separator_inside_the_error(tmp_path):
    """train.log's last line is its one-line error: a U+2028 in a caption or key it names is no line end (it was
    cut there, and the trial reported the tail)."""
    from align.sweep.trial import LOG, last_line
    (tmp_path / LOG).write_bytes("step 1\r\nalign: error: caption 'a\u2028b' is bad\n\n".encode())
    assert last_line(str(tmp_path)) == "align: error: caption 'a\u2028b' is bad"


def test_a_trial_starts_in_its_own_session_logging_to_its_run_dir_and_dies_with_the_sweep(tmp_path):
    """start(): the command's stdout and stderr appended to RUN/train.log after a `$ command` line, no stdin, its
    own session (a Ctrl-C at the terminal reaches the sweep only), SIGTERM when its parent dies (Linux), and
    unbuffered output; stop() sends SIGTERM and returns the exit status. (The sweeps of tests/sweep/test_study.py
    fork their trials from pytest, with the command start() is given.)"""
    import time

    from align.sweep.trial import LOG, start, stop
    script = tmp_path / "child.py"
    script.write_text("import ctypes, os, sys, time\n"
                      "sig = ctypes.c_int(-1)\n"
                      "if sys.platform.startswith('linux'):\n"
                      "    ctypes.CDLL(None).prctl(2, ctypes.byref(sig))      # PR_GET_PDEATHSIG\n"
                      "print(os.getsid(0), sig.value, os.environ.get('PYTHONUNBUFFERED'), repr(sys.stdin.read()))\n"
                      "print('to stderr', file=sys.stderr)\n"
                      "time.sleep(60)\n")
    run, cmd = tmp_path / "run", [sys.executable, str(script)]
    run.mkdir()
    (run / LOG).write_text("before\n")
    proc = start(cmd, str(run))
    try:
        deadline = time.monotonic() + 60
        while "to stderr" not in (run / LOG).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (run / LOG).read_text()
            time.sleep(0.02)
        assert (run / LOG).read_text().splitlines()[:3] == ["before", "", f"$ {' '.join(cmd)}"]
        said, err = (run / LOG).read_text().splitlines()[3:5]
        sid, deathsig, unbuffered, stdin = said.split(" ", 3)
        assert int(sid) == proc.pid != os.getsid(0) and unbuffered == "1" and stdin == "''" and err == "to stderr"
        if sys.platform.startswith("linux"):
            assert int(deathsig) == signal.SIGTERM
    finally:
        rc = stop(proc, grace_s=30)
    assert rc == -signal.SIGTERM
