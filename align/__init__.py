"""align: CLIP-style contrastive pretraining across images, text and audio.

    import align
    model = align.load("runs/demo")        # encode_image / encode_text / encode_audio, tokenize, transforms
"""
__version__ = "0.1.0"


def load(path: str, device: str = "cpu", pretrained=None):
    """Loads a trained model from a run directory, a checkpoint or an export (see align.api);
    also `open_clip:ARCH` (with pretrained TAG|FILE) and `local-dir:DIR` open_clip models, for benchmarks."""
    from align.bench.models import load_model     # dispatches by scheme; align runs go to align.api.load
    return load_model(path, pretrained=pretrained, device=device)
