"""The `align` command line: every subcommand in one table, each calling a library function.

    align demo [--out DIR]                         build data, train, benchmark, report
    align train RECIPE.yaml [key=value ...]        train a recipe (also under `accelerate launch`)
    align recipes [--show NAME]                    list shipped recipes, or print one
    align train NAME --help-keys                   every recipe key: type, default, meaning
    align data demo|shards|inspect|stats|...       build and check webdataset shards
    align bench zeroshot|retrieval|suite ...       benchmarks on FAISS indexes
    align export RUN --out DIR --format ...        open_clip / ONNX export
    align sweep RECIPE --space S.yaml --trials N   recipe settings chosen on data.val with Optuna

User errors (AlignError) print as one line, `align: error: ...`, and exit with status 2; under `accelerate launch`
the line is printed once for the launch, not once per process (one only some ranks meet: with the rank).  A remote data
source that stayed unreachable for data.retry_budget_s ends `align train` with a checkpoint, one line
`align: source unavailable: URL: ...` and status 75 (EX_TEMPFAIL: rerun the same command to resume).
A killed data worker ends it with a checkpoint, one line naming the signal and the likely cause, and status 71
(EX_OSERR); a full disk (or an I/O error) while writing a checkpoint, a metrics line or an export, with one line
naming the path, the space needed and free and the intact checkpoint, and status 74 (EX_IOERR); every other
command's writers say the same line (align.writes), and a full disk none of them guards is one line too.
Every option has a help line; `HelpFormatter` adds its default, so the two cannot disagree
(tests/test_cli.py fails on an option without help).
"""
import argparse
import dataclasses
import os
import sys

from align.shipped import recipe_header, recipes_dir, resolve_recipe, shipped_recipes
from align.errors import AlignError, SourceUnavailable
from align.train.guard import PREEMPTED_EXIT, Preempted
from align.cli_data import add_data_parsers
from align.writes import STORAGE_EXIT, is_storage_error, storage_reason

EXIT_SOURCE_UNAVAILABLE = 75   # sysexits.h EX_TEMPFAIL: a temporary failure, worth retrying

# -- commands ------------------------------------------------------------------------------
def cmd_train(a):
    if a.help_keys:
        print(help_keys(a.recipe, a.overrides))
        return
    if a.recipe is None:
        raise AlignError("train: give a recipe (a YAML path or a shipped name: `align recipes`)")
    from align.config import load_recipe
    recipe = load_recipe(resolve_recipe(a.recipe), a.overrides)   # a bad recipe is said before torch loads (~3 s)
    from align.train.loop import train
    train(recipe, progress=not a.no_progress)


def _yaml_value(v) -> str:
    import yaml
    if v is dataclasses.MISSING:
        return "(required)"
    return yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).strip().removesuffix("\n...").strip()


