"""GPU check, training parts: align vs open_clip_train samples/s, MFU, peak memory, the largest batch.

Throughput is measured as benchmarks/throughput.py measures it: both trainers on their synthetic data
(open_clip's constant image and "Dummy caption"), per-step times from each trainer's own log with the
first `warmup` steps left out. Here each trainer runs inside a small wrapper (`align-run` below, and
OC_WRAPPER for open_clip_train) that also reads torch's peak GPU memory when training ends.
open_clip_train gets data workers (throughput.py runs it with --workers 0, which on a GPU would leave
it waiting for its per-sample PIL transform); align's synthetic batches are gathered on the GPU from a pool
that lives there (align.data.stream.synthetic), so align's data wait is near zero and open_clip_train's is not:
benchmarks/gpu_step_profile.py times both bare steps with the data already on the device.

Three runs: align (text padding trimmed, its default), align with trimming off (the same work as
open_clip, which runs all 77 text positions) and open_clip_train. MFU = counted training FLOPs per
sample (align.train.perf's method: 3x the forward FLOPs torch counts, on the batch the run trains on)
x samples/s / the device's peak from align.train.perf (the one peak table).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from gpu_check import CAPTION, child_env, run_cmd  # noqa: E402
from loss_memory import reset_hwm, status_kb  # noqa: E402  (one /proc reader for both benchmarks)

# Runs open_clip_train's main() in-process, then prints torch's peak memory, on CPU the peak RSS
# (argv: CONFIG_JSON_OR_'' ARGS...).
OC_WRAPPER = (
    "import sys, torch\n"
    "if sys.argv[1]:\n"
    "    import open_clip; open_clip.add_model_config(sys.argv[1])\n"
    "from open_clip_train.main import main\n"
    "main(sys.argv[2:])\n"
    "import resource\n"
    "cuda = torch.cuda.is_available()\n"
    "print('GPU_CHECK_PEAK', torch.cuda.max_memory_allocated() if cuda else"
    " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,"   # CPU: peak RSS, as align's child
    " torch.cuda.max_memory_reserved() if cuda else -1, flush=True)\n")


# ------------------------------------------------------------------------------------------ align

def align_recipe(ctx, name: str, trim: bool, seed: int = 0, compile: bool = False) -> dict:
    """The recipe of throughput.py's run_align, at this check's sizes (compile: train.compile)."""
    s = ctx.s
    model = ctx.model_recipe()
    model["towers"] = {"text": {"trim_padding": trim}}
    return {"output_dir": ctx.path(name), "seed": seed, "resume": "none", "model": model,
            "data": {"train": "synthetic", "synthetic_size": s["batch"] * (s["steps"] + 1), "num_workers": 0,
                     "synthetic_caption": CAPTION},
            "train": {"batch_size": s["batch"], "max_steps": s["steps"], "precision": s["precision"], "lr": 5e-4,
                      "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, "num_threads": os.cpu_count(),
                      "compile": compile}}


def count_flops(model_section: dict, caption: str) -> float:
    """Training FLOPs per sample on the batch the run trains on: align.train.perf's method (3x the forward
    FLOPs that torch's FlopCounterMode counts), with the real caption instead of random tokens, so a
    trimmed text tower is counted at the length it runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from align.config import parse_recipe
    from align.model import build_model
    model = build_model(parse_recipe({"output_dir": "/tmp/unused", "model": model_section,
                                      "train": {"max_steps": 1}}).model).eval()
    batch = {"image": model.towers["image"].dummy_input(2), "text": model.towers["text"].tokenize([caption] * 2)}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(batch)
    return 3.0 * fc.get_total_flops() / 2


