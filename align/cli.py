"""The `align` command line: every subcommand in one table, each calling a library function.

    align demo [--out DIR]                         build data, train, benchmark, report
    align train RECIPE.yaml [key=value ...]        train a recipe (also under `accelerate launch`)
    align recipes                                  list shipped recipes
    align data demo|shards|inspect|stats ...             build and check webdataset shards
    align bench zeroshot|retrieval|suite ...       benchmarks on FAISS indexes
    align export RUN --out DIR --format ...        open_clip / ONNX export

User errors (AlignError) print as one line, `align: error: ...`, and exit with status 2.
"""
import argparse
import json
import os
import sys

from align.config import recipe_header, recipes_dir, resolve_recipe
from align.errors import AlignError

# -- commands ------------------------------------------------------------------------------
def cmd_train(a):
    from align.config import load_recipe
    from align.train import train
    recipe = load_recipe(resolve_recipe(a.recipe), a.overrides)
    train(recipe, progress=not a.no_progress)


def cmd_recipes(a):
    d = recipes_dir()
    for f in sorted(os.listdir(d)):
        if f.endswith(".yaml"):
            head = recipe_header(os.path.join(d, f)).splitlines()
            print(f"{f[:-5]:16s} {head[0] if head else ''}")


def cmd_demo(a):
    from align.demo.run import run_demo
    run_demo(out=a.out, seed=a.seed, overrides=a.overrides, progress=not a.no_progress)


def cmd_data_demo(a):
    from align.demo.data import build_demo
    man = build_demo(a.out, seed=a.seed, workers=a.workers)
    print(json.dumps(man, indent=1))


def cmd_data_shards(a):
    from align.data.shards import summary_line, write_shards
    stats = write_shards(a.input, a.out, image_col=a.image_col, text_col=a.text_col, audio_col=a.audio_col,
                         label_col=a.label_col, image_size=a.image_size, resize_mode=a.resize_mode,
                         image_format=a.image_format, image_quality=a.image_quality, sample_rate=a.sample_rate,
                         shard_size=a.shard_size, prefix=a.prefix, workers=a.workers, split=a.split,
                         overwrite=a.overwrite)
    print(summary_line(stats))


def cmd_data_inspect(a):
    from align.data.inspect import inspect_shards
    inspect_shards(a.pattern, n=a.n)


def cmd_data_stats(a):
    from align.towers.audio_features import AudioFrontend, logmel_stats
    keys = {}
    if a.recipe:
        from align.config import load_recipe
        tower = load_recipe(resolve_recipe(a.recipe), a.overrides).model.towers.get("audio")
        if not tower:
            raise AlignError(f"data stats: recipe {a.recipe} has no audio tower")
        keys = {k: v for k, v in tower.items() if k in AudioFrontend.keys()}
    fe = AudioFrontend(**keys).validate("model.towers.audio")
    stats = logmel_stats(a.pattern, fe, max_samples=a.n, progress=not a.no_progress)
    print(json.dumps(stats))
    print(f"recipe keys: model.towers.audio.norm_mean={stats['norm_mean']} "
          f"model.towers.audio.norm_std={stats['norm_std']}")


def cmd_bench(a):
    from align.bench.cli import run_bench_cli
    run_bench_cli(a)


def cmd_export(a):
    from align.export import export, summary_lines
    result = export(a.model, a.out, fmt=a.format, overwrite=a.overwrite, reports=a.report or None)
    print("\n".join(summary_lines(result)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="align", description="CLIP-style contrastive pretraining across images, "
                                                          "text and audio.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("demo", help="build the demo data, train recipes/demo.yaml, benchmark, report")
    s.add_argument("--out", default="align_demo", help="output directory (default: ./align_demo)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=100")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("train", help="train a recipe")
    s.add_argument("recipe", help="recipe YAML path or shipped recipe name")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=128 output_dir=runs/x")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("recipes", help="list shipped recipes")
    s.set_defaults(fn=cmd_recipes)

    data = sub.add_parser("data", help="build and inspect webdataset shards").add_subparsers(dest="data_cmd",
                                                                                             required=True)
    s = data.add_parser("demo", help="write the built-in digits image-text-audio dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(fn=cmd_data_demo)

    s = data.add_parser("shards", help="turn a CSV/TSV/JSONL/Parquet file, a folder of pairs or a HF dataset "
                                       "into shards")
    s.add_argument("input")
    s.add_argument("--out", required=True)
    for col in ("image", "text", "audio", "label"):
        s.add_argument(f"--{col}-col", default=None)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--resize-mode", choices=["keep", "center_crop", "border", "longest"], default="keep")
    s.add_argument("--image-format", choices=["jpg", "webp", "png"], default="jpg")
    s.add_argument("--image-quality", type=int, default=95)
    s.add_argument("--sample-rate", type=int, default=16000)
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--prefix", default="shard")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--split", default=None, help="split of a Hugging Face dataset")
    s.add_argument("--overwrite", action="store_true", help="replace an unrelated non-empty --out")
    s.set_defaults(fn=cmd_data_shards)

    s = data.add_parser("inspect", help="print samples, modalities and decode failures of shards")
    s.add_argument("pattern")
    s.add_argument("-n", type=int, default=3, help="samples to print")
    s.set_defaults(fn=cmd_data_inspect)

    s = data.add_parser("stats", help="log-mel mean/std of the audio in shards (for the audio tower's "
                                      "norm_mean/norm_std)")
    s.add_argument("pattern")
    s.add_argument("--recipe", default=None, help="use this recipe's audio front end (default: the defaults)")
    s.add_argument("-n", type=int, default=None, help="at most this many samples")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.towers.audio.clip_seconds=1")
    s.set_defaults(fn=cmd_data_stats)

    from align.bench.cli import add_bench_parser
    add_bench_parser(sub, cmd_bench)

    s = sub.add_parser("export", help="export a run or checkpoint for open_clip and/or ONNX")
    s.add_argument("model", help="run dir, checkpoint dir")
    s.add_argument("--out", required=True)
    s.add_argument("--format", choices=["open_clip", "onnx", "all"], default="all")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    s.add_argument("--report", action="append", help="extra result JSON file or folder for the model card")
    s.set_defaults(fn=cmd_export)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # key=value overrides placed after an option (e.g. `--no-progress a.b=1`)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.fn(args)
    except AlignError as e:
        print(f"align: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("align: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