def help_keys(recipe=None, overrides=None) -> str:
    """The `--help-keys` table, generated from align.config's dataclasses (align.config_keys.recipe_keys); with a
    recipe, the values it sets (its YAML plus overrides) are shown beside the defaults."""
    from align.config import load_recipe_dict
    from align.config_keys import recipe_keys
    given = load_recipe_dict(resolve_recipe(recipe), overrides) if recipe else None
    lines = [f"Recipe keys{' (= the value ' + recipe + ' sets)' if given is not None else ''}; "
             f"override any with KEY=VALUE (YAML):"]
    for k in recipe_keys():
        if k["type"] == "section":
            lines += ["", f"{k['key']}:  {k['help']}"]
            continue
        default = "" if k["default"] is None and "null" not in k["type"] else _yaml_value(k["default"])
        set_here = _lookup(given, k["key"]) if given is not None else dataclasses.MISSING
        value = f"  = {_yaml_value(set_here)}" if set_here is not dataclasses.MISSING else ""
        lines.append(f"  {k['key']:34s} {k['type']:26s} default {default or '-'}{value}")
        lines.append(f"  {'':34s} {k['help']}")
    from align.towers import TOWERS
    lines += ["", "model.towers.MODALITY.type: a tower type; its options are listed in its module's docstring:"]
    for name in TOWERS.names():
        mod = sys.modules[TOWERS.get(name).__module__]
        lines.append(f"  {name:14s} {mod.__name__}: {(mod.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def _lookup(d, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return dataclasses.MISSING
        d = d[part]
    return d


def cmd_checkpoints(a):
    """One line per checkpoint of a run: its name, step, size and whether it verifies (align.train.manifest)."""
    from align.train import rundir
    from align.train.manifest import has_manifest, verify
    from align.train.storage import dir_bytes
    ckpts = rundir.list_checkpoints(rundir.checkpoints_dir(a.run))
    best = os.path.join(rundir.checkpoints_dir(a.run), rundir.BEST)
    if rundir.is_checkpoint_dir(best):      # what `align export RUN` and align.load take by default
        ckpts.append(best)
    if not ckpts:
        raise AlignError(f"{a.run}: no complete checkpoint (is it a run directory?)")
    bad = 0
    for c in ckpts:
        problem = verify(c)
        bad += problem is not None
        step = (rundir.read_state(c) or {}).get("step", "?")
        status = ("DAMAGED: " + problem) if problem else ("ok" if has_manifest(c) else "ok (no manifest: not checked)")
        print(f"{os.path.basename(c):<22} step {step!s:>8}  {dir_bytes(c) / 1e6:9.1f} MB  {status}")
    partial = rundir.partial_writes(rundir.checkpoints_dir(a.run))
    for p in partial:                       # a save a kill or a full disk interrupted: resume never reads it
        print(f"{os.path.basename(p):<22} {'':>13}  {dir_bytes(p) / 1e6:9.1f} MB  PARTIAL: an interrupted write, "
              f"not a checkpoint (resume ignores it)")
    leftover = rundir.replaced_leftovers(rundir.checkpoints_dir(a.run))
    for p in leftover:                      # a kill between the two renames that replace e.g. `best`
        there = os.path.exists(os.path.join(rundir.checkpoints_dir(a.run), rundir.replaced_name(p)))
        print(f"{os.path.basename(p):<22} {'':>13}  {dir_bytes(p) / 1e6:9.1f} MB  LEFTOVER: the replaced copy of "
              + (f"{rundir.replaced_name(p)} (its successor is in place)" if there else
                 f"{rundir.replaced_name(p)}, which is missing: resume=auto restores it"))
    print(f"{len(ckpts)} checkpoint(s) in {a.run}: {len(ckpts) - bad} ok, {bad} damaged"
          + (f", {len(partial)} partial write(s) ignored" if partial else "")
          + (f", {len(leftover)} replaced copy(ies) left over" if leftover else "")
          + ("" if not bad else " (resume=auto carries on from the newest intact one)"))
    return 1 if bad else 0


def cmd_recipes(a):
    if a.show is not None:
        if not a.show.strip():
            raise AlignError("recipes --show: give a recipe name or a path (`align recipes` lists them)")
        path = resolve_recipe(a.show)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise AlignError(f"{path}: cannot show it as a recipe ({getattr(e, 'strerror', None) or e})") from None
        print(f"# {path}")
        sys.stdout.write(text)
        return
    d = recipes_dir()
    names = shipped_recipes()
    width = max((len(n) for n in names), default=0)
    for name in names:
        head = recipe_header(os.path.join(d, name + ".yaml")).splitlines()
        first = head[0] if head else ""
        first = first[len(name) + 2:] if first.startswith(f"{name}: ") else first   # "demo: ..." says the name again
        print(f"{name:{width}s}  {first}")
    print(f"({d}; `align recipes --show NAME` prints one; `align train NAME` or a path to your own YAML)")


def cmd_demo(a):
    from align.demo.run import run_demo
    run_demo(out=a.out, seed=a.seed, overrides=a.overrides, progress=not a.no_progress)


def cmd_bench(a):
    from align.bench.cli import run_bench_cli
    run_bench_cli(a)


def cmd_export(a):
    from align.export import check_out_dir, export, summary_lines
    if a.interpolate_with is None and a.alpha is not None:
        raise AlignError("export: --alpha needs --interpolate-with START")
    if a.interpolate_with is None:
        result = export(a.model, a.out, fmt=a.format, overwrite=a.overwrite, reports=a.report or None)
        print("\n".join(summary_lines(result)))
        return
    from align.export.wise_ft import parse_alphas
    alphas = parse_alphas(a.alpha if a.alpha is not None else "0.5")
    outs = [a.out if len(alphas) == 1 else os.path.join(a.out, f"alpha-{al:g}") for al in alphas]
    for out in outs:    # every target checked before the first is written: no export stops half-way
        check_out_dir(os.path.abspath(a.model), os.path.abspath(out), a.overwrite)
    for al, out in zip(alphas, outs):   # several alphas: one export per alpha, OUT/alpha-<a>
        result = export(a.model, out, fmt=a.format, overwrite=a.overwrite, reports=a.report or None,
                        interpolate_with=a.interpolate_with, alpha=al)
        print("\n".join(summary_lines(result)))


def cmd_sweep(a):
    from align.sweep.study import SweepStopped, run_sweep
    try:
        run_sweep(a.recipe, a.space, a.trials, storage=a.storage, study=a.study, out=a.out, overrides=a.overrides,
                  pruner=a.pruner, prune_after=a.prune_after, heartbeat_s=a.heartbeat)
    except SweepStopped as e:
        print(f"align: {e}", file=sys.stderr)
        return PREEMPTED_EXIT if "SIGTERM" in str(e) else 130


class HelpFormatter(argparse.HelpFormatter):
    """Adds ' (default: X)' to an option's help when it has a default worth saying (not None/False) and the
    help does not give one itself."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if ("default" in h or d is None or d is False or d is argparse.SUPPRESS or d == []
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return h
        return h + " (default: %(default)s)"


class AlignParser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults; subparsers are built with the same class (argparse's rule)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_run_commands(sub) -> None:
    """align demo, train, checkpoints, recipes."""
    s = sub.add_parser("demo", help="build the demo data, train recipes/demo.yaml, benchmark, report")
    s.add_argument("--out", default="align_demo", help="output directory (data/, run/, report/)")
    s.add_argument("--seed", type=int, default=0, help="seed of the data split, voices, weights and data order")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    s.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE, e.g. train.max_steps=100")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("train", help="train a recipe (also under `accelerate launch`)",
                       description="Train a recipe. `--help-keys` lists every recipe key with its type, default "
                                   "and meaning (with NAME: also the values that recipe sets).")
    s.add_argument("recipe", nargs="?", default=None,
                   help="recipe YAML path or shipped recipe name (`align recipes`)")
    s.add_argument("overrides", nargs="*", help="dotted overrides KEY=VALUE, e.g. train.batch_size=128 "
                                                "output_dir=runs/x")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    s.add_argument("--help-keys", action="store_true",
                   help="list every recipe key (type, default, one line of meaning) and exit; nothing is trained")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("checkpoints", help="list a run's checkpoints: step, size, and whether each verifies")
    s.add_argument("run", help="a run directory (output_dir)")
    s.set_defaults(fn=cmd_checkpoints)

    s = sub.add_parser("recipes", help="list shipped recipes, or print one with --show")
    s.add_argument("--show", default=None, metavar="NAME",
                   help="print this recipe (shipped name or path), its header comment included")
    s.set_defaults(fn=cmd_recipes)


def _add_export(sub) -> None:
    """align export."""
    s = sub.add_parser("export", help="export a run or checkpoint for open_clip and/or ONNX")
    s.add_argument("model", help="run dir, checkpoint dir or export to export")
    s.add_argument("--out", required=True, help="export folder (built aside, moved into place when checked)")
    s.add_argument("--format", choices=["open_clip", "onnx", "all"], default="all",
                   help="all: both (open_clip skipped, with a one-line note, when the towers cannot be expressed "
                        "in it)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out (a folder of other files is never replaced)")
    s.add_argument("--report", action="append", help="extra result JSON file or folder for the model card "
                                                     "(repeatable)")
    s.add_argument("--interpolate-with", default=None, metavar="START",
                   help="WiSE-FT: interpolate the weights with this starting model (align run/export, open_clip "
                        "checkpoint or folder)")
    s.add_argument("--alpha", default=None, help="WiSE-FT weight of the fine-tuned model, 0..1 (default 0.5); "
                                                 "a list (0,0.5,1) writes OUT/alpha-<a> per value")
    s.set_defaults(fn=cmd_export)


def _add_sweep(sub) -> None:
    """align sweep."""
    s = sub.add_parser("sweep", help="choose recipe settings by the val metric (eval.best_metric on data.val) "
                                     "with Optuna; each trial is a run dir",
                       description="Optuna study over recipe keys. data.val must be the *selection* groups "
                                   "(unseen in training, and not the groups you report on). Rerun the same "
                                   "command after a kill: interrupted trials resume in their run dirs.",
                       epilog="SPACE.yaml, one recipe key a line: train.lr: {log_uniform: [1.0e-4, 3.0e-3]} | "
                              "train.max_steps: {int: [100, 400], step: 50} | train.weight_decay: {uniform: "
                              "[0.0, 0.3]} | data.augment: {choice: {none: null, blur: {image: [{type: blur}]}}}. "
                              "Writes OUT/STUDY/trial-NNNN (run dirs), OUT/STUDY/sweep.csv, sweep.md, sweep.png "
                              "(by default sweeps/RECIPE/trial-NNNN, sweeps/RECIPE/sweep.csv, ...; one folder per "
                              "study: --study NEW in the same --out meets no other study's runs); "
                              "prints the best run dir (align export takes it).")
    s.add_argument("recipe", help="recipe YAML path or shipped recipe name; needs data.val and eval.best_metric")
    s.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE for every trial, e.g. data.val=DIR")
    s.add_argument("--space", required=True, help="YAML: recipe key -> {log_uniform|uniform|int: [low, high]} "
                                                  "or {choice: [...]}")
    s.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study "
                                                             "should hold")
    s.add_argument("--storage", default=None, help="Optuna storage URL, shared by several machines "
                                                   "(default: sqlite:///OUT/study.db)")
    s.add_argument("--study", default=None, help="study name; its runs go to OUT/STUDY (default: the recipe's "
                                                 "file name, whose runs go to sweeps/RECIPE without --out)")
    s.add_argument("--out", default=None, help="folder of the studies' folders and study.db (default: sweeps/RECIPE, "
                                               "which holds the recipe's own study's run dirs and summary itself)")
    s.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="median: stop a trial whose intermediate eval is below the median of earlier trials "
                        "at that step")
    s.add_argument("--prune-after", type=int, default=None, help="finished trials before the median pruner "
                                                                  "stops any (default 2; --pruner median only)")
    s.add_argument("--heartbeat", type=int, default=10, help="seconds between Optuna heartbeats; a trial "
                                                             "silent for 3x this is retried")
    s.set_defaults(fn=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command's options are added by the function named beside it."""
    p = AlignParser(prog="align", description="CLIP-style contrastive pretraining across images, text and audio.",
                    epilog="`align COMMAND --help` explains a command; `align train NAME --help-keys` every "
                           "recipe key.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    _add_run_commands(sub)
    data = add_data_parsers(sub)

    from align.bench.cli import add_bench_parser
    add_bench_parser(sub, cmd_bench)

    _add_export(sub)
    _add_sweep(sub)

    # -- retrieval (issue 21): embed / index / search / serve and `data filter`, parsed in align/retrieval/cli.py
    from align.retrieval.cli import add_retrieval_parsers
    add_retrieval_parsers(sub, data)
    return p


def _fatal(prefix: str, message: str) -> None:
    """A fatal line on stderr; under a launch, once for the launch (a line only one rank has: with its rank)."""
    from align.progress import launch_line
    line = launch_line(prefix, message)
    if line is not None:
        print(line, file=sys.stderr)


def main(argv=None) -> int:
    from align.progress import setup_console
    setup_console()      # a non-UTF-8 locale escapes what it cannot write; warnings as lines, clear of the bar
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # key=value overrides placed after an option (e.g. `--no-progress a.b=1`)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args.fn(args)          # a command may return its exit status (align checkpoints: 1 when damaged)
    except Preempted as e:
        _fatal("align: ", str(e))
        return PREEMPTED_EXIT
    except SourceUnavailable as e:
        _fatal("align: source unavailable: ", str(e))
        return EXIT_SOURCE_UNAVAILABLE
    except AlignError as e:
        _fatal("align: error: ", str(e))
        return getattr(e, "exit_code", 2)   # 74: a full disk (align.writes); 71: a data worker killed
    except KeyboardInterrupt:
        _fatal("align: ", "interrupted")
        return 130
    except BrokenPipeError:   # `align recipes | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit's flush
        return 141
    except OSError as e:     # (after BrokenPipeError, one of them)
        if not is_storage_error(e):
            raise
        # a write no writer of align guards (a library's: tensorboard's events file): still one line, not a traceback
        _fatal("align: error: ", f"{e.filename or 'a write'}: {storage_reason(e)}; free space and run the same "
                                 f"command again")
        return STORAGE_EXIT
    return rc if type(rc) is int else 0


if __name__ == "__main__":
    sys.exit(main())
