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
        if name == "zeroshot":
            s.add_argument("--modality", default="image", choices=["image", "audio"])
            s.add_argument("--classnames", default=None, help="file, one class name per line")
            s.add_argument("--templates", default=None, help="file (one template with {c} per line) or builtin name")
        else:
            s.add_argument("--query", default="text", choices=["text", "image", "audio"])
            s.add_argument("--gallery", default="image", choices=["text", "image", "audio"])
        s.set_defaults(fn=fn)
    s = bench.add_parser("suite", help="many datasets x tasks x models -> JSONs, CSV, Markdown table")
    s.add_argument("suite", help="suite YAML")
    s.add_argument("--model", action="append", required=True, help="run dir, checkpoint or export (repeatable)")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(fn=fn)


def run_bench_cli(a):
    raise NotImplementedError("wired once align.bench's API lands")
