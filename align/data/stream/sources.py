"""Where shards come from: source specs, URL expansion, shard order and tar reading.

A *source* is one set of webdataset tar shards with a mixing weight.  Its
`urls` may be a brace pattern (`data/shard-{000..099}.tar`, several joined
with `::`), a list, a local directory (all `*.tar` in it, sorted), a local
glob, an http(s) URL (read by `align.data.stream.remote`, never through a shell), an
fsspec URL (`s3://...`, `memory://...`) or, only when explicitly allowed, a
`pipe:` URL that runs a shell command.  webdataset's own URL handlers are never
called: they paste the URL into a `curl`/`gsutil` command line.

Everything here is deterministic: the shard order of an epoch is a function
of (seed, epoch, source index) and the shards a reader gets are a function of
(rank, world_size, logical worker, number of workers), so that no sample is
read twice in an epoch and a resumed run reads the same stream again.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import urlparse

import braceexpand

from align.data.stream.remote import DEFAULT_RETRY_BUDGET_S, SourceUnavailable, malformed_http_url, open_http
from align.data.stream.faults import (CORRUPT_TAR, DUPLICATE_FILE, MISSING_SHARD, NOT_A_SAMPLE, UNREADABLE_SHARD,
                                      FaultCounter)
from align.data.stream.keys import DRAW
from align.wds.format import group_samples
from align.wds.reader import iter_tar
from align.limits import DataLimits, member_limiter
from align.errors import DataError

log = logging.getLogger("align.data")

PIPE_REFUSED = "{url}: pipe: URLs run shell commands; set data.allow_pipe: true to enable"
_GLOB_CHARS = set("*?[")
# A resampled (infinite) stream gives up after this many shards in a row
# that produced no sample: all of them missing or broken would otherwise spin forever.
MAX_EMPTY_SHARDS_IN_A_ROW = 100


@dataclass
class SourceSpec:
    """One set of shards and its mixing weight (relative, need not sum to 1)."""

    urls: str | list[str]
    weight: float = 1.0


@dataclass
class ResolvedSource:
    """A source after expansion: `name` is what the user wrote (for messages)."""

    name: str
    urls: list[str]
    weight: float


def _scheme(url: str) -> str:
    """URL scheme, '' for local paths (single letters are Windows drives, not schemes)."""
    scheme = urlparse(url).scheme
    return scheme if len(scheme) > 1 else ""


def local_path(url: str) -> str | None:
    """The local filesystem path for a plain path or file: URL, else None."""
    scheme = _scheme(url)
    if scheme == "":
        return os.path.expanduser(url)
    if scheme == "file":
        return os.path.expanduser(urlparse(url).path)
    return None


def _expand_one(entry: str, allow_pipe: bool) -> list[str]:
    """Expand one written entry (after brace expansion) into shard URLs."""
    if entry[:5].lower() == "pipe:" and not entry.startswith("pipe:"):
        # webdataset runs only a lower-case pipe:; `PIPE:cmd` would be read as a file of that name and counted as
        # an unreadable shard, hiding both the mistake and the command
        raise DataError(f"{entry}: a pipe: URL is written in lower case, and runs its shell command only with "
                        "data.allow_pipe: true")
    if entry.startswith("pipe:"):
        if not allow_pipe:
            raise DataError(PIPE_REFUSED.format(url=entry))
        return [entry]
    path = local_path(entry)
    if path is None:
        # Remote: fsspec can glob some protocols (s3://bucket/*.tar); otherwise keep as is.
        if _GLOB_CHARS & set(entry):
            try:
                import fsspec

                fs, _, paths = fsspec.get_fs_token_paths(entry)
                return sorted(fs.unstrip_protocol(p) for p in paths)
            except Exception as exn:  # unknown protocol, missing driver, no access
                raise DataError(f"{entry}: cannot list remote shards ({exn})") from None
        check_readable(entry)
        return [entry]
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not found:
            raise DataError(f"{entry}: directory contains no .tar shards")
        return found
    if _GLOB_CHARS & set(path):
        found = sorted(glob.glob(path))
        if not found:
            raise DataError(f"{entry}: pattern matches no file")
        return found
    return [path]


def expand_urls(urls: str | list[str], allow_pipe: bool = False) -> list[str]:
    """Expand a pattern / list / dir into the list of shard URLs (order kept).

    Strings are split on '::' (webdataset's separator for several patterns)
    and brace-expanded; list entries are brace-expanded too.
    """
    entries = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in entries:
        if not isinstance(item, str):
            raise DataError(f"{urls!r}: shard entries must be strings, got {type(item).__name__}")
        for part in item.split("::"):
            part = part.strip()
            if not part:
                continue
            if part.startswith("pipe:"):
                # A shell command may legitimately contain braces: do not expand it.
                out.extend(_expand_one(part, allow_pipe))
                continue
            for one in braceexpand.braceexpand(part):
                out.extend(_expand_one(one, allow_pipe))
    return out


def resolve_sources(sources, allow_pipe: bool = False, warn: bool = True) -> list[ResolvedSource]:
    """Turn what the user wrote into ResolvedSources, raising DataError on anything unusable.

    Accepts a string, a SourceSpec, a dict {"urls": ..., "weight": ...}, or a
    list of those (a list of plain strings is one source with those shards).
    warn: False where another call says it already (ranks > 0, whose launch's rank 0 warns once for all).
    """
    if isinstance(sources, (str, SourceSpec, dict)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)) or not sources:
        raise DataError(f"data sources: expected a pattern, a SourceSpec or a non-empty list, got {sources!r}")
    if all(isinstance(s, str) for s in sources):
        sources = [SourceSpec(urls=list(sources))]
    resolved = []
    for spec in sources:
        if isinstance(spec, dict):
            unknown = set(spec) - {"urls", "weight"}
            if unknown or "urls" not in spec:
                raise DataError(f"data source {spec!r}: expected keys 'urls' and optional 'weight'")
            spec = SourceSpec(**spec)
        if isinstance(spec, str):
            spec = SourceSpec(urls=spec)
        if not isinstance(spec, SourceSpec):
            raise DataError(f"data source {spec!r}: expected a pattern string or SourceSpec")
        name = spec.urls if isinstance(spec.urls, str) else ", ".join(map(str, spec.urls[:3])) + (
            ", ..." if len(spec.urls) > 3 else "")
        try:
            weight = float(spec.weight)
        except (TypeError, ValueError):
            raise DataError(f"data source {name}: weight {spec.weight!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise DataError(f"data source {name}: weight must be a positive number, got {spec.weight!r}")
        urls = expand_urls(spec.urls, allow_pipe=allow_pipe)
        if not urls:
            raise DataError(f"data source {name}: no shard URL given")
        local = [u for u in urls if local_path(u) is not None]
        missing = [u for u in local if not os.path.exists(local_path(u))]
        if local and len(missing) == len(urls):
            raise DataError(f"data source {name}: no shard found (e.g. {missing[0]} does not exist)")
        if missing and warn:
            log.warning(
                "data source %s: %d of %d shards do not exist (first: %s); they will be skipped "
                "and counted as '%s'", name, len(missing), len(urls), missing[0], MISSING_SHARD)
        resolved.append(ResolvedSource(name=name, urls=urls, weight=weight))
    return resolved


# --------------------------------------------------------------------------- shard order


def rng_for(*parts) -> random.Random:
    """A Random seeded from a tuple of ints/strings, identical in every process.

    (Python's `hash()` of strings is salted per process, and webdataset's
    `make_seed` uses it; a string seed goes through SHA-512 instead.)
    """
    return random.Random(":".join(map(str, ("align",) + parts)))


def epoch_shards(urls: list[str], *, seed: int, epoch: int, source_index: int, shuffle: bool) -> list[str]:
    """All shards of a source in this epoch's order (the same on every rank)."""
    urls = list(urls)
    if shuffle:
        rng_for("shards", seed, epoch, source_index).shuffle(urls)
    return urls


def split_shards(urls: list[str], *, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one (rank, worker) reads: split by rank, then by worker.

    urls[rank::world_size][worker::num_workers]: disjoint across all
    (rank, worker) pairs and together covering every shard.
    """
    return urls[rank::world_size][worker::num_workers]


def resampled_shards(urls: list[str], rng: random.Random) -> Iterator[str]:
    """Shards drawn with replacement, forever."""
    while True:
        yield urls[rng.randrange(len(urls))]


def mix_streams(streams: list[Iterator[dict]], weights: list[float], rng: random.Random,
                stop_at_first_end: bool = False) -> Iterator[dict]:
    """Interleave sample streams, drawing the next source with probability ~ weight.

    An exhausted source is dropped and the rest go on (so in epoch mode every
    sample is still read once); infinite (resampled) streams never end.
    stop_at_first_end: the mix ends with its first source (a resampled pass: the weights hold to its end).
    """
    alive = list(range(len(streams)))
    while alive:
        if len(alive) == 1 and not stop_at_first_end:
            yield from streams[alive[0]]
            return
        i = rng.choices(alive, weights=[weights[j] for j in alive])[0]
        try:
            yield next(streams[i])
        except StopIteration:
            if stop_at_first_end:
                return
            alive.remove(i)


# --------------------------------------------------------------------------- reading


def _fsspec_knows(scheme: str) -> bool:
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)  # ImportError when the driver (s3fs, gcsfs, ...) is missing
        return True
    except (ImportError, ValueError):
        return False


def check_readable(url: str) -> None:
    """DataError at build time for a URL scheme nothing here can read (e.g. a typo'd 's3x://')."""
    scheme = _scheme(url)
    if scheme in ("http", "https"):
        why = malformed_http_url(url)
        if why:
            raise DataError(f"{url!r}: not a valid {scheme} URL: it {why}")
        return
    if scheme in ("", "file", "pipe") or _fsspec_knows(scheme):
        return
    raise DataError(f"{url}: cannot read URL scheme '{scheme}:' (install its fsspec driver, e.g. s3fs or gcsfs)")


def open_shard(url: str, allow_pipe: bool = False, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S):
    """Open one shard for binary reading (caller closes it).

    Local paths and file: URLs use open(); http(s) the standard library (align.data.stream.remote, with
    retries); other protocols fsspec when it has the driver.  Only a `pipe:` URL, and only with
    allow_pipe, runs a command: a URL is data, whatever characters it holds.
    """
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise DataError(PIPE_REFUSED.format(url=url))
        from webdataset.gopen import gopen_schemes

        return gopen_schemes["pipe"](url, "rb", 8192)
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    scheme = _scheme(url)
    if scheme in ("http", "https"):
        return open_http(url, retry_budget_s=retry_budget_s)
    if _fsspec_knows(scheme):
        import fsspec

        return fsspec.open(url, "rb").open()
    raise OSError(f"no reader for URL scheme '{scheme}:' (install its fsspec driver)")


def shard_samples(url: str, faults: FaultCounter, allow_pipe: bool = False,
                  retry_budget_s: float = DEFAULT_RETRY_BUDGET_S, limits: DataLimits | None = None) -> Iterator[dict]:
    """Yield raw samples {"__key__", "__url__", ext: bytes, ...} from one tar shard.

    A missing / unopenable shard is counted and yields nothing; a truncated or
    corrupt tar is counted once and yields the complete samples before the
    damage (the sample being read when it broke is dropped with the shard fault,
    see `align.wds.format.group_samples`).  A repeated extension within a sample
    is counted as a duplicate file and dropped.  A member over its size limit (`limits`, data.limits)
    is never read: it arrives as an `align.wds.reader.Oversize` marker, which the decoder counts.
    """
    try:
        stream = open_shard(url, allow_pipe=allow_pipe, retry_budget_s=retry_budget_s)
    except DataError:
        raise
    except FileNotFoundError as exn:
        faults.record(MISSING_SHARD, f"shard {url}", str(exn), per_sample=False, shard=url)
        return
    except Exception as exn:  # permissions, network, unknown scheme
        faults.record(UNREADABLE_SHARD, f"shard {url}", repr(exn), per_sample=False, shard=url)
        return

    def duplicate(name: str) -> None:
        faults.record(DUPLICATE_FILE, f"file {name} in {url}", "", per_sample=False)

    def ignored(name: str) -> None:
        faults.record(NOT_A_SAMPLE, f"file {name} in {url}", "", per_sample=False)

    try:
        for sample in group_samples(iter_tar(stream, member_limiter(limits)), duplicate, ignored):
            sample["__url__"] = url
            yield sample
    except SourceUnavailable:
        raise                 # the source is gone: stop the stream, never loop over its other shards
    except (tarfile.TarError, EOFError, zlib.error) as exn:
        faults.record(CORRUPT_TAR, f"shard {url}", repr(exn), per_sample=False, shard=url)
    except OSError as exn:  # read error mid-stream (network, pipe exit status)
        faults.record(UNREADABLE_SHARD, f"shard {url}", repr(exn), per_sample=False, shard=url)
    finally:
        try:
            stream.close()
        except Exception:  # a pipe's exit status on early close is not a data fault
            pass


def samples_from_shards(urls: Iterable[str], faults: FaultCounter, *, allow_pipe: bool = False,
                        infinite: bool = False, name: str = "",
                        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
                        limits: DataLimits | None = None, stream_id: str = "") -> Iterator[dict]:
    """Chain the samples of a sequence of shards.

    For an infinite (resampled) shard sequence, each sample also carries DRAW = "STREAM_ID/k": which stream
    (`stream_id`, e.g. its rank and worker) and which draw k of its sequence it came from (the decoder seeds
    each reading of a sample apart by it), and the stream stops with DataError after MAX_EMPTY_SHARDS_IN_A_ROW
    shards in a row gave no sample.
    """
    empty = 0
    for draw, url in enumerate(urls):
        got = False
        for sample in shard_samples(url, faults, allow_pipe=allow_pipe, retry_budget_s=retry_budget_s,
                                    limits=limits):
            got = True
            if infinite:
                sample[DRAW] = f"{stream_id}/{draw}"
            yield sample
        empty = 0 if got else empty + 1
        if infinite and empty >= MAX_EMPTY_SHARDS_IN_A_ROW:
            raise DataError(
                f"data source {name}: the last {empty} shards drawn gave no sample "
                f"(last: {url}); are the shards missing or broken?")
