"""benchmarks/gpu_check.sh, the GPU check: its --dry-run runs every part on CPU at tiny sizes, and its report.

The slow test runs the script as a user would (`bash benchmarks/gpu_check.sh --dry-run OUTDIR`) and checks
that the JSON has every part with numbers, not errors, and that the Markdown table was written. The fast
tests check the max-batch search and the report's handling of a part killed at its time budget.
"""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from gpu_check_report import load_parts, markdown  # noqa: E402
from gpu_check_train import search_max_batch  # noqa: E402


def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_dry_run_measures_every_part(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(work),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run", str(out)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=1200)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]   # $OUT: 3 files only
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["env", "data", "throughput", "maxbatch", "zeroshot", "retrieval"]
    for name, part in parts.items():
        assert part["status"] == "ok" and part["exit_code"] == 0, (name, part.get("error"), log[-3000:])
        assert "errors" not in part and "error" not in part, (name, part)
    tp = parts["throughput"]["result"]
    for run in ("align", "align_untrimmed", "open_clip"):   # open_clip_train is in the dev environment
        for key in ("samples_per_s", "peak_mem_allocated", "flops_per_sample", "mfu"):
            assert _num(tp[run][key]) and tp[run][key] > 0, (run, key, tp[run])
    assert _num(tp["ratio"]) and _num(tp["ratio_untrimmed"])
    # trimming the text padding is counted as less work (77 positions -> the caption's 4)
    assert tp["align"]["flops_per_sample"] < tp["align_untrimmed"]["flops_per_sample"]
    mb = parts["maxbatch"]["result"]
    assert _num(mb["max_batch"]) and mb["max_batch"] >= 4 and mb["probes"]
    zs = parts["zeroshot"]["result"]
    assert _num(zs["align"]["wall_s"]) and _num(zs["clip_benchmark"]["wall_s"]) and _num(zs["speedup"])
    assert zs["align"]["metrics"]["acc1"] == pytest.approx(zs["clip_benchmark"]["metrics"]["acc1"], abs=1e-6)
    assert {"load_model", "encode_image", "encode_prompts", "search"} <= set(zs["align"]["seconds"])
    rt = parts["retrieval"]["result"]
    assert _num(rt["gpu"]["seconds"]) and rt["check"]["same_top10_as_align_exact"] == rt["check"]["sample"] > 0
    dev = rt["align_exact_on_device"]
    assert _num(dev["seconds_build_and_search"]) and dev["same_top10_as_cpu_on_sample"] == rt["check"]["sample"]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry-run") and "| training samples/s" in md and "| zeroshot | ok |" in md
    # the optional part, in a second call over the same work dir: the first call's parts stay in the report
    p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run", "--parts", "compile",
                        str(out)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (out / "gpu_check.log").read_text()[-3000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert list(parts) == ["env", "data", "throughput", "maxbatch", "zeroshot", "retrieval", "compile"]
    assert all(part["status"] == "ok" for part in parts.values()), {n: p.get("error") for n, p in parts.items()}
    cp = parts["compile"]["result"]
    assert _num(cp["align_compiled"]["samples_per_s"]) and _num(cp["align_compiled"]["mfu"])
    assert _num(cp["ratio_to_align"]) and _num(cp["ratio_to_open_clip"])
    assert "| align with train.compile" in (out / "gpu_check.md").read_text()


def test_max_batch_search_doubles_then_bisects_to_the_step():
    seen = []

    def fits(b):
        seen.append(b)
        return {"batch": b, "fits": b <= 1000}
    r = search_max_batch(fits, start=64, limit=100_000, step=16, time_left=lambda: 1.0)
    assert seen[:6] == [64, 128, 256, 512, 1024, 768]
    assert r["max_batch"] == 992 and r["first_failing"] == 1008 and r["bound"] == "exact to 16"
    assert len(seen) <= 12                                     # bounded: doubling + ~log2 steps
    r = search_max_batch(fits, start=64, limit=512, step=16, time_left=lambda: 1.0)
    assert r["max_batch"] == 512 and r["first_failing"] is None and "limit" in r["bound"]
    r = search_max_batch(fits, start=64, limit=100_000, step=16, time_left=lambda: 0.0)
    assert r["max_batch"] is None and r["probes"] == [] and "time" in r["bound"]


def test_report_marks_a_part_killed_at_its_budget_and_keeps_its_results(tmp_path):
    (tmp_path / "parts").mkdir()
    partial = {"status": "partial", "result": {"align": {"samples_per_s": 123.0}, "model": "ViT-B-32"}, "notes": []}
    (tmp_path / "parts" / "throughput.json").write_text(json.dumps(partial))
    (tmp_path / "parts" / "env.json").write_text(json.dumps({"status": "ok", "result": {"torch": "x"}}))
    parts = load_parts(str(tmp_path), rcs={"env": 0, "throughput": 124, "data": 1},
                       budgets={"env": 20, "throughput": 150, "data": 45})
    assert parts["env"]["status"] == "ok"
    assert parts["throughput"]["status"] == "error" and "time budget of 150" in parts["throughput"]["error"]
    assert parts["throughput"]["result"]["align"]["samples_per_s"] == 123.0
    assert parts["data"]["status"] == "error" and "wrote no result" in parts["data"]["error"]
    assert parts["maxbatch"]["status"] == "skipped"
    md = markdown({"mode": "gpu", "total_s": 1, "parts": parts})
    assert "| 123.0 |" in md and "| throughput | error |" in md
