"""The bag-of-words text tower (`bow_text`): against a plain per-caption loop on random token rows, word order,
padding and the markers never matter, the tokenizer's cleaning, lock, ONNX parity, recipe errors, and a tiny
training run whose loss falls."""
import pytest
import torch
import torch.nn.functional as F

from align.errors import ConfigError
from align.losses import ClipLoss
from align.towers import TOWERS, build_tower
from align.towers.bow import BagOfWordsTextTower, word_mask

TEXT = {"type": "bow_text", "width": 16, "context_length": 12}


def _text(**kw):
    torch.manual_seed(0)
    return build_tower({**TEXT, **kw}, "text", 6).eval()


def _reference(tower: BagOfWordsTextTower, ids: torch.Tensor) -> torch.Tensor:
    """One caption at a time: the words are the ids after <start_of_text> up to the first <end_of_text>."""
    eot = tower._tokenizer.eot_token_id
    out = []
    for row in ids.tolist():
        words = row[1:row.index(eot)]
        w = tower.token_embedding.weight
        mean = w[words].mean(dim=0) if words else torch.zeros(w.shape[1])
        ln = tower.ln
        h = (mean - mean.mean()) / torch.sqrt(mean.var(unbiased=False) + ln.eps) * ln.weight + ln.bias
        out.append(h @ tower.head.weight.T)
    return torch.stack(out)


def test_registered_and_matches_a_plain_loop_on_random_rows():
    assert "bow_text" in TOWERS
    t = _text()
    assert isinstance(t, BagOfWordsTextTower)
    with torch.no_grad():
        t.ln.weight.uniform_(0.5, 1.5)                                      # not the identity init
        t.ln.bias.normal_()
    torch.manual_seed(3)
    ids = t.dummy_input(64)                                                 # lengths 2 (no words) .. 12
    assert ids.shape == (64, 12) and ids.dtype == torch.long
    assert (ids.argmax(dim=1) == 0).sum() == 0 and (ids == t._tokenizer.eot_token_id).sum() == 64
    with torch.no_grad():
        got, want = t(ids), _reference(t, ids)
    assert got.shape == (64, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_word_mask_marks_only_the_words():
    ids = torch.tensor([[49406, 5, 7, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0], [49406, 3, 4, 5, 6, 49407]])
    assert word_mask(ids).int().tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]]


def test_order_padding_and_garbage_after_the_end_never_change_an_embedding():
    short = _text()
    torch.manual_seed(0)
    long = build_tower({**TEXT, "context_length": 40}, "text", 6).eval()
    long.load_state_dict(short.state_dict())
    with torch.no_grad():
        a = short(short.tokenize(["someone saying three", "seven"]))
        b = long(long.tokenize(["someone saying three", "seven"]))
        shuffled = short(short.tokenize(["three someone saying"]))
        ids = short.tokenize(["someone saying three"])
        ids[0, 5:] = 1234                                                    # garbage after <end_of_text>
        garbage = short(ids)
        other = short(short.tokenize(["someone saying four"]))
    torch.testing.assert_close(a, b)                                         # context 12 vs 40
    torch.testing.assert_close(shuffled[0], a[0])
    torch.testing.assert_close(garbage[0], a[0])
    assert (other[0] - a[0]).abs().max() > 1e-3                              # the words do matter


def test_a_caption_of_no_words_embeds_as_the_zero_vector_through_ln_and_head():
    t = _text()
    with torch.no_grad():
        t.ln.bias.normal_()
        got = t(t.tokenize([""]))[0]
    torch.testing.assert_close(got, t.ln.bias @ t.head.weight.T)
    assert torch.isfinite(got).all()


def test_clean_canonicalize_drops_case_and_punctuation_and_export_keeps_it(tmp_path):
    from align.export import onnx_format
    canon, lower = _text(clean="canonicalize"), _text()
    assert torch.equal(canon.tokenize(["Someone, saying THREE."]), canon.tokenize(["someone saying three"]))
    assert not torch.equal(lower.tokenize(["someone saying three."]), lower.tokenize(["someone saying three"]))
    entry = onnx_format.save_tokenizer(canon, str(tmp_path))
    assert entry["kind"] == "open_clip_simple" and (tmp_path / entry["bpe_path"]).is_file()
    assert entry["tokenizer_kwargs"] == {"clean": "canonicalize"}
    assert canon.preprocess_config()["clean"] == "canonicalize"


def test_count_tokens_counts_the_markers():
    t = _text()
    assert t.count_tokens(["someone saying three", ""]) == [5, 2]


def test_lock_freezes_the_table_and_keeps_the_head_trainable():
    t = build_tower({**TEXT, "lock": True}, "text", 6)
    assert not t.token_embedding.weight.requires_grad and not t.ln.weight.requires_grad
    assert t.head.weight.requires_grad and t.trunk_locked
    part = build_tower({**TEXT, "lock": True, "unlocked_groups": 1}, "text", 6)
    assert part.token_embedding.weight.requires_grad and part.ln.weight.requires_grad and not part.trunk_locked
    out = t.train()(t.tokenize(["a b c"]))
    out.sum().backward()
    assert t.token_embedding.weight.grad is None and t.head.weight.grad is not None


