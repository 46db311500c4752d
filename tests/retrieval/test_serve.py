"""`align serve`: the JSON API and the page, against a server on 127.0.0.1 (urllib, no browser)."""
import json
import threading
import urllib.error
import urllib.request

import pytest

from align.cli import main
from align.retrieval.serve import make_server
from tests.retrieval.conftest import tri_shards


@pytest.fixture(scope="module")
def server(tmp_path_factory, tri_run):
    run, model = tri_run
    d = tmp_path_factory.mktemp("serve")
    tri_shards(d / "shards", n_shards=2, per_shard=5)
    assert main(["embed", run, "--data", str(d / "shards"), "--out", str(d / "emb"), "--no-progress"]) == 0
    assert main(["index", str(d / "emb"), "--out", str(d / "ix")]) == 0
    srv = make_server(str(d / "ix"), model, port=0, max_upload_mb=0.01)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(url, body, ctype="application/octet-stream"):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    return _get(req)


def test_binds_to_localhost_and_serves_the_page(server):
    base, srv = server
    assert srv.server_address[0] == "127.0.0.1"
    status, ctype, body = _get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="q"' in body and b'type="file"' in body
    assert json.loads(_get(base + "/health")[2]) == {"ok": True, "indexes": {"image": 10, "audio": 10, "text": 10}}


def test_text_search_and_media(server):
    base, _ = server
    status, _, body = _get(base + "/search?q=a+red+cat&k=4")
    assert status == 200
    res = json.loads(body)["results"]
    assert sorted(res) == ["audio", "image"] and len(res["image"]) == 4
    hit = res["image"][0]
    status, ctype, data = _get(base + hit["media_url"])
    assert status == 200 and ctype == "image/jpeg" and data[:2] == b"\xff\xd8"
    status, ctype, audio = _get(base + res["audio"][0]["media_url"])
    assert status == 200 and ctype == "audio/flac"
    # an uploaded image (the corpus image itself) finds itself first, image -> image
    status, _, body = _post(base + "/search?modality=image&k=3&target=image", data)
    top = json.loads(body)["results"]["image"][0]
    assert status == 200 and top["key"] == hit["key"] and top["score"] > 0.99
    status, _, body = _post(base + "/search?modality=audio&k=2", audio)
    assert status == 200 and sorted(json.loads(body)["results"]) == ["image", "text"]
    status, _, body = _post(base + "/search", json.dumps({"text": "blue dog", "k": 2}).encode(), "application/json")
    assert status == 200 and len(json.loads(body)["results"]["image"]) == 2
    status, _, body = _post(base + "/search", json.dumps({"text": "blue dog", "target": "image"}).encode(),
                            "application/json")
    assert status == 200 and list(json.loads(body)["results"]) == ["image"]


@pytest.mark.parametrize("how,expect,msg", [
    (("GET", "/search?q="), 400, "empty query"),
    (("GET", "/search?q=%20%20"), 400, "empty query"),
    (("POST", "/search?modality=video", b"x"), 400, "unknown modality"),
    (("POST", "/search?modality=image", b"not an image"), 400, "cannot decode image"),
    (("POST", "/search?modality=audio", b"not audio"), 400, "cannot decode audio"),
    (("POST", "/search?modality=image", b"\xff" * 20000), 413, "over the"),
    (("GET", "/search?q=a&k=0"), 400, "k=0"),
    (("GET", "/search?q=a&k=ten"), 400, "not an integer"),
    (("GET", "/search?modality=image&q=/etc/passwd"), 400, "POST image/audio"),
    (("GET", "/media/image/999"), 404, "no image item"),
    (("GET", "/nope"), 404, "no such page"),
    (("POST", "/search", b'{"text": "a", "k": "ten"}', "application/json"), 400, "not an integer"),
    (("POST", "/search", b'["a"]', "application/json"), 400, "must be an object"),
    (("POST", "/search", b'{"text": ', "application/json"), 400, "not JSON"),
])
def test_bad_requests_get_a_clear_4xx(server, how, expect, msg):
    base, _ = server
    status, ctype, body = _get(base + how[1]) if how[0] == "GET" else _post(base + how[1], *how[2:])
    assert status == expect and ctype == "application/json" and msg in json.loads(body)["error"], body
    assert " at 0x" not in json.loads(body)["error"], body          # no Python object repr in a user's message
    assert _get(base + "/search?q=still+alive")[0] == 200          # the server carries on
