"""`align index`: the index kind follows size and budget; approximate ones are tuned to recall@10 >= 0.95."""
import json
import os

import numpy as np
import pytest

from align.bench.index import build_index, exact_topk
from align.errors import ConfigError, DataError
from align.retrieval import Index
from align.retrieval.embed import EmbeddingParts, load_embeddings, load_rows
from align.retrieval.index_build import build_indexes, build_streamed, choose_index, parse_bytes
from tests.retrieval.conftest import clustered, write_emb


def test_choice_follows_size_and_budget():
    assert choose_index(10_000, 512, 4e9, 10)[0] == "flat_faiss"             # 20 MB: a scan fits 10 ms
    assert choose_index(10_000, 512, 4e9, 1)[0] == "ivf"                     # ... but not 1 ms
    kind, params, why = choose_index(1_000_000, 512, 4e9, 10)
    assert kind == "ivf" and params["nlist"] == 4000
    kind, params, why = choose_index(10_000_000, 512, 4e9, 10)               # 20 GB float32 > 4 GB
    assert kind == "ivfpq" and 512 % params["pq_m"] == 0 and 10_000_000 * (params["pq_m"] + 8) <= 4e9
    assert why == "IVF-PQ64: the float32 vectors (20.5 GB) pass the 4 GB budget"
    assert choose_index(1343, 128, 1e5, 10)[2] == "IVF-PQ64: the float32 vectors (688 KB) pass the 100 KB budget"
    with pytest.raises(ConfigError, match="too small"):
        choose_index(10_000_000, 512, 5e7, 10)
    assert parse_bytes("4GB") == 4_000_000_000 and parse_bytes("2GiB") == 2 ** 31
    with pytest.raises(ConfigError, match="--max-memory"):
        parse_bytes("lots")


def test_ivf_is_tuned_to_the_recall_target_and_reloads(tmp_path):
    img = clustered(20_000, 32, seed=0)
    txt = clustered(300, 32, seed=1)
    emb = write_emb(tmp_path / "emb", {"image": img, "text": txt}, per_part=7000)
    [s] = build_indexes(emb, str(tmp_path / "ix"), max_latency_ms=0.5, modalities=["image"], n_queries=200)
    assert s["kind"] == "ivf" and s["queries"] == {"n": 200, "from": "text"}
    assert s["recall@10"] >= 0.95 and s["tuning"][0]["nprobe"] == 1 and len(s["tuning"]) >= 2
    assert json.load(open(tmp_path / "ix" / "image" / "settings.json"))["nprobe"] == s["nprobe"]
    ix = Index.load(str(tmp_path / "ix"), modality="image")
    assert len(ix) == 20_000 and ix.index.nprobe == s["nprobe"]         # the tuned setting is what was saved
    # the reported recall is what the reloaded index gives on fresh queries of the same kind
    q = clustered(200, 32, seed=7)
    _, got = ix.search(q, 10)
    ex = exact_topk(img, q, 10)
    rec = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(got, ex)])
    assert rec >= 0.9
    # ids map to rows in corpus order, across parts
    hits = ix.rows(got[0][:3])
    assert [h["key"] for h in hits] == [f"k{i:06d}" for i in got[0][:3]]


def test_small_corpus_is_exact_and_kind_can_be_forced(tmp_path):
    v = clustered(2000, 16)
    emb = write_emb(tmp_path / "emb", {"audio": v})
    [s] = build_indexes(emb, str(tmp_path / "a"))
    assert s["kind"] == "flat_faiss" and s["recall@10"] == 1.0 and s["queries"]["from"] == "audio"
    [h] = build_indexes(emb, str(tmp_path / "h"), kind="hnsw")
    assert h["kind"] == "hnsw" and h["recall@10"] >= 0.95 and "ef_search" in h["tuning"][0]
    with pytest.raises(ConfigError, match="--kind"):
        build_indexes(emb, str(tmp_path / "x"), kind="annoy")
    assert sorted(os.listdir(tmp_path / "a" / "audio")) == ["index.faiss", "rows.parquet", "settings.json"]


