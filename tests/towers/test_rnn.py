"""RNN towers (`rnn_text`, `rnn_audio`): shapes, padding independence, lock, grad checkpointing, ONNX parity,
open_clip-format refusal, recipe errors, and a tiny training run whose loss falls."""
import pytest
import torch

from align.errors import ConfigError
from align.losses import ClipLoss
from align.towers import TOWERS, build_tower
from align.towers.rnn import RNNAudioTower, RNNTextTower, reverse_within_length

TEXT = {"type": "rnn_text", "width": 16, "hidden": 8, "layers": 2, "context_length": 12}
AUDIO = {"type": "rnn_audio", "clip_seconds": 0.2, "n_mels": 16, "hidden": 8, "layers": 2, "frame_stack": 2}
CAPTIONS = ["a photo of a dog", "seven", "an orange cat sleeping on a red sofa seen from above", ""]


def _text(**kw):
    torch.manual_seed(0)
    return build_tower({**TEXT, **kw}, "text", 6).eval()


def _audio(**kw):
    torch.manual_seed(0)
    return build_tower({**AUDIO, **kw}, "audio", 6).eval()


def test_registered_and_shapes():
    assert "rnn_text" in TOWERS and "rnn_audio" in TOWERS
    t, a = _text(), _audio()
    assert isinstance(t, RNNTextTower) and isinstance(a, RNNAudioTower)
    ids = t.tokenize(CAPTIONS)
    assert ids.shape == (4, 12) and ids.dtype == torch.long
    assert t(ids).shape == (4, 6) and t(t.dummy_input(3)).shape == (3, 6)
    x = a.dummy_input(5)
    assert x.shape == (5, 16, a.fe.n_frames) and a(x).shape == (5, 6)
    assert a.steps == a.fe.n_frames // 2
    with pytest.raises(ValueError, match="expected"):
        a(torch.randn(2, 16, 7))
    assert a.encode_clips(torch.randn(2, 3, 16, a.fe.n_frames)).shape == (2, 6)


def test_reverse_within_length_keeps_padding_in_place():
    x = torch.arange(10.).view(2, 5, 1)
    got = reverse_within_length(x, torch.tensor([3, 5]))[..., 0]
    assert got.tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_within_length(reverse_within_length(x, torch.tensor([3, 5])), torch.tensor([3, 5])), x)


@pytest.mark.parametrize("cell,pooling", [("gru", "mean"), ("gru", "last"), ("lstm", "mean"), ("lstm", "last")])
def test_padded_caption_embeds_as_unpadded(cell, pooling):
    """The same caption at context 12 and 40 (28 more pad tokens), alone or in a batch: same embedding."""
    short = _text(cell=cell, pooling=pooling)
    torch.manual_seed(0)
    long = build_tower({**TEXT, "cell": cell, "pooling": pooling, "context_length": 40}, "text", 6).eval()
    long.load_state_dict(short.state_dict())
    caps = CAPTIONS[:2]
    with torch.no_grad():
        a, b = short(short.tokenize(caps)), long(long.tokenize(caps))
        alone = short(short.tokenize(caps[1:]))
        # garbage after <end_of_text> (not 0-padding) is ignored too
        ids = short.tokenize(caps)
        ids[1, 4:] = 5
        c = short(ids)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a[1:], alone, atol=1e-6)
    assert torch.allclose(a, c, atol=1e-6)


