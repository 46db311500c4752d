"""`align data reinforce`: a "reinforced" copy of shards, each sample carrying a frozen teacher's embeddings.

MobileCLIP's reinforced training (DataCompDR) stores the teacher's embeddings with each sample so that
distillation costs nothing at train time. Here every sample of every input shard is copied unchanged into a
shard of the same name under `out_dir`, plus one `teacher_<modality>.npy` member per teacher modality (float32
[Et], L2-normalised; align.data.stream.stored_teacher reads them), and `out_dir/teacher.json` records the teacher,
its logit scale (loss.distill's default temperature is its inverse), modalities and width.

The teacher embeds each sample with its own eval transforms: the image un-augmented, the first caption of
`txt`. Training with random crops or several captions per sample then distils from the embedding of that one
view (what a single stored view of MobileCLIP's also does). A sample the teacher cannot read is left out and
counted, as training would skip it.

    write_reinforced(urls, out_dir, teacher_encoders(model), meta={"teacher": spec, "logit_scale": 100.0})
"""
from __future__ import annotations

import io
import json
import os
from typing import Callable, Dict, Iterable, List

import numpy as np

from align.data.stream.stored_teacher import META, member
from align.errors import DataError, make_folder, without_reprs
from align.wds.format import group_samples, pick
from align.wds.reader import iter_tar
from align.wds.writer import SampleWriter
from align.writes import guard_write, write_text_whole

KEPT = "the input shards are untouched"     # a full disk's line (align.writes) says it


def _samples(path: str) -> Iterable[dict]:
    """The samples of one local tar, in order: {"__key__": key, ext: bytes}, grouped as training groups them
    (align.wds.format.group_samples: a repeated extension keeps its first file)."""
    with open(path, "rb") as f:
        yield from group_samples(iter_tar(f))


def teacher_encoders(model, batch_size: int = 64) -> Dict[str, Callable[[List[bytes]], np.ndarray]]:
    """A loaded teacher (align.load / an open_clip model via align.bench.models) -> {modality: members ->
    float32 [n, Et]}: images through its image_transform, the first caption through its tokenizer."""
    import torch

    from align.data.stream.decode import captions
    from align.media.image import decode_image

    def run(fn, xs):
        with torch.no_grad():
            return torch.cat([fn(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size)]).float().numpy()

    out = {}
    if "image" in model.modalities:
        tf = model.image_transform
        out["image"] = lambda items: run(lambda chunk: model.encode_image(
            torch.stack([tf(decode_image(b).convert("RGB")) for b in chunk])), items)
    if "text" in model.modalities:
        out["text"] = lambda items: run(lambda chunk: model.encode_text(
            model.tokenize([captions(b)[0] for b in chunk])), items)
    return out


def check_out(urls: List[str], out_dir: str, overwrite: bool = False) -> None:
    """DataError (one line) before anything is read when the copies would land on something: the folder of an
    input shard (the user's shard rewritten in place), two inputs of one name (one file, the other lost), or a
    non-empty --out without overwrite."""
    out = os.path.realpath(out_dir)
    for url in urls:
        if os.path.dirname(os.path.realpath(url)) == out:
            raise DataError(f"data reinforce: --out {out_dir} holds the input shard {url}: it would be rewritten "
                            "in place; choose another folder")
    seen: Dict[str, str] = {}
    for url in urls:
        name = os.path.basename(url)
        if name in seen:
            raise DataError(f"data reinforce: two input shards are named {name} ({seen[name]}, {url}): their "
                            "copies would be one file in --out; rename one")
        seen[name] = url
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"data reinforce: --out {out_dir} exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise DataError(f"data reinforce: --out {out_dir} is not empty; choose an empty folder or pass "
                        "--overwrite (its files of the same names are replaced)")


def write_reinforced(urls: List[str], out_dir: str, encoders: Dict[str, Callable[[List[bytes]], np.ndarray]],
                     meta: dict, progress: bool = False) -> dict:
    """Copies each local shard in `urls` to out_dir/<same name> with the teacher members added; writes
    out_dir/teacher.json (meta + modalities + embed_dim). Returns {"samples", "shards", "skipped"}. progress: a
    bar over the shards (the teacher runs over every sample: hours on a large corpus)."""
    from align.progress import progress as tqdm   # plain lines off a terminal
    make_folder(out_dir, "reinforced shards'")
    counts = {"samples": 0, "shards": 0, "skipped": 0}
    width = None
    bar = tqdm(total=len(urls), desc="reinforce (teacher embeddings)", unit="shard", disable=not progress)
    for url in urls:
        try:
            samples = list(_samples(url))
        except (EOFError, OSError) as e:    # an empty file, a text file, a cut tar: one line, not the reader's
            raise DataError(f"data reinforce: {url}: not a readable tar ({e}); `align data inspect` checks "
                            f"shards") from None
        exts = {m: [pick(s, m) for s in samples] for m in encoders}
        keep = [i for i in range(len(samples)) if all(exts[m][i] is not None for m in encoders)]
        embs = {}
        for m, enc in encoders.items():
            try:
                embs[m] = enc([samples[i][exts[m][i]] for i in keep])
            except Exception as exn:       # one bad member: embed one at a time, skip those that fail
                embs[m], keep = _one_by_one(enc, samples, exts[m], keep, exn, f"{url}: {m}")
        dest = os.path.join(out_dir, os.path.basename(url))
        # in place only when whole: a cut run leaves no half shard; a full disk is one line, the .tmp removed
        with guard_write(dest, None, None, kept=KEPT, partial=dest + ".tmp"), SampleWriter(dest + ".tmp") as w:
            for row, i in enumerate(keep):
                s = dict(samples[i])
                key = s.pop("__key__")
                for m in encoders:
                    buf = io.BytesIO()
                    np.save(buf, np.asarray(embs[m][row], dtype=np.float32), allow_pickle=False)
                    s[member(m)] = buf.getvalue()
                    width = len(embs[m][row])
                w.write(key, s)
        os.replace(dest + ".tmp", dest)
        counts["samples"] += len(keep)
        counts["skipped"] += len(samples) - len(keep)
        counts["shards"] += 1
        bar.set_postfix_str(f"{counts['samples']} samples, {counts['skipped']} skipped", refresh=False)
        bar.update(1)
    bar.close()
    write_text_whole(os.path.join(out_dir, META), json.dumps(dict(meta, modalities=sorted(encoders), embed_dim=width),
                                                          indent=1), KEPT)
    return counts


def _one_by_one(enc, samples, exts, keep, exn, where: str):
    rows, kept = [], []
    for i in keep:
        try:
            rows.append(enc([samples[i][exts[i]]])[0])
            kept.append(i)
        except Exception:
            pass
    if not kept:      # not one sample: the teacher or the shard is wrong, said in one line (was the traceback)
        raise DataError(f"data reinforce: {where}: the teacher embedded no sample (the first error: "
                        f"{type(exn).__name__}: {without_reprs(str(exn))})") from None
    return np.stack(rows), kept

