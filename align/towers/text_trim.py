"""Exact padding trimming for causal open_clip text encoders: open_clip runs its text transformer over all
context_length positions, most of them padding (a LAION caption is ~20 of 77 tokens). With a causal mask, position
p sees only positions <= p, and the pooled token is the end-of-text token, so the positions after the last EOT in
the batch change nothing: dropping them gives the same embeddings (to float rounding) and the same gradients for
less work. Used by the `open_clip` text tower in training (align.towers.open_clip_towers) and by align.bench's
open_clip models (embed, zero-shot class texts).
"""
import torch
from torch import nn


def _text_parts(net):
    """(pool_type, eos_id) of a TextTransformer or of a CLIP that holds its text tower's parts."""
    from open_clip.model import CLIP
    from open_clip.transformer import TextTransformer
    if isinstance(net, TextTransformer):
        if net.cls_emb is not None or getattr(net, "use_pad_mask", False) or net.output_tokens:
            return None
        return net.pool_type, getattr(net, "eos_id", None)
    if isinstance(net, CLIP):                       # CLIP.encode_text: causal mask, no cls token
        return net.text_pool_type, getattr(net, "text_eos_id", None)
    return None


def can_trim_text(net) -> bool:
    """True when `trimmed_text_forward(net, text)` equals net's own text forward (to float rounding)."""
    parts = _text_parts(net)
    return parts is not None and parts[0] in ("argmax", "eos") and getattr(net, "attn_mask", None) is not None


def trimmed_text_forward(net, text: torch.Tensor, multiple: int = 8) -> torch.Tensor:  # long [B, L] -> [B, E]
    """net's text features (a TextTransformer's forward / a CLIP's encode_text; not normalised) over the
    positions up to the batch's last end-of-text token, rounded up to a multiple of `multiple`: 8 in training
    (few distinct shapes, so few torch.compile graphs), 1 for inference in eager mode (align embed / bench)."""
    from open_clip.transformer import text_global_pool
    if text.shape[0] == 0:                   # no caption: nothing to trim (max() of an empty tensor raises)
        return net(text) if not hasattr(net, "encode_text") else net.encode_text(text)
    pool, eos = _text_parts(net)
    end = text.argmax(dim=-1) if pool == "argmax" else (text == eos).int().argmax(dim=-1)   # [B]
    n = min(text.shape[1], -(-(int(end.max()) + 1) // multiple) * multiple)
    if n == text.shape[1]:
        return net(text) if not hasattr(net, "encode_text") else net.encode_text(text)
    text = text[:, :n]                                                                   # [B, n]
    cast = net.transformer.get_cast_dtype()
    h = net.token_embedding(text).to(cast) + net.positional_embedding[:n].to(cast)      # [B, n, W]
    h = net.transformer(h, attn_mask=net.attn_mask[:n, :n])
    pooled = text_global_pool(net.ln_final(h), text, pool_type=pool, eos_token_id=eos)  # [B, W]
    if net.text_projection is None:
        return pooled
    if isinstance(net.text_projection, nn.Linear):
        return net.text_projection(pooled)
    return pooled @ net.text_projection
