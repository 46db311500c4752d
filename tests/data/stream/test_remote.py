"""http(s) shards: read by the standard library with retries, never through a shell.

A local http.server on 127.0.0.1 serves tiny shards; hostile URLs carry quotes, $(), backticks, `;`
and newlines that would run `touch MARKER` if any of them reached a shell (webdataset's curl pipe did).
"""

import functools
import http.server
import os
import threading

import pytest

from align.data.stream import remote
from align.data.stream.faults import FaultCounter
from align.data.stream.build import build_train_loader
from align.data.stream.sources import open_shard, resolve_sources, shard_samples
from align.errors import DataError
from tests.wds_helpers import TRANSFORMS, flat, make_shards

KW = dict(transforms=TRANSFORMS, batch_size=2, modalities=["image", "text"], num_workers=0, drop_last=False)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; `plan` (path -> list of actions) injects faults, one per request."""

    plan: dict = {}
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Range")))
        actions = type(self).plan.get(self.path)
        action = actions.pop(0) if actions else None
        if action == "500":
            self.send_error(500)
            return
        if action == "cut":   # announce the whole file, send half of it, drop the connection
            data = open(self.translate_path(self.path), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        rng = self.headers.get("Range")
        if rng:
            data = open(self.translate_path(self.path), "rb").read()
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    paths, keys = make_shards(root, 2, 3)
    _Handler.plan, _Handler.seen = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", keys
    httpd.shutdown()
    httpd.server_close()


def test_http_shards_train_through_the_library(server):
    base, keys = server
    loader = build_train_loader(base + "/s-{000..001}.tar", **KW)
    assert sorted(flat([b["__key__"] for b in loader])) == sorted(keys)
    assert dict(loader.skipped) == {}


HOSTILE = ["x'$(touch {m})'.tar", "x\"$(touch {m})\".tar", "x`touch {m}`.tar", "x;touch {m};.tar",
           "x'; touch {m}; echo '.tar", "x\ntouch {m}\n.tar", "x$(touch${{IFS}}{m}).tar", "x|touch {m}.tar",
           "x&&touch {m}.tar"]


@pytest.mark.parametrize("scheme", ["http", "https", "sftp", "scp", "ftps", "gs", "ais"])
@pytest.mark.parametrize("tail", HOSTILE)
def test_hostile_urls_never_run_a_command(tmp_path, scheme, tail):
    marker = tmp_path / "PWNED"
    url = f"{scheme}://127.0.0.1:1/" + tail.format(m=marker)
    faults = FaultCounter()
    try:
        list(shard_samples(url, faults, retry_budget_s=0.05))
    except DataError:
        pass
    try:
        loader = build_train_loader(url, retry_budget_s=0.05, **KW)
        list(loader)
    except DataError:
        pass
    assert not marker.exists(), f"{url!r} ran a command"


def test_other_remote_schemes_are_refused_not_shelled_out(tmp_path):
    # webdataset's sftp/scp/gs/ais handlers build a command line; align has no reader for them
    # without an fsspec driver and says so in one line.
    with pytest.raises(DataError, match="cannot read URL scheme 'scp:'"):
        resolve_sources("scp://host/shard.tar")
    with pytest.raises(OSError, match="no reader for URL scheme 'ais:'"):
        open_shard("ais://bucket/shard.tar")


def test_transient_500_is_retried_and_a_cut_stream_resumes_with_range(server, caplog):
    base, keys = server
    _Handler.plan = {"/s-000.tar": ["500", "cut"]}
    faults = FaultCounter()
    got = [s["__key__"] for s in shard_samples(base + "/s-000.tar", faults, retry_budget_s=20)]
    assert got == sorted(k for k in keys if k.startswith("s00"))
    assert faults.total == {}
    ranges = [r for p, r in _Handler.seen if p == "/s-000.tar"]
    assert ranges[:2] == [None, None] and ranges[2] is not None and ranges[2].startswith("bytes=")
    assert any("HTTP 500; retrying in" in r.getMessage() for r in caplog.records)


def test_404_is_final_and_counted_as_a_missing_shard(server):
    base, keys = server
    loader = build_train_loader([base + "/s-000.tar", base + "/absent.tar"], **KW)
    assert sorted(flat([b["__key__"] for b in loader])) == sorted(k for k in keys if k.startswith("s00"))
    assert dict(loader.skipped) == {"missing shard": 1}
    assert [p for p, _ in _Handler.seen].count("/absent.tar") == 1   # not retried


def test_dead_source_stops_within_its_budget_with_one_line_naming_it(caplog):
    url = "http://127.0.0.1:1/train-000.tar"        # nothing listens on port 1: connection refused
    sleeps = []
    clock = iter(range(0, 1000, 3)).__next__         # each attempt "takes" 3 s of the budget
    with pytest.raises(remote.SourceUnavailable) as e:
        remote.HttpShard(url, retry_budget_s=10, sleep=sleeps.append, clock=clock)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "retry budget" in msg and "data.retry_budget_s=10" in msg
    assert len(sleeps) >= 2 and all(0 <= s <= 10 for s in sleeps)
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) == len(sleeps) and url in waits[0]


def test_a_dead_source_ends_the_stream_instead_of_looping_over_its_shards():
    urls = [f"http://127.0.0.1:1/train-{i:03d}.tar" for i in range(50)]
    loader = build_train_loader(urls, retry_budget_s=0.2, **KW)
    with pytest.raises(DataError, match=r"train-0\d\d.tar: unreachable for .* retry budget") as e:
        list(loader)
    assert "\n" not in str(e.value)


def test_backoff_grows_and_is_jittered():
    url = "http://127.0.0.1:1/x.tar"
    sleeps = []
    t = [0.0]

    def clock():
        return t[0]

    def sleep(s):
        sleeps.append(s)
        t[0] += s

    with pytest.raises(remote.SourceUnavailable):
        remote.HttpShard(url, retry_budget_s=60, sleep=sleep, clock=clock)
    assert sum(sleeps) == pytest.approx(60, abs=1e-6)     # the budget, and no more
    assert max(sleeps) <= remote.BACKOFF_MAX_S
    assert sleeps[4] > sleeps[0]                          # exponential
    assert len(set(round(s, 6) for s in sleeps)) > 3      # jittered


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/a.tar", "https://127.0.0.1:1/a.tar", "sftp://127.0.0.1:1/a.tar",
                                 "gs://bucket/a.tar", "htgs://bucket/a.tar"])
def test_reading_a_url_starts_no_process(monkeypatch, url):
    # Stronger than the marker file: whatever webdataset version is installed (some build the curl command
    # with shell=True), no URL but pipe: may start a process at all.
    import subprocess

    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise OSError("no process may start here")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    try:
        list(shard_samples(url, FaultCounter(warn=False), retry_budget_s=0.05))
    except DataError:
        pass
    assert started == []


@pytest.mark.parametrize("url, why", [("http://127.0.0.1:1/shard 0.tar", "holds ' '"),
                                      ("https://127.0.0.1:1/a\tb.tar", r"holds '\\t'"), ("http:///a.tar", "has no host")])
def test_a_malformed_http_url_is_one_line_at_once_not_an_outage(url, why):
    """A space in an http URL was retried as a network fault for the whole budget (300 s by default), then
    reported as `source unavailable ... rerun to resume`, which could never succeed."""
    with pytest.raises(DataError, match=f"not a valid http.? URL: it {why}"):
        resolve_sources(url)
    clock = iter(range(1000)).__next__
    with pytest.raises(remote.HttpStatusError, match="URL"):       # final at the first answer: no wait, no retry
        remote.HttpShard(url, retry_budget_s=300, sleep=lambda s: pytest.fail("retried"), clock=clock)