def test_lock_freezes_trunk_and_unlocked_groups():
    t = build_tower({**TEXT, "lock": True}, "text", 6)
    assert t.trunk_locked and all(not p.requires_grad for p in t.trunk_parameters())
    assert all(p.requires_grad for p in t.head.parameters())
    before = t.token_embedding.weight.clone()
    out = t.train()(t.tokenize(CAPTIONS))
    out.sum().backward()
    assert t.token_embedding.weight.grad is None and t.head.weight.grad is not None
    assert torch.equal(before, t.token_embedding.weight)
    a = build_tower({**AUDIO, "lock": True, "unlocked_groups": 1}, "audio", 6)
    assert not a.trunk_locked
    assert all(p.requires_grad for p in a.rnn.layers[1].parameters())
    assert not any(p.requires_grad for p in [*a.rnn.layers[0].parameters(), *a.in_norm.parameters()])
    with pytest.raises(ConfigError, match="unlocked_groups"):
        build_tower({**AUDIO, "unlocked_groups": 1}, "audio", 6)
    # groups of a 2-layer text tower: [embedding, layer 0], [layer 1]
    t2 = build_tower({**TEXT, "lock": True, "unlocked_groups": 2}, "text", 6)
    assert all(p.requires_grad for p in t2.parameters())
    t1 = build_tower({**TEXT, "lock": True, "unlocked_groups": 1}, "text", 6)
    assert not t1.token_embedding.weight.requires_grad and t1.rnn.layers[1].fwd.weight_hh_l0.requires_grad


def test_grad_checkpointing_gives_the_same_gradients():
    t = _text().train()
    ids = t.tokenize(CAPTIONS)
    t(ids).pow(2).sum().backward()
    ref = [p.grad.clone() for p in t.parameters()]
    t.zero_grad()
    assert t.set_grad_checkpointing(True)
    t(ids).pow(2).sum().backward()
    for r, p in zip(ref, t.parameters()):
        assert torch.allclose(r, p.grad, atol=1e-6)


@pytest.mark.parametrize("cfg,match", [
    ({"cell": "rnn"}, "cell"), ({"pooling": "max"}, "pooling"), ({"hidden": 0}, "hidden"),
    ({"dropout": 1.5}, "dropout"), ({"hiden": 8}, "unknown key 'hiden'"), ({"context_length": 1}, "context_length"),
])
def test_text_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_tower({**TEXT, **cfg}, "text", 6)


def test_audio_config_errors_and_modalities():
    with pytest.raises(ConfigError, match="frame_stack"):
        build_tower({**AUDIO, "frame_stack": 1000}, "audio", 6)
    with pytest.raises(ConfigError, match="'text' modality"):
        build_tower(TEXT, "audio", 6)
    with pytest.raises(ConfigError, match="'audio' modality"):
        build_tower(AUDIO, "text", 6)


def test_onnx_export_matches_pytorch(tmp_path):
    from align.export import onnx_format
    for tower in (_text(cell="lstm", pooling="last"), _text(), _audio()):
        path = str(tmp_path / f"{tower.modality}.onnx")
        onnx_format.export_tower(tower, path)
        diffs = onnx_format.check_tower(tower, path)         # batch 3 and 1 against PyTorch
        assert max(diffs.values()) <= 1e-4
    entry = onnx_format.save_tokenizer(_text(), str(tmp_path))
    assert entry["kind"] == "open_clip_simple" and (tmp_path / entry["bpe_path"]).is_file()


def test_export_says_open_clip_format_cannot_hold_an_rnn_text_tower(tmp_path):
    from tests.export.conftest import assert_open_clip_format_refused
    assert_open_clip_format_refused(tmp_path, {"text": dict(TEXT)}, "RNNTextTower")


def test_tiny_training_run_lowers_the_loss():
    """rnn_text against rnn_audio on 8 fixed pairs: 40 Adam steps cut the CLIP loss by more than half."""
    t, a = _text(layers=1).train(), _audio(layers=1).train()
    ids = t.tokenize([f"word{i} number {i}" for i in range(8)])
    torch.manual_seed(1)
    x = torch.randn(8, 16, a.fe.n_frames)
    loss_fn = ClipLoss()
    opt = torch.optim.Adam(list(t.parameters()) + list(a.parameters()), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(torch.nn.functional.normalize(t(ids), dim=-1),
                       torch.nn.functional.normalize(a(x), dim=-1), 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
