"""SIGTERM mid-run (as SLURM, Kubernetes or a spot reclaim send it): a checkpoint at the step reached, one line,
exit 75; resume=auto then ends on the uninterrupted run's weights, bitwise."""

import os

import pytest

from align.train.guard import PREEMPTED_EXIT
from tests.switch_helpers import run_align_train
from tests.train.test_train import _final_weights


# Slow (~27 s, three `align train` processes): the default suite still induces SIGTERM on a real `align train`
# (tests/sweep/test_study.py's pruned trial); tools/mutate.py runs this one (preempt.not_checked).
@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_at_the_step_reached_and_resume_is_bitwise(tiny_recipe, tmp_path):
    ref = dict(tiny_recipe, output_dir=str(tmp_path / "ref"))
    assert run_align_train(ref, tmp_path, "ref").returncode == 0

    r = run_align_train(tiny_recipe, tmp_path, "run", ALIGN_TEST_SIGTERM_AT_STEP="2")   # checkpoints every 3
    assert r.returncode == PREEMPTED_EXIT, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("align: preempted (SIGTERM) at step 2, checkpoint written") and "same command" in last
    assert "Traceback" not in r.stderr
    run = tiny_recipe["output_dir"]
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step-00000002"]
    assert not os.path.exists(os.path.join(run, "align.lock"))      # released on the way out

    assert run_align_train(tiny_recipe, tmp_path, "run").returncode == 0   # the same command resumes
    a, b = _final_weights(ref["output_dir"]), _final_weights(run)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
