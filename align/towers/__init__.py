"""Tower registry: recipes name a tower by its explicit `type`.

    towers:
      image: {type: open_clip, model: ViT-B-32}
      text:  {type: hf, model: /path/to/minilm, lock: true}
      audio: {type: audio, width: 192, layers: 4}
      image: {type: hf_image, model: /models/clip-vit-b32}     # or audio: {type: hf_audio, ...}
      text:  {type: rnn_text, hidden: 128, cell: gru}          # or audio: {type: rnn_audio, ...}

Each factory is called as `factory(cfg: dict, modality: str, embed_dim: int) -> Tower`
with the tower's section minus `type`.
Modules (the model layer: towers import nothing from data, train or bench):
  base              the Tower contract (encoder + projection head); CachedTokenize
  common            helpers shared by the audio, Hugging Face text and timm image towers
  open_clip_towers  `open_clip`: open_clip image and text towers
  text_trim         exact padding trimming of causal open_clip text encoders (the tower's, align.bench's)
  timm_image        `timm`: any timm image architecture
  hf_text           `hf`: a Hugging Face text encoder
  hf_encoder        the shared trunk of `hf_image` and `hf_audio`
  hf_image          `hf_image`: a Hugging Face vision encoder
  hf_audio          `hf_audio`: a Hugging Face audio encoder (AST, Whisper encoder, ...)
  audio             `audio` (AST-style transformer) and `audio_cnn` over log-mel features
  audio_features    the audio front end: resample, crop, log-mel (what `align data stats` measures)
  bow               `bow_text`: the mean of a caption's word embeddings (DeViSE-style, for class-like captions)
  rnn               `rnn_text` and `rnn_audio`: bidirectional GRU/LSTM over tokens or log-mel frames
  onnx_trace        tracing an encoder to ONNX (dynamic batch): shared by `align export` and `--engine onnxruntime`
"""
from align.registry import Registry
from align.towers.base import Tower

TOWERS: Registry = Registry("tower")


def build_tower(cfg: dict, modality: str, embed_dim: int) -> Tower:
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind is None:
        from align.errors import ConfigError
        raise ConfigError(f"model.towers.{modality}: missing 'type' (valid: {', '.join(TOWERS.names())})")
    return TOWERS.get(kind)(cfg, modality, embed_dim)


PRETRAINED_KEYS = ("pretrained", "pretrained_temperature")


def drop_pretrained(cfg: dict, modality: str = "") -> dict:
    """A tower section without what reads pretrained weights at build time (`pretrained` and the
    `pretrained_temperature` that needs it), for a model whose weights come from a checkpoint instead. An open_clip
    text tower keeps the tokenizer files beside its `pretrained` weights (as `tokenizer_folder`)."""
    if modality == "text" and cfg.get("type") == "open_clip":
        from align.towers.open_clip_towers import keep_pretrained_tokenizer
        keep_pretrained_tokenizer(cfg)
    for key in PRETRAINED_KEYS:
        cfg.pop(key, None)
    return cfg


# Importing the modules registers their tower types (each imports its heavy dependency lazily).
from align.towers import audio, hf_text, open_clip_towers, timm_image  # noqa: E402,F401
from align.towers import bow, hf_audio, hf_image, rnn  # noqa: E402,F401
