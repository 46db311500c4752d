"""align: CLIP-style contrastive pretraining across images, text and audio.

    import align
    model = align.load("runs/demo")        # encode_image / encode_text / encode_audio, tokenize, transforms

Modules and packages, by layer (imports run down; tests/test_layers.py holds the table, README "Layout"):
  cli                                   the `align` command
  train/ bench/ export/ demo/ api config  the engine, benchmarks, exports, the demo, align.load for align
                                        runs, recipes
  data/ (stream, write, tools)          what training reads, shard writing, data tools
  model towers/ losses/ open_clip_files the model
  media/ wds/                           media primitives; the webdataset shard format
  errors registry templates shipped     base: errors, registries, zero-shot templates, shipped YAML by name
"""
__version__ = "0.1.0"


def load(path: str, device: str = "cpu", pretrained=None):
    """Loads a trained model from a run directory, a checkpoint or an export (see align.api);
    also `open_clip:ARCH` (with pretrained TAG|FILE) and `local-dir:DIR` open_clip models, for benchmarks."""
    from align.bench.models import load_model     # dispatches by scheme; align runs go to align.api.load
    return load_model(path, pretrained=pretrained, device=device)
