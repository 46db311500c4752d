"""`align bench ...` argument parsing; the work is done by align.bench's task functions.

Every subcommand takes the models of align.bench.models (run dirs, checkpoints, exports,
`open_clip:ARCH --pretrained TAG|FILE`, `local-dir:DIR`) and the run settings
--device (cuda when present, else cpu), --num-workers (DataLoader workers that decode and
transform samples in parallel; default: one per usable CPU, at most 8), --precision (fp32 | bf16 | fp16
autocast while encoding), --engine (torch | onnxruntime: align.bench.engine) and --limit NAME=VALUE (a media
size limit over the model's recipe's data.limits, align.limits). Building the parsers imports no torch
(tests/test_cli.py): every `align` command builds them.
"""
import os
from typing import Optional

SPLIT_TYPES = ("wds", "hf")      # dataset layouts with splits (--split)
MODEL_HELP = "align run dir, checkpoint or export; open_clip:ARCH (with --pretrained); local-dir:DIR (open_clip layout)"


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers() -> int:
    """Decode workers when --num-workers is not given: one per CPU this process may use, at most 8.
    Decoding and resizing is most of a small model's evaluation time (a 256 px JPEG: ~0.5 ms decode +
    ~0.5 ms bicubic resize per image on one core, benchmarks/zeroshot_speed.py), and workers overlap it
    with the forward pass; past 8 the forward pass, not decoding, is the limit on common machines."""
    import os
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def check_device(device: str) -> str:
    """--device: a torch device this machine has, or one line saying why not (align.bench.exact's check)."""
    from align.bench.exact import check_device as check
    check(device, "--device", types=None)
    return device


def add_engine_argument(s, default: Optional[str] = "torch") -> None:
    """--engine of every command that encodes a dataset (align bench, align embed, align data filter); default
    None: the command tells a flag given from one left out (the help still says torch is the default)."""
    s.add_argument("--engine", default=default, choices=["torch", "onnxruntime"],
                   help="torch (default) | onnxruntime: image/audio encoders exported to ONNX and run by "
                        "onnxruntime on the CPU (faster there; text stays in torch)")


def add_limit_argument(s) -> None:
    """--limit NAME=VALUE (repeatable), of every command that decodes media for a model (align bench, embed, search,
    serve, data filter): a field of align.limits.DataLimits over the model's recipe's data.limits."""
    from align.limits import DataLimits, LIMIT_OPTION
    import dataclasses
    names = ", ".join(f.name for f in dataclasses.fields(DataLimits))
    s.add_argument(LIMIT_OPTION, action="append", default=None, metavar="NAME=VALUE",
                   help=f"a media size limit, repeatable (e.g. max_audio_seconds=120): replaces that one of the "
                        f"model's recipe's data.limits (the defaults for a model without one); names: {names}")


def limit_overrides(a) -> dict:
    """The checked --limit NAME=VALUE options ({} when none): one line for a bad one, before anything loads."""
    from align.limits import parse_limit_options
    return parse_limit_options(getattr(a, "limit", None))


def limits_line(model) -> Optional[str]:
    """`NAME: media limits max_audio_seconds=120.0, ...` when the model's media limits differ from the defaults."""
    from align.bench.embed import model_limits
    from align.limits import changed_limits
    changed = changed_limits(model_limits(model))
    if not changed:
        return None
    return f"{getattr(model, 'name', 'model')}: media limits " + ", ".join(f"{k}={v}" for k, v in changed.items())


def _common(s) -> None:
    s.add_argument("--device", default=None, help="torch device for encoding (default: cuda when present, else cpu)")
    s.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers decoding samples in parallel (default: one per usable CPU, at most 8; "
                        "0 decodes in the main process)")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast while encoding (fp16 needs CUDA); embeddings are re-normalised in float32")
    add_engine_argument(s)
    add_limit_argument(s)


