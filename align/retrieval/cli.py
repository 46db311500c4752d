"""Argument parsing for `align embed | index | search | serve` and `align data filter`; the work is in
align.retrieval's modules. `add_retrieval_parsers(sub, data_sub)` is called once from align/cli.py."""
from __future__ import annotations

import json
import os
from typing import Optional

MODEL_HELP = "align run dir, checkpoint or export; open_clip:ARCH (with --pretrained); local-dir:DIR"


def _device(a) -> str:
    """--device, else this process's GPU under accelerate launch (LOCAL_RANK), else cuda / cpu."""
    import torch

    from align.bench.cli import check_device
    if a.device:
        return check_device(a.device)
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _load(a):
    from align.bench.cli import limit_overrides, limits_line
    from align.bench.models import load_model
    limits = limit_overrides(a)             # a bad --limit: one line before the weights load
    model = load_model(a.model, pretrained=a.pretrained, device=_device(a), limits=limits)
    said = limits_line(model)
    if said and not getattr(a, "no_progress", False) and os.environ.get("RANK", "0") == "0":   # once a launch
        print(said, flush=True)
    return model


def _model_args(s) -> None:
    from align.bench.cli import add_limit_argument
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--pretrained", default=None, help="open_clip:ARCH weights: an open_clip tag or a file")
    s.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    add_limit_argument(s)


def _check_batch(a) -> None:
    """--batch-size (and `align embed`'s --num-workers) before the model loads (embed_dataset checks the batch size
    again for API callers)."""
    from align.errors import ConfigError
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    if getattr(a, "num_workers", 0) < 0:     # torch's DataLoader raised a ValueError traceback after the load
        raise ConfigError(f"--num-workers must be >= 0 (0 decodes in this process), got {a.num_workers}")


def _check_precision(a) -> None:
    """--precision against the device before the model loads (fp16 needs CUDA), as `align bench` checks it."""
    from align.bench.embed import check_precision
    check_precision(a.precision, _device(a))


ENCODE_FLAGS = (("batch_size", "--batch-size"), ("precision", "--precision"), ("engine", "--engine"),
                ("device", "--device"), ("limit", "--limit"))


def _check_filter_flags(a) -> None:
    """With --emb nothing is encoded: a flag that only shapes the encoding is refused rather than ignored."""
    given = [flag for attr, flag in ENCODE_FLAGS if getattr(a, attr) is not None]
    if a.emb and given:
        from align.errors import ConfigError
        raise ConfigError(f"{given[0]}: the embeddings come from --emb {a.emb}, so nothing is encoded; leave "
                          f"out {given[0]}, or --emb to embed the shards with it")
    a.batch_size = 256 if a.batch_size is None else a.batch_size
    a.precision, a.engine = a.precision or "fp32", a.engine or "torch"


def _modalities(text):
    """--modalities "image,text" -> ["image", "text"]; None (all) when not given; one line for a list of nothing
    (",", " "), which read as "all"."""
    from align.errors import ConfigError
    if text is None:
        return None
    mods = [m.strip() for m in text.split(",") if m.strip()]
    if not mods:
        raise ConfigError(f"--modalities: a comma list of modalities (image, text, audio), got {text!r}")
    return mods


def cmd_embed(a):
    from align.retrieval.embed import check_out, embed_corpus
    from align.retrieval.embed_summary import dist_env, launch_totals
    check_out(a.out)                                # before the model loads
    _check_batch(a)
    _check_precision(a)
    mods = _modalities(a.modalities)
    model = _load(a)
    s = embed_corpus(model, a.data, a.out, modalities=mods, dtype=a.dtype, batch_size=a.batch_size,
                     num_workers=a.num_workers, precision=a.precision, split=a.split, progress=not a.no_progress,
                     engine=a.engine)
    rank, world = dist_env()
    total = launch_totals(s, rank, world)         # a launch: one line, rank 0's, with every process's counts
    if total is not None:
        print(total.line(a.out, rank, world, launch=total is not s))


def cmd_index(a):
    from align.retrieval.index_build import build_indexes, summary_line
    mods, built = _modalities(a.modalities), []
    for s in build_indexes(a.emb, a.out, max_memory=a.max_memory, max_latency_ms=a.max_latency_ms, kind=a.kind,
                           modalities=mods, n_queries=a.queries, refine=not a.no_refine, progress=not a.no_progress,
                           overwrite=a.overwrite):
        print(summary_line(s))
        built.append(s["modality"])
    print(f"{len(built)} index{'es' if len(built) != 1 else ''} ({', '.join(built)}) -> {a.out}")


def _query(a):
    given = [(m, v) for m, v in (("text", a.text), ("image", a.image), ("audio", a.audio)) if v is not None]
    if len(given) != 1:
        from align.errors import ConfigError
        raise ConfigError("search: give exactly one of --text, --image, --audio")
    return given[0]


def cmd_search(a):
    from align.retrieval.search import check_model, format_hits, load_indexes, search_all
    indexes = load_indexes(a.index)
    model = _load(a)
    check_model(indexes, model)
    modality, value = _query(a)
    targets = [t.strip() for t in a.target.split(",") if t.strip()] if a.target else None
    res = search_all(indexes, model, modality, value, k=a.k, targets=targets)
    print(json.dumps({"query": {modality: value}, "results": res}, indent=1, default=str) if a.json
          else format_hits(res))


