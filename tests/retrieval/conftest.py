"""Retrieval test helpers: a tiny image+text+audio align run and small shards with all three modalities."""
import faiss
import pytest

from tests.export.conftest import TINY_AUDIO_CNN, make_run
from tests.wds_helpers import flac_bytes, jpeg_bytes, write_shard

# one OpenMP thread, as tests/bench/conftest.py sets for the whole suite: run on their own (tools/mutate.py runs a
# file alone), these tests trained IVF-PQ 10-20x slower on a shared 2-core machine, in FAISS's thread barriers
faiss.omp_set_num_threads(1)

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "car", "tree"]


def tri_sample(key: str, seed: int) -> dict:
    return {"__key__": key, "jpg": jpeg_bytes(seed, size=16), "flac": flac_bytes(seed),
            "txt": f"a {WORDS[seed % 8]} {WORDS[(seed // 8) % 8]} number {seed}"}


def tri_shards(root, n_shards=3, per_shard=5, broken=None):
    """n_shards tars of image+text+audio samples; broken=(shard, j): that sample's jpg is garbage."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_shards):
        samples = [tri_sample(f"s{i:02d}_{j:03d}", i * 100 + j) for j in range(per_shard)]
        if broken and broken[0] == i:
            samples[broken[1]]["jpg"] = b"not a jpeg"
        paths.append(write_shard(root / f"shard-{i:03d}.tar", samples))
    return paths


@pytest.fixture(scope="session")
def tri_run(tmp_path_factory):
    """(run dir, model) of a tiny untrained image+text+audio model, written as training writes it."""
    return make_run(tmp_path_factory.mktemp("tri"), towers={"audio": TINY_AUDIO_CNN})


def write_emb(out, vectors: dict, per_part: int = 1000):
    """An `align embed`-shaped folder from arrays {modality: [N, D]} (rows keyed k000000...), for index tests."""
    import json
    import os

    import numpy as np
    import pandas as pd

    from align.retrieval.embed import COLUMNS, part_name
    parts = os.path.join(out, "parts")
    os.makedirs(parts, exist_ok=True)
    n = max(len(v) for v in vectors.values())
    names = []
    for p, s in enumerate(range(0, n, per_part)):
        names.append(part_name(p))
        rows, counts = [], {}
        for m, v in vectors.items():
            chunk = v[s:s + per_part]
            np.save(os.path.join(parts, f"{names[-1]}.{m}.npy"), chunk.astype(np.float32))
            counts[m] = len(chunk)
            rows += [{"key": f"k{s + r:06d}", "caption": "", "shard": "x.tar", "modality": m, "row": r,
                      "media_offset": -1, "media_size": -1, "part": names[-1]} for r in range(len(chunk))]
        pd.DataFrame(rows, columns=COLUMNS).to_parquet(os.path.join(parts, f"{names[-1]}.parquet"))
        json.dump({"vectors": counts}, open(os.path.join(parts, f"{names[-1]}.done.json"), "w"))
    json.dump({"parts": names, "modalities": list(vectors), "model_fingerprint": "synthetic"},
              open(os.path.join(out, "manifest.json"), "w"))
    return str(out)


def clustered(n, d, seed=0, centers=64, spread=0.3):
    """Normalised vectors around random centres: a corpus with structure, where IVF behaves as on real data."""
    import numpy as np
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
