"""The GPU check's parts, run one per process by benchmarks/gpu_check.sh, and its report.

    python benchmarks/gpu_check.py part NAME --out OUT --work WORK [--dry-run] [--budget S] [--openclip-python P]
    python benchmarks/gpu_check.py report --out OUT --work WORK [--dry-run]

Each part writes WORK/parts/NAME.json ({"status": "ok" | "error" | "partial", "result": {...},
"error": "..."}), also after each finished sub-measurement, so a part killed at its time budget
keeps what it measured. `report` merges the parts into OUT/gpu_check.json and OUT/gpu_check.md.
The measuring code is the project's own where it exists: align's training loop and its per-step
log (as benchmarks/throughput.py reads it), align.train.perf (FLOP counting, the peak table),
align's shard writer, `align bench`, tools/clip_benchmark_compat.py and benchmarks/retrieval_scale.py's
synthetic embeddings; see gpu_check_train.py and gpu_check_bench.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

PARTS = ("env", "data", "throughput", "maxbatch", "zeroshot", "retrieval")
# Run only when named (`gpu_check.sh --parts compile`, a second device call: the six above fill the 8 minutes):
#   compile   align's training with train.compile (torch.compile), the MFU remedy the first H200 run named
OPTIONAL_PARTS = ("compile",)

# The dry run's model: a tiny open_clip ViT, registered with open_clip under this name (open_clip_train
# takes a model by name) and given to align as the same config dict.
TINY_NAME = "gpucheck-tiny"
TINY_CFG = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                           "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                         "mlp_ratio": 2.0}}

# Sizes of the real check (one H200) and of --dry-run (CPU, seconds).
SIZES = {
    "gpu": {"model": "ViT-B-32", "batch": 256, "steps": 40, "warmup": 10, "precision": "bf16", "repeats": 1,
            "zs_items": 10_000, "zs_classes": 100, "zs_px": 256, "zs_batch": 256, "zs_train_batch": 256,
            "ret_n": 100_000, "ret_dim": 512, "ret_sample": 1000,
            "mb_start": 256, "mb_limit": 32_768, "mb_cap_gb": 80.0, "mb_step": 128, "chunk": 1024},
    "dry": {"model": TINY_NAME, "batch": 4, "steps": 4, "warmup": 1, "precision": "bf16", "repeats": 1,
            "zs_items": 64, "zs_classes": 4, "zs_px": 32, "zs_batch": 16, "zs_train_batch": 4,
            "ret_n": 64, "ret_dim": 32, "ret_sample": 16,
            "mb_start": 4, "mb_limit": 32, "mb_cap_gb": 0.4, "mb_step": 4, "chunk": 8},
}
CAPTION = "Dummy caption"       # open_clip_train's synthetic caption; align trains on the same text
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}.", "a close-up photo of a {c}.", "a drawing of a {c}.",
             "a photo of the large {c}.", "a photo of the small {c}.", "a bright photo of a {c}.",
             "a cropped photo of the {c}.", "a rendering of a {c}.", "art of the {c}."]


class Ctx:
    """What every part needs: sizes, directories, device, time budget, and the part's JSON file."""

    def __init__(self, a):
        self.dry, self.out, self.work = a.dry_run, a.out, a.work
        self.s = SIZES["dry" if a.dry_run else "gpu"]
        self.budget = a.budget
        self.t0 = time.time()
        self.openclip_python = a.openclip_python
        self.python = sys.executable
        self.workers = 0 if a.dry_run else max(1, min(12, (os.cpu_count() or 2) - 2))
        os.makedirs(os.path.join(self.work, "parts"), exist_ok=True)

    @property
    def device(self) -> str:
        import torch
        return "cuda" if torch.cuda.is_available() and not self.dry else "cpu"

    def left(self) -> float:
        """Seconds left of this part's budget (a margin kept for writing its JSON)."""
        return self.budget - (time.time() - self.t0) - 5

    def path(self, *p) -> str:
        return os.path.join(self.work, *p)

    def model_recipe(self) -> dict:
        """The `model:` section: open_clip ViT-B-32 by name, or the tiny config dict."""
        if self.dry:
            cfg = dict(TINY_CFG)
            return {"embed_dim": cfg.pop("embed_dim"), "open_clip": cfg}
        return {"open_clip": self.s["model"]}

    def tiny_config_file(self) -> str:
        """TINY_CFG as WORK/gpucheck-tiny.json, for open_clip.add_model_config (dry run only)."""
        p = self.path(TINY_NAME + ".json")
        with open(p, "w") as f:
            json.dump(TINY_CFG, f)
        return p


class PartLog:
    """Writes WORK/parts/NAME.json now and after every update (partial results survive a kill)."""

    def __init__(self, ctx: Ctx, name: str):
        self.ctx, self.name = ctx, name
        self.data = {"status": "partial", "result": {}, "notes": [], "started": time.time()}
        self.flush()

    def set(self, **kw):
        self.data["result"].update(kw)
        self.flush()

    def note(self, text: str):
        print(f"[{self.name}] {text}", flush=True)
        self.data["notes"].append(text)
        self.flush()

    def flush(self):
        self.data["seconds"] = round(time.time() - self.data["started"], 1)
        tmp = self.ctx.path("parts", self.name + ".json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.ctx.path("parts", self.name + ".json"))


def run_cmd(cmd, timeout, env=None, cwd=ROOT):
    """A subprocess with a wall-clock limit -> (returncode, output, seconds); output is stdout+stderr."""
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1, timeout), env=env, cwd=cwd)
        return p.returncode, p.stdout + p.stderr, time.time() - t
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n[timed out after {timeout:.0f} s]", time.time() - t


