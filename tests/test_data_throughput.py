"""benchmarks/data_throughput.py: the wait share its consumer sees is the time spent in next(loader)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import data_throughput  # noqa: E402


def test_the_wait_share_falls_as_the_step_grows(tmp_path, capsys):
    data_throughput.main(["--n-image", "48", "--n-audio", "16", "--per-shard", "16", "--batch-size", "8",
                          "--workers", "0", "--step-ms", "0", "60", "--dir", str(tmp_path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("image-text", "audio-text"))]
    wait = {(r[0], float(r[2])): float(r[-1].rstrip("%")) / 100 for r in rows}
    assert len(wait) == 4
    # 0 workers: the main process decodes, so with no step every second after the first batch is waiting
    assert wait["image-text", 0.0] > 0.9 and wait["audio-text", 0.0] > 0.9   # (0.94 seen beside another job)
    # a 60 ms step per batch of 8 takes a real share: the waiting share must fall
    assert wait["image-text", 60.0] < wait["image-text", 0.0] - 0.2
    assert all(int(r[3]) in (48, 16) for r in rows)         # every sample delivered


def test_busy_keeps_computing_for_the_time_asked():
    import time

    import torch
    t0 = time.perf_counter()
    data_throughput.busy(30, torch.randn(64, 64))
    assert 0.03 <= time.perf_counter() - t0 < 0.5
