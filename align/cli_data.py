"""The `align data ...` subcommands of the command line: their parsers (add_data_parsers, called by
align.cli.build_parser) and the functions they call.

    align data demo --out DIR                  the demo's shards
    align data shards INPUT --out DIR          a CSV / folder / dataset written as webdataset shards
    align data inspect PATTERN                 decode the first samples, one line per problem
    align data stats PATTERN [--recipe R]      image sizes, clip durations, log-mel mean/std for a recipe
    align data cache [--prune]                 the shards written from tables, and which a run still reads
    align data reinforce PATTERN --teacher T   a teacher's embeddings stored in the shards (distillation)
"""
import json
import os

from align.errors import AlignError, ConfigError
from align.shipped import resolve_recipe


def cmd_data_demo(a):
    from align.demo.data import build_demo
    man = build_demo(a.out, seed=a.seed, workers=a.workers, summary=False)     # the one end line is the one below
    c = man["counts"]      # one line, not the 230-line manifest (it is OUT/demo.json)
    print(f"demo data: {c['train']} train / {c['val']} val samples (selection/, heldout/: {c['selection']} / "
          f"{c['heldout']} val copies) -> {a.out} (manifest: {os.path.join(a.out, 'demo.json')})")


def cmd_data_shards(a):
    from align.data.write.shards import summary_line, write_shards
    if a.image_quality is not None and a.image_format == "png":
        raise ConfigError("--image-quality: --image-format png is lossless and has no quality setting; "
                          "it applies to jpg and webp (and JPEGs that --image-format source re-encodes)")
    stats = write_shards(a.input, a.out, image_col=a.image_col, text_col=a.text_col, audio_col=a.audio_col,
                         label_col=a.label_col, image_size=a.image_size, resize_mode=a.resize_mode,
                         image_format=a.image_format, sample_rate=a.sample_rate,
                         image_quality=95 if a.image_quality is None else a.image_quality,
                         shard_size=a.shard_size, prefix=a.prefix, workers=a.workers, split=a.split,
                         overwrite=a.overwrite, layout=a.layout, classnames=a.classnames, templates=a.templates,
                         val_groups_from=a.val_groups_from, max_skip_frac=a.max_skip_frac,
                         val_groups=[g for g in (a.val_groups or "").split(",") if g.strip()] or None,
                         limits=limits_of(a), follow_links=a.follow_links, neg_col=a.neg_col)
    print(summary_line(stats))


def cmd_data_inspect(a):
    from align.data.tools.inspect import inspect_shards
    if a.n < 0:
        raise ConfigError(f"-n {a.n}: the samples to print must be >= 0 (0: the summary only)")
    mods = None if a.modalities is None else [m.strip() for m in a.modalities.split(",") if m.strip()]
    inspect_shards(a.pattern, n=a.n, modalities=mods, limits=limits_of(a), pairs=pair_list(a.pairs))


def pair_list(text):
    """--pairs image-text,audio-text -> [("image", "text"), ("audio", "text")] (None: none given)."""
    if text is None:
        return None
    out = []
    for item in (p.strip() for p in text.split(",")):
        a, _, b = item.partition("-")
        if not a or not b or "-" in b or a == b:
            raise ConfigError(f"--pairs {text!r}: {item!r} is not two different modalities as A-B (image-text)")
        out.append((a, b))
    return out


def add_limit_options(s) -> None:
    """--max-image-pixels N, ...: one option per data.limits field (align.limits.DataLimits)."""
    import dataclasses
    from align.limits import DataLimits
    for f in dataclasses.fields(DataLimits):
        s.add_argument("--" + f.name.replace("_", "-"), type=float if f.type in (float, "float") else int,
                       default=None, metavar="N",
                       help=f"data.limits.{f.name}: {f.metadata['help']} (default {f.default})")


def limits_of(a):
    """The data.limits given as options, over the defaults."""
    import dataclasses
    from align.limits import DataLimits, as_limits
    return as_limits({f.name: getattr(a, f.name) for f in dataclasses.fields(DataLimits)
                      if getattr(a, f.name, None) is not None})


