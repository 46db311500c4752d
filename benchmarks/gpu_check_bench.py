"""GPU check, benchmark parts: `align bench` zero-shot vs the clip_benchmark CLI, exact 100k retrieval on the GPU.

Zero-shot: one model (the check's architecture, trained one step by `align train` so that it is an
ordinary run, exported with `align export --format open_clip`) is evaluated on the synthetic set that
part `data` wrote, by `align bench zeroshot` and by the clip_benchmark CLI (through
tools/clip_benchmark_compat.py, as tests/export/test_clip_benchmark_cli.py drives it), each a fresh
process timed from start to exit (model load included), same batch size, data workers and autocast
(clip_benchmark's default amp: fp16 on CUDA, bf16 on CPU).

Retrieval: benchmarks/retrieval_scale.py's synthetic gallery and queries (N x N, 512-d); the search runs
on the GPU: FAISS GpuIndexFlatIP when this faiss has GPUs, else torch float32 matmul (TF32 off) + topk over
blocks of queries, then a float64 re-rank of the top k+16 candidates. The ids are compared with align's
exact index (`index flat`, CPU, float64 re-rank) on a sample of queries. Then align's exact index itself on
the device (`index flat` with device=cuda, what `align bench --device cuda` searches with): all N queries,
build + search timed, its sampled rows compared with the CPU index's (exact: they must be equal).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from gpu_check import CAPTION, child_env, run_cmd  # noqa: E402

COMPAT = os.path.join(ROOT, "tools", "clip_benchmark_compat.py")
# clip_benchmark's CLI imports pycocoevalcap (captioning metrics, ~100 MB with its Java jars) at start-up;
# zero-shot classification never calls it. Where it is missing (it is too big to carry to the GPU
# machine), these stand-ins let the CLI start; any use of them raises.
PYCOCO_STUBS = {"tokenizer/ptbtokenizer": "PTBTokenizer", "bleu/bleu": "Bleu", "meteor/meteor": "Meteor",
                "rouge/rouge": "Rouge", "cider/cider": "Cider", "spice/spice": "Spice"}


def pycoco_stub_dir(ctx) -> str:
    """WORK/stubs with a pycocoevalcap package whose classes raise when constructed."""
    root = ctx.path("stubs")
    for mod, cls in PYCOCO_STUBS.items():
        d = os.path.join(root, "pycocoevalcap", os.path.dirname(mod))
        os.makedirs(d, exist_ok=True)
        for init in (os.path.join(root, "pycocoevalcap", "__init__.py"), os.path.join(d, "__init__.py")):
            open(init, "a").close()
        with open(os.path.join(root, "pycocoevalcap", mod + ".py"), "w") as f:
            f.write(f"class {cls}:\n    def __init__(self, *a, **k):\n        raise RuntimeError("
                    f"'pycocoevalcap is a stand-in here (benchmarks/gpu_check_bench.py): no captioning metrics')\n")
    return root


def make_model(ctx, log) -> str:
    """`align train` one step on synthetic data, then `align export --format open_clip` -> the export dir."""
    s = ctx.s
    run, export = ctx.path("zs_run"), ctx.path("zs_export")
    shutil.rmtree(run, ignore_errors=True)
    model = ctx.model_recipe()
    rec = {"output_dir": run, "seed": 0, "resume": "none", "model": model,
           "data": {"train": "synthetic", "synthetic_size": 2 * s["zs_train_batch"], "num_workers": 0,
                    "synthetic_caption": CAPTION},
           "train": {"batch_size": s["zs_train_batch"], "max_steps": 1, "precision": s["precision"],
                     "checkpoint_every": 0}}
    import yaml
    path = ctx.path("zs_recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(rec, f)
    env = child_env(ctx)
    rc, out, sec = run_cmd([ctx.python, "-m", "align.cli", "train", path, "--no-progress"], ctx.left() / 3, env=env)
    if rc != 0:
        raise RuntimeError(f"align train (the zero-shot model) failed (rc {rc}):\n{out[-2000:]}")
    rc, out, sec2 = run_cmd([ctx.python, "-m", "align.cli", "export", run, "--out", export, "--format", "open_clip",
                             "--overwrite"], ctx.left() / 3, env=env)
    if rc != 0:
        raise RuntimeError(f"align export failed (rc {rc}):\n{out[-2000:]}")
    log.set(model_train_s=round(sec, 1), model_export_s=round(sec2, 1), model_export=export)
    return export


def part_zeroshot(ctx, log) -> None:
    s = ctx.s
    ds = ctx.path("zs", "synthetic10k")
    if not os.path.exists(os.path.join(ds, "test", "nshards.txt")):
        raise RuntimeError(f"no zero-shot set at {ds}: part data failed or did not run")
    export = make_model(ctx, log)
    prec = "fp16" if ctx.device == "cuda" else "bf16"      # what clip_benchmark's default amp runs
    log.set(model=s["model"], items=s["zs_items"], classes=s["zs_classes"], batch_size=s["zs_batch"],
            workers=ctx.workers, device=ctx.device, precision=prec)
    env = child_env(ctx)
    errors = {}
    ours = ctx.path("zs_align.json")
    cmd = [ctx.python, "-m", "align.cli", "bench", "zeroshot", "--model", export, "--dataset", ds, "--out", ours,
           "--device", ctx.device, "--precision", prec, "--num-workers", str(ctx.workers),
           "--batch-size", str(s["zs_batch"])]
    rc, out, sec = run_cmd(cmd, ctx.left() / 2, env=env)
    if rc == 0:
        res = json.load(open(ours))       # "seconds": where align's wall time went (load, encode, prompts, search)
        log.set(align={"wall_s": round(sec, 2), "metrics": res["metrics"], "seconds": res.get("seconds", {})})
    else:
        errors["align"] = f"rc {rc}: {out[-2000:]}"
    theirs = ctx.path("zs_cb_{dataset}_{task}.json")
    name = os.path.basename(ds)
    cmd = [ctx.python, COMPAT, "eval", "--model", f"local-dir:{export}", "--pretrained", "",
           "--dataset", f"wds/{name}", "--dataset_root", os.path.join(os.path.dirname(ds), "{dataset}"),
           "--task", "zeroshot_classification", "--num_workers", str(ctx.workers), "--batch_size", str(s["zs_batch"]),
           "--output", theirs, "--quiet"]
    if run_cmd([ctx.python, "-c", "import pycocoevalcap"], 60, env=env)[0] != 0:
        env = dict(env, PYTHONPATH=env["PYTHONPATH"] + os.pathsep + pycoco_stub_dir(ctx))
        log.note("pycocoevalcap is not installed: clip_benchmark's CLI ran with a stand-in for it "
                 "(captioning metrics only; zero-shot classification does not use it)")
    rc, out, sec = run_cmd(cmd, ctx.left(), env=env, cwd=ctx.work)
    cb_json = ctx.path(f"zs_cb_{name}_zeroshot_classification.json")
    if rc == 0 and os.path.exists(cb_json):
        log.set(clip_benchmark={"wall_s": round(sec, 2), "metrics": json.load(open(cb_json))["metrics"]})
    else:
        errors["clip_benchmark"] = f"rc {rc}: {out[-2000:]}"
    res = log.data["result"]
    if "align" in res and "clip_benchmark" in res:
        log.set(speedup=res["clip_benchmark"]["wall_s"] / res["align"]["wall_s"])
    if errors:
        log.data["errors"] = errors


# ------------------------------------------------------------------------------------------ retrieval

def gpu_search(g, q_all, k: int, dev: str, block: int = 8192, extra: int = 16):
    """Top-k ids by inner product on `dev`: float32 GEMM (TF32 off) + topk(k+extra), float64 re-rank.
    g [N, D], q_all [Q, D] numpy float32 -> (ids [Q, k] int64 numpy, seconds incl. the upload)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t = time.time()
    G = torch.from_numpy(g).to(dev)                                       # [N, D] float32
    G64 = G.double()                                                      # [N, D] for the re-rank
    Q = torch.from_numpy(q_all).to(dev)
    c = min(len(g), k + extra)
    out = torch.empty((len(Q), k), dtype=torch.int64, device=dev)
    for s in range(0, len(Q), block):
        q = Q[s:s + block]                                                # [B, D]
        cand = torch.topk(q @ G.T, c, dim=1).indices                      # [B, c]
        cand = torch.sort(cand, dim=1).values                             # ties -> lower id (stable sort below)
        sc = torch.einsum("bd,bcd->bc", q.double(), G64[cand])           # [B, c] float64 scores
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :k]
        out[s:s + block] = torch.gather(cand, 1, order)
    ids = out.cpu().numpy()
    sync()
    return ids, time.time() - t


