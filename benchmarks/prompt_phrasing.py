"""How much of a model's zero-shot error is the prompt's wording: score trained runs on one eval split with
the split's own templates and with other template sets.

    python benchmarks/prompt_phrasing.py --split BUILT/selection --runs RUN [RUN ...] \
        --templates 'train-like={c}|someone saying {c}|a voice says {c}|recording of the word {c}' 'bare={c}'

A from-scratch text tower trained on a few caption phrasings may embed a prompt phrased another way badly;
if the same audio embeddings score higher with prompts shaped like the training captions, the text side
costs that much. Each set is `NAME=TEMPLATE|TEMPLATE|...` ({c} = the class name). The split is a
CLIP_benchmark folder (`benchmarks/real_sets.py` writes them); its files are linked into a temporary copy
whose template file is replaced, so nothing in it is written. Prints one row per run and a JSON summary.
Diagnostic only: use a selection split, never choose anything by a report split.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def with_templates(split: str, templates: list, tmp: str) -> str:
    """A folder with every file of `split` linked in and its template file replaced by `templates`."""
    out = tempfile.mkdtemp(dir=tmp)
    for name in os.listdir(split):
        if name != TEMPLATES_FILE:
            os.symlink(os.path.abspath(os.path.join(split, name)), os.path.join(out, name))
    with open(os.path.join(out, TEMPLATES_FILE), "w") as f:
        f.write("\n".join(templates) + "\n")
    return out


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
    from align.train.evaluate import evaluate_model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"split's own": a.split, **{n: with_templates(a.split, t, tmp) for n, t in sets.items()}}
        for run in a.runs:
            model = align.load(run)
            row = {"run": run}
            for name, folder in folders.items():
                res = evaluate_model(model, folder, tasks=("zeroshot",))
                row[name] = round(next(v for k, v in res.items() if k.endswith("zeroshot/acc1")), 4)
            rows.append(row)
            print(f"{run}: " + "  ".join(f"{n} {100 * row[n]:.1f} %" for n in folders), flush=True)
    summary = {"split": os.path.abspath(a.split), "templates": sets, "rows": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