def cmd_data_reinforce(a):
    import math

    from align.data.stream.sources import resolve_sources
    from align.data.write.reinforce import check_out, teacher_encoders, write_reinforced
    from align.train.teacher import load_online
    urls = [u for src in resolve_sources(a.pattern) for u in src.urls]
    remote = [u for u in urls if "://" in u or not os.path.isfile(u)]
    if remote:
        raise AlignError(f"data reinforce: {remote[0]} is not a local shard file (copy the shards here first)")
    if a.batch_size < 1:     # was range()'s ValueError traceback after the teacher had loaded
        raise AlignError(f"data reinforce: --batch-size must be >= 1, got {a.batch_size}")
    wanted = [m.strip() for m in a.modalities.split(",") if m.strip()]
    unsupported = [m for m in wanted if m not in ("image", "text")]
    if not wanted or unsupported:
        raise AlignError(f"data reinforce: --modalities {a.modalities!r}: the stored teacher holds image and/or "
                         "text embeddings" + (f" ({', '.join(unsupported)} is not supported)" if unsupported else ""))
    check_out(urls, a.out, a.overwrite)            # before the teacher loads: nothing of the user's is replaced
    model = load_online(a.teacher, a.pretrained, "cpu")
    encoders = teacher_encoders(model, batch_size=a.batch_size)
    missing = [m for m in wanted if m not in encoders]
    if missing:
        raise AlignError(f"data reinforce: the teacher {a.teacher} has no {' or '.join(missing)} tower (it has "
                         f"{', '.join(sorted(encoders))})")
    scale = math.exp(float(model.logit_scale.detach()))
    counts = write_reinforced(urls, a.out, {m: encoders[m] for m in wanted},
                              {"teacher": a.teacher, "pretrained": a.pretrained, "logit_scale": scale},
                              progress=not a.no_progress)
    print(f"reinforced {counts['samples']} samples of {counts['shards']} shards with {a.teacher}'s "
          f"{', '.join(wanted)} embeddings -> {a.out} (skipped {counts['skipped']}); train with "
          f"data.train={a.out} loss.type=distill_clip loss.distill.teacher=stored")


def cmd_data_cache(a):
    from align.data.write.cached import PRUNED, cache_root, cached_folders, prune_cached
    rows = cached_folders(a.cache)
    for row in rows:
        print(f"{row['status']:26s} {row['bytes'] / 1e6:9.1f} MB  {row['folder']}"
              + (f"  <- {row['input']}" if row["input"] else ""))
    if a.prune:
        gone = prune_cached(rows)
        print(f"removed {len(gone)} folders ({sum(row['bytes'] for row in gone) / 1e6:.1f} MB) of "
              f"{cache_root(a.cache) / 'shards'}; {len(rows) - len(gone)} kept")
    else:
        stale = [row for row in rows if row["status"] in PRUNED]
        print(f"{len(rows)} folders in {cache_root(a.cache) / 'shards'}, {len(stale)} no run reads "
              f"({sum(row['bytes'] for row in stale) / 1e6:.1f} MB)"
              + ("; `align data cache --prune` removes them" if stale else ""))