def faiss_gpu_search(g, q_all, k: int):
    """FAISS GpuIndexFlatIP (float32) -> (ids, seconds incl. building the index), or None without faiss GPUs."""
    import faiss
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    t = time.time()
    index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), g.shape[1])
    index.add(g)
    _, ids = index.search(q_all, k)
    return ids, time.time() - t


def part_retrieval(ctx, log) -> None:
    import numpy as np
    from retrieval_scale import make_gallery, make_queries
    from align.bench.index import build_index, sample_rows
    s = ctx.s
    n, dim, k = s["ret_n"], s["ret_dim"], 10
    t = time.time()
    g = make_gallery(n, dim, clusters=max(1, min(1000, n // 8)), spread=0.7, seed=0)
    # float32 as the index sees them (make_queries returns float64 under numpy 2's promotion rules)
    q = np.ascontiguousarray(make_queries(g, 0, n, noise=3.0, seed=0), dtype=np.float32)
    log.set(n=n, dim=dim, k=k, device=ctx.device, data_s=round(time.time() - t, 1))
    ids, sec = gpu_search(g, q, k, ctx.device)                  # first call: CUDA/cuBLAS start-up
    ids, sec = gpu_search(g, q, k, ctx.device)
    own = ids == np.arange(n)[:, None]
    res = {"search": "torch float32 matmul + topk, float64 re-rank of top k+16", "seconds": round(sec, 3),
           "queries_per_s": n / sec, **{f"R@{j}": float(own[:, :j].any(1).mean()) for j in (1, 5, 10)}}
    fr = faiss_gpu_search(g, q, k)
    if fr is None:
        log.note("faiss-gpu unavailable (this faiss has no GPU support): the search ran as torch matmul + topk "
                 f"on {ctx.device}")
    else:
        res["faiss_gpu"] = {"seconds": round(fr[1], 3), "same_ids_as_torch": int((fr[0] == ids).all(1).sum())}
    log.set(gpu=res)
    sample = sample_rows(n, s["ret_sample"], 0)
    index = build_index("flat", g)
    t = time.time()
    _, ref = index.search(q[sample], k)
    same = int((ref == ids[sample]).all(1).sum())
    log.set(check={"sample": len(sample), "same_top10_as_align_exact": same,
                   "align_exact_cpu_seconds_on_sample": round(time.time() - t, 2)})
    if same != len(sample):
        log.note(f"{len(sample) - same} sampled queries' top-{k} differ from align's exact index")
    # align's own exact index on the device (what `align bench --device cuda` searches with), all n queries,
    # twice (the first pays CUDA start-up); its sampled rows must equal the CPU index's exactly
    for _ in range(2):
        t = time.time()
        dev_index = build_index("flat", g, device=ctx.device)
        _, dev_ids = dev_index.search(q, k)
        dev_sec = time.time() - t
    same_dev = int((dev_ids[sample] == ref).all(1).sum())
    log.set(align_exact_on_device={"device": ctx.device, "seconds_build_and_search": round(dev_sec, 3),
                                   "queries_per_s": n / dev_sec, "scoring": dev_index.describe()["scoring"],
                                   "same_top10_as_cpu_on_sample": same_dev})
    if same_dev != len(sample):
        log.note(f"align's exact index on {ctx.device}: {len(sample) - same_dev} sampled queries differ from it on "
                 f"the CPU")
