"""`align serve`: the JSON API and the page, against a server on 127.0.0.1 (urllib, no browser)."""
import json
import os
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
    srv.index_dir = str(d / "ix")               # for the startup tests
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
    (("POST", "/search", b"[" * 5000 + b"]" * 5000, "application/json"), 400, "nested too deeply"),
    (("POST", "/search", b'{"text": null}', "application/json"), 400, '"text" must be a string, got null'),
    (("POST", "/search", b'{"text": ["a", "b"]}', "application/json"), 400, '"text" must be a string'),
    (("POST", "/search", b'{"text": "a", "target": 5}', "application/json"), 400,
     '"target" must be a string or a list of strings, got 5'),
    (("POST", "/search", b'{"text": "a", "target": ["image", 2]}', "application/json"), 400, '"target" must be'),
    (("POST", "/search?modality=text", b"\xff\xfe"), 400, "a text body must be UTF-8"),
    (("POST", "/search", b'{"text": "a blue \\ud800 dog"}', "application/json"), 400,      # JSON's escape: read
     "text query: lone surrogate at position 7 ("),                   # as U+FFFD by open_clip, a 500 with an hf tower
    (("GET", "/media/image/-1"), 404, "no image item"),
])
def test_bad_requests_get_a_clear_4xx(server, how, expect, msg):
    base, _ = server
    status, ctype, body = _get(base + how[1]) if how[0] == "GET" else _post(base + how[1], *how[2:])
    assert status == expect and ctype == "application/json" and msg in json.loads(body)["error"], body
    assert " at 0x" not in json.loads(body)["error"], body          # no Python object repr in a user's message
    assert _get(base + "/search?q=still+alive")[0] == 200          # the server carries on


def test_a_raw_text_body_and_a_target_list_are_searched_as_given(server):
    base, _ = server
    status, _, body = _post(base + "/search?modality=text&k=2", "seven ünïcode".encode())
    got = json.loads(body)
    assert status == 200 and got["query"] == {"modality": "text", "text": "seven ünïcode"}, got
    status, _, body = _post(base + "/search", json.dumps({"text": "red", "target": ["audio"]}).encode(),
                            "application/json")
    assert status == 200 and list(json.loads(body)["results"]) == ["audio"]


