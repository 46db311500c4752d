"""Use what you trained: embed a corpus, build and query FAISS indexes, filter shards, serve a search page.

    align embed MODEL --data SHARDS --out EMB/        align.retrieval.embed
    align index EMB/ --out INDEX/                     align.retrieval.index_build
    align search INDEX --model MODEL --text "..."     align.retrieval.search (the `Index` object)
    align data filter SHARDS --model MODEL --out F/   align.retrieval.filter
    align serve INDEX --model MODEL                   align.retrieval.serve

An app layer beside bench/export: it imports align.bench (encoding, index registry), align.data and the model.
"""
from align.retrieval.search import Index

__all__ = ["Index"]