def cmd_data_stats(a):
    from align.data.tools.stats import feature_stats, image_size_stats, modalities_present
    from align.towers.audio_features import AudioFrontend, unnormalised_eval_frontend
    r = None
    if a.n is not None and a.n < 1:   # -3 read 1 image and 9 clips ("9/-3 clip (-300%)"); 0 meant 2000
        raise ConfigError(f"-n {a.n}: at most this many samples must be >= 1 (leave -n out for the default)")
    if a.overrides and not a.recipe:   # they override a recipe's keys: without one they changed nothing
        raise AlignError(f"data stats: {a.overrides[0]} overrides a key of --recipe; give --recipe (the recipe "
                         f"whose audio front end to measure with)")
    if a.recipe:
        from align.config import load_recipe
        r = load_recipe(resolve_recipe(a.recipe), a.overrides)
    have = modalities_present(a.pattern)
    if not have & {"image", "audio"}:
        raise AlignError(f"data stats: no image or audio found in the first samples of {a.pattern}")
    if "image" in have:
        patch = ((r.model.towers.get("image") or {}).get("config") or {}).get("vision_cfg", {}).get("patch_size") \
            if r is not None else None
        st = image_size_stats(a.pattern, max_samples=a.n or 2000, multiple=patch or 4)
        print(json.dumps({"image": st}))
        print(f"images: {st['images']} read, width {st['width']['min']}-{st['width']['max']} (median "
              f"{st['width']['median']:g}), height {st['height']['min']}-{st['height']['max']} (median "
              f"{st['height']['median']:g}); image_size: auto trains at {st['image_size']} px "
              f"(median longest side, a multiple of {patch or 4})")
    if "audio" in have:
        keys = {}
        if r is not None:
            tower = r.model.towers.get("audio")
            if not tower:
                raise AlignError(f"data stats: recipe {a.recipe} has no audio tower")
            keys = {k: v for k, v in tower.items() if k in AudioFrontend.keys()}
        from align.data.tools.stats import audio_duration_stats
        from align.train.feed import clip_seconds_measure
        limits = r.data.limits if r is not None else None      # the clips training reads, for both numbers
        dur = audio_duration_stats(a.pattern, clip_seconds_measure(keys), max_samples=a.n or 2000,
                                   progress=not a.no_progress, limits=limits)
        if dur["clips"] and keys.get("clip_seconds") == "auto":
            keys["clip_seconds"] = dur["clip_seconds"]
        fe = AudioFrontend(**keys).validate("model.towers.audio")
        stats = feature_stats(a.pattern, unnormalised_eval_frontend(fe), max_samples=a.n, progress=not a.no_progress,
                              limits=limits)
        print(json.dumps(stats))
        print(f"recipe keys: model.towers.audio.norm_mean={stats['norm_mean']} "
              f"model.towers.audio.norm_std={stats['norm_std']}")
        if dur["clips"]:
            sec = dur["seconds"]
            print(json.dumps({"audio_seconds": dur}))
            print(f"audio: {dur['clips']} clips read ({dur['unreadable']} unreadable), {sec['min']:g}-{sec['max']:g} "
                  f"s after trimming (median {sec['median']:g}, 99th percentile {sec['p99']:g}); clip_seconds: auto "
                  f"trains at {dur['clip_seconds']:g} s")


# -- the parsers (align.cli.build_parser calls add_data_parsers) ---------------------------------------

