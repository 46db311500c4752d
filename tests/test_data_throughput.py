"""benchmarks/data_throughput.py: the wait share its consumer sees is the time spent in next(loader)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import data_throughput  # noqa: E402


def test_the_wait_share_falls_as_the_step_grows(tmp_path, capsys):
    data_throughput.main(["--n-image", "48", "--n-audio", "16", "--per-shard", "16", "--batch-size", "8",
                          "--workers", "0", "--step-ms", "0", "60", "--features", "workers", "--dir", str(tmp_path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("image-text", "audio-text"))]
    wait = {(r[0], float(r[2])): float(r[7].rstrip("%")) / 100 for r in rows}
    assert len(wait) == 4
    # 0 workers: the main process decodes (and, --features workers, computes the log-mel in collate), so with no
    # step every second after the first batch is waiting
    assert wait["image-text", 0.0] > 0.9 and wait["audio-text", 0.0] > 0.9   # (0.94 seen beside another job)
    # a 60 ms step per batch of 8 takes a real share: the waiting share must fall
    assert wait["image-text", 60.0] < wait["image-text", 0.0] - 0.2
    assert all(int(r[3]) in (48, 16) for r in rows)         # every sample delivered


def test_the_log_mel_in_the_step_is_computed_by_the_consumer(tmp_path, capsys, monkeypatch):
    """--features step: the consumer runs the loader's StepFeatures on every audio batch (so the log-mel counts
    as step time); --features workers: collate computes it and the consumer gets finished batches."""
    from align.data.stream import features
    seen = []
    real = features.StepFeatures.__call__

    def spy(self, batch):
        out = real(self, batch)
        if "audio" in out:
            seen.append(tuple(out["audio"].shape))
        return out
    monkeypatch.setattr(features.StepFeatures, "__call__", spy)
    data_throughput.main(["--n-image", "8", "--n-audio", "16", "--per-shard", "8", "--batch-size", "8",
                          "--workers", "0", "--features", "step", "workers", "--dir", str(tmp_path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("audio-text")]
    assert [r[-1] for r in rows] == ["step", "workers"] and all(int(r[3]) == 16 for r in rows)
    assert len(seen) == 2 and all(s[1:] == (64, 1001) for s in seen)   # the step row's 2 batches of 8, finished


def test_busy_keeps_computing_until_the_time_asked_has_passed(monkeypatch):
    """On a clock that moves 4 ms a reading (no wall time is measured): 30 ms ends at the reading of 32 ms: the 7
    readings from 4 to 28 ms are each followed by one matmul."""
    import torch
    clock = iter(range(0, 10 ** 6, 4))
    monkeypatch.setattr(data_throughput.time, "perf_counter", lambda: next(clock) / 1000)
    products = []

    class Counted(torch.Tensor):
        def __matmul__(self, other):
            products.append(1)
            return super().__matmul__(other)

    data_throughput.busy(30, torch.randn(4, 4).as_subclass(Counted))
    assert len(products) == 7
