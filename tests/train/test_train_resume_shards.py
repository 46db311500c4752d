"""Resume through training on real shards, with 2 data workers and without: SIGKILL twice, resume, finish.

Against an uninterrupted run: the same sample keys at every step (none lost, none repeated), the
same final weights bit for bit, and after each restore the learning rate of the schedule computed
here (warmup + cosine written out, not read back from the checkpoint).
"""
import gc
import json
import math
import multiprocessing as mp
import os
import signal

import pytest
import torch

from tests.switch_helpers import final_weights, metrics, recipe
from tests.wds_helpers import make_shards


def _run(r, keys_log, kill_at=None):
    """Trains r in a forked child (SIGKILLed after step kill_at); returns its exit code."""
    def child():
        os.environ["ALIGN_TEST_RECORD_KEYS"] = keys_log
        if kill_at:
            os.environ["ALIGN_TEST_SIGKILL_AT_STEP"] = str(kill_at)
        torch.set_num_threads(1)
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(True)
        from tests.switch_helpers import train_dict
        train_dict(r)
    gc.collect()   # see tests/train/test_train.py: no native garbage collected in the forked child
    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join()
    return p.exitcode


def _steps(keys_log):
    return [json.loads(line) for line in open(keys_log + ".rank0.jsonl")]


def _lr(step, lr=0.01, warmup=3, total=10, min_ratio=0.1):
    """The lr logged after `step` steps (i.e. the next step's): linear warmup, then cosine."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min((step - warmup) / (total - warmup), 1.0)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@pytest.mark.parametrize("workers", [2, 0])
def test_killed_twice_resumed_run_trains_the_same_samples_and_weights(tmp_path, workers):
    """workers=2: decoding in worker processes (their transform RNG comes from the stream position);
    workers=0: in the training process, whose RNG the checkpoint restores."""
    pattern = str(tmp_path / "shards" / "s-{000..003}.tar")
    _, all_keys = make_shards(tmp_path / "shards", 4, 8)           # 32 samples: 8 batches of 4 per epoch
    train = {"batch_size": 4, "max_steps": 10, "checkpoint_every": 3, "lr": 0.01, "warmup_steps": 3,
             "min_lr_ratio": 0.1}
    data = {"train": pattern, "num_workers": workers, "shuffle_buffer": 8}
    ref = recipe(tmp_path, "ref", data=data, train=train, resume="auto")
    assert _run(ref, str(tmp_path / "ref-keys")) == 0
    run = recipe(tmp_path, "killed", data=data, train=train, resume="auto")
    log = str(tmp_path / "killed-keys")
    assert _run(run, log, kill_at=4) == -signal.SIGKILL       # checkpoint at 3, dies after 4
    assert _run(run, log, kill_at=8) == -signal.SIGKILL       # resumes at 3 (mid-epoch), dies after 8 (epoch 1)
    assert _run(run, log) == 0                                # resumes at 6, finishes at 10

    want = [s["keys"] for s in _steps(str(tmp_path / "ref-keys"))]
    assert len(want) == 10 and sorted(k for s in want[:8] for k in s) == sorted(all_keys)
    got = {}
    for s in _steps(log):                  # steps replayed after a kill overwrite the lost attempt...
        if s["step"] in got:
            assert s["keys"] == got[s["step"]], f"step {s['step']} replayed other samples"   # ...identically
        got[s["step"]] = s["keys"]
    assert [got[i] for i in range(10)] == want

    a, b = final_weights(ref["output_dir"]), final_weights(run["output_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rows = metrics(run["output_dir"])        # a resume drops the rows past its checkpoint: no step twice
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    for r in rows:
        assert math.isclose(r["lr"], _lr(r["step"]), rel_tol=1e-9), (r["step"], r["lr"], _lr(r["step"]))
