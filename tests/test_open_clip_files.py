"""align.open_clip_files: open_clip tags whose weights live on the Hugging Face hub, on a machine that cannot reach
it (a compute node): the cache's file at once, or one line at once -- never huggingface_hub's 25-55 s of retries.
The network is taken away by making every connection fail, so these tests do not depend on this machine's."""
import socket

import pytest

from align.errors import ConfigError

REPO = "timm/vit_base_patch32_clip_224.laion2b_e16"


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No connection opens; no proxy or offline flag set; an empty Hugging Face cache at tmp_path/hub; every
    hf_hub_download open_clip makes is recorded (and fails)."""
    import huggingface_hub.constants as hc
    import open_clip.pretrained as ocp
    for k in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    tried = []

    def refuse(address, *a, **k):
        tried.append(address)
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    downloads = []

    def download(*a, **k):
        downloads.append(k.get("repo_id") or a[0])
        raise OSError("no network")
    monkeypatch.setattr(ocp, "hf_hub_download", download)
    return tried, downloads


def cache_file(tmp_path, name="open_clip_model.safetensors", repo=REPO) -> str:
    """A file in the Hugging Face cache layout (refs/main -> snapshots/<commit>/name), as a download leaves it."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123abcd")
    (root / "snapshots" / "0123abcd").mkdir(parents=True)
    path = root / "snapshots" / "0123abcd" / name
    path.write_bytes(b"weights")
    return str(path)


def test_an_unreachable_hub_gives_the_cached_file_or_one_line_at_once(no_hub, tmp_path):
    from open_clip.pretrained import get_pretrained_cfg
    from align.open_clip_files import offline_tag_weights
    tried, downloads = no_hub
    cfg = get_pretrained_cfg("ViT-B-32", "laion2b_e16")
    with pytest.raises(ConfigError, match=r"^KEY: huggingface.co does not answer and the weights are not in the "
                                          r"Hugging Face cache \(offline\? fetch them where a network is and FIX\)$"):
        offline_tag_weights(cfg, "KEY", "FIX")
    assert tried == [("huggingface.co", 443)] and downloads == []
    path = cache_file(tmp_path)
    assert offline_tag_weights(cfg, "KEY", "FIX") == path
    assert offline_tag_weights({"url": "https://x/y.pt"}, "KEY", "FIX") is None      # URL tags: open_clip's cache


def test_a_proxy_or_the_offline_flag_leaves_the_hub_to_huggingface_hub(no_hub, monkeypatch):
    from align.hub import hub_unreachable
    tried, _ = no_hub
    assert hub_unreachable() == "huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert hub_unreachable() == "mirror.example" and tried[-1] == ("mirror.example", 8080)
    for k in ("HTTPS_PROXY", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(k, "1" if k == "HF_HUB_OFFLINE" else "http://proxy:3128")
        n = len(tried)
        assert hub_unreachable() is None and len(tried) == n            # not even tried
        monkeypatch.delenv(k)


def test_hub_offline_sets_huggingface_hubs_flag_for_the_calls_inside_and_restores_it(monkeypatch):
    import huggingface_hub.constants as hc
    from align.hub import hub_offline
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with pytest.raises(KeyError):
        with hub_offline():
            assert hc.is_offline_mode()
            raise KeyError("restored on errors too")
    assert hc.is_offline_mode() is False
