"""align: CLIP-style contrastive pretraining across images, text and audio.

    import align
    model = align.load("runs/demo")        # encode_image / encode_text / encode_audio, tokenize, transforms
    align.embed(model, "shards/{000..009}.tar", "emb/")     # corpus embeddings (align.retrieval)
    index = align.Index.load("index/", modality="image")    # after `align index emb/ --out index/`

Modules and packages, by layer (imports run down; tests/test_layers.py holds the table, README "Layout"):
  cli                                   the `align` command
  train/ bench/ export/ demo/ retrieval/ api config
                                        the engine, benchmarks, exports, the demo, embed/index/search/
                                        serve/filter, align.load for align runs, recipes
  data/ (stream, write, tools)          what training reads, shard writing, data tools
  model towers/ losses/ open_clip_files the model
  media/ wds/                           media primitives; the webdataset shard format
  errors registry templates shipped limits  base: errors, registries, zero-shot templates, shipped YAML,
                                        data.limits
"""
__version__ = "0.1.0"


def load(path: str, device: str = "cpu", pretrained=None):
    """Loads a trained model from a run directory, a checkpoint or an export (see align.api);
    also `open_clip:ARCH` (with pretrained TAG|FILE) and `local-dir:DIR` open_clip models, for benchmarks."""
    from align.bench.models import load_model     # dispatches by scheme; align runs go to align.api.load
    return load_model(path, pretrained=pretrained, device=device)


def embed(model, data: str, out: str, **options):
    """Embeds every modality of shards / an eval set into `out` (align.retrieval.embed.embed_corpus); `model` is a
    loaded model or anything `align.load` takes. Returns an EmbedSummary: parts (and those done before), items,
    vectors per modality, skipped, seconds; `.line(out)` is the one-line summary the CLI prints."""
    from align.retrieval.embed import embed_corpus
    if isinstance(model, str) or hasattr(model, "__fspath__"):     # a path (str or pathlib.Path), not a model
        model = load(model)
    return embed_corpus(model, data, out, **options)


def __getattr__(name):
    if name == "Index":            # lazy: `import align` stays light (no faiss / pandas until used)
        from align.retrieval.search import Index
        return Index
    raise AttributeError(f"module 'align' has no attribute {name!r}")
