"""`align data filter`: CLIP-score filtering, near-duplicate removal, dropped.jsonl and the filtered shards."""
import json
import os

import numpy as np
import pytest

from align.cli import main
from align.retrieval.embed import load_embeddings
from align.retrieval.filter import clip_scores
from align.wds.format import group_samples
from align.wds.reader import iter_members
from tests.retrieval.conftest import tri_sample
from tests.wds_helpers import write_shard


def _samples(shard_dir):
    out = {}
    for f in sorted(os.listdir(shard_dir)):
        with open(os.path.join(shard_dir, f), "rb") as fh:
            for s in group_samples(iter_members(fh)):
                out[s.pop("__key__")] = s
    return out


@pytest.fixture
def corpus(tmp_path, tri_run):
    """12 image+text(+audio) samples, an exact copy of s0 (key dup), a broken jpg, a text-only sample."""
    d = tmp_path / "shards"
    d.mkdir()
    a = [tri_sample(f"s{i}", i) for i in range(6)]
    b = [tri_sample(f"t{i}", 50 + i) for i in range(6)]
    b.append(dict(a[0], __key__="dup"))
    b.append(dict(tri_sample("broken", 99), jpg=b"no jpeg"))
    b.append({"__key__": "textonly", "txt": "just words"})
    write_shard(d / "a.tar", a)
    write_shard(d / "b.tar", b)
    run, _ = tri_run
    assert main(["embed", run, "--data", str(d), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    return run, d, tmp_path / "emb"


def test_min_score_and_dedup_with_given_embeddings(tmp_path, capsys, corpus):
    run, shards, emb = corpus
    m, mr = load_embeddings(str(emb), "image")
    t, tr = load_embeddings(str(emb), "text")
    # stored in float16 (unit to ~1e-3), read back re-normalised: cosines, and an exact copy's 1.0, hold
    assert np.abs(np.linalg.norm(m, axis=1) - 1).max() < 1e-6 and np.abs(np.linalg.norm(t, axis=1) - 1).max() < 1e-6
    scores = dict(zip(mr["key"], clip_scores(m, mr, t, tr)))
    cut = float(np.median(list(scores.values())))
    out = tmp_path / "f"
    capsys.readouterr()
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(out), "--emb", str(emb),
                 "--min-score", str(cut), "--dedup", "0.99999", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("filter: 15 samples, kept ") and "undecodable 1" in line, line
    assert not os.path.exists(out / "emb")                       # the given embeddings were used
    dropped = [json.loads(x) for x in open(out / "dropped.jsonl")]
    low = {d["key"] for d in dropped if d["reason"] == "low_score"}
    assert low == {k for k, s in scores.items() if s < cut}
    assert all(abs(d["score"] - scores[d["key"]]) < 1e-4 for d in dropped if d["reason"] == "low_score")
    dups = [d for d in dropped if d["reason"] == "near_duplicate"]
    if "s0" not in low:                                          # the copy is dropped, the original kept
        assert [(d["key"], d["duplicate_of"]) for d in dups] == [("dup", "s0")] and dups[0]["score"] > 0.9999
    assert [d["key"] for d in dropped if d["reason"] == "undecodable"] == ["broken"]
    kept = _samples(out / "shards")
    assert set(kept) == {"s0", "s1", "s2", "s3", "s4", "s5", "t0", "t1", "t2", "t3", "t4", "t5", "dup", "broken",
                         "textonly"} - {d["key"] for d in dropped}
    assert "textonly" in kept and kept["s1" if "s1" in kept else next(iter(kept))]
    src = _samples(shards)
    assert all(kept[k] == src[k] for k in kept)                  # bytes unchanged
    summary = json.load(open(out / "summary.json"))
    assert summary["kept"] == len(kept) and sum(summary["dropped"].values()) == len(dropped)
    # dedup alone: the exact copy (stored in float16) is found at cosine 1 and its original kept
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(tmp_path / "d"), "--emb", str(emb),
                 "--dedup", "0.99999", "--no-progress"]) == 0
    dups = [json.loads(x) for x in open(tmp_path / "d" / "dropped.jsonl") if "near_duplicate" in x]
    assert [(d["key"], d["duplicate_of"]) for d in dups] == [("dup", "s0")] and dups[0]["score"] > 0.99999


