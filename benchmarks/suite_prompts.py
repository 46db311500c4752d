"""A suite of datasets that share their classes: the class prompts encoded once per model, or once per dataset.

    PYTHONPATH=$PWD python benchmarks/suite_prompts.py --export EXPORT --images DIR --work WORK
        [--datasets 3] [--items 100] [--classes 1000] [--templates openai_imagenet] [--threads 2]

ImageNet and its variants (V2, Sketch, -R's and -A's subsets) share ImageNet's 1,000 class names and 80 templates:
80,000 prompts a model encodes for each dataset in CLIP_benchmark, and once per model in an `align bench suite`
(align.bench.embed.same_weights_prompts). This writes `--datasets` CLIP_benchmark-layout sets of `--items` images
(JPEGs from --images, e.g. benchmarks/zeroshot_speed.py's WORK/zs_src) labelled with `--classes` synthetic class
names, then runs the same suite over them with the export twice in one process: as shipped, and with the
in-memory prompt reuse turned off (what CLIP_benchmark does). Prints one RESULT line per run (wall seconds, the
text encoder's calls) and the ratio; the metrics of both runs must be equal (checked).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def make_sets(a) -> list:
    from align.data.write.shards import write_shards
    names = []
    images = sorted(f for f in os.listdir(a.images) if f.endswith(".jpg"))
    classes = [f"class{c:04d} object" for c in range(a.classes)]
    for d in range(a.datasets):
        out = os.path.join(a.work, f"set{d}")
        names.append(out)
        if os.path.exists(os.path.join(out, "test", "nshards.txt")):
            continue
        csv = os.path.join(a.work, f"set{d}.csv")
        with open(csv, "w") as f:
            f.write("image,label\n")
            for i in range(a.items):
                f.write(f"{os.path.join(a.images, images[(d * a.items + i) % len(images)])},"
                        f"{classes[(7 * i + d) % len(classes)]}\n")
        write_shards(csv, out, image_col="image", label_col="label", text_col=False, layout="clip_benchmark",
                     classnames=classes, templates=a.templates, shard_size=1000, progress=False, overwrite=True)
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="an align/open_clip export (align.load reads it)")
    p.add_argument("--images", required=True, help="a folder of .jpg files")
    p.add_argument("--work", required=True)
    p.add_argument("--datasets", type=int, default=3)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--templates", default="openai_imagenet")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    import align
    import align.bench.suite as suite
    from align.templates import get_templates
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    sets = make_sets(a)
    yaml_path = os.path.join(a.work, "suite.yaml")
    with open(yaml_path, "w") as f:
        f.writelines(f"- {{dataset: {s}, type: wds, task: zeroshot}}\n" for s in sets)
    model = align.load(a.export)
    calls = {"n": 0}
    encode = model.encode_text

    def counted(*args, **kw):
        calls["n"] += 1
        return encode(*args, **kw)
    model.encode_text = counted
    walls, metrics = {}, {}
    shipped = suite.same_weights_prompts
    for how in ("once per model (align)", "once per dataset (CLIP_benchmark)"):
        suite.same_weights_prompts = shipped if how.startswith("once per model") else contextlib.nullcontext
        calls["n"] = 0
        t = time.perf_counter()
        res = suite.run_suite(yaml_path, [model], os.path.join(a.work, f"out{len(walls)}"), overwrite=True,
                              progress=False, num_workers=0, batch_size=256)
        walls[how] = time.perf_counter() - t
        metrics[how] = [r["metrics"] for r in res]
        print(f"RESULT prompts={how} wall_s={walls[how]:.1f} text_encoder_calls={calls['n']} "
              f"datasets={len(sets)} prompts_per_dataset={a.classes * len(get_templates(a.templates))}",
              flush=True)
    suite.same_weights_prompts = shipped
    a_m, c_m = metrics.values()
    if a_m != c_m:
        raise SystemExit(f"metrics differ: {a_m} vs {c_m}")
    w = list(walls.values())
    print(f"RATIO once-per-dataset / once-per-model wall = {w[1] / w[0]:.2f} (metrics equal)", flush=True)


if __name__ == "__main__":
    main()