def test_startup_errors_are_one_line(server, tri_run, capsys, monkeypatch):
    """A port in use, a port out of range, a host that is no address and an upload limit <= 0: one line each, all
    but the first before the model loads."""
    from align.retrieval import cli as rcli
    from align.errors import AlignError
    _, srv = server
    _, model = tri_run
    taken = srv.server_address[1]
    with pytest.raises(AlignError, match=f"cannot listen on 127.0.0.1:{taken}: Address already in use"):
        make_server(srv.index_dir, model, port=taken)
    monkeypatch.setattr(rcli, "_load", lambda a: pytest.fail("the model was loaded before --host/--port were checked"))
    for extra, msg in ((["--port", "99999"], "--port 99999: must be 0..65535"),
                       (["--port", "-1"], "--port -1: must be 0..65535"),
                       (["--host", "999.1.1.1"], "--host '999.1.1.1': not an address of this machine"),
                       (["--max-upload-mb", "0"], "--max-upload-mb 0: must be > 0"),       # every upload got 413
                       (["--max-upload-mb", "-5"], "--max-upload-mb -5: must be > 0")):
        assert main(["serve", srv.index_dir, "--model", "m", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("align: error: ") and msg in err[0], err


@pytest.mark.parametrize("ident", [b"\xb2", "\u0663".encode(), b"1\xb9"])
def test_a_media_id_of_non_ascii_digits_is_404(server, ident):
    """The request line is read as latin-1: byte 0xb2 is '²', which str.isdigit() accepts and int() rejects."""
    import socket
    from urllib.parse import urlparse
    u = urlparse(server[0])
    with socket.create_connection((u.hostname, u.port), timeout=30) as c:
        c.sendall(b"GET /media/image/" + ident + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        f = c.makefile("rb")
        head = b"".join(iter(f.readline, b"\r\n"))
        size = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        body = f.read(size)
    reply = head + body
    assert head.startswith(b"HTTP/1.1 404") and b"no image item" in body, reply


def test_an_error_answer_closes_the_connection_when_the_client_asks(server):
    import socket
    from urllib.parse import urlparse
    u = urlparse(server[0])
    with socket.create_connection((u.hostname, u.port), timeout=30) as c:
        c.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := c.recv(65536):          # ends when the server closes, as asked
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404") and b"no such page" in reply


def test_a_client_that_stops_sending_is_dropped_and_the_server_goes_on(server):
    """Half a body held a server thread for ever (no read timeout): the connection is now closed after
    Handler.timeout seconds without a byte (30 s; 0.5 s here), with no answer and no traceback."""
    import socket
    import time
    from align.retrieval.serve import READ_TIMEOUT_S
    base, srv = server
    handler = srv.RequestHandlerClass
    old = handler.timeout
    assert old == READ_TIMEOUT_S == 30.0                        # socketserver's default is None: wait for ever
    handler.timeout = 0.5
    try:
        s = socket.create_connection(("127.0.0.1", srv.server_address[1]))
        s.sendall(b"POST /search?modality=image HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        s.settimeout(10)
        t0 = time.monotonic()
        assert s.recv(100) == b"" and time.monotonic() - t0 < 5      # closed by the server, no answer
        s.close()
    finally:
        handler.timeout = old
    assert _get(base + "/health")[0] == 200


def _raw(base, target: bytes):
    """GET `target` exactly as given (no client-side normalisation of dots or escapes) -> (status, body)."""
    import socket
    from urllib.parse import urlparse
    u = urlparse(base)
    with socket.create_connection((u.hostname, u.port), timeout=30) as c:
        c.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _image_id_of(srv, shard_name: str) -> int:
    """The index id of an image row read from the shard named shard_name."""
    table = srv.RequestHandlerClass.service.indexes["image"].table
    return int(table.index[table["shard"].str.endswith("/" + shard_name)][0])


def test_answers_name_shards_relative_to_the_corpus_folder_never_the_servers_paths(server):
    """/search carried each hit's absolute shard path (the server's folder layout); it names the shard relative to
    the folder `align embed` read, and no answer holds the server's path."""
    base, srv = server
    root = srv.RequestHandlerClass.service.root
    assert json.load(open(os.path.join(srv.index_dir, "index.json")))["root"] == root
    assert root.endswith("shards") and os.path.isdir(root)
    for status, _, body in (_get(base + "/search?q=a+red+cat&k=10"),
                            _post(base + "/search", json.dumps({"text": "dog", "k": 10}).encode(),
                                  "application/json")):
        got = json.loads(body)["results"]
        assert status == 200 and {h["shard"] for hits in got.values() for h in hits} == {"shard-000.tar",
                                                                                         "shard-001.tar"}
        assert os.path.dirname(root).encode() not in body, body
    status, body = _raw(base, b"/media/image/999999")
    assert status == 404 and os.path.dirname(root).encode() not in body


def test_a_bug_is_a_generic_500_with_a_request_id_and_the_log_has_the_exception(server, capsys, monkeypatch):
    base, srv = server
    service = srv.RequestHandlerClass.service

    def broken(*a, **k):
        raise RuntimeError(f"secret detail {service.root}/private.tar")
    monkeypatch.setattr(service, "query", broken)
    capsys.readouterr()
    status, ctype, body = _get(base + "/search?q=cat")
    answer = json.loads(body)
    rid = answer["request_id"]
    assert status == 500 and ctype == "application/json" and len(rid) == 8 and set(rid) <= set("0123456789abcdef")
    assert answer["error"] == f"internal error (request id {rid}); the server's log has the details"
    assert b"secret" not in body and b"RuntimeError" not in body and service.root.encode() not in body
    err = capsys.readouterr().err
    assert f"align serve: request {rid} (GET /search?q=cat) failed:" in err and "RuntimeError: secret detail" in err
    monkeypatch.undo()
    assert _get(base + "/search?q=still+alive")[0] == 200                     # the server carries on


@pytest.mark.parametrize("target", [
    b"/media/image/..%2F..%2F..%2Fetc%2Fpasswd", b"/media/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"/media/image/../../../etc/passwd", b"/media/../../etc/passwd", b"/media/image//etc/passwd",
    b"/media/image/%2Fetc%2Fpasswd", b"/media/image/0/../../../etc/passwd", b"/media/%2e%2e/0",
    b"/media/image/0%00", b"/media/image/-1", b"/media/image/0x1", b"/media/image/1e0", b"/media/image/%30",
    b"/media/image/shard-000.tar", b"/media/text/0", b"//etc/passwd", b"/..%2f..%2fetc%2fpasswd",
])
def test_a_path_in_a_media_url_is_404_however_it_is_spelt(server, target):
    """/media takes an index id (ASCII digits) only: a path, `..`, an absolute path, escapes of either, a NUL, a
    shard's name: 404, and no byte of a file."""
    base, _ = server
    status, body = _raw(base, target)
    assert status == 404 and b"root:" not in body and json.loads(body)["error"], (target, body)


def test_media_is_read_only_from_files_inside_the_corpus_folder(server, tmp_path):
    """A row naming a shard outside the corpus (an absolute path, `..`: an index edited by hand) and a shard
    are 404s, and so are a device and a FIFO in a shard's place; a shard that is a link is served wherever it
    points (a folder of links into another disk), as the request names only an id."""
    base, srv = server
    service = srv.RequestHandlerClass.service
    root = service.root
    ident = _image_id_of(srv, "shard-000.tar")
    ix = service.indexes["image"]
    row = ix.rows([ident])[0]
    good = _get(f"{base}/media/image/{ident}")
    assert good[0] == 200 and good[2][:2] == b"\xff\xd8"
    shard = row["shard"]
    outside = tmp_path / "outside.tar"
    outside.write_bytes(open(shard, "rb").read())                      # the same bytes, outside the folder
    try:
        for bad in (str(outside), "../outside.tar", os.path.join(root, "..", "outside.tar"), "/etc/passwd"):
            ix.rows = lambda ids, bad=bad: [dict(row, shard=bad)]     # the row as an edited index gives it
            status, _, body = _get(f"{base}/media/image/{ident}")
            assert status == 404 and "is not inside the corpus folder" in json.loads(body)["error"], (bad, body)
            assert str(tmp_path).encode() not in body
        del ix.rows
        os.rename(shard, shard + ".moved")
        os.symlink(outside, shard)                                     # a link out of the folder: served
        assert _get(f"{base}/media/image/{ident}")[2] == good[2]
        os.remove(shard)
        os.symlink(shard + ".moved", shard)                            # a link to a file inside: served
        assert _get(f"{base}/media/image/{ident}")[2] == good[2]
        os.remove(shard)
        os.symlink("/dev/zero", shard)
        status, _, body = _get(f"{base}/media/image/{ident}")
        assert status == 404 and "not a regular file" in json.loads(body)["error"], body
        os.remove(shard)
        os.mkfifo(shard)                                               # inside the folder, but no file: not waited on
        status, _, body = _get(f"{base}/media/image/{ident}")
        assert status == 404 and "not a regular file" in json.loads(body)["error"], body
    finally:
        ix.__dict__.pop("rows", None)
        if os.path.lexists(shard):
            os.remove(shard)
        os.rename(shard + ".moved", shard)
    assert _get(f"{base}/media/image/{ident}")[2] == good[2]


def test_an_index_that_names_no_root_takes_the_folder_holding_its_shards(tmp_path):
    """An index built before index.json recorded the corpus folder: the deepest folder holding every shard."""
    from align.retrieval.search import corpus_root

    class Ix:
        path = str(tmp_path / "ix" / "image")

        def shards(self):
            return [str(tmp_path / "c" / "a" / "0.tar"), str(tmp_path / "c" / "b" / "1.tar")]
    (tmp_path / "ix").mkdir()
    assert corpus_root({"image": Ix()}) == str(tmp_path / "c")
    (tmp_path / "ix" / "index.json").write_text(json.dumps({"modalities": ["image"], "root": str(tmp_path / "r")}))
    assert corpus_root({"image": Ix()}) == str(tmp_path / "r")