def add_data_parsers(sub):
    """`align data ...` under the top-level subparsers `sub`; returns the data subparsers (align.retrieval.cli
    adds `align data filter` there)."""
    data = sub.add_parser("data", help="build and inspect webdataset shards").add_subparsers(
        dest="data_cmd", required=True, metavar="SUBCOMMAND")
    s = data.add_parser("demo", help="write the built-in digits image-text-audio dataset")
    s.add_argument("--out", required=True, help="output directory (train/, val/, selection/, heldout/, demo.json)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split and of every random draw")
    s.add_argument("--workers", type=int, default=None, help="speech synthesis processes (default: CPU count)")
    s.set_defaults(fn=cmd_data_demo)

    _add_shards(data)

    s = data.add_parser("inspect", help="print samples, modalities and decode failures of shards")
    s.add_argument("pattern", help="local shard folder, file, glob or brace pattern, '::' between several "
                                   "(the shards training would read from it; no URLs)")
    s.add_argument("-n", type=int, default=3, help="samples to print (0: the summary only)")
    s.add_argument("--modalities", default=None,
                   help="modalities training will request (counts skips as a run with them would; default: "
                        "image,text,audio, training's default, and the summary names those the shards hold)")
    s.add_argument("--pairs", default=None, help="the recipe's loss.pairs as A-B,C-D (image-text,audio-text): a "
                                                 "sample in none of them is skipped, as training skips it")
    add_limit_options(s)
    s.set_defaults(fn=cmd_data_inspect)

    s = data.add_parser("stats", help="image sizes (what image_size: auto trains at), the log-mel mean/std of "
                                      "the audio in shards (for the audio tower's norm_mean/norm_std) and the clips' "
                                      "durations (what clip_seconds: auto trains at)")
    s.add_argument("pattern", help="shard folder, file, brace pattern or URL")
    s.add_argument("--recipe", default=None, help="use this recipe's audio front end (default: the defaults)")
    s.add_argument("-n", type=int, default=None, help="at most this many samples (default: all for the log-mel "
                                                      "mean/std, 2000 for image sizes and clip durations)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("overrides", nargs="*", help="overrides of --recipe's keys, e.g. model.towers.audio.clip_seconds=1")
    s.set_defaults(fn=cmd_data_stats)

    s = data.add_parser("cache", help="list the shards data.train / data.val wrote from tables and folders of "
                                      "pairs, and whether a run still reads each; --prune removes the others")
    s.add_argument("--cache", default=None, help="the cache folder (default: $ALIGN_CACHE, else ~/.cache/align)")
    s.add_argument("--prune", action="store_true", help="remove the folders no run reads: input changed or gone, "
                                                        "another version's, builds cut short (never one in use)")
    s.set_defaults(fn=cmd_data_cache)

    s = data.add_parser("reinforce", help="copy shards adding a frozen teacher's per-sample embeddings "
                                          "(loss.distill.teacher=stored: distillation without running the teacher)")
    s.add_argument("pattern", help="local shard folder, file or brace pattern")
    s.add_argument("--teacher", required=True, help="an align run/export, or open_clip:ARCH with --pretrained FILE")
    s.add_argument("--pretrained", default=None, help="open_clip:ARCH teachers: a local checkpoint file "
                                                       "(nothing is downloaded)")
    s.add_argument("--out", required=True, help="folder of the reinforced shards (same names) and teacher.json")
    s.add_argument("--modalities", default="image,text", help="teacher embeddings to store (default image,text)")
    s.add_argument("--batch-size", type=int, default=64, help="samples per teacher forward (default 64)")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (files of the same "
                                                            "names are replaced; never an input shard's folder)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    s.set_defaults(fn=cmd_data_reinforce)
    return data


def _add_shards(data) -> None:
    """align data shards: its many writer options."""
    s = data.add_parser("shards", help="turn a CSV/TSV/JSONL/Parquet file, a folder of pairs or a HF dataset "
                                       "into shards")
    s.add_argument("input", help="CSV/TSV/JSONL/Parquet file, folder of same-stem files (a.jpg + a.txt), or "
                                 "a Hugging Face dataset (Hub name or saved folder)")
    s.add_argument("--out", required=True, help="output folder of the shards (and stats.json)")
    for col, what in (("image", "image paths or URLs"), ("text", "captions (a,b: several caption columns)"),
                      ("audio", "audio file paths"), ("label", "class labels (ints or names)")):
        s.add_argument(f"--{col}-col", default=None, metavar="COL",
                       help=f"column of {what} (default: detected from the column names)")
    s.add_argument("--neg-col", default=None, metavar="COL",
                   help="column of hard-negative captions (one per line, or a JSON list), written as each "
                        "sample's neg.txt (see HardNegativeClipLoss)")
    s.add_argument("--image-size", type=int, default=None,
                   help="resize images (see --resize-mode; default: their own size)")
    s.add_argument("--resize-mode", choices=["keep", "center_crop", "border", "longest"], default="keep",
                   help="keep: shorter side = size; longest: longer side = size; center_crop: size x size; "
                        "border: longer side = size, padded black")
    s.add_argument("--image-format", choices=["jpg", "webp", "png", "source"], default="jpg",
                   help="format images are stored in; source: each JPEG, PNG or WebP kept byte for byte when "
                        "nothing about it must change (else PNG, or JPEG for a JPEG), so no pixel is altered")
    s.add_argument("--image-quality", type=int, default=None,
                   help="jpg/webp quality, 1-100 (default: 95); also of a JPEG that --image-format source must "
                        "re-encode; refused with png (lossless)")
    s.add_argument("--sample-rate", type=int, default=16000, help="audio is resampled to this rate (Hz), stored "
                                                                  "as flac")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    s.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar")
    s.add_argument("--workers", type=int, default=1, help="processes decoding and encoding media")
    s.add_argument("--split", default=None, help="split of a Hugging Face dataset (e.g. train)")
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
    s.add_argument("--follow-links", action="store_true",
                   help="follow symbolic links that lead out of the input folder (default: skip and count them)")
    add_limit_options(s)
    s.set_defaults(fn=cmd_data_shards)
