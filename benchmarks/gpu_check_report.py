"""GPU check report: the parts' JSON files -> OUT/gpu_check.json and OUT/gpu_check.md (one table).

A part that wrote no JSON, exited non-zero or was killed at its time budget (exit 124/137 from
`timeout`) is recorded as such, with whatever it had measured before.
"""
from __future__ import annotations

import json
import os
import time

GOALS = {"ratio": 1.3, "mfu": 0.45, "zs_speedup": 3.0}   # issue 23: on an H100/H200; `align bench` vs CB CLI


def load_parts(work: str, rcs: dict, budgets: dict) -> dict:
    from gpu_check import OPTIONAL_PARTS, PARTS
    parts = {}
    ran = [n for n in OPTIONAL_PARTS if n in budgets or os.path.exists(os.path.join(work, "parts", n + ".json"))]
    for name in PARTS + tuple(ran):
        p = os.path.join(work, "parts", name + ".json")
        d = json.load(open(p)) if os.path.exists(p) else {"status": "error", "result": {},
                                                           "error": "the part wrote no result"}
        rc = rcs.get(name)
        if rc in (124, 137):
            d["status"] = "error"
            d["error"] = f"killed at its time budget of {budgets.get(name)} s (exit {rc}); results so far kept"
        elif rc not in (None, 0) and d.get("status") == "ok":
            d["status"], d["error"] = "error", f"exit {rc}"
        elif rc is None and name not in budgets and not os.path.exists(p):   # (an earlier call's part: kept)
            d = {"status": "skipped", "result": {}}
        d["exit_code"], d["budget_s"] = rc, budgets.get(name)
        parts[name] = d
    return parts


def _gb(x):
    return f"{x / 1e9:.2f} GB" if isinstance(x, (int, float)) and x >= 0 else "—"


