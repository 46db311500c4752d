"""`align search`: text -> image/audio, image -> image, audio -> image through an index built from `align embed`."""
import json

import numpy as np
import pytest

from align.cli import main
from tests.retrieval.conftest import tri_shards

_POOLS = []   # arrow memory pools a test counted allocations with, kept for the buffers they may still own

@pytest.fixture(scope="module")
def built(tmp_path_factory, tri_run):
    run, model = tri_run
    d = tmp_path_factory.mktemp("search")
    tri_shards(d / "shards", n_shards=2, per_shard=6)
    assert main(["embed", run, "--data", str(d / "shards"), "--out", str(d / "emb"), "--no-progress"]) == 0
    assert main(["index", str(d / "emb"), "--out", str(d / "ix")]) == 0
    return run, d


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_every_direction(built, capsys, tmp_path):
    run, d = built
    capsys.readouterr()
    base = ["search", str(d / "ix"), "--model", run, "--json", "--k", "3"]
    assert main(base + ["--text", "a bird dog number 101"]) == 0
    res = _json(capsys)["results"]
    assert sorted(res) == ["audio", "image"] and len(res["image"]) == 3
    assert [h["rank"] for h in res["audio"]] == [1, 2, 3] and res["image"][0]["score"] >= res["image"][1]["score"]
    # image -> image: a corpus image finds itself first, cosine ~1
    from align.retrieval import Index
    ix = Index.load(str(d / "ix"), "image")
    row = ix.rows([4])[0]
    with open(row["shard"], "rb") as f:
        f.seek(row["media_offset"])
        (tmp_path / "q.jpg").write_bytes(f.read(row["media_size"]))
    assert main(base + ["--image", str(tmp_path / "q.jpg"), "--target", "image"]) == 0
    top = _json(capsys)["results"]["image"][0]
    assert top["key"] == row["key"] and top["score"] > 0.99
    # audio -> image (and text) from a corpus audio clip
    a = Index.load(str(d / "ix"), "audio").rows([0])[0]
    with open(a["shard"], "rb") as f:
        f.seek(a["media_offset"])
        (tmp_path / "q.flac").write_bytes(f.read(a["media_size"]))
    assert main(base + ["--audio", str(tmp_path / "q.flac")]) == 0
    assert sorted(_json(capsys)["results"]) == ["image", "text"]
    assert main(["search", str(d / "ix"), "--model", run, "--text", "red cat", "--target", "image"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("image:\n    1  ") and "shard-00" in out


def test_bad_queries_are_one_line(built, capsys, tmp_path):
    run, d = built
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    base = ["search", str(d / "ix"), "--model", run]
    for extra, msg in [(["--text", "a", "--image", "x.jpg"], "exactly one of"),
                       (["--text", "   "], "empty text query"),
                       (["--image", str(tmp_path / "nope.jpg")], "no such image file"),
                       (["--image", str(tmp_path / "bad.jpg")], "cannot decode image"),
                       (["--text", "a", "--target", "video"], "no video index"),
                       (["--text", "a", "--k", "0"], "--k 0")]:
        capsys.readouterr()
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (extra, err)


def test_another_model_is_refused(built, capsys, tmp_path):
    from tests.export.conftest import TINY_AUDIO_CNN, make_run
    _, d = built
    other, _ = make_run(tmp_path, towers={"audio": TINY_AUDIO_CNN}, seed=3)
    capsys.readouterr()
    assert main(["search", str(d / "ix"), "--model", other, "--text", "a cat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another embedding space" in err[0]


def test_index_search_normalises_queries_and_refuses_k_below_one(built):
    """Index.search: scores are cosines whatever the queries' scale (q * 10 gave 10x the cosine), k < 1 is one
    line (it returned one hit), and k past the gallery gives the gallery."""
    import numpy as np

    from align.errors import ConfigError
    from align.retrieval.search import Index
    _, d = built
    ix = Index.load(str(d / "ix"), "image")
    q = np.random.default_rng(0).standard_normal((2, ix.dim)).astype(np.float32)
    s1, i1 = ix.search(q, k=3)
    s10, i10 = ix.search(10 * q, k=3)
    np.testing.assert_allclose(s1, s10, rtol=1e-5)
    np.testing.assert_array_equal(i1, i10)
    assert np.all(np.abs(s1) <= 1 + 1e-5)
    assert ix.search(q, k=10 ** 6)[1].shape == (2, len(ix))
    for k in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="k: must be a positive integer"):
            ix.search(q, k=k)


def test_a_query_is_encoded_on_the_models_device(tmp_path):
    """`align search/serve --device cuda` loads the model there; the query's tokens and pixels stayed on the CPU
    (a device mismatch on the first query). A model on the meta device stands in for the GPU here."""
    import numpy as np
    import torch
    from PIL import Image
    from align.retrieval.search import encode_query

    class OnMeta(torch.nn.Module):
        modalities = ["text", "image"]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2, device="meta"))
            self.seen = []

        def tokenize(self, texts):
            return torch.zeros(len(texts), 4, dtype=torch.long)

        def image_transform(self, img):
            return torch.zeros(3, 4, 4)

        def _encode(self, x):
            self.seen.append(x.device.type)
            return torch.ones(len(x), 3)

        encode_text = encode_image = _encode

    model = OnMeta()
    Image.new("RGB", (4, 4)).save(tmp_path / "q.png")
    for modality, value in (("text", "a cat"), ("image", str(tmp_path / "q.png"))):
        q = encode_query(model, modality, value)
        np.testing.assert_allclose(q, np.full((1, 3), 3 ** -0.5), rtol=1e-6)
    assert model.seen == ["meta", "meta"]


def test_printed_hits_escape_the_control_characters_of_keys_and_captions():
    """A shard's key or caption holding ESC sequences reached the terminal raw from `align search` (a screen clear,
    a new window title, an OSC 52 clipboard write)."""
    from align.retrieval.search import format_hits
    text = format_hits({"image": [{"rank": 1, "score": 0.5, "key": "k\x1b]0;pwned\x07", "shard": "/x/a.tar",
                                   "caption": "cap\x1b[2J\x1b]52;c;ZXZpbA==\x07"}]})
    assert "\x1b" not in text and "\x07" not in text
    assert "k\\x1b]0;pwned\\x07" in text and "cap\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07" in text


def test_a_query_is_decoded_within_the_models_limits_and_limit_replaces_one(built, capsys, tmp_path):
    """The query file was decoded within the default limits whatever the model's recipe said; the model's limits
    decide, --limit replaces one, and the refusal names --limit (the option `align search` has)."""
    from tests.wds_helpers import flac_bytes
    run, d = built
    (tmp_path / "q.flac").write_bytes(flac_bytes(0, n=1600))                   # 0.1 s
    base = ["search", str(d / "ix"), "--model", run, "--audio", str(tmp_path / "q.flac"), "--json"]
    capsys.readouterr()
    assert main(base) == 0
    assert main(base + ["--limit", "max_audio_seconds=0.05"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio too long" in err[0] and "over max_audio_seconds=0.05" in err[0], err
    assert err[0].endswith("(--limit max_audio_seconds=VALUE accepts it)") and "data.limits" not in err[0], err
    assert main(base + ["--limit", "max_audio_secs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown limit 'max_audio_secs'; valid names: " in err[0], err


def test_an_index_loads_its_rows_as_arrow_without_a_pandas_round_trip(tmp_path, monkeypatch):
    """Index.load read rows.parquet as arrow, made a DataFrame of it and an arrow table of that again, and kept both
    (the DataFrame as .table): it keeps the arrow table it read, converting nothing to or from pandas; its hits and
    its `table` (a DataFrame made when asked) are the rows load_rows gives."""
    import pandas as pd
    import pyarrow.pandas_compat as compat

    from align.retrieval import Index
    from align.retrieval.embed import load_rows
    from align.retrieval.index_build import build_indexes
    from tests.retrieval.conftest import clustered, write_emb
    emb = write_emb(tmp_path / "emb", {"image": clustered(300, 8, seed=0)}, per_part=70)
    build_indexes(emb, str(tmp_path / "ix"), kind="flat_faiss", modalities=["image"], n_queries=20)
    want = load_rows(emb, "image")

    def no_pandas(*a, **k):
        raise AssertionError("rows converted between arrow and pandas")
    monkeypatch.setattr(compat, "table_to_dataframe", no_pandas)
    monkeypatch.setattr(compat, "dataframe_to_arrays", no_pandas)
    ix = Index.load(str(tmp_path / "ix"), modality="image")
    assert ix.rows([0, -1, 71, 299]) == [dict(want.iloc[i].to_dict(), id=i) for i in (0, 71, 299)]
    assert ix.shards() == ["x.tar"]
    monkeypatch.undo()
    pd.testing.assert_frame_equal(ix.table, want)


def test_no_hit_of_an_approximate_index_reaches_the_results_and_hostile_sizes_answer():
    """FAISS pads a short answer with id -1 and score -3.4e38. A query an IVF index found nothing for (its one
    probed list empty) made Index.results fail (arrow cannot take an empty untyped list: `align search` and the
    server's /search were a traceback and a 500); Index.search gave -3.4e38 as a score. Now: no hit in the results,
    -inf in Index.search, each hit with its own cosine wherever the -1s stand; k past the corpus, one vector and
    an empty index answer."""
    import faiss
    import pyarrow as pa

    from align.retrieval import Index
    from tests.bench.test_index import empty_probe_ivf
    ivf, g, q = empty_probe_ivf()
    rows = pa.table({"key": [f"k{i}" for i in range(6)], "shard": ["x.tar"] * 6, "caption": ["c"] * 6})
    ix = Index(ivf, rows, {"modality": "image"}, "ix")
    scores, ids = ix.search(np.concatenate([q, g[:1]]), 10)
    assert (ids[0] == -1).all() and np.isneginf(scores[0]).all() and (ids[1] >= 0).all()
    nothing, found = ix.results(np.concatenate([q, g[:1]]), 10)
    assert nothing == [] and [h["rank"] for h in found] == list(range(1, 7))
    assert all(h["score"] == pytest.approx(float(g[h["id"]] @ g[0]), abs=1e-5) for h in found)

    class Holes:          # an index answering -1 between its hits: each hit keeps its own score
        ntotal, d = 6, g.shape[1]

        def search(self, x, k):
            return (np.array([[0.9, -3.4028235e38, 0.5]], np.float32)[:, :k].repeat(len(x), 0),
                    np.array([[3, -1, 5]])[:, :k].repeat(len(x), 0))
    hits = Index(Holes(), rows, {}, "ix").results(g[:1], 3)[0]
    assert [(h["id"], round(h["score"], 3), h["rank"]) for h in hits] == [(3, 0.9, 1), (5, 0.5, 2)]
    one = Index(faiss.IndexFlatIP(g.shape[1]), rows.slice(0, 1), {}, "ix")
    one.index.add(g[:1])
    assert [h["id"] for h in one.results(g[:2], 1000)[1]] == [0]
    empty = Index(faiss.IndexFlatIP(g.shape[1]), rows.slice(0, 0), {}, "ix")
    assert empty.search(g[:2], 10)[1].shape == (2, 0) and empty.results(g[:2], 10) == [[], []]


def test_index_load_holds_its_rows_once_at_the_peak_not_the_read_and_a_joined_copy(tmp_path):
    """Index.load read rows.parquet whole (a chunk per row group, one per part) and then joined each column into one
    chunk, holding the read and the joined copy at once: twice the table at the peak (+470 MB over the 250 MB kept
    for a million rows). Counted by an arrow memory pool that sees every arrow allocation of the load (the default
    pool while it runs; a process of its own cost 5 s of imports), its peak is under 1.5x the table it keeps, which
    is still one chunk a column and the rows of the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from align.retrieval.index_build import build_indexes
    from align.retrieval.search import Index
    from tests.retrieval.conftest import clustered, write_emb
    emb = write_emb(tmp_path / "emb", {"image": clustered(20_000, 4, seed=0)}, per_part=2_500)
    build_indexes(emb, str(tmp_path / "ix"), kind="flat_faiss", modalities=["image"], n_queries=20)
    assert pq.ParquetFile(tmp_path / "ix" / "image" / "rows.parquet").num_row_groups == 8
    default = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default)
    _POOLS.append(pool)          # never freed: a buffer it allocated may outlive this test (arrow's caches)
    pa.set_memory_pool(pool)
    try:
        t = Index.load(str(tmp_path / "ix"), modality="image")._arrow
    finally:
        pa.set_memory_pool(default)
    got = {"peak": pool.max_memory(), "kept": t.nbytes, "chunks": [c.num_chunks for c in t.columns]}
    assert got["chunks"] == [1] * 8 and t.to_pylist()[::997] == pq.read_table(tmp_path / "ix" / "image" /
                                                                                "rows.parquet").to_pylist()[::997]
    assert got["kept"] < got["peak"] < 1.5 * got["kept"], got
