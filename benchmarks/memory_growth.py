"""Memory that grows with the steps, the corpus or the samples drawn: what a run of days keeps.

    python benchmarks/memory_growth.py train --steps 20000 --workers 2      # RSS of the loop and its data workers
    python benchmarks/memory_growth.py train --steps 5000 --trace           # + Python-traced MB and top growth
    python benchmarks/memory_growth.py metrics --rows 100000                # a resume's and loss.png's reads
    python benchmarks/memory_growth.py rows --rows 1000000                  # `align index` writing rows.parquet
    python benchmarks/memory_growth.py index --rows 1000000                 # Index.load: held, peak (`align serve`)
    python benchmarks/memory_growth.py noise                                # a data worker's decoded noise clips
    python benchmarks/memory_growth.py shards --rows 1000000 [--jsonl]      # `align data shards` of a CSV (JSONL)
    python benchmarks/memory_growth.py table --rows 1000000 [--jsonl|--parquet]   # its reads of the table, timed
    python benchmarks/memory_growth.py filter --rows 200000 --keep-top 0.25   # `align data filter`'s selection
    python benchmarks/memory_growth.py groups --rows 1000000                # `--val-groups-from`'s split of a CSV

Each imports the `align` first on PYTHONPATH (this checkout otherwise), so `PYTHONPATH=/tmp/old python ...` measures
another tree (e.g. `git archive BASE align | tar -x -C /tmp/old`) on the same files. Files go to --work.
`train`: a tiny open_clip model on 8 shards of 200 image-text samples, 10 % of them broken (skipped and counted),
one metrics row a step; a line at each tenth of the run with the training process's and its workers' RSS.
"""
import argparse
import io
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # after PYTHONPATH's align


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_train_shards(out: str) -> str:
    from PIL import Image

    from align.wds.writer import write_shard
    shards = os.path.join(out, "shards")
    os.makedirs(shards, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        samples = []
        for j in range(200):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
            jpg = buf.getvalue() if j % 10 else b"not a jpeg" + bytes([j % 256]) * 10      # 10 % broken
            samples.append({"__key__": f"s{i}_{j:04d}", "jpg": jpg, "txt": f"a photo number {j}"})
        write_shard(os.path.join(shards, f"shard-{i:03d}.tar"), samples)
    return shards


def train(a) -> None:
    import tracemalloc

    import psutil

    from align.config import parse_recipe
    from align.train import metrics as M
    from align.train.loop import train as run
    tiny = {"vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16,
                           "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                         "mlp_ratio": 2.0}}
    r = parse_recipe({"output_dir": os.path.join(a.work, f"run{time.time_ns()}"), "seed": 0, "resume": "none",
                      "model": {"embed_dim": 16, "open_clip": tiny},
                      "data": {"train": write_train_shards(a.work), "num_workers": a.workers, "shuffle_buffer": 100},
                      "train": {"batch_size": 8, "max_steps": a.steps, "lr": 1e-3, "log_every": 1,
                                "checkpoint_every": 0, "num_threads": 1},
                      "eval": {"every": 0}})
    me, snaps, every, step_row = psutil.Process(), [], max(a.steps // 10, 1), M.RunLogger.step

    def step(self, state, res, loader):
        step_row(self, state, res, loader)
        if state.step % every == 0:
            p = {"step": state.step, "main_rss_mb": round(me.memory_info().rss / 2**20, 1),
                 "workers_rss_mb": [round(k.memory_info().rss / 2**20, 1) for k in me.children(recursive=True)],
                 "skipped": sum(loader.skipped.values())}
            if a.trace:
                p["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
                snap = tracemalloc.take_snapshot()
                snaps[:] = [snaps[0], snap] if snaps else [snap]      # the first and the latest
            print(json.dumps(p), flush=True)
    M.RunLogger.step = step
    if a.trace:
        tracemalloc.start(8)
    run(r, progress=False)
    if a.trace and len(snaps) == 2:
        for st in snaps[1].compare_to(snaps[0], "traceback")[:5]:
            print(f"{st.size_diff / 1024:+.1f} KiB {st.count_diff:+d} blocks: {st.traceback.format()[-2:]}")


def metrics(a) -> None:
    import shutil
    import tracemalloc

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (imported before measuring)

    from align.train.plots import write_loss_plot
    from align.train.storage import resume_metrics
    n, path = a.rows, os.path.join(a.work, f"metrics_{a.rows}.jsonl")
    if not os.path.exists(path):
        with open(path, "w") as f:
            for s in range(1, n + 1):
                f.write(json.dumps({"step": s, "epoch": s // 200, "loss": 2.0 + 1.0 / s, "lr": 1e-3 * (1 - s / n),
                                    "logit_scale": 14.09, "samples_per_s": 2024.68752134, "data_wait_frac": 0.01739,
                                    "skipped": s, "skipped_by_reason": {"undecodable image": s}, "bad_steps": 0,
                                    "loss/image-text": 2.0 + 1.0 / s}) + "\n")
    print(f"{n} rows, {os.path.getsize(path) / 2**20:.1f} MB")
    copy = path + ".copy"
    shutil.copy(path, copy)
    for name, fn in (("resume_metrics (10 % of the rows past the resume step)", lambda: resume_metrics(copy, n - n // 10)),
                     ("write_loss_plot", lambda: write_loss_plot(path, os.path.join(a.work, "loss.png")))):
        tracemalloc.start()
        t = time.time()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name}: peak traced {peak / 2**20:.2f} MB, {time.time() - t:.1f} s")


def write_emb(out: str, n: int, per: int) -> None:
    """An `align embed`-shaped folder of n image rows (dim 8) with realistic keys, captions and shard paths."""
    import pandas as pd

    from align.retrieval.embed import COLUMNS, part_files, part_name
    if os.path.isfile(os.path.join(out, "manifest.json")):
        return
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    names, shards = [], []
    for p, s in enumerate(range(0, n, per)):
        m, part, shard = min(per, n - s), part_name(p), f"/data/corpus/laion-like/shard-{p:06d}.tar"
        names.append(part)
        shards.append(shard)
        np.save(os.path.join(out, "parts", f"{part}.image.npy"), np.ones((m, 8), np.float16) / np.sqrt(8))
        pd.DataFrame({"key": [f"{p:06d}{j:05d}" for j in range(m)],
                      "caption": [f"a photo of a small brown dog number {s + j} sitting on the grass" for j in range(m)],
                      "shard": shard, "modality": "image", "row": np.arange(m), "media_offset": np.arange(m) * 4096,
                      "media_size": 3000 + np.arange(m) % 500, "part": part},
                     columns=COLUMNS).to_parquet(os.path.join(out, "parts", f"{part}.parquet"), index=False)
        files = {f: os.path.getsize(os.path.join(out, "parts", f)) for f in part_files(part, {"image": m})}
        with open(os.path.join(out, "parts", f"{part}.done.json"), "w") as f:
            json.dump({"part": part, "shard": shard, "items": m, "vectors": {"image": m}, "skipped": 0,
                       "errors": [], "files": files}, f)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"model": "x", "shards": shards, "parts": names, "dtype": "float16", "modalities": ["image"],
                   "root": "/data/corpus"}, f)


def rows(a) -> None:
    from align.retrieval import embed
    emb = os.path.join(a.work, f"emb_{a.rows}")
    write_emb(emb, a.rows, a.per_part)
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    base, out = peak_mb(), os.path.join(a.work, "rows.parquet")
    if hasattr(embed, "write_rows"):
        how = "write_rows (part by part)"
        embed.write_rows(emb, "image", out)
    else:
        how = "load_rows + to_parquet (the whole table)"
        embed.load_rows(emb, "image").reset_index(drop=True).to_parquet(out, index=False)
    print(f"{how}, {a.rows} rows: peak RSS +{peak_mb() - base:.0f} MB (over {base:.0f} MB)")


def _vm_mb(key: str) -> float:
    """VmRSS or VmHWM (the peak since the last reset) of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def index(a) -> None:
    """Index.load of an --rows index of dim 8 (rows.parquet as `align index` writes it, a row group per part), in a
    process of its own (the files are built in this one): RSS held, peak over the RSS before, rows() and search."""
    import subprocess

    import faiss
    emb, ix_dir = os.path.join(a.work, f"emb_{a.rows}"), os.path.join(a.work, f"ixparts_{a.rows}")
    write_emb(emb, a.rows, a.per_part)
    if not os.path.isfile(os.path.join(ix_dir, "index.faiss")):
        from align.retrieval.embed import write_rows
        os.makedirs(ix_dir, exist_ok=True)
        flat = faiss.IndexFlatIP(8)
        flat.add(np.ones((a.rows, 8), np.float32) / np.sqrt(8))
        faiss.write_index(flat, os.path.join(ix_dir, "index.faiss"))
        write_rows(emb, "image", os.path.join(ix_dir, "rows.parquet"))
        with open(os.path.join(ix_dir, "settings.json"), "w") as f:
            json.dump({"modality": "image", "kind": "flat_faiss"}, f)
    subprocess.run([sys.executable, os.path.abspath(__file__), "index-load", "--work", ix_dir, "--rows", str(a.rows)],
                   check=True)


def index_load(a) -> None:
    import gc

    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from align.retrieval import Index
    Index  # noqa: B018  (the search module and FAISS imported before measuring)
    flat_mb = a.rows * 8 * 4 / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                       # resets VmHWM to the RSS now (Linux)
    before, t = _vm_mb("VmRSS"), time.perf_counter()
    ix = Index.load(a.work)
    load_s = time.perf_counter() - t
    gc.collect()
    held, peak = _vm_mb("VmRSS") - before - flat_mb, _vm_mb("VmHWM") - before - flat_mb
    rng, rows_ms, search_ms = np.random.default_rng(0), [], []
    for _ in range(30):
        ids = rng.integers(0, len(ix), 1000).tolist()
        t = time.perf_counter()
        ix.rows(ids)
        rows_ms.append((time.perf_counter() - t) * 1e3)
        q = rng.standard_normal((64, 8)).astype(np.float32)
        t = time.perf_counter()
        ix.results(q, k=10)
        search_ms.append((time.perf_counter() - t) * 1e3)
    rows_ms.sort()
    search_ms.sort()
    print(f"Index.load of {a.rows} rows: {load_s:.2f} s, +{held:.0f} MB RSS held and peak +{peak:.0f} MB over the RSS "
          f"before ({before:.0f} MB), besides the {flat_mb:.0f} MB of vectors; rows() of 1,000 ids {rows_ms[0]:.2f} / "
          f"{rows_ms[15]:.2f} ms, results() of 64 queries k=10 {search_ms[0]:.1f} / {search_ms[15]:.1f} ms "
          f"(best / median of 30)")


def noise(a) -> None:
    import psutil
    import soundfile as sf
    import torch

    from align.data.stream.augment import build_augmenter
    d = os.path.join(a.work, "noise100")
    if not os.path.isdir(d):
        os.makedirs(d)
        r = np.random.default_rng(0)
        for i in range(100):
            sf.write(os.path.join(d, f"n{i:03d}.wav"), (0.1 * r.standard_normal(90 * 16000)).astype(np.float32),
                     16000, subtype="PCM_16")
    st = build_augmenter({"audio": [{"type": "noise", "folder": d}]}).wave_stages[0]
    x, me = torch.zeros(1, 16000) + 0.1, psutil.Process()
    base, t0 = me.memory_info().rss, time.time()
    for i in range(600):
        st(x, np.random.default_rng(i), sr=16000)
        if (i + 1) % 150 == 0:
            kept = sum(c.nbytes for c in st._cache.values()) / 2**20
            print(f"{i + 1} clips noised: {len(st._cache)} of 100 noise files (90 s each) kept decoded, {kept:.0f} MB; "
                  f"RSS +{(me.memory_info().rss - base) / 2**20:.0f} MB; {time.time() - t0:.1f} s")


def _table_file(a) -> str:
    """An --rows table (CSV, or --jsonl / --parquet) of a 60-character caption and an integer label, made once."""
    ext = "jsonl" if a.jsonl else "parquet" if a.parquet else "csv"
    path = os.path.join(a.work, f"table_{a.rows}.{ext}")
    if not os.path.exists(path):
        texts = (f"a photo of a small brown dog number {i} sitting on the grass" for i in range(a.rows))
        if a.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({"text": list(texts), "label": [i % 1000 for i in range(a.rows)]}), path)
            return path
        with open(path, "w") as f:
            f.write("" if a.jsonl else "text,label\n")
            for i, text in enumerate(texts):
                f.write(json.dumps({"text": text, "label": i % 1000}) + "\n" if a.jsonl else f"{text},{i % 1000}\n")
    return path


def shards(a) -> None:
    """write_shards of an --rows CSV (or JSONL) of captions and labels (no media: the input table's cost alone), in
    this process, after one of its first 100 rows (which imports what it imports): peak RSS over that."""
    import shutil

    import psutil
    path = _table_file(a)
    ext = path.rsplit(".", 1)[1]
    out = os.path.join(a.work, f"shards_{a.rows}_{ext}")
    shutil.rmtree(out, ignore_errors=True)
    from align.data.write.shards import write_shards
    warm = os.path.join(a.work, f"table_100.{ext}")
    if a.parquet:
        import pyarrow.parquet as pq
        pq.write_table(pq.read_table(path).slice(0, 100), warm)
    else:
        with open(path) as f, open(warm, "w") as w:
            w.writelines(f.readline() for _ in range(100))
    shutil.rmtree(out + "_warm", ignore_errors=True)
    write_shards(warm, out + "_warm", progress=False)
    base, rss, t = peak_mb(), psutil.Process().memory_info().rss / 2**20, time.time()
    st = write_shards(path, out, shard_size=10_000, progress=False)
    print(f"write_shards of a {a.rows}-row {ext.upper()} ({os.path.getsize(path) / 2**20:.0f} MB): {st['written']} "
          f"written, peak RSS {peak_mb():.0f} MB, +{peak_mb() - base:.0f} MB over the peak before ({base:.0f} MB), "
          f"+{peak_mb() - rss:.0f} MB over the RSS before the call ({rss:.0f} MB); {time.time() - t:.0f} s")


def table(a) -> None:
    """The reads of an --rows table that `align data shards` makes before its first shard (open_input: parses, counts,
    finds the columns; the label column's class names) and the one its shards are written from (rows()), each timed,
    with the Rows (a Python dict of a row's values) each made."""
    from pathlib import Path

    from align.data.write import eval_sets, table_input
    from align.data.write.inputs import open_input
    path, made = _table_file(a), [0]

    class Counted(table_input.Row):
        def __init__(self, *args):
            super().__init__(*args)
            made[0] += 1
    table_input.Row = Counted
    steps = [("open_input (parse check, row count, columns)", lambda: open_input(Path(path))), (
        "the label column's class names", lambda: eval_sets.resolve_classes(inp, "label")), (
        "rows() (what the shards are written from)", lambda: sum(1 for _ in inp.rows(0, len(inp))))]
    total = 0.0
    for name, fn in steps:
        made[0], t = 0, time.perf_counter()
        got = fn()
        dt = time.perf_counter() - t
        total += dt
        inp = got if name.startswith("open_input") else inp
        print(f"{name}: {dt:.2f} s, {made[0]} Rows made")
    print(f"{a.rows}-row {path.rsplit('.', 1)[1].upper()}: {total:.2f} s in all")


def groups(a) -> None:
    """`align data shards --val-groups-from speaker --val-groups s0`'s split of an --rows CSV (image file, caption,
    speaker of 1,000; the files absent, so no byte is read): split_by_groups, trained_files and copied_files in
    this process after a 100-row warm-up, peak RSS over that and the time, with the split's sizes."""
    from pathlib import Path

    import psutil
    from align.data.write import eval_sets as E
    from align.data.write.inputs import open_input
    path = os.path.join(a.work, f"groups_{a.rows}.csv")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("image,text,speaker\n")
            f.writelines(f"images/speaker_{i % 1000}/utterance_{i:08d}.png,a photo number {i},s{i % 1000}\n"
                         for i in range(a.rows))
    cols = {"image": "image", "text": "text"}

    def split(p):
        inp = open_input(Path(p))
        train, val, missing, _ = E.split_by_groups(inp, "speaker", ["s0"])
        also = E.trained_files(inp, cols, train, val)
        copies, _ = E.copied_files(inp, cols, train, [i for i in val if i not in also], 1 << 30)
        return len(train), len(val), len(missing), len(also), len(copies)
    warm = os.path.join(a.work, "groups_100.csv")
    with open(path) as f, open(warm, "w") as w:
        w.writelines(f.readline() for _ in range(101))
    split(warm)
    base, rss, t = peak_mb(), psutil.Process().memory_info().rss / 2**20, time.time()
    got = split(path)
    print(f"held-out split of a {a.rows}-row CSV ({os.path.getsize(path) / 2**20:.0f} MB): train/val/no group/also "
          f"trained/copies {got}, peak RSS {peak_mb():.0f} MB, +{peak_mb() - max(base, rss):.0f} MB over the RSS and "
          f"peak before ({rss:.0f} / {base:.0f} MB); {time.time() - t:.1f} s")


def write_filter_emb(out: str, n: int, per: int, dim: int = 512) -> None:
    """An `align embed`-shaped folder of n image rows and 2 captions a sample (float16, dim 512): captions near
    their image (scores spread), every 20th image a near-copy of the one before (the dedup's pairs)."""
    import pandas as pd

    from align.retrieval.embed import COLUMNS, part_files, part_name
    if os.path.isfile(os.path.join(out, "manifest.json")):
        return
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    rng, names, shards = np.random.default_rng(0), [], []
    for p, s in enumerate(range(0, n, per)):
        m, part, shard = min(per, n - s), part_name(p), f"/data/corpus/laion-like/shard-{p:06d}.tar"
        names.append(part)
        shards.append(shard)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        x[1::20] = x[0:m - 1:20][:len(x[1::20])] + 0.05 * rng.standard_normal((len(x[1::20]), dim))
        t = np.repeat(x, 2, axis=0) + rng.uniform(0.5, 3, (2 * m, 1)) * rng.standard_normal((2 * m, dim))
        for mod, v in (("image", x), ("text", t)):
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            np.save(os.path.join(out, "parts", f"{part}.{mod}.npy"), v.astype(np.float16))
        keys = [f"{p:06d}{j:05d}" for j in range(m)]
        caps = [f"a photo of a small brown dog number {s + j // 2}" for j in range(2 * m)]
        table = pd.DataFrame({"key": keys + [k for k in keys for _ in range(2)], "caption": [None] * m + caps,
                              "shard": shard, "modality": ["image"] * m + ["text"] * (2 * m),
                              "row": np.r_[np.arange(m), np.arange(2 * m)], "media_offset": 0, "media_size": 3000,
                              "part": part}, columns=COLUMNS)
        table.to_parquet(os.path.join(out, "parts", f"{part}.parquet"), index=False)
        vec = {"image": m, "text": 2 * m}
        files = {f: os.path.getsize(os.path.join(out, "parts", f)) for f in part_files(part, vec)}
        with open(os.path.join(out, "parts", f"{part}.done.json"), "w") as f:
            json.dump({"part": part, "shard": shard, "items": m, "vectors": vec, "skipped": 0, "errors": [],
                       "files": files}, f)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"model": "x", "shards": shards, "parts": names, "dtype": "float16", "modalities": ["image", "text"],
                   "root": "/data/corpus"}, f)


def filter_(a) -> None:
    """`align data filter`'s selection (scores, --keep-top, --dedup 0.95) of an --rows embedding, in a process of its
    own (the files are written in this one): peak RSS over the RSS before, seconds, and what it dropped."""
    import subprocess
    emb = os.path.join(a.work, f"femb_{a.rows}")
    write_filter_emb(emb, a.rows, a.per_part)
    subprocess.run([sys.executable, os.path.abspath(__file__), "filter-run", "--work", emb, "--rows", str(a.rows),
                    "--keep-top", str(a.keep_top)], check=True)


def filter_run(a) -> None:
    import hashlib

    import faiss  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from align.retrieval import filter as F
    from align.retrieval.embed import load_embeddings
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                       # resets VmHWM to the RSS now (Linux)
    before, t = _vm_mb("VmRSS"), time.perf_counter()
    kw = {"min_score": None, "keep_top": a.keep_top, "dedup_cos": 0.95}
    if hasattr(F, "score_and_select"):
        how = "score_and_select (a chunk at a time)"
        drop, thr, _ = F.score_and_select(a.work, "image", ["image", "text"], **kw)
    else:
        how = "load_embeddings + clip_scores + select (in memory)"
        media, mrows = load_embeddings(a.work, "image", verify=False)
        text, trows = load_embeddings(a.work, "text", verify=False)
        drop, thr = F.select(F.clip_scores(media, mrows, text, trows), media, **kw)
    dt, peak = time.perf_counter() - t, _vm_mb("VmHWM") - before
    digest = hashlib.sha256(json.dumps(sorted(drop.items()), sort_keys=True).encode()).hexdigest()[:12]
    reasons = {r: sum(d["reason"] == r for d in drop.values()) for r in ("low_score", "near_duplicate")}
    print(f"{how}, {a.rows} samples x 512 (2 captions each), --keep-top {a.keep_top} --dedup 0.95: {dt:.1f} s, "
          f"peak RSS +{peak:.0f} MB over the RSS before ({before:.0f} MB); dropped {reasons}, threshold {thr!r}, "
          f"drops sha256 {digest}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "metrics", "rows", "index", "index-load", "noise", "shards", "table",
                                     "filter", "filter-run", "groups"])
    p.add_argument("--work", default="/tmp/align_memory_growth")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trace", action="store_true", help="train: tracemalloc too (slower)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--per-part", type=int, default=10_000)
    p.add_argument("--jsonl", action="store_true", help="shards, table: a JSONL table, not a CSV")
    p.add_argument("--parquet", action="store_true", help="shards, table: a Parquet table, not a CSV")
    p.add_argument("--keep-top", type=float, default=0.25, help="filter: the fraction kept by score")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    import align
    print(f"align from {os.path.dirname(os.path.dirname(os.path.abspath(align.__file__)))}", flush=True)
    {"train": train, "metrics": metrics, "rows": rows, "index": index, "index-load": index_load, "noise": noise,
     "shards": shards, "table": table, "filter": filter_, "filter-run": filter_run,
     "groups": groups}[a.what](a)


if __name__ == "__main__":
    main()
