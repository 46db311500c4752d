"""Remote shards over http(s), read by the standard library: a URL is data, never part of a command.

webdataset reads http(s) (and sftp, scp, gs, ais) by pasting the URL into a `curl`/`gsutil` command
line run with `shell=True`, so a URL holding `'$(...)'` runs that command.  align never calls those
handlers: http(s) goes through `urllib.request` here, other remote schemes through fsspec.

Transient failures (connection refused or reset, timeouts, HTTP 5xx and 429) are retried with
exponential backoff and full jitter until a time budget is spent; a read cut off mid-stream resumes
with a `Range` request from the byte reached.  4xx answers are final.  Each wait prints one line
saying what it waits for.  When the budget is spent, `SourceUnavailable` names the URL: the stream
stops instead of turning a dead server into a loop over failing shards.
"""

from __future__ import annotations

import http.client
import io
import logging
import random
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from align.errors import SourceUnavailable

log = logging.getLogger("align.data")

DEFAULT_RETRY_BUDGET_S = 300.0     # how long a source may stay unreachable before the run stops
CONNECT_TIMEOUT_S = 30.0           # per attempt: connect and each read
BACKOFF_FIRST_S = 0.5              # a retry waits a random 50-100 % of FIRST * 2**attempt, at most MAX
BACKOFF_MAX_S = 30.0
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def malformed_http_url(url: str) -> str | None:
    """Why `url` can never be fetched (no retry makes it valid), or None: what http.client refuses in a request
    line (a space, a tab, a control character), or no host."""
    bad = re.search(r"[\x00-\x20\x7f]", url)
    if bad:
        return f"holds {bad.group()!r} (percent-encode it, e.g. a space as %20)"
    return None if urllib.parse.urlsplit(url).hostname else "has no host"


class HttpStatusError(OSError):
    """A final (non-retried) HTTP answer, e.g. 403; 404 is raised as FileNotFoundError."""


def _transient(exn: BaseException) -> bool:
    if isinstance(exn, (http.client.InvalidURL, ValueError)):   # a malformed URL: no retry makes it valid
        return False
    if isinstance(exn, urllib.error.HTTPError):
        return exn.code in _RETRY_STATUS
    return isinstance(exn, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                            http.client.HTTPException, OSError))


class HttpShard(io.RawIOBase):
    """A streaming GET of one URL as a read-only binary file, resumed after transient failures."""

    def __init__(self, url: str, *, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
                 timeout_s: float = CONNECT_TIMEOUT_S, sleep=time.sleep, clock=time.monotonic):
        super().__init__()
        self.url = url
        self.retry_budget_s = float(retry_budget_s)
        self.timeout_s = timeout_s
        self._sleep, self._clock = sleep, clock
        self._pos = 0            # bytes handed to the reader so far
        self._end = None         # total size from Content-Length, when the server sent one
        self._resp = None
        self._rng = random.Random()
        self._connect()

    def readable(self) -> bool:
        return True

    def _open_once(self):
        req = urllib.request.Request(self.url, headers={"User-Agent": "align"})
        if self._pos:
            req.add_header("Range", f"bytes={self._pos}-")
        resp = urllib.request.urlopen(req, timeout=self.timeout_s)  # noqa: S310 (http/https only, checked by caller)
        if self._pos and resp.status != 206:
            # The server ignored Range: skip what was already read.
            left = self._pos
            while left:
                chunk = resp.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("stream ended before the resume point")
                left -= len(chunk)
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and self._end is None:
            self._end = self._pos + int(length) if resp.status == 206 else int(length)
        return resp

    def _connect(self, first_error: BaseException | None = None) -> None:
        """Open (or reopen at self._pos), retrying transient errors until the budget is spent."""
        start, attempt, exn = self._clock(), 0, first_error
        why = malformed_http_url(self.url)
        if why:
            raise HttpStatusError(f"{self.url}: not a valid URL: it {why}")
        while True:
            if exn is not None:
                if isinstance(exn, urllib.error.HTTPError) and exn.code == 404:
                    raise FileNotFoundError(f"{self.url}: HTTP 404 not found")
                if not _transient(exn):
                    raise HttpStatusError(f"{self.url}: {exn}")
                spent = self._clock() - start
                if spent >= self.retry_budget_s:
                    raise SourceUnavailable(
                        f"{self.url}: unreachable for {spent:.1f} s, the retry budget "
                        f"(data.retry_budget_s={self.retry_budget_s:g}); last error: {_reason(exn)}")
                wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt) * self._rng.uniform(0.5, 1.0)
                wait = min(wait, max(0.0, self.retry_budget_s - spent))
                log.warning("shard %s: %s; retrying in %.1f s (%.0f of %g s budget spent)",
                            self.url, _reason(exn), wait, spent, self.retry_budget_s)
                self._sleep(wait)
                attempt += 1
            try:
                self._resp = self._open_once()
                return
            except Exception as e:  # classified above on the next turn
                exn = e

    def readinto(self, b) -> int:
        while True:
            try:
                n = self._resp.readinto(b)
                if n == 0 and len(b) and self._end is not None and self._pos < self._end:
                    # http.client returns 0 when the connection drops before Content-Length
                    raise ConnectionError(f"connection closed at byte {self._pos} of {self._end}")
                self._pos += n
                return n
            except Exception as exn:  # a cut mid-stream: reopen at the byte reached
                self._close_resp()
                self._connect(exn)

    def _close_resp(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:
                pass
            self._resp = None

    def close(self) -> None:
        self._close_resp()
        super().close()


def _reason(exn: BaseException) -> str:
    if isinstance(exn, urllib.error.HTTPError):
        return f"HTTP {exn.code}"
    if isinstance(exn, urllib.error.URLError):
        return str(exn.reason)
    return f"{type(exn).__name__}: {exn}"


def open_http(url: str, *, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S) -> io.BufferedReader:
    """A buffered binary reader over an http(s) URL (see HttpShard)."""
    return io.BufferedReader(HttpShard(url, retry_budget_s=retry_budget_s), buffer_size=1 << 16)