def align_child(recipe_path: str) -> None:
    """`python gpu_check_train.py align-run RECIPE.json`: train, then one JSON line of what was measured."""
    import torch
    from align.config import parse_recipe
    from align.train.loop import train
    with open(recipe_path) as f:
        rec = json.load(f)
    warmup = rec.pop("gpu_check_warmup")
    summary = train(parse_recipe(rec), progress=False)
    cuda = torch.cuda.is_available()
    peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if cuda else (peak_rss(), -1)
    rows = [json.loads(line) for line in open(os.path.join(rec["output_dir"], "metrics.jsonl"))]
    rows = [r for r in rows if r["step"] > warmup]
    b = rec["train"]["batch_size"]
    # log_every=1: each row's samples_per_s covers exactly one step (throughput.py's reading)
    times = [b / r["samples_per_s"] for r in rows]
    out = {"samples_per_s": b * len(times) / sum(times), "timed_steps": len(times),
           "data_wait_frac": statistics.mean(r["data_wait_frac"] for r in rows),
           "peak_mem_allocated": peak[0], "peak_mem_reserved": peak[1], "final_loss": summary.get("final_loss"),
           "flops_per_sample": count_flops(rec["model"], rec["data"]["synthetic_caption"])}
    print("GPU_CHECK_RESULT " + json.dumps(out), flush=True)
    sys.stderr.flush()
    os._exit(0)        # measured and printed: no interpreter teardown (trackers' threads) to wait for


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (the CPU stand-in for the dry run)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_align(ctx, name: str, trim: bool, timeout: float, compile: bool = False) -> dict:
    shutil.rmtree(ctx.path(name), ignore_errors=True)        # metrics.jsonl is appended to: start clean
    rec = align_recipe(ctx, name, trim, compile=compile)
    rec["gpu_check_warmup"] = ctx.s["warmup"]
    path = ctx.path(name + ".json")
    with open(path, "w") as f:
        json.dump(rec, f)
    rc, out, sec = run_cmd([ctx.python, os.path.abspath(__file__), "align-run", path], timeout, env=child_env(ctx))
    m = re.search(r"^GPU_CHECK_RESULT (.*)$", out, re.M)
    if not m:          # (a run that printed its result and then hung on exit still counts)
        raise RuntimeError(f"align run {name} failed (rc {rc}):\n{out[-2500:]}")
    return dict(json.loads(m.group(1)), wall_s=round(sec, 1))


# ------------------------------------------------------------------------------------------ open_clip