def test_ivfpq_is_reranked_from_a_float16_copy_to_the_recall_target(tmp_path):
    img = clustered(4000, 32, seed=0)                  # 4000 rows: IVF102,PQ4x6, trained in a second
    txt = clustered(300, 32, seed=1)
    emb = write_emb(tmp_path / "emb", {"image": img, "text": txt}, per_part=1500)
    # PQ's 4-byte codes alone stay far below 0.95 at any nprobe
    [raw] = build_indexes(emb, str(tmp_path / "raw"), kind="ivfpq", modalities=["image"], n_queries=200,
                          refine=False)
    assert "refine" not in raw and raw["recall@10"] < 0.9
    assert "vectors.f16.npy" not in os.listdir(tmp_path / "raw" / "image")
    [s] = build_indexes(emb, str(tmp_path / "ix"), kind="ivfpq", modalities=["image"], n_queries=200)
    assert s["refine"] in (4, 16, 64, 256) and s["recall@10"] >= 0.95 and "re-ranks" in s["why"]
    store = np.load(tmp_path / "ix" / "image" / "vectors.f16.npy")
    assert store.dtype == np.float16 and store.shape == img.shape
    np.testing.assert_allclose(store.astype(np.float32), img, atol=1e-3)
    # the reloaded Index re-ranks: fresh queries reach the recall, scores are the cosines of the returned rows
    ix = Index.load(str(tmp_path / "ix"), modality="image")
    q = clustered(200, 32, seed=7)
    scores, got = ix.search(q, 10)
    ex = exact_topk(img, q, 10)
    assert np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(got, ex)]) >= 0.9
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, img[got]), atol=2e-3)
    assert (np.diff(scores, axis=1) <= 0).all()
    os.remove(tmp_path / "ix" / "image" / "vectors.f16.npy")
    with pytest.raises(DataError, match="re-rank vectors"):
        Index.load(str(tmp_path / "ix"), modality="image")


def test_embedding_parts_read_what_load_embeddings_reads(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1000, 16)).astype(np.float32)             # not unit length: both re-normalise
    emb = write_emb(tmp_path / "emb", {"image": img}, per_part=70)
    full, rows = load_embeddings(emb, "image")
    parts = EmbeddingParts(emb, "image")
    assert parts.shape == full.shape == (1000, 16) and len(parts) == 1000
    got = list(parts.chunks(rows=300))
    assert [first for first, _ in got] == [0, 280, 560, 840]              # whole parts of 70, <= 300 rows a chunk
    np.testing.assert_allclose(np.concatenate([x for _, x in got]), full, rtol=0, atol=1e-7)
    ids = np.sort(rng.choice(1000, 57, replace=False))
    np.testing.assert_allclose(parts.take(ids), full[ids], rtol=0, atol=1e-7)
    assert list(load_rows(emb, "image")["key"]) == list(rows["key"])


