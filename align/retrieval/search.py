"""The `Index` object and cross-modal queries (`align search`).

    from align.retrieval import Index
    index = Index.load("INDEX/", modality="image")          # or INDEX/image
    scores, ids = index.search(vectors, k=10)               # vectors [Q, D] float32, L2-normalised
    index.rows(ids[0])                                      # [{key, caption, shard, ...}] of the hits

    align search INDEX --model MODEL --text "a dog" | --image FILE | --audio FILE [--k 10] [--target image] [--json]

A query of one modality searches every other indexed modality by default (text -> image and audio,
audio -> image and text, image -> image is asked for with --target image).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import faiss
import numpy as np

from align.bench.index import Refined
from align.errors import AlignError, ConfigError, DataError, printable
from align.text import WHY, lone_surrogate

QUERY_MODALITIES = ("text", "image", "audio")


class Index:
    """One modality's FAISS index plus the metadata row of every id."""

    def __init__(self, index: faiss.Index, rows, settings: dict, path: str):
        """rows: the metadata rows in id order, an arrow table (Index.load: rows.parquet's, no copy when it is one
        chunk) or a pandas DataFrame."""
        import pyarrow as pa

        self.index, self.settings, self.path = index, settings, path
        self.modality = settings.get("modality", "")
        # the rows as one contiguous arrow table: `rows` takes the ids asked for from it (~3 ms for 1,000 ids of a
        # million rows). Index.load read them as arrow, made a DataFrame of them and an arrow table of that again,
        # and kept both (the DataFrame as .table)
        self._arrow = (rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
                       ).combine_chunks()

    @property
    def table(self):
        """The rows as a pandas DataFrame, made when asked (the Index holds them as one arrow table)."""
        return self._arrow.to_pandas()

    @classmethod
    def load(cls, path: str, modality: Optional[str] = None) -> "Index":
        """INDEX/<modality> (an index.faiss folder) or INDEX/ plus `modality` (default: the only/first one)."""
        if not os.path.isfile(os.path.join(path, "index.faiss")):
            mods = index_modalities(path)
            if modality is None:
                modality = mods[0]
            if modality not in mods:
                raise DataError(f"{path}: no {modality} index (indexed: {', '.join(mods)})")
            path = os.path.join(path, modality)
        elif os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), "index.json")):
            # INDEX/<modality> named directly: its build's flag is one folder up (a rebuild killed part-way leaves
            # this modality's old files beside the others' new ones)
            index_modalities(os.path.dirname(os.path.abspath(path)))
        try:
            index = faiss.read_index(os.path.join(path, "index.faiss"))
            settings = json.load(open(os.path.join(path, "settings.json")))
            rows = _read_rows(os.path.join(path, "rows.parquet"))
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{path}: not a readable `align index` folder: {str(e).splitlines()[0][:200]}") from None
        if len(rows) != index.ntotal:
            raise DataError(f"{path}: rows.parquet has {len(rows)} rows but the index holds {index.ntotal} vectors")
        if settings.get("refine"):           # ivfpq: re-rank k*F candidates with the float16 vectors (memmap)
            from align.retrieval.index_build import STORE
            store = os.path.join(path, settings.get("store", STORE))
            try:
                index = Refined(index, np.load(store, mmap_mode="r"), settings["refine"])
            except (OSError, ValueError) as e:
                raise DataError(f"{store}: the re-rank vectors of this ivfpq index are unreadable: "
                                f"{str(e).splitlines()[0][:200]}") from None
        ix = cls(index, rows, settings, path)
        import pyarrow as pa
        pa.default_memory_pool().release_unused()    # the read's pieces, which the pool would keep (~0.2 GB a 1M rows)
        return ix

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, vectors: np.ndarray, k: int = 10):
        """vectors [Q, D] -> (scores [Q, k'] float32 cosine, ids [Q, k'] int64), k' = min(k, len(self)) (an empty
        index: [Q, 0]); an approximate index may find fewer than k' (id -1, score -inf: not FAISS's -3.4e38
        padding, which reads as a score). The queries are L2-normalised here (the gallery is), so the scores are
        cosines whatever the queries' scale."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k: must be a positive integer, got {k!r}")
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ConfigError(f"query vectors have dim {q.shape[1]}, the {self.modality} index has {self.dim} "
                              f"(a different model?)")
        norms = np.linalg.norm(q, axis=1, keepdims=True)                       # [Q, 1]
        q = np.ascontiguousarray(q / np.where(norms > 0, norms, 1.0), dtype=np.float32)
        k = int(min(k, len(self)))
        if k == 0:                  # FAISS asserts k > 0
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        scores, ids = self.index.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def shards(self) -> List[str]:
        """The shards the rows name, each once."""
        import pyarrow.compute as pc

        return pc.unique(self._arrow["shard"]).to_pylist()

    def rows(self, ids) -> List[dict]:
        """The metadata rows of `ids` (-1, no hit, left out) as dicts with their `id`, made for these ids only: a dict
        per corpus row held for every query (`align serve`) took ~750 bytes a row, 2.6x the table itself."""
        import pyarrow as pa

        ids = [int(i) for i in ids if i >= 0]
        # typed: an empty list (a query an approximate index found nothing for) is a null array arrow cannot take
        return [dict(r, id=i) for i, r in zip(ids, self._arrow.take(pa.array(ids, pa.int64())).to_pylist())]

    def results(self, vectors: np.ndarray, k: int = 10) -> List[List[dict]]:
        """Per query: hits as row dicts with `score` and `rank`."""
        scores, ids = self.search(vectors, k)
        out = []
        for s_row, i_row in zip(scores, ids):
            found = i_row >= 0           # a -1 (no hit) is left out with its score, wherever it stands in the row
            hits = self.rows(i_row[found])
            for r, (h, s) in enumerate(zip(hits, s_row[found])):
                h.update(score=float(s), rank=r + 1)
            out.append(hits)
        return out


def _read_rows(path: str):
    """rows.parquet as an arrow table of one chunk a column (what `rows` takes ids from fast: ~1 ms for 1,000 ids
    of a million rows, ~16 ms from a chunk per row group). pq.read_table gives a chunk per row group (one per part)
    and joining them held the read and its joined copy at once, twice the table at the peak (368 MB of arrow memory
    for the 184 MB table of a million rows); ParquetFile.read reads each column into one chunk (193 MB at the peak),
    which combine_chunks keeps as it is (it joins only a column that comes in pieces)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read().combine_chunks()