PLOT_HELP = ("also draw a figure beside each result JSON (default; --no-plot: JSON only): OUT.json -> OUT.png, "
             "zero-shot: the confusion matrix (the 20 most-confused classes when there are more); retrieval: 6 "
             "seeded queries and their top 5 gallery items (images, captions, audio as log-mel) marked right or "
             "wrong. Drawn from the scores already computed; an existing PNG is kept unless --overwrite")


def add_plot_argument(s) -> None:
    import argparse
    s.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help=PLOT_HELP)


def add_bench_parser(sub, fn):
    bench = sub.add_parser("bench", help="zero-shot and retrieval benchmarks on FAISS").add_subparsers(
        dest="bench_cmd", required=True, metavar="SUBCOMMAND")
    for name, helptext in (("zeroshot", "zero-shot classification (image or audio)"),
                           ("retrieval", "retrieval recall@k between two modalities")):
        s = bench.add_parser(name, help=helptext)
        s.add_argument("--model", required=True, help=MODEL_HELP)
        s.add_argument("--pretrained", default=None, help="open_clip:ARCH weights: an open_clip tag or a file")
        s.add_argument("--dataset", required=True, help="dataset dir (CLIP_benchmark local layout, ...)")
        s.add_argument("--out", required=True, help="result JSON (missing folders are created)")
        s.add_argument("--overwrite", action="store_true", help="replace an existing --out file (and its figure)")
        add_plot_argument(s)
        s.add_argument("--split", default=None, help="split of the dataset (--type wds and hf only; default: test)")
        s.add_argument("--index", default="flat", help="flat (exact) | flat_faiss | ivf | hnsw | ivfpq")
        s.add_argument("--batch-size", type=int, default=256, help="encoding batch size")
        s.add_argument("--cache-dir", default=None, help="folder caching embeddings between runs (default: no cache)")
        s.add_argument("--type", default="wds", help="dataset layout: wds | imagefolder | audiofolder | hf | csv")
        _common(s)
        if name == "zeroshot":
            s.add_argument("--modality", default="image", choices=["image", "audio"], help="modality classified")
            s.add_argument("--classnames", default=None, help="file, one class name per line")
            s.add_argument("--templates", default=None, help="file (one template with {c} per line) or builtin name")
        else:
            s.add_argument("--query", default="text", choices=["text", "image", "audio"], help="query modality")
            s.add_argument("--gallery", default="image", choices=["text", "image", "audio"],
                           help="modality searched")
            s.add_argument("--by-class", action="store_true",
                           help="emergent retrieval: a hit is an item of the same class (no paired data)")
        s.set_defaults(fn=fn)
    s = bench.add_parser("suite", help="many datasets x tasks x models -> JSONs, CSV, Markdown table")
    s.add_argument("suite", help="suite YAML, or a shipped suite's name (demo)")
    s.add_argument("--model", action="append", default=None,
                   help=MODEL_HELP + " (repeatable: one column each; default: the suite's models:)")
    s.add_argument("--pretrained", action="append", default=None,
                   help="weights of the open_clip:ARCH models, one per such --model, in order")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--cache-dir", default=None, help="folder caching embeddings between runs (default: no cache)")
    s.add_argument("--batch-size", type=int, default=256, help="encoding batch size")
    s.add_argument("--overwrite", action="store_true", help="replace existing results (and figures) in --out")
    add_plot_argument(s)
    s.add_argument("--skip-existing", action="store_true", help="keep existing results in --out and run only the "
                                                                 "missing ones")
    _common(s)
    s.set_defaults(fn=fn)


def _check_args(a) -> None:
    """Numbers and --out checked before any dataset is opened or model loaded: a bad one is one line in
    seconds, not a traceback after the encoding."""
    from align.bench.report import check_out_file
    from align.bench.suite import check_out_dir
    from align.errors import ConfigError
    if a.num_workers is None:
        a.num_workers = default_workers()
    if a.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {a.num_workers}")
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    a.limit_overrides = limit_overrides(a)
    if a.bench_cmd != "suite":       # an unknown --index was refused only after the whole dataset was encoded
        from align.bench.index import INDEXES
        INDEXES.get(a.index)
    if a.bench_cmd != "suite" and a.split is not None and a.type not in SPLIT_TYPES:
        raise ConfigError(f"--split {a.split}: a --type {a.type} dataset has no splits "
                          f"(only {' and '.join(SPLIT_TYPES)})")
    if a.bench_cmd == "suite":
        if a.overwrite and a.skip_existing:
            raise ConfigError("--overwrite replaces existing results and --skip-existing keeps them: give one")
        check_out_dir(a.out)
    else:
        check_out_file(a.out, a.overwrite)
        if a.plot:
            from align.bench.figures import check_figure_path, figure_path
            check_figure_path(figure_path(a.out), a.overwrite)