def test_ivfpq_is_built_from_the_parts_without_holding_them(tmp_path, capsys, monkeypatch):
    import faiss
    img = clustered(3000, 32, seed=0)                  # 3000 rows: PQ's 6-bit codes train in a second
    txt = clustered(300, 32, seed=1)
    emb = write_emb(tmp_path / "emb", {"image": img, "text": txt}, per_part=400)
    # the streamed build (sample gathered from the parts, added in chunks) is build_index on the whole array
    a = build_streamed("ivfpq", EmbeddingParts(emb, "image"), seed=0, rows=1000, nlist=64, pq_m=8)
    b = build_index("ivfpq", load_embeddings(emb, "image")[0], seed=0, nlist=64, pq_m=8)
    assert a.ntotal == b.ntotal == 3000
    q = clustered(50, 32, seed=5)
    for ix in (a, b):
        faiss.extract_index_ivf(ix).nprobe = 8
    (sa, ia), (sb, ib) = a.search(q, 10), b.search(q, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    # `align index` under a memory budget below the float32 vectors (384 KB) streams and still re-ranks to 0.95
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")
    capsys.readouterr()
    [s] = build_indexes(emb, str(tmp_path / "ix"), max_memory="300KB", modalities=["image"], n_queries=200,
                        progress=True)
    assert s["kind"] == "ivfpq" and s["streamed"] and s["recall@10"] >= 0.95 and s["queries"]["from"] == "text"
    err = capsys.readouterr().err                   # the minutes-long passes over the parts show their progress
    assert "index ivfpq: add: 3000/3000 row" in err and "index image: exact top-10 of 200 queries: 3000/3000" in err
    store = np.load(tmp_path / "ix" / "image" / "vectors.f16.npy")
    np.testing.assert_allclose(store.astype(np.float32), img, atol=1e-3)


def test_duplicated_rows_do_not_lower_the_recall_check(tmp_path):
    """A corpus with repeated captions has tied scores: an exact index's answer may name the other copy. The
    check counts it (tie-aware), so flat_faiss reports 1.0 and the tuner does not chase an unreachable target."""
    rng = np.random.default_rng(0)
    base = clustered(300, 16, seed=3)
    txt = base[rng.integers(0, 300, 1500)]                             # each row repeated ~5 times
    emb = write_emb(tmp_path / "emb", {"text": txt, "image": clustered(200, 16, seed=4)}, per_part=700)
    [s] = build_indexes(emb, str(tmp_path / "flat"), modalities=["text"], n_queries=200)
    assert s["kind"] == "flat_faiss" and s["recall@10"] == 1.0
    [h] = build_indexes(emb, str(tmp_path / "hnsw"), modalities=["text"], kind="hnsw", n_queries=200)
    assert h["recall@10"] >= 0.95 and h["ef_search"] <= 64, h["tuning"]


def test_out_holding_other_things_is_refused_unless_overwrite(tmp_path, capsys):
    """A non-empty --out that is not a previous index of these embeddings is refused before the build; a
    previous index of the same embeddings is rebuilt in place; --overwrite writes over the rest."""
    from align.cli import main
    emb = write_emb(tmp_path / "emb", {"text": clustered(300, 8, seed=1)})
    other = write_emb(tmp_path / "other", {"text": clustered(300, 8, seed=2)})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "index.json").write_text("my notes")
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path / "notes", "not empty and holds no `align index` output"),
             (tmp_path / "afile", "exists and is not a folder")]
    assert main(["index", other, "--out", str(tmp_path / "ix_other"), "--no-progress"]) == 0
    cases.append((tmp_path / "ix_other", f"holds an index of other embeddings ({tmp_path / 'other'})"))
    capsys.readouterr()
    for out, msg in cases:
        assert main(["index", emb, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and ("--overwrite" in err[0]) == out.is_dir(), err
    assert (tmp_path / "notes" / "index.json").read_text() == "my notes"
    assert json.load(open(tmp_path / "ix_other" / "index.json"))["embeddings"] == os.path.abspath(other)
    capsys.readouterr()
    assert main(["index", emb, "--out", str(tmp_path / "ix"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()       # a line per index, then where they went
    assert out[0].startswith("index text: flat_faiss") and out[-1] == f"1 index (text) -> {tmp_path / 'ix'}"
    assert main(["index", os.path.join(emb, "."), "--out", str(tmp_path / "ix"), "--no-progress"]) == 0  # rebuilt
    assert main(["index", emb, "--out", str(tmp_path / "notes"), "--no-progress", "--overwrite"]) == 0
    assert json.load(open(tmp_path / "notes" / "index.json"))["embeddings"] == os.path.abspath(emb)


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    """--out under a file (or a read-only place): one line naming it, not os.makedirs' traceback."""
    from align.cli import main
    emb = write_emb(tmp_path / "emb", {"text": clustered(50, 8, seed=1)})
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "ix"
    assert main(["index", emb, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"align: error: {out}: cannot create the index folder (a file is on the way)"]


@pytest.mark.parametrize("n", [0, -1])
def test_no_queries_is_refused_before_the_build(tmp_path, capsys, monkeypatch, n):
    import align.retrieval.index_build as ib
    from align.cli import main
    emb = write_emb(tmp_path / "emb", {"text": clustered(50, 8)})
    monkeypatch.setattr(ib, "build_modality", lambda *a, **k: pytest.fail("built before --queries was checked"))
    assert main(["index", emb, "--out", str(tmp_path / "ix"), "--queries", str(n)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"align: error: --queries must be >= 1, got {n}"]


@pytest.mark.parametrize("ms", ["0", "-1"])
def test_a_latency_budget_not_above_zero_is_refused_before_the_build(tmp_path, capsys, monkeypatch, ms):
    """--max-latency-ms -1 built an index and said a full scan "would pass -1 ms"."""
    import align.retrieval.index_build as ib
    from align.cli import main
    emb = write_emb(tmp_path / "emb", {"text": clustered(50, 8)})
    monkeypatch.setattr(ib, "build_modality", lambda *a, **k: pytest.fail("built before --max-latency-ms was checked"))
    assert main(["index", emb, "--out", str(tmp_path / "ix"), "--max-latency-ms", ms]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"align: error: --max-latency-ms must be > 0, got {ms}"]


def test_a_forced_kind_keeps_the_memory_budget_and_no_refine_is_never_ignored(tmp_path):
    """--kind within --max-memory: ivfpq takes fewer PQ bytes when the budget needs it, a kind holding the float32
    vectors over the budget is refused; --no-refine with a forced kind other than ivfpq is refused before the
    build, and said in the summary when the chosen kind is not ivfpq."""
    v = clustered(200, 16)
    emb = write_emb(tmp_path / "emb", {"image": v})
    [s] = build_indexes(emb, str(tmp_path / "pq"), kind="ivfpq")
    [t] = build_indexes(emb, str(tmp_path / "pq1"), kind="ivfpq", max_memory=200 * 9)     # 1 byte per vector
    assert (s["pq_m"], t["pq_m"]) == (2, 1)
    for kind in ("flat_faiss", "ivf", "hnsw"):
        with pytest.raises(ConfigError, match=f"--kind {kind}: holds the 200 x 16 float32 vectors .* over "
                                              f"--max-memory 12.8 KB"):
            build_indexes(emb, str(tmp_path / kind), kind=kind, max_memory=200 * 16 * 4 - 1)
        with pytest.raises(ConfigError, match=f"--no-refine: only an ivfpq index is re-ranked; --kind {kind}"):
            build_indexes(emb, str(tmp_path / kind), kind=kind, refine=False)
        assert not os.path.exists(tmp_path / kind)
    [f] = build_indexes(emb, str(tmp_path / "auto"), refine=False)
    assert f["kind"] == "flat_faiss" and "--no-refine does not apply" in f["why"]
    [r] = build_indexes(emb, str(tmp_path / "pq0"), kind="ivfpq", refine=False)
    assert "refine" not in r and "--no-refine" not in r["why"]


def test_a_build_killed_part_way_is_never_read_as_an_index_and_the_same_command_rebuilds_it(tmp_path, monkeypatch,
                                                                                            capsys):
    """A rebuild in place (new vectors under the same EMB path) killed after its first modality left the old
    index.json over a new image/ and an old text/, read without a word; and a first build killed part-way could not
    be rerun without --overwrite. Now index.json says the build is under way until it is done."""
    import shutil

    import align.retrieval.index_build as ib
    from align.cli import main
    from align.retrieval.search import load_indexes
    emb, out = str(tmp_path / "emb"), str(tmp_path / "ix")
    write_emb(emb, {"image": clustered(200, 8, seed=1), "text": clustered(200, 8, seed=2)})
    assert main(["index", emb, "--out", out, "--no-progress"]) == 0
    shutil.rmtree(emb)
    new = {"image": clustered(150, 8, seed=3), "text": clustered(150, 8, seed=4)}
    write_emb(emb, new)
    real = ib.build_modality

    def killed_at_text(emb_dir, modality, *a, **k):
        if modality == "text":
            raise KeyboardInterrupt
        return real(emb_dir, modality, *a, **k)
    monkeypatch.setattr(ib, "build_modality", killed_at_text)
    with pytest.raises(KeyboardInterrupt):
        build_indexes(emb, out)
    with pytest.raises(DataError, match="build did not finish .*run the same `align index` command again"):
        load_indexes(out)
    from align.retrieval.search import Index
    for m in ("image", "text"):               # a modality's folder named directly: text/ is the old index
        with pytest.raises(DataError, match="build did not finish"):
            Index.load(os.path.join(out, m))
    monkeypatch.setattr(ib, "build_modality", real)
    shutil.rmtree(os.path.join(out, "image"))            # a first build killed part-way: rerun as it was
    capsys.readouterr()
    assert main(["index", emb, "--out", out, "--no-progress"]) == 0, capsys.readouterr().err
    ixs = load_indexes(out)
    for m, v in new.items():
        assert len(ixs[m]) == 150 and ixs[m].index.reconstruct_n(0, 150).tolist() == \
            (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32).tolist()


def test_a_full_disk_while_writing_an_index_is_one_line_and_a_rerun_finishes_it(tmp_path, monkeypatch, capsys):
    """ENOSPC while `align index` wrote (reproduced on a 200 KB tmpfs: pyarrow's OSError from rows.parquet) was a
    traceback that left the half-written modality folder; now one line, exit 74, the folder removed."""
    import faiss

    from align.cli import main
    emb, out = write_emb(tmp_path / "emb", {"image": clustered(100, 8, seed=1)}), str(tmp_path / "ix")
    real = faiss.write_index

    def full(index, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 10)
        raise RuntimeError(f"Error in faiss::FileIOWriter: fwrite to {path}: No space left on device")
    monkeypatch.setattr(faiss, "write_index", full)
    assert main(["index", emb, "--out", out, "--no-progress"]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"align: error: {out}/image: No space left on device (") and \
        "partial files removed; the embeddings are untouched" in err[0], err
    assert sorted(os.listdir(out)) == ["index.json"]
    assert json.load(open(os.path.join(out, "index.json")))["complete"] is False
    monkeypatch.setattr(faiss, "write_index", real)
    assert main(["index", emb, "--out", out, "--no-progress"]) == 0
    assert len(Index.load(out, modality="image")) == 100


def test_the_index_rows_are_written_part_by_part_and_an_index_holds_no_dict_per_row(tmp_path):
    """`align index` held the row table of the whole corpus (load_rows: ~380 MB a million rows, past any
    --max-memory) to write rows.parquet, and a loaded Index (`align serve`, `align search`) a dict per row beside
    the table (~750 bytes a row). rows.parquet is now written one part at a time (a row group per part), the same
    rows; an Index makes the dicts of the ids asked for."""
    import tracemalloc

    import pandas as pd
    import pyarrow.parquet as pq
    emb = write_emb(tmp_path / "emb", {"image": clustered(20_000, 8, seed=0), "text": clustered(50, 8, seed=1)},
                    per_part=700)
    build_indexes(emb, str(tmp_path / "ix"), kind="flat_faiss", modalities=["image"], n_queries=20)
    path = tmp_path / "ix" / "image" / "rows.parquet"
    meta = pq.ParquetFile(path).metadata
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 700 and meta.num_rows == 20_000
    pd.testing.assert_frame_equal(pd.read_parquet(path), load_rows(emb, "image").reset_index(drop=True))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ix = Index.load(str(tmp_path / "ix"), modality="image")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 100 * 20_000, held                # bytes a row: the table's number columns, no dict per row
    assert ix.rows([3, -1, 19_999]) == [dict(load_rows(emb, "image").iloc[i].to_dict(), id=i) for i in (3, 19_999)]
