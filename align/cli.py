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

from align.config import recipe_header, recipes_dir, resolve_recipe, shipped_recipes
from align.errors import AlignError

# -- commands ------------------------------------------------------------------------------
def cmd_train(a):
    from align.config import load_recipe
    from align.train.loop import train
    recipe = load_recipe(resolve_recipe(a.recipe), a.overrides)
    train(recipe, progress=not a.no_progress)


def cmd_recipes(a):
    d = recipes_dir()
    for name in shipped_recipes():
        head = recipe_header(os.path.join(d, name + ".yaml")).splitlines()
        print(f"{name:16s} {head[0] if head else ''}")
    print(f"({d}; `align train NAME` or a path to your own YAML)")


def cmd_demo(a):
    from align.demo.run import run_demo
    run_demo(out=a.out, seed=a.seed, overrides=a.overrides, progress=not a.no_progress)


def cmd_data_demo(a):
    from align.demo.data import build_demo
    man = build_demo(a.out, seed=a.seed, workers=a.workers)
    print(json.dumps(man, indent=1))


def cmd_data_shards(a):
    from align.data.write.shards import summary_line, write_shards
    stats = write_shards(a.input, a.out, image_col=a.image_col, text_col=a.text_col, audio_col=a.audio_col,
                         label_col=a.label_col, image_size=a.image_size, resize_mode=a.resize_mode,
                         image_format=a.image_format, image_quality=a.image_quality, sample_rate=a.sample_rate,
                         shard_size=a.shard_size, prefix=a.prefix, workers=a.workers, split=a.split,
                         overwrite=a.overwrite, layout=a.layout, classnames=a.classnames, templates=a.templates,
                         val_groups_from=a.val_groups_from, max_skip_frac=a.max_skip_frac,
                         val_groups=[g for g in (a.val_groups or "").split(",") if g.strip()] or None)
    print(summary_line(stats))


def cmd_data_inspect(a):
    from align.data.tools.inspect import inspect_shards
    inspect_shards(a.pattern, n=a.n, modalities=[m.strip() for m in a.modalities.split(",") if m.strip()])


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
    if a.interpolate_with is None and a.alpha is not None:
        raise AlignError("export: --alpha needs --interpolate-with START")
    if a.interpolate_with is None:
        result = export(a.model, a.out, fmt=a.format, overwrite=a.overwrite, reports=a.report or None)
        print("\n".join(summary_lines(result)))
        return
    from align.export.wise_ft import parse_alphas
    alphas = parse_alphas(a.alpha if a.alpha is not None else "0.5")
    for al in alphas:   # several alphas: one export per alpha, OUT/alpha-<a>
        out = a.out if len(alphas) == 1 else os.path.join(a.out, f"alpha-{al:g}")
        result = export(a.model, out, fmt=a.format, overwrite=a.overwrite, reports=a.report or None,
                        interpolate_with=a.interpolate_with, alpha=al)
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
    s.add_argument("--layout", choices=["shards", "clip_benchmark"], default="shards",
                   help="clip_benchmark: an eval set (OUT/test/N.tar, classnames, templates) for data.val, "
                        "align bench and the clip_benchmark CLI")
    s.add_argument("--classnames", default=None, help="class names file (.txt one per line, or .json list): "
                                                      "the order gives the class indices")
    s.add_argument("--templates", default=None, help="zero-shot templates: a built-in set name or a file "
                                                     "(default: 'photo' for images, 'audio' for audio)")
    s.add_argument("--val-groups-from", default=None, metavar="COL[:N]",
                   help="the column holding each row's group, or COL:N for field N of the file name in COL "
                        "(split at / _ -)")
    s.add_argument("--val-groups", default=None, metavar="A,B,...",
                   help="groups held out as OUT/val (clip_benchmark layout); the rest go to OUT/train")
    s.add_argument("--max-skip-frac", type=float, default=None, metavar="F",
                   help="exit non-zero when more than this fraction of rows is skipped (no sample written "
                        "always is an error)")
    s.set_defaults(fn=cmd_data_shards)

    s = data.add_parser("inspect", help="print samples, modalities and decode failures of shards")
    s.add_argument("pattern")
    s.add_argument("-n", type=int, default=3, help="samples to print")
    s.add_argument("--modalities", default="image,text,audio",
                   help="modalities training will request (counts skips as a run with them would)")
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
    s.add_argument("--interpolate-with", default=None, metavar="START",
                   help="WiSE-FT: interpolate the weights with this starting model (align run/export, open_clip "
                        "checkpoint or folder)")
    s.add_argument("--alpha", default=None, help="WiSE-FT weight of the fine-tuned model, 0..1 (default 0.5); "
                                                 "a list (0,0.5,1) writes OUT/alpha-<a> per value")
    s.set_defaults(fn=cmd_export)

    # -- retrieval (issue 21): embed / index / search / serve and `data filter`, parsed in align/retrieval/cli.py
    from align.retrieval.cli import add_retrieval_parsers
    add_retrieval_parsers(sub, data)
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
    except BrokenPipeError:   # `align recipes | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit's flush
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