def run_open_clip(ctx, name: str, timeout: float) -> dict:
    """open_clip_train.main on its synthetic set, same model/batch/precision/steps; parsed as throughput.py does."""
    s = ctx.s
    cfg = ctx.tiny_config_file() if ctx.dry else ""
    logs = ctx.path(name)
    shutil.rmtree(logs, ignore_errors=True)                  # open_clip_train refuses an existing experiment
    prec = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[s["precision"]]
    cmd = [ctx.openclip_python, "-c", OC_WRAPPER, cfg, "--dataset-type", "synthetic",
           "--train-num-samples", str(s["batch"] * s["steps"]), "--batch-size", str(s["batch"]),
           "--model", s["model"], "--epochs", "1", "--precision", prec, "--workers", str(ctx.workers),
           "--log-every-n-steps", "1", "--save-frequency", "0", "--lr", "5e-4", "--warmup", "2",
           "--logs", logs, "--name", "bench", "--seed", "0", "--report-to", ""]
    env = child_env(ctx)
    # its own packages: a separate venv must not see ours (webdataset 1.x); gpu_check.sh sets this to
    # PYTHONPATH when open_clip_train runs from align's python (e.g. wheels installed with --target)
    env["PYTHONPATH"] = os.environ.get("OPENCLIP_PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(os.cpu_count())
    rc, text, sec = run_cmd(cmd, timeout, env=env, cwd=ctx.work)
    if rc != 0:
        raise RuntimeError(f"open_clip_train failed (rc {rc}):\n{text[-2500:]}")
    # "Train Epoch: 0 [  64/ 800 ( 8%)] Data (t): 0.001 Batch (t): 1.234, 25.9/s, ..." (throughput.py's regex)
    steps = re.findall(r"Train Epoch: \d+ \[\s*(\d+)/.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)", text)
    kept = [(float(d), float(t)) for n, d, t in steps if int(n) // s["batch"] > s["warmup"]]
    if not kept:
        raise RuntimeError(f"could not parse open_clip_train's log:\n{text[-2000:]}")
    times = [t for _, t in kept]
    peak = re.search(r"GPU_CHECK_PEAK (-?\d+) (-?\d+)", text)
    return {"samples_per_s": s["batch"] * len(times) / sum(times), "timed_steps": len(times),
            "data_wait_frac": sum(d for d, _ in kept) / sum(times),
            "peak_mem_allocated": int(peak.group(1)) if peak else None,
            "peak_mem_reserved": int(peak.group(2)) if peak else None, "wall_s": round(sec, 1)}


def part_throughput(ctx, log) -> None:
    """align, align untrimmed, open_clip_train; then ratios and MFU."""
    import torch
    from align.train.perf import peak_flops
    s = ctx.s
    peak = peak_flops(torch.device(ctx.device), s["precision"])
    log.set(model=s["model"], batch=s["batch"], precision=s["precision"], steps=s["steps"], warmup=s["warmup"],
            caption=CAPTION, device=ctx.device, peak_flops=peak, openclip_workers=ctx.workers)
    runs = [("align", lambda t: run_align(ctx, "tp_align", True, t)),
            ("align_untrimmed", lambda t: run_align(ctx, "tp_align_untrimmed", False, t))]
    if ctx.openclip_python:
        runs.append(("open_clip", lambda t: run_open_clip(ctx, "tp_open_clip", t)))
    else:
        log.note("open_clip_train not found (no .bench_env, no OPENCLIP_PYTHON, not importable here): "
                 "align measured alone; build it with `bash tools/make_openclip_env.sh`")
        log.set(open_clip="not run: open_clip_train unavailable")
    errors = {}
    for i, (name, fn) in enumerate(runs):
        # an even share of what is left, so that the last run still gets its turn
        share = ctx.left() / (len(runs) - i)
        try:
            r = fn(share)
        except Exception as e:             # noqa: BLE001 - the next run still goes
            errors[name] = str(e)[-2500:]
            log.note(f"{name} failed: {str(e)[:300]}")
            continue
        if name == "open_clip":            # same architecture and full-context text: align untrimmed's count
            r["flops_per_sample"] = log.data["result"].get("align_untrimmed", {}).get("flops_per_sample")
        if r.get("flops_per_sample") and peak:
            r["mfu"] = r["flops_per_sample"] * r["samples_per_s"] / peak
        log.set(**{name: r})
        log.note(f"{name}: {r['samples_per_s']:.1f} samples/s, peak mem {r.get('peak_mem_allocated')}")
    res = log.data["result"]
    oc = res.get("open_clip") if isinstance(res.get("open_clip"), dict) else None
    if oc and "align" in res:
        log.set(ratio=res["align"]["samples_per_s"] / oc["samples_per_s"])
    if oc and "align_untrimmed" in res:
        log.set(ratio_untrimmed=res["align_untrimmed"]["samples_per_s"] / oc["samples_per_s"])
    if errors:
        log.data["errors"] = errors


def part_compile(ctx, log) -> None:
    """Optional: align (trimmed) with train.compile, the same run as part throughput's `align` otherwise; its
    samples/s after the warm-up steps (which take the compilation), MFU, peak memory, and the ratio to the
    uncompiled align and open_clip_train of part throughput's JSON when that part ran in this work dir."""
    import torch
    from align.train.perf import peak_flops
    s = ctx.s
    peak = peak_flops(torch.device(ctx.device), s["precision"])
    log.set(model=s["model"], batch=s["batch"], precision=s["precision"], steps=s["steps"], warmup=s["warmup"],
            device=ctx.device)
    r = run_align(ctx, "tp_align_compiled", True, ctx.left(), compile=True)
    if r.get("flops_per_sample") and peak:
        r["mfu"] = r["flops_per_sample"] * r["samples_per_s"] / peak
    log.set(align_compiled=r)
    tp_path = ctx.path("parts", "throughput.json")
    tp = json.load(open(tp_path)).get("result", {}) if os.path.exists(tp_path) else {}
    for name in ("align", "open_clip"):
        other = tp.get(name)
        if isinstance(other, dict) and other.get("samples_per_s"):
            log.set(**{f"ratio_to_{name}": r["samples_per_s"] / other["samples_per_s"]})


# ------------------------------------------------------------------------------------------ max batch

class StepProbe:
    """One align training step (model -> chunked InfoNCE -> backward -> AdamW) at a given batch, built from
    align's own model, loss and optimizer (as align.train.loop builds them), inputs made on the device."""

    def __init__(self, ctx):
        import torch
        from align.config import parse_recipe
        from align.losses import build_loss
        from align.model import build_model
        from align.train.optim import build_optimizer
        self.torch, self.dev = torch, torch.device(ctx.device)
        model = ctx.model_recipe()
        # real captions fill most of the 77 positions in a large batch: no trimming here
        model["towers"] = {"text": {"trim_padding": False}}
        r = parse_recipe({"output_dir": ctx.path("mb_unused"), "model": model,
                          "loss": {"type": "chunked_clip", "chunk_size": ctx.s["chunk"]},
                          "train": {"batch_size": 1, "max_steps": 1, "precision": ctx.s["precision"],
                                    "lr": 5e-4}})
        self.model = build_model(r.model).to(self.dev).train()
        self.loss = build_loss("chunked_clip", pairs=[tuple(p) for p in r.loss.pairs], chunk_size=r.loss.chunk_size)
        self.opt = build_optimizer(self.model, r.train, device_type=self.dev.type)
        self.img_shape = tuple(self.model.towers["image"].dummy_input(1).shape[1:])
        self.tokens = self.model.towers["text"].tokenize([CAPTION])                 # [1, 77]
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.s["precision"])

    def step(self, b: int) -> None:
        torch = self.torch
        batch = {"image": torch.randn(b, *self.img_shape, device=self.dev),       # [B, 3, H, W] float32
                 "text": self.tokens.expand(b, -1).to(self.dev)}                   # [B, 77]
        with torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None):
            feats = self.model(batch)
            total, _ = self.loss(feats, None, feats["logit_scale"], feats.get("logit_bias"))
        total.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        del batch, feats, total


