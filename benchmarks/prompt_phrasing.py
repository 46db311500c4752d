"""How much of a model's zero-shot error is the prompt's wording: score trained runs on one eval split with
the split's own templates and with other template sets.

    python benchmarks/prompt_phrasing.py --split BUILT/selection --runs RUN [RUN ...] \
        --templates 'train-like={c}|someone saying {c}|a voice says {c}|recording of the word {c}' 'bare={c}'

A from-scratch text tower trained on a few caption phrasings may embed a prompt phrased another way badly;
if the same audio embeddings score higher with prompts shaped like the training captions, the text side
costs that much. Each set is `NAME=TEMPLATE|TEMPLATE|...` ({c} = the class name). The split is a
CLIP_benchmark folder (`benchmarks/real_sets.py` writes them), opened once and read only; each run's media
embeddings are computed once and reused for every template set. Prints one row per run and a JSON summary.
Diagnostic only: use a selection split, never choose anything by a report split.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, help="a CLIP_benchmark eval folder (e.g. BUILT/selection)")
    ap.add_argument("--runs", nargs="+", required=True, help="run dirs (or anything align.load takes)")
    ap.add_argument("--templates", nargs="+", default=[], help="NAME=TEMPLATE|TEMPLATE|... ({c}: class name)")
    a = ap.parse_args(argv)
    sets = {}
    for item in a.templates:
        name, sep, body = item.partition("=")
        if not sep or not name or not all("{c}" in t for t in body.split("|")):
            ap.error(f"--templates {item!r}: expected NAME=TEMPLATE|TEMPLATE with {{c}} in each")
        sets[name] = body.split("|")
    import align
    from align.bench.datasets import open_wds
    from align.bench.zeroshot import zeroshot_classification
    ds = open_wds(a.split, split="test")
    sets = {"split's own": None, **sets}                 # None: the split's own template file
    rows = []
    for run in a.runs:
        model = align.load(run)
        modality = next(m for m in ("audio", "image") if m in ds.modalities and m in model.modalities)
        row = {"run": run}
        with tempfile.TemporaryDirectory() as cache:     # the media embeddings once per run, every set reuses them
            for name, templates in sets.items():
                res = zeroshot_classification(model, ds, modality=modality, templates=templates, cache_dir=cache,
                                              progress=False)
                row[name] = round(res["metrics"]["acc1"], 4)
        rows.append(row)
        print(f"{run}: " + "  ".join(f"{n} {100 * row[n]:.1f} %" for n in sets), flush=True)
    summary = {"split": os.path.abspath(a.split), "templates": {n: t for n, t in sets.items() if t}, "rows": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