def child_env(ctx: Ctx) -> dict:
    """Environment of every child: this checkout's align first, offline, unbuffered."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


# ------------------------------------------------------------------------------------------ parts

def part_env(ctx: Ctx, log: PartLog) -> None:
    """Machine and package versions; which open_clip_train and faiss this run has."""
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "device": ctx.device, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 1e9, 1), gpu_count=torch.cuda.device_count())
    from align.train.perf import peak_flops
    info["peak_flops_bf16"] = peak_flops(torch.device(ctx.device), "bf16")
    info["peak_flops_source"] = ("align.train.perf.GPU_PEAKS (dense bf16, by device name)" if ctx.device == "cuda"
                                 else "measured CPU fp32 matmul rate (align.train.perf.peak_flops on CPU)")
    for mod in ("align", "open_clip", "faiss", "clip_benchmark", "webdataset", "accelerate"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "installed")
        except Exception as e:             # noqa: BLE001 - any import failure is just recorded
            info[mod] = f"not importable: {e}"
    try:
        import faiss
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception:                      # noqa: BLE001
        info["faiss_gpus"] = 0
    info["openclip_python"] = ctx.openclip_python or "none: open_clip_train not found (part throughput skips it)"
    rc, out, _ = run_cmd(["git", "rev-parse", "--short", "HEAD"], 10)
    info["commit"] = out.strip() if rc == 0 else "unknown"
    log.set(**info)


def part_data(ctx: Ctx, log: PartLog) -> None:
    """Synthetic zero-shot set: random images in classes, written by align's shard writer
    (CLIP_benchmark layout, read by both `align bench` and the clip_benchmark CLI)."""
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor
    from align.data.write.shards import write_shards
    s = ctx.s
    src = ctx.path("zs_src")
    os.makedirs(src, exist_ok=True)
    n, px = s["zs_items"], s["zs_px"]
    t = time.time()
    chunks = [(src, i, min(n, i + 500), px) for i in range(0, n, 500)]
    with ProcessPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as ex:
        list(ex.map(_write_images, chunks))
    classes = [f"class{c:03d} object" for c in range(s["zs_classes"])]
    labels = np.random.default_rng(0).integers(0, len(classes), n)
    with open(os.path.join(src, "labels.csv"), "w") as f:
        f.write("image,label\n")
        for i in range(n):
            f.write(f"img{i:06d}.jpg,{classes[labels[i]]}\n")
    t_img = time.time() - t
    out = ctx.path("zs", "synthetic10k")
    stats = write_shards(os.path.join(src, "labels.csv"), out, image_col="image", label_col="label", text_col=False,
                         layout="clip_benchmark", classnames=classes, templates=TEMPLATES, shard_size=500,
                         workers=max(1, min(16, os.cpu_count() or 1)), progress=False, overwrite=True)
    log.set(items=n, classes=len(classes), templates=len(TEMPLATES), image_px=px, dataset=out,
            written=stats.get("written", stats.get("samples")), images_s=round(t_img, 1),
            shards_s=round(time.time() - t - t_img, 1))


def _write_images(job) -> None:
    """Random smooth images (an 8x8 colour grid upsampled, plus noise) as JPEG files img{i}.jpg."""
    import numpy as np
    from PIL import Image
    src, start, stop, px = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((px, px), Image.BILINEAR)
        arr = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (px, px, 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(os.path.join(src, f"img{i:06d}.jpg"), quality=90)


def run_part(a) -> int:
    ctx = Ctx(a)
    log = PartLog(ctx, a.name)
    try:
        if a.name == "env":
            part_env(ctx, log)
        elif a.name == "data":
            part_data(ctx, log)
        elif a.name in ("throughput", "maxbatch", "compile"):
            import gpu_check_train
            getattr(gpu_check_train, "part_" + a.name)(ctx, log)
        else:
            import gpu_check_bench
            getattr(gpu_check_bench, "part_" + a.name)(ctx, log)
        log.data["status"] = "ok" if not log.data.get("errors") else "error"
    except BaseException as e:             # noqa: BLE001 - recorded in the JSON; the next part still runs
        log.data["status"] = "error"
        log.data["error"] = f"{type(e).__name__}: {e}"
        log.data["traceback"] = traceback.format_exc()[-3000:]
        print(log.data["traceback"], file=sys.stderr)
    log.flush()
    return 0 if log.data["status"] == "ok" else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["part", "report"])
    p.add_argument("name", nargs="?", choices=PARTS + OPTIONAL_PARTS)
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget", type=float, default=60.0, help="seconds this part may take")
    p.add_argument("--openclip-python", default="", help="python that imports open_clip_train ('' = none)")
    p.add_argument("--budgets", default="", help="report: NAME=SECONDS,... as gpu_check.sh gave them")
    p.add_argument("--rcs", default="", help="report: NAME=RC,... exit codes of the parts")
    p.add_argument("--total", type=float, default=None, help="report: the whole check's wall seconds")
    a = p.parse_args(argv)
    if a.cmd == "part":
        return run_part(a)
    from gpu_check_report import write_report
    return write_report(a)


if __name__ == "__main__":
    sys.exit(main())
