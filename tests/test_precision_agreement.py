"""benchmarks/precision_agreement.py: its top-k and overlap against plain references, and a run on a tiny model."""
import os
import sys

import numpy as np

from tests.retrieval.conftest import tri_run, tri_shards  # noqa: F401  (tri_run: the tiny three-tower run fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import precision_agreement as pa  # noqa: E402


def test_topk_and_overlap_match_plain_references():
    rng = np.random.default_rng(0)
    q, x = rng.standard_normal((7, 5)), rng.standard_normal((40, 5))
    got = pa.topk(q, x, 4)
    for i in range(7):
        scores = [(float(np.dot(q[i], x[j])), j) for j in range(40)]
        assert got[i].tolist() == [j for _, j in sorted(scores, reverse=True)[:4]]
    a = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    b = np.array([[3, 2, 9, 8], [7, 6, 5, 4]])       # row 0 shares 2 of 4, row 1 all 4 (order ignored)
    assert pa.overlap(a, b) == (2 / 4 + 4 / 4) / 2


def test_a_run_reports_every_modality_and_pair(tmp_path, tri_run, capsys):
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=6)
    pa.main([str(run), "--data", str(tmp_path / "shards"), "--work", str(tmp_path / "w"), "--k", "3"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("RESULT")]
    cos = {line.split()[1].rstrip(":"): float(line.split("max ")[1].split(",")[0]) for line in lines
           if "1 - cos" in line}
    assert sorted(cos) == ["audio", "image", "text"]
    assert all(0 < d < 0.02 for d in cos.values())             # bf16 ran (not the fp32 vectors again), and is close
    pairs = [line for line in lines if " top-3: " in line]
    assert len(pairs) == 6 and all("(12 queries, 12 items)" in line for line in pairs)
    assert "bf16 / fp32 encode rate" in out