def fits(probe: StepProbe, b: int, cap: float) -> dict:
    """Two steps at batch b under the cap: on CUDA the allocator refuses past the cap (set below); on CPU
    the step's peak RSS growth (VmHWM after a reset) is compared with the cap."""
    import gc
    torch = probe.torch
    t = time.time()
    cuda = probe.dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _reset_hwm()
    try:
        for _ in range(2):
            probe.step(b)
        if cuda:
            torch.cuda.synchronize()
            peak, ok = torch.cuda.max_memory_reserved(), True
        else:
            peak = (status_kb("VmHWM") * 1024 - base) if base is not None else peak_rss()
            ok = peak <= cap
    except torch.cuda.OutOfMemoryError:      # (= torch.OutOfMemoryError on torch >= 2.5)
        probe.opt.zero_grad(set_to_none=True)
        peak, ok = None, False
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"batch": b, "fits": ok, "peak_bytes": peak, "seconds": round(time.time() - t, 2)}


def _reset_hwm():
    """The peak-RSS counter reset (benchmarks/loss_memory.py's), in bytes; None if not allowed."""
    kb = reset_hwm()
    return None if kb is None else kb * 1024


def search_max_batch(fits_fn, start: int, limit: int, step: int, time_left) -> dict:
    """Largest b with fits_fn(b) (-> dict with "fits"): doubling from `start` while it fits and b <= limit,
    then bisection between the last fit and the first failure down to `step`; stops when time_left() <= 0.
    -> {"max_batch": b or None, "first_failing": b or None, "bound": why the search ended, "probes": [...]}"""
    probes, lo, hi, b = [], None, None, start
    while b <= limit and time_left() > 0:
        r = fits_fn(b)
        probes.append(r)
        if not r["fits"]:
            hi = b
            break
        lo, b = b, b * 2
    while lo and hi and hi - lo > step and time_left() > 0:
        mid = max(lo + step, (lo + hi) // 2 // step * step)
        r = fits_fn(mid)
        probes.append(r)
        lo, hi = (mid, hi) if r["fits"] else (lo, mid)
    if lo is not None and hi is not None and hi - lo <= step:
        bound = f"exact to {step}"
    elif lo is not None and hi is None and b > limit:
        bound = f"search limit {limit} reached (the true maximum may be larger)"
    else:
        bound = "time budget ran out (a lower bound)"
    return {"max_batch": lo, "first_failing": hi, "bound": bound, "probes": probes}


def part_maxbatch(ctx, log) -> None:
    """search_max_batch over two-step probes under the memory cap."""
    s = ctx.s
    cap = s["mb_cap_gb"] * 1e9
    probe = StepProbe(ctx)
    torch = probe.torch
    if probe.dev.type == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        how = f"torch.cuda.set_per_process_memory_fraction({cap / total:.4f}) of {total / 1e9:.1f} GB"
    else:
        how = "CPU stand-in: peak RSS growth of the step (VmHWM) against the cap"
    log.set(cap_gb=s["mb_cap_gb"], how=how, loss="chunked_clip", chunk_size=s["chunk"], model=s["model"],
            precision=s["precision"], text="full 77-token context (trim_padding=false)", limit=s["mb_limit"])
    probe.step(min(8, s["mb_start"]))          # warm-up: lazy initialisation (kernels, optimizer state) not counted

    def fits_logged(b):
        r = fits(probe, b, cap)
        log.note(f"batch {b}: {'fits' if r['fits'] else 'does not fit'} (peak {r['peak_bytes']})")
        return r
    res = search_max_batch(fits_logged, s["mb_start"], s["mb_limit"], s["mb_step"], ctx.left)
    if res["max_batch"] is None:
        raise RuntimeError(f"batch {s['mb_start']} does not fit in {s['mb_cap_gb']} GB ({res['bound']})")
    res["peak_bytes_at_max"] = max(p["peak_bytes"] or 0 for p in res["probes"] if p["batch"] == res["max_batch"])
    log.set(resolution=s["mb_step"], **res)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "align-run":
        align_child(sys.argv[2])
    else:
        sys.exit("usage: gpu_check_train.py align-run RECIPE.json (run by gpu_check.py)")