def _num(x, fmt="{:.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "—"


def _pct(x):
    return f"{100 * x:.1f} %" if isinstance(x, (int, float)) else "—"


def rows(parts: dict) -> list:
    """(what, align, baseline, ratio, goal) rows of the Markdown table."""
    tp = parts["throughput"]["result"]
    a, u = tp.get("align", {}), tp.get("align_untrimmed", {})
    oc = tp.get("open_clip") if isinstance(tp.get("open_clip"), dict) else {}
    failed = "open_clip" in (parts["throughput"].get("errors") or {})
    oc_txt = None if oc else ("failed (see the JSON)" if failed else tp.get("open_clip") or "not run")
    out = [("training samples/s, " + f"{tp.get('model', '?')} {tp.get('precision', '')} batch {tp.get('batch', '?')}",
            _num(a.get("samples_per_s")), oc_txt or _num(oc.get("samples_per_s")), _num(tp.get("ratio"), "{:.2f}×"),
            f"≥ {GOALS['ratio']}×"),
           ("same, align with text padding not trimmed (open_clip's work)", _num(u.get("samples_per_s")),
            oc_txt or _num(oc.get("samples_per_s")), _num(tp.get("ratio_untrimmed"), "{:.2f}×"), ""),
           ("MFU (counted FLOPs; align untrimmed vs open_clip)", _pct(u.get("mfu")), oc_txt or _pct(oc.get("mfu")),
            "", f"≥ {100 * GOALS['mfu']:.0f} %"),
           ("MFU, align trimmed (FLOPs counted at the trimmed length)", _pct(a.get("mfu")), "", "", ""),
           ("peak memory (GPU: torch max allocated; CPU dry run: peak RSS)", _gb(a.get("peak_mem_allocated")),
            oc_txt or _gb(oc.get("peak_mem_allocated")), "", "")]
    mb = parts["maxbatch"]["result"]
    out.append((f"largest batch in {mb.get('cap_gb', '?')} GB, chunked loss ({mb.get('bound', 'not measured')})",
                str(mb.get("max_batch", "—")), "", "", ""))
    cp = parts.get("compile", {}).get("result", {}).get("align_compiled")
    if isinstance(cp, dict):
        out.append(("align with train.compile: samples/s; MFU " + _pct(cp.get("mfu")),
                    _num(cp.get("samples_per_s")), _num(oc.get("samples_per_s")) if oc else "—",
                    _num(parts["compile"]["result"].get("ratio_to_open_clip"), "{:.2f}×"), f"≥ {GOALS['ratio']}×"))
    zs = parts["zeroshot"]["result"]
    za, zc = zs.get("align", {}), zs.get("clip_benchmark", {})
    out.append((f"zero-shot wall s, {zs.get('items', '?')} items, {zs.get('device', '?')} (`align bench` vs CB CLI)",
                _num(za.get("wall_s")), _num(zc.get("wall_s")), _num(zs.get("speedup"), "{:.2f}×"),
                f"≥ {GOALS['zs_speedup']}×"))
    out.append(("zero-shot acc1 (same model, same data)", _pct(za.get("metrics", {}).get("acc1")),
                _pct(zc.get("metrics", {}).get("acc1")), "", ""))
    st = za.get("seconds") or {}
    if st:
        rest = za["wall_s"] - sum(st.values()) if isinstance(za.get("wall_s"), (int, float)) else None
        from align.bench.report import stage_text
        out.append(("`align bench` stages: " + stage_text(st)
                    + (f", start-up and the rest {rest:.3g} s" if rest is not None else ""), "", "", "", ""))
    rt = parts["retrieval"]["result"]
    g, c = rt.get("gpu", {}), rt.get("check", {})
    out.append((f"exact retrieval {rt.get('n', '?')}×{rt.get('n', '?')} search on {rt.get('device', '?')}, s",
                _num(g.get("seconds"), "{:.2f}"), "", "", ""))
    out.append(("top-10 equal to align's exact index (sampled queries)",
                f"{c.get('same_top10_as_align_exact', '—')}/{c.get('sample', '—')}", "", "", ""))
    ad = rt.get("align_exact_on_device", {})
    out.append((f"align's exact index (`index flat`) on {ad.get('device', '?')}: build + search, s; top-10 equal "
                f"to it on the CPU ({ad.get('same_top10_as_cpu_on_sample', '—')}/{c.get('sample', '—')} sampled)",
                _num(ad.get("seconds_build_and_search"), "{:.2f}"), "", "", ""))
    return out


def _note(part: dict) -> str:
    """The first line of the part's error, else of its notes (a table cell)."""
    errs = part.get("errors") or {}
    text = part.get("error") or "; ".join(f"{k}: {v}" for k, v in errs.items()) or "; ".join(part.get("notes", []))
    return text.strip().splitlines()[0][:200].replace("|", "/") if text.strip() else ""


def markdown(report: dict) -> str:
    env = report["parts"]["env"]["result"]
    head = (f"# GPU check ({report['mode']})\n\n"
            f"Machine: {env.get('gpu', env.get('device', '?'))}, {env.get('cpu_count', '?')} CPU cores, "
            f"torch {env.get('torch', '?')}, commit {env.get('commit', '?')}; total {report.get('total_s', '?')} s.\n\n"
            "| what | align | open_clip_train / CB CLI | ratio | goal |\n|---|---|---|---|---|\n")
    body = "".join(f"| {' | '.join(r)} |\n" for r in rows(report["parts"]))
    status = "\n| part | status | seconds | budget s | note |\n|---|---|---|---|---|\n" + "".join(
        f"| {n} | {p['status']} | {p.get('seconds', '—')} | {p.get('budget_s') or '—'} | {_note(p)} |\n"
        for n, p in report["parts"].items())
    return head + body + status


def write_report(a) -> int:
    def pairs(text):
        return {k: float(v) if "." in v else int(v) for k, v in (x.split("=") for x in text.split(",") if x)}
    budgets, rcs = pairs(a.budgets), pairs(a.rcs)
    report = {"mode": "dry-run (CPU, tiny sizes)" if a.dry_run else "gpu", "written": time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "total_s": a.total, "goals": GOALS,
              "parts": load_parts(a.work, rcs, budgets)}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    md = markdown(report)
    with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
        f.write(md)
    print(md)
    return 0
