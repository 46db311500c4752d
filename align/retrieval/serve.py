"""`align serve INDEX --model MODEL`: a search page and a JSON API on the standard library's ThreadingHTTPServer.

    GET  /                                   the page: query box, image/audio upload, result grid
    GET  /search?q=TEXT[&k=10][&target=image,audio]                  text query -> JSON
    POST /search?modality=image|audio[&k=..][&target=..]  body=file  image/audio query -> JSON
    GET  /media/<modality>/<id>              the sample's bytes, read from its shard by byte range
    GET  /health                             indexes and sizes

JSON answers: {"query": ..., "results": {target: [{rank, score, key, caption, shard, id, media_url}]}}; `shard` is
the shard's path relative to the corpus folder `align embed` read (`test/0.tar` of an eval set, `shard-000003.tar`
of a folder of shards), never a path of the server. Bad requests get a 4xx with {"error": one line}: 400 empty
query, unknown modality, undecodable upload, bad k, a JSON "text" that is not a string or "target" not a string /
list of strings, a text body not UTF-8; 413 upload over --max-upload-mb; 411 upload without Content-Length; 404
unknown path or id, a row naming a shard outside the corpus folder, or a shard that is no regular file. A bug
is a 500 {"error": "internal error (request id ID)", "request_id": ID}; stderr gets the id and the exception.
/media/<modality>/<id> takes an index id only (ASCII digits): a path in the URL, encoded or not, is a 404, and the
shard its row names is opened only when the row's path lies inside the corpus folder and is a regular file (a link
is followed: shards linked in from another disk are served).
Binds to 127.0.0.1 unless --host says otherwise. Encoding runs under one lock (a CPU model is not faster
with several queries encoding at once on a small machine); the HTTP threads stay responsive around it.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional
from urllib.parse import parse_qs, urlparse

from align.errors import AlignError, printable
from align.retrieval.search import Index, check_model, corpus_root, load_indexes, search_all

MAX_K = 1000
DRAIN_MAX = 64 << 20
READ_TIMEOUT_S = 30.0     # a connection that sends nothing for this long is closed (Handler.timeout)
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"),
               (b"fLaC", "audio/flac"), (b"OggS", "audio/ogg"), (b"ID3", "audio/mpeg"), (b"\xff\xfb", "audio/mpeg"))


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def content_type(data: bytes) -> str:
    """MIME type from the first bytes (RIFF holds WAV or WebP)."""
    if data[:4] == b"RIFF":
        return "image/webp" if data[8:12] == b"WEBP" else "audio/wav"
    return next((t for sig, t in _SIGNATURES if data.startswith(sig)), "application/octet-stream")


class SearchService:
    """Indexes + model; answers queries and media requests (shared by every request thread). root: the corpus
    folder (absolute; default: search.corpus_root of the indexes): answers name shards relative to it, and media
    are read only from files inside it."""

    def __init__(self, indexes: Dict[str, Index], model, max_upload: int = 10 << 20, root: Optional[str] = None):
        self.indexes, self.model, self.max_upload = indexes, model, max_upload
        self.root = os.path.abspath(root or corpus_root(indexes))
        self.lock = threading.Lock()

    def shown(self, shard: str) -> str:
        """A shard as an answer names it: its path relative to the corpus folder ('/'-separated); one that is not
        under it (an index edited by hand) by its file name only, never a path of the server."""
        rel = self.relative(shard)
        return rel if rel is not None else os.path.basename(str(shard))

    def relative(self, shard: str) -> Optional[str]:
        """The shard's path under the corpus folder, or None when it is not under it (.., another folder)."""
        shard = str(shard)
        full = os.path.normpath(shard if os.path.isabs(shard) else os.path.join(self.root, shard))
        if os.path.commonpath([self.root, full]) != self.root or full == self.root:
            return None
        return os.path.relpath(full, self.root).replace(os.sep, "/")

    def _open_shard(self, rel: str):
        """The shard at root/rel (`relative` kept the row's path lexically inside the corpus folder), opened for
        reading when it is a regular file; a 404 naming `rel` otherwise (a device, a FIFO, a missing file). A
        shard that is a link is followed wherever it points: folders of links into other disks are a common
        corpus layout, the rows come from the user's own `align embed`, and a request picks only an id."""
        try:
            # a FIFO: not waited on (then refused as no regular file)
            fd = os.open(os.path.join(self.root, rel), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise HttpError(404, f"{rel}: cannot read: {e.strerror}") from None
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise HttpError(404, f"{rel}: not a regular file; not served")
        return f

    def query(self, modality: str, value, k: int, targets) -> dict:
        if modality not in ("text", "image", "audio"):
            raise HttpError(400, f"unknown modality {modality!r}; use text, image or audio")
        if modality == "text" and not str(value or "").strip():
            raise HttpError(400, "empty query: give q=TEXT or upload an image/audio file")
        if modality != "text" and not value:
            raise HttpError(400, f"empty {modality} upload")
        if not 1 <= k <= MAX_K:
            raise HttpError(400, f"k={k}: must be 1..{MAX_K}")
        try:
            with self.lock:
                res = search_all(self.indexes, self.model, modality, value, k=k, targets=targets)
        except AlignError as e:
            raise HttpError(400, str(e).replace("upload: ", f"uploaded {modality}: ")) from None
        for target, hits in res.items():
            for h in hits:
                h["media_url"] = f"/media/{target}/{h['id']}" if target != "text" else None
                h["shard"] = self.shown(h["shard"])
        return {"query": {"modality": modality, **({"text": value} if modality == "text" else {})},
                "results": res}

    def media(self, modality: str, ident: str):
        ix = self.indexes.get(modality)
        # ASCII digits only: str.isdigit() accepts '²', which int() then rejects (a 500)
        if ix is None or modality == "text" or not (ident.isascii() and ident.isdigit()) or int(ident) >= len(ix):
            raise HttpError(404, f"no {modality} item {ident}")
        row = ix.rows([int(ident)])[0]
        rel = self.relative(row["shard"])
        if rel is None:
            raise HttpError(404, f"{modality} item {ident}: its shard {self.shown(row['shard'])} is not inside the "
                                 f"corpus folder; not served")
        try:
            with self._open_shard(rel) as f:
                f.seek(int(row["media_offset"]))
                data = f.read(int(row["media_size"]))
        except OSError as e:
            raise HttpError(404, f"{rel}: cannot read: {e.strerror}") from None
        return data, content_type(data)


def _int(qs: dict, name: str, default: int) -> int:
    v = qs.get(name, [str(default)])[0]
    try:
        return int(v)
    except ValueError:
        raise HttpError(400, f"{name}={v!r} is not an integer") from None


def _json_query(req: dict):
    """(text, k, targets) of a JSON body, each of the type it must have: a 400 naming the key otherwise (a null
    text searched for 'None', a list for its repr)."""
    text, k, target = req.get("text", ""), req.get("k", 10), req.get("target")
    if not isinstance(text, str):
        raise HttpError(400, f"\"text\" must be a string, got {json.dumps(text)[:80]}")
    if not isinstance(k, int) or isinstance(k, bool):
        raise HttpError(400, f"k={k!r} is not an integer")
    if isinstance(target, str):
        target = [t.strip() for t in target.split(",") if t.strip()]
    if target is not None and not (isinstance(target, list) and all(isinstance(t, str) for t in target)):
        raise HttpError(400, f"\"target\" must be a string or a list of strings, got {json.dumps(target)[:80]}")
    return text, k, target or None


def _targets(qs: dict):
    t = [x.strip() for x in qs.get("target", [""])[0].split(",") if x.strip()]
    return t or None


class Handler(BaseHTTPRequestHandler):
    service: SearchService = None          # set by make_server on a subclass
    protocol_version = "HTTP/1.1"
    # seconds a connection may sit without sending (socketserver applies it to every read): a client that sends
    # half a request, or holds an idle keep-alive connection, no longer holds a server thread for ever
    timeout = READ_TIMEOUT_S

    def log_message(self, fmt, *args):     # quiet: one line per request is noise under load
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _guard(self, fn) -> None:
        try:
            fn()
        except HttpError as e:
            if e.status in (411, 413):     # the unread body would poison the connection; else as the client asked
                self.close_connection = True
            self._json(e.status, {"error": str(e)})
        except TimeoutError:               # the body stopped arriving (timeout): drop the connection, no answer
            self.close_connection = True
        except Exception:  # a bug must not kill the thread silently; the client still gets an answer
            # ... a generic one: an exception's text can hold the server's paths and internals; the log has it
            rid = secrets.token_hex(4)
            print(f"align serve: request {rid} ({printable(self.command)} {printable(self.path[:200])}) failed:\n"
                  f"{traceback.format_exc().rstrip()}", file=sys.stderr, flush=True)
            self._json(500, {"error": f"internal error (request id {rid}); the server's log has the details",
                             "request_id": rid})

    def do_GET(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def _get(self):
        u = urlparse(self.path)
        qs = parse_qs(u.query)
        if u.path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                return self._send(200, f.read(), "text/html; charset=utf-8")
        if u.path == "/health":
            return self._json(200, {"ok": True, "indexes": {m: len(ix) for m, ix in self.service.indexes.items()}})
        if u.path == "/search":
            modality = qs.get("modality", ["text"])[0]
            if modality != "text":    # never read a server-side path named in a URL: files come as uploads
                raise HttpError(400, f"modality={modality!r}: GET /search takes text (q=...); POST image/audio files")
            return self._json(200, self.service.query("text", qs.get("q", [""])[0], _int(qs, "k", 10),
                                                      _targets(qs)))
        parts = u.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "media":
            data, ctype = self.service.media(parts[1], parts[2])
            return self._send(200, data, ctype)
        raise HttpError(404, f"no such page: {u.path}")

    def _drain(self, n: int) -> None:
        """Read and drop an oversized body (up to DRAIN_MAX) so the client, still sending, gets the 413
        instead of a reset connection; a larger one is cut off by closing the connection."""
        left = min(n, DRAIN_MAX)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _post(self):
        u = urlparse(self.path)
        qs = parse_qs(u.query)
        if u.path != "/search":
            raise HttpError(404, f"no such endpoint: POST {u.path}")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HttpError(411, "an upload needs a Content-Length")
        if int(length) > self.service.max_upload:
            self._drain(int(length))
            raise HttpError(413, f"upload of {int(length)} bytes is over the {self.service.max_upload} byte limit")
        body = self.rfile.read(int(length))
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                raise HttpError(400, "body is not JSON") from None
            except RecursionError:          # [[[[...]]]] deeper than the parser recurses: a 500 with its name before
                raise HttpError(400, "JSON body nested too deeply") from None
            if not isinstance(req, dict):
                raise HttpError(400, "JSON body must be an object: {\"text\": ..., \"k\": 10}")
            text, k, target = _json_query(req)
            return self._json(200, self.service.query("text", text, k, target))
        modality = qs.get("modality", [""])[0]
        if modality == "text":      # a raw text body is the query's UTF-8, not bytes to repr
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise HttpError(400, "a text body must be UTF-8") from None
        return self._json(200, self.service.query(modality, body, _int(qs, "k", 10), _targets(qs)))


def check_address(host: str, port: int, max_upload_mb: float = 10.0) -> None:
    """--host / --port / --max-upload-mb before the model loads: a port out of 0..65535, a host that is no address
    or an upload limit <= 0 (every upload would get 413) is one line (socket's OverflowError / gaierror tracebacks
    otherwise)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise AlignError(f"--port {port}: must be 0..65535 (0: any free port)")
    if not max_upload_mb > 0:
        raise AlignError(f"--max-upload-mb {max_upload_mb:g}: must be > 0 (every image or audio upload would be "
                         f"refused)")
    try:
        socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)   # "": all
    except (socket.gaierror, UnicodeError) as e:
        raise AlignError(f"--host {host!r}: not an address of this machine ({e})") from None


def make_server(index_dir: str, model, host: str = "127.0.0.1", port: int = 8080,
                max_upload_mb: float = 10.0) -> ThreadingHTTPServer:
    check_address(host, port, max_upload_mb)
    indexes = load_indexes(index_dir)
    check_model(indexes, model)
    handler = type("BoundHandler", (Handler,), {"service": SearchService(indexes, model,
                                                                          int(max_upload_mb * (1 << 20)))})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:            # the port is taken, or the address is not this machine's
        raise AlignError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.daemon_threads = True
    return server


def serve(index_dir: str, model, host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 10.0) -> None:
    server = make_server(index_dir, model, host, port, max_upload_mb)
    h, p = server.server_address[:2]
    sizes = ", ".join(f"{m} {len(ix)}" for m, ix in server.RequestHandlerClass.service.indexes.items())
    print(f"serving {index_dir} ({sizes}) on http://{h}:{p}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
