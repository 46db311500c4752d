"""align: CLIP-style contrastive pretraining across images, text and audio.

    import align
    model = align.load("runs/demo")        # encode_image / encode_text / encode_audio, tokenize, transforms
    align.embed(model, "shards/{000..009}.tar", "emb/")     # corpus embeddings (align.retrieval)
    index = align.Index.load("index/", modality="image")    # after `align index emb/ --out index/`
"""
__version__ = "0.1.0"


def load(path: str, device: str = "cpu", pretrained=None):
    """Loads a trained model from a run directory, a checkpoint or an export (see align.api);
    also `open_clip:ARCH` (with pretrained TAG|FILE) and `local-dir:DIR` open_clip models, for benchmarks."""
    from align.bench.models import load_model     # dispatches by scheme; align runs go to align.api.load
    return load_model(path, pretrained=pretrained, device=device)


def embed(model, data: str, out: str, **options):
    """Embeds every modality of shards / an eval set into `out` (align.retrieval.embed.embed_corpus); `model` is a
    loaded model or anything `align.load` takes. Returns the summary (counts, samples/s)."""
    from align.retrieval.embed import embed_corpus
    if isinstance(model, str):
        model = load(model)
    return embed_corpus(model, data, out, **options)


def __getattr__(name):
    if name == "Index":            # lazy: `import align` stays light (no faiss / pandas until used)
        from align.retrieval.search import Index
        return Index
    raise AttributeError(f"module 'align' has no attribute {name!r}")