def index_modalities(path: str) -> List[str]:
    meta = os.path.join(path, "index.json")
    if not os.path.isfile(meta):
        raise DataError(f"{path}: not an `align index` output (no index.json or index.faiss)")
    info = json.load(open(meta))
    if info.get("complete") is False:           # (an index.json of before the flag: complete)
        raise DataError(f"{path}: its `align index` build did not finish (stopped part-way); run the same "
                        f"`align index` command again to rebuild it")
    return list(info["modalities"])


def load_indexes(path: str) -> Dict[str, Index]:
    if os.path.isfile(os.path.join(path, "index.faiss")):
        ix = Index.load(path)
        return {ix.modality: ix}
    return {m: Index.load(path, m) for m in index_modalities(path)}


# ----------------------------------------------------------------------------- queries
def encode_query(model, modality: str, value) -> np.ndarray:
    """One query -> [1, D] float32 normalised. value: a string (text), or image/audio bytes or a file path."""
    import torch
    import torch.nn.functional as F

    from align.bench.datasets import SampleError, decode_audio, decode_image
    from align.bench.embed import model_device, model_limits

    if modality not in QUERY_MODALITIES:
        raise ConfigError(f"unknown query modality {modality!r}; use one of {', '.join(QUERY_MODALITIES)}")
    if modality not in getattr(model, "modalities", []):
        raise ConfigError(f"model {getattr(model, 'name', '?')!r} cannot encode {modality} "
                          f"(its modalities: {', '.join(model.modalities)})")
    dev = model_device(model)          # `align search/serve --device cuda`: the query goes where the model is
    with torch.no_grad():
        if modality == "text":
            if not str(value).strip():
                raise ConfigError("empty text query")
            bad = lone_surrogate(str(value))
            if bad:       # a JSON "\ud800" or a command-line byte that is not UTF-8 (argv's surrogateescape)
                raise ConfigError(f"text query: {bad} ({WHY})")
            z = model.encode_text(model.tokenize([str(value)]).to(dev))
        else:
            if isinstance(value, str) and not os.path.isfile(value):
                raise DataError(f"{value}: no such {modality} file")
            try:
                # within the model's recipe's data.limits (and --limit), as its corpus was embedded
                limits = model_limits(model)
                x = decode_image(value, limits) if modality == "image" else decode_audio(value, limits)
            except SampleError as e:
                raise DataError(f"{value if isinstance(value, str) else 'upload'}: {e}") from None
            tf = getattr(model, f"{modality}_transform")
            t = tf(x) if modality == "image" else tf(*x)
            z = getattr(model, f"encode_{modality}")(t[None].to(dev))
    return F.normalize(z.float(), dim=-1).cpu().numpy()