def run_bench_cli(a):
    from align.bench.embed import check_precision
    from align.bench.engine import with_engine
    from align.bench.models import load_model as load_plain, pair_pretrained
    from align.bench.report import StageSeconds, record_settings, seconds_line, summary_line, write_json
    from align.errors import ConfigError
    from align.limits import override_limits

    device = check_device(a.device or default_device())
    check_precision(a.precision, device)
    _check_args(a)
    print(f"bench: device {device}, precision {a.precision}, engine {a.engine}, {a.num_workers} decode worker(s)")

    def load_model(spec, pretrained=None, device=device):
        model = load_plain(spec, pretrained=pretrained, device=device, limits=a.limit_overrides)
        said = limits_line(model)
        if said:
            print(said)
        return with_engine(model, a.engine, device, a.precision)

    read_limits = override_limits(None, a.limit_overrides)   # the captions and labels read when a set is opened

    if a.bench_cmd == "suite":
        from align.bench.suite import run_suite
        if not a.model and a.pretrained:
            raise ConfigError("--pretrained pairs with --model open_clip:ARCH; the suite's models: give their own")
        models = pair_pretrained(a.model, a.pretrained) if a.model else None   # None: the suite's own models:
        run_suite(a.suite, models, a.out, load_fn=lambda m: load_model(m, device=device), cache_dir=a.cache_dir,
                  batch_size=a.batch_size, device=device, num_workers=a.num_workers, precision=a.precision,
                  overwrite=a.overwrite, skip_existing=a.skip_existing, limits=read_limits, show_table=True,
                  plot=a.plot)
        return     # the table, then run_suite's one end line (no second one here)
    from align.bench.datasets import open_dataset
    opts = {"split": a.split} if a.split is not None else {}     # (wds and hf; their own default: test)
    if a.bench_cmd == "zeroshot" and a.classnames:
        opts["classnames"] = a.classnames
    if a.bench_cmd == "zeroshot" and a.templates:
        opts["templates"] = a.templates
    clock = StageSeconds()
    with clock("open_dataset"):
        ds = open_dataset(a.dataset, a.type, limits=read_limits, **opts)
    with clock("load_model"):
        model = load_model(a.model, pretrained=a.pretrained, device=device)
    from align.bench.figures import figure_goes_with, figure_path
    figure = figure_path(a.out) if a.plot else None
    kw = dict(index=a.index, cache_dir=a.cache_dir, batch_size=a.batch_size, device=device,
              num_workers=a.num_workers, precision=a.precision, figure=figure)
    if a.bench_cmd == "zeroshot":
        from align.bench.zeroshot import zeroshot_classification
        result = zeroshot_classification(model, ds, modality=a.modality, **kw)
    elif a.by_class:
        from align.bench.retrieval import emergent_retrieval
        result = emergent_retrieval(model, ds, query_modality=a.query, gallery_modality=a.gallery, **kw)
    else:
        from align.bench.retrieval import retrieval
        result = retrieval(model, ds, query_modality=a.query, gallery_modality=a.gallery, **kw)
    result["seconds"] = {**clock.seconds, **result.get("seconds", {})}
    record_settings(result, model, a.precision)
    with figure_goes_with(figure):
        write_json(result, a.out, kept="nothing was written to it")
    print(seconds_line(result))
    print(summary_line(result) + f" -> {a.out}" + (f" (figure {figure})" if figure and os.path.isfile(figure) else ""))
