"""`align bench ...` argument parsing; the work is done by align.bench's task functions."""


def add_bench_parser(sub, fn):
    bench = sub.add_parser("bench", help="zero-shot and retrieval benchmarks on FAISS").add_subparsers(
        dest="bench_cmd", required=True)
    for name, helptext in (("zeroshot", "zero-shot classification (image or audio)"),
                           ("retrieval", "retrieval recall@k between two modalities")):
        s = bench.add_parser(name, help=helptext)
        s.add_argument("--model", required=True, help="run dir, checkpoint or export")
        s.add_argument("--dataset", required=True, help="dataset dir (CLIP_benchmark local layout, ...)")
        s.add_argument("--out", required=True, help="result JSON")
        s.add_argument("--split", default="test")
        s.add_argument("--index", default="flat", help="flat | ivf | hnsw | ivfpq")
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--cache-dir", default=None, help="embedding cache (default: none)")
        s.add_argument("--type", default="wds", help="dataset layout: wds | imagefolder | audiofolder | hf | csv")
        if name == "zeroshot":
            s.add_argument("--modality", default="image", choices=["image", "audio"])
            s.add_argument("--classnames", default=None, help="file, one class name per line")
            s.add_argument("--templates", default=None, help="file (one template with {c} per line) or builtin name")
        else:
            s.add_argument("--query", default="text", choices=["text", "image", "audio"])
            s.add_argument("--gallery", default="image", choices=["text", "image", "audio"])
            s.add_argument("--by-class", action="store_true",
                           help="emergent retrieval: a hit is an item of the same class (no paired data)")
        s.set_defaults(fn=fn)
    s = bench.add_parser("suite", help="many datasets x tasks x models -> JSONs, CSV, Markdown table")
    s.add_argument("suite", help="suite YAML, or a shipped suite's name (demo)")
    s.add_argument("--model", action="append", required=True, help="run dir, checkpoint or export (repeatable)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--cache-dir", default=None, help="embedding cache")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=fn)


def run_bench_cli(a):
    import align
    from align.bench.report import summary_line, write_json
    if a.bench_cmd == "suite":
        from align.bench.report import markdown_table
        from align.bench.suite import run_suite
        results = run_suite(a.suite, a.model, a.out, load_fn=align.load, cache_dir=a.cache_dir,
                            batch_size=a.batch_size, overwrite=a.overwrite)
        print(markdown_table(results))
        print(f"{len(results)} results -> {a.out}")
        return
    from align.bench.datasets import open_dataset
    opts = {"split": a.split} if a.type in ("wds", "hf") else {}
    if a.bench_cmd == "zeroshot" and a.classnames:
        opts["classnames"] = a.classnames
    if a.bench_cmd == "zeroshot" and a.templates:
        opts["templates"] = a.templates
    ds = open_dataset(a.dataset, a.type, **opts)
    model = align.load(a.model)
    kw = dict(index=a.index, cache_dir=a.cache_dir, batch_size=a.batch_size)
    if a.bench_cmd == "zeroshot":
        from align.bench.zeroshot import zeroshot_classification
        result = zeroshot_classification(model, ds, modality=a.modality, **kw)
    elif a.by_class:
        from align.bench.retrieval import emergent_retrieval
        result = emergent_retrieval(model, ds, query_modality=a.query, gallery_modality=a.gallery, **kw)
    else:
        from align.bench.retrieval import retrieval
        result = retrieval(model, ds, query_modality=a.query, gallery_modality=a.gallery, **kw)
    write_json(result, a.out)
    print(summary_line(result) + f" -> {a.out}")
