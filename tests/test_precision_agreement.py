"""benchmarks/precision_agreement.py on a tiny model: every modality and pair reported, bf16 really run."""
import os
import sys

from tests.retrieval.conftest import tri_run, tri_shards  # noqa: F401  (tri_run: the tiny three-tower run fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import precision_agreement as pa  # noqa: E402


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
