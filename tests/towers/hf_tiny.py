"""Tiny random transformers models saved with `save_pretrained` (model + its processor), for offline tests.

`save_tiny(kind, folder)` writes config.json, the weights and preprocessor_config.json, exactly what a
Hub download of a real checkpoint leaves in a folder, so the towers go through the real loading path.
"""
import os

MODELS = ("clip_vision", "clip", "siglip_vision", "dinov2", "ast", "whisper", "wav2vec2", "hubert", "clap")
_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_W2V = dict(_VIT, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, vocab_size=10)


def save_tiny(kind: str, folder) -> str:
    import transformers as T
    folder = str(folder)
    img = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    if kind == "clip_vision":
        cfg, proc = T.CLIPVisionConfig(image_size=32, patch_size=8, **_VIT), T.CLIPImageProcessor(**img)
    elif kind == "clip":
        cfg = T.CLIPConfig(vision_config=dict(image_size=32, patch_size=8, **_VIT), projection_dim=16,
                           text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2))
        proc = T.CLIPImageProcessor(**img)
    elif kind == "siglip_vision":
        cfg = T.SiglipVisionConfig(image_size=32, patch_size=8, **_VIT)
        proc = T.SiglipImageProcessor(size={"height": 32, "width": 32})
    elif kind == "dinov2":
        cfg, proc = T.Dinov2Config(image_size=32, patch_size=8, **_VIT), T.BitImageProcessor(**img)
    elif kind == "ast":
        cfg = T.ASTConfig(max_length=50, num_mel_bins=16, patch_size=8, frequency_stride=8, time_stride=8, **_VIT)
        proc = T.ASTFeatureExtractor(num_mel_bins=16, max_length=50)
    elif kind == "whisper":
        cfg = T.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                              max_source_positions=50, vocab_size=100, max_target_positions=20, pad_token_id=1,
                              bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
        proc = T.WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    elif kind == "wav2vec2":
        cfg, proc = T.Wav2Vec2Config(**_W2V), T.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "hubert":
        cfg, proc = T.HubertConfig(**_W2V), T.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "clap":
        cfg = T.ClapConfig(audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1],
                                             num_attention_heads=[2, 2], hidden_size=32, patch_size=4,
                                             patch_stride=(4, 4), enable_fusion=False),
                           text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64), projection_dim=16)
        proc = T.ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation="rand_trunc")
    else:
        raise ValueError(kind)
    import torch
    torch.manual_seed(0)
    T.AutoModel.from_config(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


TINY_WORDS = ("a", "photo", "of", "dog", "cat", "red", "sofa")


def save_tiny_tokenizer(folder) -> str:
    """A Hugging Face tokenizer of a few words (word-level, lower-cased) saved as tokenizer.json +
    tokenizer_config.json, as a download leaves them; ids: [UNK] 0, [PAD] 1, </s> 2, then TINY_WORDS from 3."""
    import json
    import tempfile

    import transformers as T
    vocab = {w: i for i, w in enumerate(("[UNK]", "[PAD]", "</s>") + TINY_WORDS)}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer":
            {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(spec, f)
        tok = T.PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), unk_token="[UNK]",
                                        pad_token="[PAD]", eos_token="</s>")
    tok.save_pretrained(str(folder))
    return str(folder)
