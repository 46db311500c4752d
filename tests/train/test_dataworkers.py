"""A data worker killed mid-run (as the OOM killer does): one line naming the signal and the likely cause, exit 71,
a checkpoint at the step reached, and a resume that trains exactly the uninterrupted run's samples and weights.
Also: torch's messages read as one line, and a take that fails part-way keeps the last complete step's position."""

import json
import os

import pytest
from safetensors.torch import load_file

from align.train.dataworkers import DATA_WORKER_EXIT, DataWorkerDied, death_line, is_worker_death
from align.train.feed import Batches
from align.train.state import TrainState
from tests.switch_helpers import recipe, run_align_train
from tests.wds_helpers import make_shards




def _steps(keys_log):
    """{step: keys} from ALIGN_TEST_RECORD_KEYS's log; a step recorded twice must have had the same keys."""
    got = {}
    for line in open(str(keys_log) + ".rank0.jsonl"):
        s = json.loads(line)
        assert got.setdefault(s["step"], s["keys"]) == s["keys"], f"step {s['step']} replayed other samples"
    return got


# Slow (~30 s, three `align train` processes): the default suite keeps the in-process checks of the same path below
# (Batches.take, DataWorkerDied, death_line); tools/mutate.py runs this one (dataworker.death_not_deferred).
@pytest.mark.slow
def test_a_killed_data_worker_stops_with_one_line_and_a_checkpoint_and_resume_loses_nothing(tmp_path):
    pattern = str(tmp_path / "shards" / "s-{000..003}.tar")
    make_shards(tmp_path / "shards", 4, 8)                  # 32 samples: 8 batches of 4 per epoch
    train = {"batch_size": 4, "max_steps": 10, "checkpoint_every": 3, "log_every": 1}
    data = {"train": pattern, "num_workers": 2, "shuffle_buffer": 8}
    ref = recipe(tmp_path, "ref", data=data, train=train, resume="auto")
    p = run_align_train(ref, tmp_path, "ref", ALIGN_TEST_RECORD_KEYS=str(tmp_path / "ref-keys"))
    assert p.returncode == 0, p.stderr[-3000:]

    run = recipe(tmp_path, "run", data=data, train=train, resume="auto")
    log = str(tmp_path / "run-keys")
    p = run_align_train(run, tmp_path, "run", ALIGN_TEST_RECORD_KEYS=log, ALIGN_TEST_KILL_DATA_WORKER_AT_STEP="4")
    assert p.returncode == DATA_WORKER_EXIT, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("align: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    ckpt = os.path.join(run["output_dir"], "checkpoints", "step-00000004")
    assert "was killed by SIGKILL (Killed)" in lines[0] and "out-of-memory killer" in lines[0], lines[0]
    assert f"saved {ckpt} at step 4" in lines[0] and "same command" in lines[0]
    assert sorted(os.listdir(os.path.dirname(ckpt))) == ["step-00000003", "step-00000004"]
    with open(os.path.join(ckpt, "state.json")) as f:
        state = json.load(f)
    assert state["step"] == 4 and state["data"]["batches"] == 4     # the data position: the 4 batches trained

    p = run_align_train(run, tmp_path, "run", ALIGN_TEST_RECORD_KEYS=log)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resumed from {ckpt} at step 4" in p.stderr + p.stdout
    want, got = _steps(tmp_path / "ref-keys"), _steps(log)
    assert sorted(got) == list(range(10)) and [got[i] for i in range(10)] == [want[i] for i in range(10)]
    last = "step-00000010"
    a = load_file(os.path.join(ref["output_dir"], "checkpoints", last, "model.safetensors"))
    b = load_file(os.path.join(run["output_dir"], "checkpoints", last, "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("text, want", [
    ("DataLoader worker (pid 4242) is killed by signal: Killed. ", ["pid 4242", "SIGKILL (Killed)", "memory"]),
    ("DataLoader worker (pid 7) is killed by signal: Segmentation fault. ", ["SIGSEGV", "decoder"]),
    ("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that dataloader's workers are out "
     "of shared memory. Please try to raise your shared memory limit.", ["SIGBUS", "shared memory"]),
    ("DataLoader worker (pid 9) exited unexpectedly with exit code 1. Details are lost due to multiprocessing.",
     ["pid 9", "exited with code 1", "num_workers=0"]),
    ("DataLoader worker (pid(s) 11, 12) exited unexpectedly", ["pid 11, 12", "exited unexpectedly", "dmesg"]),
])
def test_torch_worker_errors_read_as_one_line_with_the_signal_and_the_likely_cause(text, want):
    assert is_worker_death(RuntimeError(text))
    line = death_line(text)
    assert "\n" not in line and all(w in line for w in want), line
    assert not is_worker_death(RuntimeError("CUDA out of memory")) and not is_worker_death(ValueError(text))


class _DyingLoader:
    """One epoch of numbered batches whose iterator dies like torch's after `die_after` batches."""

    epoch = 0

    def __init__(self, die_after: int):
        self.handed, self.die_after = 0, die_after

    def state_dict(self):
        return {"batches": self.handed}

    def __iter__(self):
        while True:
            if self.handed == self.die_after:
                raise RuntimeError("DataLoader worker (pid(s) 77) exited unexpectedly")
            self.handed += 1
            yield {"n": self.handed}


def test_a_take_that_fails_part_way_keeps_the_last_complete_steps_data_position():
    batches = Batches(_DyingLoader(die_after=5), TrainState())
    assert [b["n"] for b in batches.take(2)] + [b["n"] for b in batches.take(2)] == [1, 2, 3, 4]
    with pytest.raises(DataWorkerDied, match="pid 77"):
        batches.take(2)                                  # the 5th batch was handed out, the 6th never came
    assert batches.loader.state_dict() == {"batches": 5}
    assert batches.position() == {"batches": 4}          # what a checkpoint at step 2 records


class _HalfSentLoader(_DyingLoader):
    """Dies as a fetch does when the dead worker's batch was in the queue but its shared-memory fd never came."""

    worker_dead = False

    def __iter__(self):
        for batch in super().__iter__():
            if self.handed == self.die_after:
                type(self).worker_dead = True            # killed while the step was fetching its batches
                raise ConnectionResetError(104, "Connection reset by peer")
            yield batch


def test_a_fetch_that_fails_while_a_worker_is_dead_is_that_death_and_other_errors_pass(monkeypatch):
    from torch.utils.data._utils import signal_handling

    def check():                                         # torch's check (waitid), finding the SIGKILLed worker
        if _HalfSentLoader.worker_dead:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    monkeypatch.setattr(signal_handling, "_error_if_any_worker_fails", check)
    monkeypatch.setattr(_HalfSentLoader, "worker_dead", False)
    batches = Batches(_HalfSentLoader(die_after=4), TrainState())
    assert len(batches.take(2)) == 2
    with pytest.raises(DataWorkerDied, match=r"pid 4242\) was killed by SIGKILL"):
        batches.take(2)                                  # its 2nd fetch failed, not the check before it
    assert batches.position() == {"batches": 2}         # the step that got one of its two batches: not counted
    with pytest.raises(DataWorkerDied, match="SIGKILL"):  # and at the next step boundary, before any fetch
        batches.take(1)

    monkeypatch.setattr(_HalfSentLoader, "worker_dead", False)
    monkeypatch.setattr(signal_handling, "_error_if_any_worker_fails", lambda: None)
    with pytest.raises(ConnectionResetError):            # no worker is dead: not ours to rename
        Batches(_HalfSentLoader(die_after=1), TrainState()).take(1)