def cmd_filter(a):
    from align.retrieval.filter import filter_shards, summary_line
    _check_filter_flags(a)
    _check_batch(a)
    if not a.emb:
        _check_precision(a)
    model = _load(a)
    s = filter_shards(model, a.shards, a.out, min_score=a.min_score, keep_top=a.keep_top, dedup_cos=a.dedup,
                      emb=a.emb, batch_size=a.batch_size, progress=not a.no_progress, engine=a.engine,
                      precision=a.precision)
    if s is not None:
        print(summary_line(s, a.out))


def cmd_serve(a):
    from align.retrieval.serve import check_address, serve
    check_address(a.host, a.port, a.max_upload_mb)  # before the model loads
    serve(a.index, _load(a), host=a.host, port=a.port, max_upload_mb=a.max_upload_mb)


def add_precision_argument(s, default: Optional[str] = "fp32") -> None:
    """default None (align data filter): the command tells a flag given from one left out; help says fp32."""
    s.add_argument("--precision", default=default, choices=["fp32", "bf16", "fp16"],
                   help="autocast while encoding (bf16: ~2x faster on CPUs with native bf16, slower without; "
                        "fp16 needs CUDA); recorded in the embeddings' manifest" + ("" if default else
                                                                                   " (default: fp32)"))


def add_retrieval_parsers(sub, data_sub) -> None:
    from align.bench.cli import add_engine_argument, add_limit_argument
    s = sub.add_parser("embed", help="embed every modality of shards or an eval set (resumable, sharded .npy + "
                                     "Parquet)")
    s.add_argument("model", help=MODEL_HELP)
    s.add_argument("--pretrained", default=None, help="open_clip:ARCH weights: an open_clip tag or a file")
    s.add_argument("--data", required=True, help="shard pattern/list/folder, or a CLIP_benchmark-layout eval set")
    s.add_argument("--out", required=True, help="output folder (re-run the same command to finish a killed run)")
    s.add_argument("--split", default=None, help="split of an eval set (default: test); refused with shards")
    s.add_argument("--modalities", default=None, help="comma list (default: all the model and data share)")
    s.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored vector type")
    s.add_argument("--batch-size", type=int, default=256, help="items encoded per forward pass")
    s.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding samples")
    add_precision_argument(s)
    s.add_argument("--device", default=None, help="torch device (default: this process's GPU, else cpu)")
    add_engine_argument(s)
    add_limit_argument(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("index", help="build FAISS indexes from `align embed` output, chosen by size and budget")
    s.add_argument("emb", help="an `align embed` output folder")
    s.add_argument("--out", required=True, help="output folder: one index per modality, with its settings.json")
    s.add_argument("--max-memory", default="4GB", help="memory budget of one index (default 4GB)")
    s.add_argument("--max-latency-ms", type=float, default=10.0, help="latency budget of one k=10 query (default 10)")
    s.add_argument("--kind", default=None, help="force flat_faiss | ivf | hnsw | ivfpq within --max-memory (ivfpq: "
                                                "fewer PQ bytes; the others: refused when the vectors pass it) "
                                                "(default: chosen)")
    s.add_argument("--modalities", default=None, help="comma list (default: every embedded modality)")
    s.add_argument("--queries", type=int, default=500, help="held-aside queries for recall@10 (default 500)")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that is not a previous "
                                                             "index of these embeddings")
    s.add_argument("--no-refine", action="store_true", help="ivfpq: no float16 copy on disk, no re-rank of the "
                   "compressed scores (less disk, lower recall); refused with another --kind, said when another "
                   "kind is chosen")
    s.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    s.set_defaults(fn=cmd_index)

    s = sub.add_parser("search", help="search an index by text, image or audio")
    s.add_argument("index", help="an `align index` output folder")
    _model_args(s)
    s.add_argument("--text", default=None, help="a text query")
    s.add_argument("--image", default=None, help="image file")
    s.add_argument("--audio", default=None, help="audio file")
    s.add_argument("--target", default=None, help="comma list of indexed modalities to search (default: the "
                                                  "others)")
    s.add_argument("--k", type=int, default=10, help="results per searched modality")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("serve", help="a search page and JSON /search API over an index (127.0.0.1 by default)")
    s.add_argument("index", help="an `align index` output folder")
    _model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="TCP port")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413 (default 10)")
    s.set_defaults(fn=cmd_serve)

    s = data_sub.add_parser("filter", help="drop low image/audio-text scores (DataComp CLIP score) and "
                                           "near-duplicates; writes filtered shards and dropped.jsonl")
    s.add_argument("shards", help="shard pattern/list/folder (local)")
    _model_args(s)
    s.add_argument("--out", required=True, help="output folder: filtered shards, dropped.jsonl, summary.json")
    s.add_argument("--min-score", type=float, default=None, help="drop samples whose media-caption cosine is below S")
    s.add_argument("--keep-top", type=float, default=None, help="keep the best fraction F of the scored samples")
    s.add_argument("--dedup", type=float, default=None, metavar="COS",
                   help="drop later copies whose media cosine to a kept sample is >= COS (e.g. 0.95)")
    s.add_argument("--emb", default=None, help="an `align embed` output of the same shards (else computed in "
                                               "OUT/emb)")
    s.add_argument("--batch-size", type=int, default=None, help="items encoded per forward pass (default: 256); "
                                                                "this and --precision, --engine, --device: not "
                                                                "with --emb")
    add_precision_argument(s, default=None)
    add_engine_argument(s, default=None)
    s.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    s.set_defaults(fn=cmd_filter)