@pytest.mark.parametrize("cfg,match", [
    ({"clean": "basic"}, "clean"), ({"width": 0}, "width"), ({"context_length": 2}, "context_length"),
    ({"hidden": 8}, "unknown key 'hidden'"), ({"unlocked_groups": 1}, "only used with lock"),
    ({"proj": "none"}, "proj"), ({"clean": "canonicalize", "punctuation": "all"}, r"punctuation: 'all' is not one"),
    ({"punctuation": "unicode"}, "punctuation: unicode needs clean: canonicalize"),
])
def test_config_errors_name_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_tower({**TEXT, **cfg}, "text", 6)


def test_only_the_text_modality():
    with pytest.raises(ConfigError, match="'text' modality"):
        build_tower(TEXT, "audio", 6)


def test_onnx_export_matches_pytorch(tmp_path):
    from align.export import onnx_format
    tower = _text(clean="canonicalize")
    path = str(tmp_path / "text.onnx")
    onnx_format.export_tower(tower, path)
    diffs = onnx_format.check_tower(tower, path)                             # batch 3 and 1 against PyTorch
    assert max(diffs.values()) <= 1e-4


def test_export_says_open_clip_format_cannot_hold_it(tmp_path):
    from tests.export.conftest import assert_open_clip_format_refused
    assert_open_clip_format_refused(tmp_path, {"text": dict(TEXT)}, "BagOfWordsTextTower")


def test_tiny_training_run_lowers_the_loss():
    """bow_text against fixed random audio-like targets on 8 pairs: 40 Adam steps cut the CLIP loss by half."""
    t = _text().train()
    ids = t.tokenize([f"word{i} number {i}" for i in range(8)])
    torch.manual_seed(1)
    target = F.normalize(torch.randn(8, 6), dim=-1)
    loss_fn = ClipLoss()
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(F.normalize(t(ids), dim=-1), target, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_a_string_is_one_caption_not_one_per_character():
    tower = _text()
    assert tower.tokenize("hello").shape[0] == 1 and torch.equal(tower.tokenize("hello"), tower.tokenize(["hello"]))


def test_punctuation_unicode_drops_every_punctuation_mark_and_the_default_keeps_its_reading(tmp_path):
    """clean: canonicalize (open_clip's) deletes ASCII punctuation only, after ftfy straightened curly quotes: '"hello"'
    and '“hello”' read as 'hello' but '«hello»', 'hello…' or '¿hello?' keep the mark as a word of the mean. The
    opt-in `punctuation: unicode` deletes every P* character, and the export's own tokenize does the same; the default
    is unchanged (small-audio-text's figures were measured with it). No vocabulary is built from the data: captions
    and prompts share this one tokenizer."""
    import json
    import pickle

    import numpy as np

    from align.export import onnx_format
    from align.export.model_card import onnx_snippet
    default, uni = _text(clean="canonicalize"), _text(clean="canonicalize", punctuation="unicode")
    plain = default.tokenize(["hello world"])
    marks = ["«hello» world", "hello… world", "¿hello world?", "「hello」 world", "hello — world", "‹hello› world‼"]
    for same in ['"hello" world', "“hello” world", "(hello), world!"]:
        assert torch.equal(default.tokenize([same]), plain) and torch.equal(uni.tokenize([same]), plain), same
    for m in marks:
        assert not torch.equal(default.tokenize([m]), plain), m
        assert torch.equal(uni.tokenize([m]), plain), m
    assert torch.equal(uni.tokenize(["hello_world $5"]), default.tokenize(["hello_world $5"]))   # as canonicalize
    assert uni.count_tokens(["«hello» world"]) == [4] and default.count_tokens(["«hello» world"]) == [6]
    assert torch.equal(pickle.loads(pickle.dumps(uni)).tokenize(marks), uni.tokenize(marks))     # spawned workers
    assert uni.preprocess_config()["punctuation"] == "unicode"
    assert "punctuation" not in onnx_format.save_tokenizer(default, str(tmp_path / "d"))
    entry = onnx_format.save_tokenizer(uni, str(tmp_path))
    assert entry["punctuation"] == "unicode" and entry["tokenizer_kwargs"] == {"clean": "canonicalize"}
    pp = {"towers": {"text": {"file": "text.onnx", "preprocess": entry}}}
    (tmp_path / "preprocess.json").write_text(json.dumps(pp))
    ns = {}
    exec(onnx_snippet(pp).replace('EXPORT_DIR = "."', f"EXPORT_DIR = {str(tmp_path)!r}"), ns)
    texts = marks + ["plain words", "“quoted” words", "hello_world"]
    assert np.array_equal(ns["tokenize"](texts), uni.tokenize(texts).numpy())