def test_keep_top_and_bad_options(tmp_path, capsys, corpus):
    run, shards, _ = corpus
    out = tmp_path / "k"
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(out), "--keep-top", "0.25",
                 "--no-progress"]) == 0
    dropped = [json.loads(x) for x in open(out / "dropped.jsonl")]
    assert os.path.isdir(out / "emb")                                       # computed when --emb is not given
    # the reference: the scores of the vectors the filter used. (s0 and its copy "dup" are encoded in other
    # batches, so their scores may differ in the last bits: only exact ties at the cut are ties.)
    m, mr = load_embeddings(str(out / "emb"), "image")
    t, tr = load_embeddings(str(out / "emb"), "text")
    scores = dict(zip(mr["key"], clip_scores(m, mr, t, tr)))              # 13 scored (dup is s0's copy)
    cut = sorted(scores.values(), reverse=True)[4 - 1]                     # ceil(0.25 * 13) = 4 kept ...
    low = {d["key"] for d in dropped if d["reason"] == "low_score"}
    assert len(scores) == 13 and low == {k for k, v in scores.items() if v < cut}   # ... plus exact ties at the cut
    assert 13 - len(low) == sum(v >= cut for v in scores.values()) >= 4
    assert json.load(open(out / "emb" / "manifest.json"))["precision"] == "fp32"
    # --precision reaches the embeddings it computes (bf16 autocast), and they are recorded as such
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(tmp_path / "kb"), "--keep-top", "0.25",
                 "--precision", "bf16", "--no-progress"]) == 0
    assert json.load(open(tmp_path / "kb" / "emb" / "manifest.json"))["precision"] == "bf16"
    assert np.abs(load_embeddings(str(tmp_path / "kb" / "emb"), "image")[0] - m).max() > 0
    for extra, msg in [(["--min-score", "0.1", "--keep-top", "0.5"], "not both"),
                       (["--keep-top", "1.5"], "--keep-top 1.5"),
                       ([], "nothing to do")]:
        capsys.readouterr()
        assert main(["data", "filter", str(shards), "--model", run, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


@pytest.mark.slow   # trains a tiny model for 500 steps: ~3 min on the shared 2-core machine
def test_a_trained_model_finds_planted_mismatches_and_copies(tmp_path):
    """Mismatched captions are found almost perfectly; near-copies only partly (the tiny model maps different
    images with similar captions as close as copies: benchmarks/RESULTS.md, issue 21)."""
    import align
    from align.retrieval.filter import filter_shards
    from tests.retrieval.planted import clean_shards, planted_shards, precision_recall, train_shapes_model
    clean_shards(tmp_path / "train", 3000)
    run = train_shapes_model(tmp_path / "train", tmp_path / "run", steps=500)
    _, truth = planted_shards(tmp_path / "planted", 400, 40, 40)
    s = filter_shards(align.load(run), str(tmp_path / "planted"), str(tmp_path / "out"), min_score=0.75,
                      dedup_cos=0.995, progress=False)
    dropped = [json.loads(x) for x in open(tmp_path / "out" / "dropped.jsonl")]
    p, r, _, _ = precision_recall(dropped, truth, "low_score", "mismatch")
    assert p >= 0.9 and r >= 0.85, (p, r)
    p, r, _, n_planted = precision_recall(dropped, truth, "near_duplicate", "near_duplicate")
    base = n_planted / s["samples"]
    assert r >= 0.3 and p >= 2 * base, (p, r, base)     # far better than dropping at random, far from perfect


@pytest.mark.slow   # three interpreters start torch: ~60-90 s on the shared 2-core machine
def test_two_processes_filter_like_one(tmp_path, corpus):
    """RANK / WORLD_SIZE as accelerate launch sets them: each process embeds its parts, process 0 waits for all
    parts, then selects and writes; dropped.jsonl and the shards equal one process's."""
    import subprocess
    import sys
    run, shards, _ = corpus
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, "-m", "align.cli", "data", "filter", str(shards), "--model", run, "--min-score", "0.0",
            "--dedup", "0.99999", "--no-progress", "--out"]
    one = subprocess.run(args + [str(tmp_path / "one")], env=dict(os.environ, PYTHONPATH=root), capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    procs = [subprocess.Popen(args + [str(tmp_path / "two")], env=dict(os.environ, PYTHONPATH=root, RANK=str(r),
                                                                       WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0].startswith("filter: 15 samples") and outs[1][0] == ""      # only process 0 reports
    assert open(tmp_path / "one" / "dropped.jsonl").read() == open(tmp_path / "two" / "dropped.jsonl").read()
    for f in ("a.tar", "b.tar"):
        assert (tmp_path / "one" / "shards" / f).read_bytes() == (tmp_path / "two" / "shards" / f).read_bytes()


def test_encoding_flags_are_refused_with_given_embeddings_and_reach_the_embedding_without(tmp_path, capsys,
                                                                                          monkeypatch):
    """With --emb nothing is encoded: --batch-size, --precision, --engine, --device and --limit are one line each
    (exit 2, before the model loads), not silently ignored; without --emb they reach filter_shards (defaults: 256,
    fp32, torch)."""
    from align.retrieval import cli as rcli
    from align.retrieval import filter as rfilter
    loaded, seen = [], {}
    monkeypatch.setattr(rcli, "_load", lambda a: loaded.append(a) or "model")
    monkeypatch.setattr(rfilter, "filter_shards", lambda model, data, out, **kw: seen.update(kw))
    base = ["data", "filter", str(tmp_path), "--model", "m", "--out", str(tmp_path / "f"), "--min-score", "0"]
    for flag, value in (("--batch-size", "3"), ("--precision", "bf16"), ("--engine", "onnxruntime"),
                        ("--device", "cpu"), ("--limit", "max_audio_seconds=5")):
        capsys.readouterr()
        assert main(base + ["--emb", str(tmp_path / "emb"), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"align: error: {flag}: the embeddings come from --emb"), err
    assert loaded == []
    assert main(base + ["--emb", str(tmp_path / "emb")]) == 0 and seen["emb"] == str(tmp_path / "emb")
    assert (seen["batch_size"], seen["precision"], seen["engine"]) == (256, "fp32", "torch")
    assert main(base + ["--batch-size", "3", "--precision", "bf16", "--engine", "onnxruntime"]) == 0
    assert (seen["batch_size"], seen["precision"], seen["engine"], seen["emb"]) == (3, "bf16", "onnxruntime", None)


def test_embeddings_of_another_model_are_refused(tmp_path, capsys, corpus):
    """With --emb the scores come from the embeddings alone: another model's vectors were filtered under
    --model's name without a word."""
    import shutil
    run, shards, emb = corpus
    other = tmp_path / "emb_other"
    shutil.copytree(emb, other)
    manifest = json.load(open(other / "manifest.json"))
    manifest.update(model="another-model", model_fingerprint="0" * len(manifest["model_fingerprint"]))
    json.dump(manifest, open(other / "manifest.json", "w"))
    capsys.readouterr()
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(tmp_path / "f"), "--emb", str(other),
                 "--dedup", "0.99999", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--emb {other}: embedded by another model (another-model)" in err[0], err
    assert not (tmp_path / "f").exists()


def test_an_out_that_holds_the_input_shards_or_two_inputs_of_one_name_are_refused_before_anything(tmp_path, capsys,
                                                                                                    tri_run):
    """`--out DATA` with the input in DATA/shards rewrote the user's shard in place (its dropped samples lost);
    a.tar twice (from two folders) made one copy replace the other. Both are one line, and no file is touched."""
    run, _ = tri_run
    src = tmp_path / "data" / "shards"
    src.mkdir(parents=True)
    shard = write_shard(src / "a.tar", [tri_sample(f"s{i}", i) for i in range(4)])
    before = open(shard, "rb").read()
    (tmp_path / "other").mkdir()
    twin = write_shard(tmp_path / "other" / "a.tar", [tri_sample("t0", 9)])
    for data, out, msg in [(str(src), tmp_path / "data", "over the input shard"),
                           (f"{shard}::{twin}", tmp_path / "f", "two input shards are named a.tar")]:
        capsys.readouterr()
        assert main(["data", "filter", data, "--model", run, "--out", str(out), "--keep-top", "0.5",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert open(shard, "rb").read() == before and sorted(os.listdir(src)) == ["a.tar"]
    assert not (tmp_path / "data" / "emb").exists() and not (tmp_path / "f").exists()


def test_given_embeddings_with_a_part_damaged_in_place_are_refused_in_one_line(tmp_path, capsys, corpus):
    """A part's .npy with a block zeroed (same size and header): `align data filter --emb` checks every part's
    checksums once before it reads the image and text vectors, and names the file."""
    run, shards, emb = corpus
    hit = emb / "parts" / "part-00000.text.npy"
    raw = bytearray(hit.read_bytes())
    raw[-32:] = bytes(32)
    hit.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["data", "filter", str(shards), "--model", run, "--out", str(tmp_path / "f"), "--emb", str(emb),
                 "--dedup", "0.99", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{hit}: its bytes changed since its part finished" in err[0], err


def _exact_rows(n, rng):
    """Unit rows of four +-0.5 entries in 8: every cosine a multiple of 0.25, exact in float32 (ties at COS)."""
    x = np.zeros((n, 8), np.float32)
    for i in range(n):
        x[i, rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def _plain_dedup(x, cos):
    """Visit rows in order; a row not yet dropped drops every later row not yet dropped at cosine >= cos."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    dropped = {}
    for i in range(len(x)):
        if i not in dropped:
            for j in range(i + 1, len(x)):
                if j not in dropped and s[i, j] >= cos:
                    dropped[j] = (i, s[i, j])
    return dropped


@pytest.mark.parametrize("cos", [0.25, 0.5, 0.75, 1.0])
def test_dedup_and_score_selection_equal_plain_loops(cos):
    """dedup against a double loop, exact cosines included: FAISS's range search keeps inner products > radius, so a
    pair at exactly COS (the exact copies of --dedup 1) was kept, though --dedup says >= COS. select: low scores
    dropped (ties at a --keep-top cut kept, no caption never), dedup among the rest, by their rows."""
    from align.retrieval.filter import dedup, select
    rng = np.random.default_rng(int(cos * 4))
    x = _exact_rows(60, rng)
    x[40:50] = x[:10]                                                   # exact copies
    got = dedup(x, cos)
    want = _plain_dedup(x, cos)
    assert {j: i for j, (i, _) in got.items()} == {j: i for j, (i, _) in want.items()}
    assert all(abs(got[j][1] - want[j][1]) < 1e-6 for j in want)
    assert all(j in got for j in range(40, 50) if j - 40 not in want)  # a copy of a kept row is dropped
    scores = rng.integers(0, 5, 60).astype(np.float32) / 4              # tied scores
    scores[::7] = np.nan                                                # no caption
    for kw in ({"min_score": 0.5, "keep_top": None}, {"min_score": None, "keep_top": 0.3}):
        drop, thr = select(scores, x, dedup_cos=cos, **kw)
        scored = [i for i in range(60) if not np.isnan(scores[i])]
        if kw["keep_top"]:
            n_keep = int(np.ceil(0.3 * len(scored)))
            assert thr == sorted((scores[i] for i in scored), reverse=True)[n_keep - 1]
        low = {i for i in scored if scores[i] < thr}
        assert {i for i, d in drop.items() if d["reason"] == "low_score"} == low
        left = [i for i in range(60) if i not in low]
        near = _plain_dedup(x[left], cos)
        assert {i: d["dup_of"] for i, d in drop.items() if d["reason"] == "near_duplicate"} == \
            {left[j]: left[i] for j, (i, _) in near.items()}


@pytest.mark.parametrize("full_at", ["b.tar", "dropped.jsonl", "summary.json"])
def test_a_full_disk_while_filtering_is_one_line_and_a_rerun_writes_what_a_clean_run_does(tmp_path, capsys, corpus,
                                                                                         monkeypatch, full_at):
    """ENOSPC while `align data filter` wrote: a traceback, and a filtered shard's .tmp (or a cut dropped.jsonl,
    an empty summary.json) stayed under --out. Now one line naming the file, exit 74, nothing partial."""
    from tests.diskfull import files_under, full_disk
    run, shards, emb = corpus
    args = ["data", "filter", str(shards), "--model", run, "--emb", str(emb), "--keep-top", "0.5", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    out = tmp_path / "full"
    disk = full_disk(monkeypatch, full_at, free=10)
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    failed = disk.failed[0].split(".tmp")[0]
    assert len(err) == 1 and err[0].startswith(f"align: error: {failed}: No space left on device (") and \
        "the embeddings in --out's emb/ are kept" in err[0], err
    assert not [f for f in files_under(out) if ".tmp" in f] and not os.path.exists(failed), files_under(out)
    monkeypatch.undo()                                                          # space freed
    assert main([*args, "--out", str(out)]) == 0
    assert files_under(out) == files_under(tmp_path / "clean")
    for name in files_under(out):
        if name != "summary.json":                                              # (its seconds differ)
            assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def _write_emb(out, parts, rng, dim=16):
    """An `align embed`-shaped folder (float16 vectors, as embed writes them) of `parts` [(image rows, captions of
    each sample)]; every image row a copy or near copy of an earlier part's row where rng says so."""
    import pandas as pd

    from align.retrieval.embed import COLUMNS, part_files, part_name
    os.makedirs(out / "parts")
    names, seen = [], []
    for p, (m, ncap) in enumerate(parts):
        part = part_name(p)
        names.append(part)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        for i in range(m):
            if seen and rng.random() < 0.3:                       # an exact or near copy of an earlier row
                x[i] = seen[rng.integers(len(seen))] + (0.02 * rng.standard_normal(dim) if rng.random() < 0.5 else 0)
        seen += list(x)
        caps = [i for i in range(m) for _ in range(ncap[i])]
        t = x[caps] + rng.uniform(0.2, 2, (len(caps), 1)) * rng.standard_normal((len(caps), dim))
        vec = {"image": m, **({"text": len(caps)} if caps else {})}
        for mod, v in (("image", x), ("text", t)):
            if mod in vec:
                np.save(out / "parts" / f"{part}.{mod}.npy", (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
                    np.float16))
        keys = [f"p{p}s{i}" for i in range(m)]
        pd.DataFrame({"key": keys + [keys[i] for i in caps], "caption": [None] * m + [f"c{i}" for i in caps],
                      "shard": f"/c/{p}.tar", "modality": ["image"] * m + ["text"] * len(caps),
                      "row": np.r_[np.arange(m), np.arange(len(caps))], "media_offset": 0, "media_size": 1,
                      "part": part}, columns=COLUMNS).to_parquet(out / "parts" / f"{part}.parquet", index=False)
        files = {f: os.path.getsize(out / "parts" / f) for f in part_files(part, vec)}
        (out / "parts" / f"{part}.done.json").write_text(json.dumps({"part": part, "vectors": vec, "files": files}))
    (out / "manifest.json").write_text(json.dumps({"model": "x", "shards": [f"/c/{p}.tar" for p in range(len(parts))],
                                                   "parts": names, "dtype": "float16"}))


def _in_memory_selection(emb, min_score, keep_top, cos):
    """The selection as filter_shards made it before it read the vectors by parts: every vector loaded, the scores
    of the full arrays, FAISS's exact range search of media[left] against itself."""
    import faiss
    media, mrows = load_embeddings(emb, "image", verify=False)
    text, trows = load_embeddings(emb, "text", verify=False)
    first = {}
    for i, k in enumerate(zip(trows["shard"], trows["key"])):
        first.setdefault(k, i)
    idx = np.array([first.get(k, -1) for k in zip(mrows["shard"], mrows["key"])], dtype=np.int64)
    scores = np.full(len(media), np.nan, dtype=np.float32)
    scores[idx >= 0] = np.einsum("nd,nd->n", media[idx >= 0], text[idx[idx >= 0]])
    drop, scored, thr = {}, ~np.isnan(scores), min_score
    if keep_top is not None:
        n_keep = int(np.ceil(keep_top * scored.sum()))
        thr = float(np.sort(scores[scored])[::-1][max(n_keep - 1, 0)]) if n_keep else np.inf
    if thr is not None:
        for i in np.flatnonzero(scored & (scores < thr)):
            drop[int(i)] = {"reason": "low_score", "score": float(scores[i])}
    if cos is not None:
        left = np.array([i for i in range(len(media)) if i not in drop], dtype=np.int64)
        x = media[left]
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        lims, sims, ids = index.range_search(x, float(np.nextafter(np.float32(cos), np.float32(-np.inf))))
        gone = set()
        for i in range(len(x)):
            if i not in gone:
                for j, s in zip(ids[lims[i]:lims[i + 1]], sims[lims[i]:lims[i + 1]]):
                    if j > i and j not in gone and s >= np.float32(cos):
                        gone.add(j)
                        drop[int(left[j])] = {"reason": "near_duplicate", "score": float(s), "dup_of": int(left[i])}
    return scores, drop, thr


@pytest.mark.parametrize("chunk", [7, 16384])
def test_selection_by_parts_equals_the_in_memory_selection_bit_for_bit(tmp_path, monkeypatch, chunk):
    """score_and_select reads the vectors a chunk of parts at a time and dedups from the index's own storage: its
    scores (bitwise), drops (scores, pairs, cosines: exact) and threshold equal loading every vector, over parts of
    several sizes (a chunk of 7 rows: parts split across chunks, one larger than a chunk, one without captions),
    samples with 0, 1 and 2 (different) captions, and exact and near copies across parts."""
    from align.retrieval import filter as F
    monkeypatch.setattr(F, "CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    sizes = [5, 9, 1, 13, 4, 30]
    parts = [(m, [(i + p) % 3 for i in range(m)]) for p, m in enumerate(sizes)]
    parts[2] = (1, [0])                                                 # a part with no text vectors at all
    _write_emb(tmp_path / "emb", parts, rng)
    media = F.EmbeddingParts(str(tmp_path / "emb"), "image")
    text = F.EmbeddingParts(str(tmp_path / "emb"), "text")
    mrows, trows = F.load_rows(str(tmp_path / "emb"), "image"), F.load_rows(str(tmp_path / "emb"), "text")
    want_scores = _in_memory_selection(str(tmp_path / "emb"), None, None, None)[0]
    got_scores = F.part_scores(media, mrows, text, trows)
    assert got_scores.dtype == np.float32 and np.array_equal(got_scores.view(np.uint32), want_scores.view(np.uint32))
    assert np.isnan(got_scores).sum() == sum(c == 0 for _, n in parts for c in n)
    for kw in ({"min_score": 0.3, "keep_top": None, "cos": 0.95}, {"min_score": None, "keep_top": 0.6, "cos": 0.9},
               {"min_score": None, "keep_top": None, "cos": 1.0}, {"min_score": None, "keep_top": 0.5, "cos": None}):
        _, want, want_thr = _in_memory_selection(str(tmp_path / "emb"), kw["min_score"], kw["keep_top"], kw["cos"])
        got, thr, rows = F.score_and_select(str(tmp_path / "emb"), "image", ["image", "text"],
                                            min_score=kw["min_score"], keep_top=kw["keep_top"], dedup_cos=kw["cos"])
        assert (got, thr) == (want, want_thr) and len(rows) == sum(sizes)
        if kw["cos"] is not None:
            assert any(d["reason"] == "near_duplicate" for d in got.values())


def test_dedup_by_parts_equals_dedup_of_the_rows_on_both_paths(tmp_path, monkeypatch):
    """dedup_parts (the index filled by chunks, its storage the queries) equals dedup of the loaded rows exactly, on
    the IndexFlatIP path, the IVF path past EXACT_DEDUP_MAX (here 500) and with no row left."""
    from align.retrieval import filter as F
    monkeypatch.setattr(F, "EXACT_DEDUP_MAX", 500)
    monkeypatch.setattr(F, "CHUNK", 1000)
    _write_emb(tmp_path / "emb", [(m, [1] * m) for m in (700, 900, 1300)], np.random.default_rng(3))
    media = load_embeddings(str(tmp_path / "emb"), "image", verify=False)[0]
    parts = F.EmbeddingParts(str(tmp_path / "emb"), "image")
    for left in (np.arange(0, 2900, 2), np.arange(0, 2900, 7), np.zeros(0, np.int64)):
        want = F.dedup(media[left], 0.95)
        assert F.dedup_parts(parts, left, 0.95) == want and (len(want) > 0) == (len(left) > 0)
