"""Use what you trained: embed a corpus, build and query FAISS indexes, filter shards, serve a search page.

    align embed MODEL --data SHARDS --out EMB/        align.retrieval.embed
    align index EMB/ --out INDEX/                     align.retrieval.index_build
    align search INDEX --model MODEL --text "..."     align.retrieval.search (the `Index` object)
    align data filter SHARDS --model MODEL --out F/   align.retrieval.filter
    align serve INDEX --model MODEL                   align.retrieval.serve

An app layer beside bench/export: it imports align.bench (encoding, index registry), align.data and the model.
Modules:
  embed         per-shard parts of L2-normalised embeddings + Parquet rows, resumable, split across processes
  embed_summary its end line, and a launch's totals gathered onto process 0
  index_build   the FAISS index chosen from corpus size and budget, tuned to recall@10 on held-aside queries
  search        the Index object and cross-modal queries
  filter        CLIP-score filtering and near-duplicate removal (FAISS range search), dropped.jsonl
  serve         the search page and JSON /search API (standard-library HTTP server)
  cli           the subcommands above, for align.cli
"""
__all__ = ["Index"]


def __getattr__(name: str):
    """Index on first use (PEP 562): align.cli builds this package's parsers (align.retrieval.cli) for every
    command, and the search module imports torch and FAISS."""
    if name == "Index":
        from align.retrieval.search import Index
        return Index
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
