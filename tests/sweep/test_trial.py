"""A trial's run dir (align/sweep/trial.py): it records whose trial it is, and a run dir holding anything else
is refused in one line instead of being resumed (resume=auto) as this trial; nothing here trains."""
import json

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
