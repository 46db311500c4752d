"""`align demo`: build the digits dataset, train recipes/demo.yaml, benchmark val, write a report.

    align demo --out align_demo
      align_demo/data/     train shards; val, selection/ and heldout/ in CLIP_benchmark's local layout
      align_demo/run/      the training run (config.yaml, checkpoints/, metrics.jsonl, tb/, summary.json)
      align_demo/report/   result JSONs (CLIP_benchmark shape), results.md, loss.png, retrieval.png,
                       confusion_image.png, confusion_audio.png (zero-shot: which digit is taken for which)
      align_demo/report/heldout/   the same on the held-out groups (unseen voices, another rendering)

The console table gives each metric on val (voices and rendering seen in training) beside the same
metric on the held-out groups: the second column is what tells generalisation from memorisation.
"""
import json
import os
import shutil
import time
from typing import List, Optional

from align.shipped import resolve_recipe
from align.writes import write_text_whole


def run_demo(out: str = "align_demo", seed: int = 0, overrides: Optional[List[str]] = None,
             progress: bool = True) -> dict:
    from align.config import load_recipe
    from align.demo.data import build_demo
    from align.train.evaluate import write_report
    from align.train import rundir, train

    t0 = time.perf_counter()
    data_dir = os.path.join(out, "data")
    print(f"[1/3] demo data -> {data_dir}")
    build_demo(data_dir, seed=seed, progress=progress)
    t_data = time.perf_counter() - t0

    run_dir = os.path.join(out, "run")
    recipe = load_recipe(resolve_recipe("demo"), [
        f"output_dir={run_dir}", f"seed={seed}", f"data.train={os.path.join(data_dir, 'train')}",
        f"data.val={os.path.join(data_dir, 'val')}", "resume=auto",
        "eval.tasks=[zeroshot]",   # the run's own final eval; the report below scores everything
        *(overrides or [])])
    print(f"[2/3] training recipes/demo.yaml -> {run_dir}")
    t1 = time.perf_counter()
    summary = train(recipe, progress=progress)
    t_train = time.perf_counter() - t1

    print("[3/3] benchmarks on val (FAISS)")
    import align
    model = align.load(run_dir)
    model.name = "align-demo"
    report_dir = os.path.join(out, "report")
    # Demo captions are per class ("a handwritten seven."), so retrieval is scored by class match.
    results = write_report(model, os.path.join(data_dir, "val"), report_dir, progress=progress, by_class=True)
    shutil.copy(os.path.join(run_dir, rundir.LOSS_PLOT), os.path.join(report_dir, rundir.LOSS_PLOT))
    heldout = write_report(model, os.path.join(data_dir, "heldout"), os.path.join(report_dir, "heldout"),
                           progress=progress, by_class=True)
    total = time.perf_counter() - t0
    print(side_by_side(results, heldout))
    line = {"data_s": round(t_data, 1), "train_s": round(t_train, 1), "total_s": round(total, 1),
            "train_samples_per_s": round(summary.get("samples_per_s", 0), 1)}
    from align.train.evaluate import flatten
    flat, flat_h = flatten(results), flatten(heldout)
    accs = {f"{m}_zeroshot_acc1": flat.get(f"{m}/zeroshot/acc1") for m in ("image", "audio")}
    accs.update({f"{m}_zeroshot_acc1_heldout": flat_h.get(f"{m}/zeroshot/acc1") for m in ("image", "audio")})
    line.update({k: round(v, 4) for k, v in accs.items() if v is not None})
    # whole or not at all (a full disk: one line, the report's other files kept)
    write_text_whole(os.path.join(report_dir, "timing.json"), json.dumps(line, indent=1),
                     kept="the report's other files are kept")
    print(f"demo done in {total:.0f}s (data {t_data:.0f}s, train {t_train:.0f}s); report: {report_dir}/")
    return {"results": results, "heldout": heldout, "timing": line}


def side_by_side(results, heldout) -> str:
    """Console table: task, modalities, metric, value on val, value on the held-out groups (percent)."""
    from align.train.evaluate import table
    return (table({"val": results, "held-out": heldout}) + "\n"
            "held-out: the val digits spoken by eSpeak voices never heard in training and drawn smaller, "
            "off-centre, with thinner/thicker strokes and another blur")