def search_all(indexes: Dict[str, Index], model, modality: str, value, k: int = 10,
               targets: Optional[List[str]] = None) -> Dict[str, List[dict]]:
    """Query of `modality` against the target indexes (default: every indexed modality but its own)."""
    targets = targets or [m for m in indexes if m != modality] or list(indexes)
    bad = [t for t in targets if t not in indexes]
    if bad:
        raise DataError(f"no {bad[0]} index here (indexed: {', '.join(indexes)})")
    if k < 1:
        raise ConfigError(f"--k {k}: must be >= 1")
    q = encode_query(model, modality, value)
    return {t: indexes[t].results(q, k)[0] for t in targets}


def format_hits(results: Dict[str, List[dict]]) -> str:
    lines = []
    for target, hits in results.items():
        lines.append(f"{target}:")
        for h in hits:
            cap = printable((h.get("caption") or "").replace("\n", " ")[:70])
            lines.append(f"  {h['rank']:3d}  {h['score']:.4f}  {printable(h['key'])}  {cap}  "
                         f"({printable(os.path.basename(h['shard']))})")
    return "\n".join(lines)


def corpus_root(indexes: Dict[str, Index]) -> str:
    """The folder the indexed corpus was embedded from (absolute; index.json's `root`), or for an index built before
    it was recorded, the deepest folder holding every shard its rows name."""
    any_ix = next(iter(indexes.values()))
    meta = os.path.join(os.path.dirname(any_ix.path), "index.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            root = json.load(f).get("root")
        if isinstance(root, str) and os.path.isabs(root):
            return os.path.normpath(root)
    dirs = {os.path.dirname(os.path.abspath(str(s))) for ix in indexes.values() for s in ix.shards()}
    return os.path.commonpath(sorted(dirs)) if dirs else os.path.abspath(os.path.dirname(any_ix.path))


def check_model(indexes: Dict[str, Index], model) -> None:
    """The model must be the one that embedded the corpus (same fingerprint when the index recorded it)."""
    from align.bench.embed import model_fingerprint

    any_ix = next(iter(indexes.values()))
    meta = os.path.join(os.path.dirname(any_ix.path), "index.json")
    if os.path.isfile(meta):
        fp = json.load(open(meta)).get("model_fingerprint")
        if fp and fp != model_fingerprint(model):
            raise AlignError(f"{os.path.dirname(any_ix.path)}: built from model {fp}, but --model has fingerprint "
                             f"{model_fingerprint(model)}; queries would land in another embedding space")
