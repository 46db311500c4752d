"""A streaming reader of uncompressed tar members: (name, bytes) in archive order.

Python's `tarfile` in stream mode costs ~85 µs per member (a TarInfo object,
its field parsing, an ExFileObject per read); a shard sample has 3-5 members,
so on a small machine tar parsing alone was ~0.35 ms per sample.  This reader
parses the 512-byte headers directly: ustar/POSIX (with the name prefix),
GNU long names (`L`) and pax `path` records (`x`), which covers what
webdataset, GNU tar and Python's tarfile write.  Compressed archives
(gzip/bzip2/xz) go through `tarfile` instead (see `iter_tar`).

Faults are stricter than `tarfile`'s stream mode, which silently stops at a
damaged header after the first member: here a bad checksum raises
`tarfile.ReadError` and a member cut short raises `EOFError`, so the caller
counts the shard as corrupt.  Every tar writer ends an archive with zero
blocks; a stream that ends on a header boundary without them was cut there
(a copy or a download stopped between members), so that raises `EOFError`
too.  `index_members` walks a seekable file the same way but skips the data
of members the caller does not want, for readers that keep byte ranges.

Sizes come from the input, so none is trusted: a member larger than its limit
(`limits`, name -> (bytes, reason): `align.limits.member_limiter(data.limits)`) is stepped over unread and
yielded as an `Oversize` marker, so the caller skips that sample under the limit's reason and goes on
with the next member.  A header whose size runs past the end of a file of known length, or a long-name
header (GNU `L`, pax `x`) larger than `MAX_NAME_HEADER`, cannot be trusted: that raises `EOFError` or
`tarfile.ReadError` before anything is read, and the caller drops the rest of the shard.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Tuple


BLOCK = 512
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
_REGULAR = (b"0", b"\x00", b"7")
_NAME_HEADERS = (b"L", b"x")       # GNU long name, pax extended header: their data is read (a name)
MAX_NAME_HEADER = 1 << 20          # bytes; a longer name header is damage, not a name
_SKIP_CHUNK = 1 << 20              # bytes read at a time when stepping over data of an unseekable stream


@dataclass(frozen=True)
class Oversize:
    """Stands for the data of a member over its limit (never read): the sample is skipped as `reason`."""

    reason: str
    size: int
    limit: int

    def __len__(self) -> int:
        return self.size

    def describe(self, name: str) -> str:
        return f"{name}: {self.size} bytes, over the limit of {self.limit}"


def _file_end(stream) -> int | None:
    """The length of a regular file behind `stream`, or None (a pipe, a socket, a BytesIO of unknown end)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is both
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _skip(stream: BinaryIO, n: int, seekable: bool) -> None:
    """Step over n bytes without keeping them: seek, or read and drop bounded chunks."""
    if seekable:
        stream.seek(n, 1)  # past the end of a cut file: caught when the next header is read
        return
    while n:
        got = len(_read_exact(stream, min(n, _SKIP_CHUNK), "a tar member"))
        n -= got


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise tarfile.ReadError(f"bad numeric field {field!r} in a tar header") from None


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) == n:
        return data
    chunks, got = [data], len(data)
    while got < n:  # pipes and sockets may return short reads before the end
        more = stream.read(n - got)
        if not more:
            raise EOFError(f"unexpected end of data in {what} ({got} of {n} bytes)")
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> key=value\\n" records)."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise tarfile.ReadError("bad pax header record") from None
        if length <= 0:
            raise tarfile.ReadError("bad pax header record")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += length
    return None


def _walk(stream: BinaryIO, first: bytes, want, limits: MemberLimit,
          ) -> Iterator[tuple[str, int, int, bytes | Oversize | None]]:
    """(name, data offset, size, data) of each regular file; want(name) False: data None, skipped by seek.

    A member over its limit gives an `Oversize` marker as its data (its bytes are stepped over)."""
    pending, pos = first, 0
    end = _file_end(stream)
    seekable = want is not None or (end is not None and _seekable(stream))
    long_name: str | None = None
    while True:
        header, pending = (pending or stream.read(BLOCK)), b""
        if not header:
            raise EOFError("tar ends without its end-of-archive marker (cut between members)")
        if len(header) < BLOCK:
            header += _read_exact(stream, BLOCK - len(header), "a tar header")
        pos += BLOCK
        if header.count(0) == BLOCK:
            return  # end-of-archive marker
        stored = _number(header[148:156])
        computed = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
        high = sum(1 for b in header[:148] + header[156:] if b > 127) if stored != computed else 0
        if stored != computed and stored != computed - 256 * high:  # some writers sum signed bytes
            raise tarfile.ReadError(f"bad tar header checksum (stored {stored}, computed {computed})")
        size = _number(header[124:136])
        if size < 0:
            raise tarfile.ReadError(f"negative member size {size} in a tar header")
        kind = header[156:157]
        name = _member_name(header, kind, long_name)
        if name is not None:
            long_name = None
        padded = size + -size % BLOCK
        offset = pos
        if end is not None and pos + padded > end:
            # Cannot be: the header claims more data than the file holds (a flipped bit, or a cut file).
            exn = EOFError(f"tar member {name or kind!r} claims {size} bytes, past the end of the "
                           f"file ({end - pos} bytes left)")
            exn.member = name
            raise exn
        if kind in _NAME_HEADERS and size > MAX_NAME_HEADER:
            raise tarfile.ReadError(f"a {size}-byte long-name header (type {kind.decode('latin-1')!r}): damage")
        try:
            data = _member_data(stream, name, kind, size, padded, want, limits, seekable)
        except EOFError as exn:
            exn.member = name  # lets the caller tell which sample was cut
            raise
        pos += padded
        if kind == b"L":      # GNU long name: the data is the next member's name
            long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":    # pax extended header for the next member
            long_name = _pax_path(data) or long_name
        elif name is not None:
            yield name, offset, size, data
        else:
            long_name = None  # a directory, link, ...: its long name does not carry over


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _member_name(header: bytes, kind: bytes, long_name: str | None) -> str | None:
    """The name of a regular file member (None for anything else: a directory, link, device, ...)."""
    if kind not in _REGULAR:  # "0", and "\0" of pre-POSIX writers, and "7" (contiguous file)
        return None
    if long_name is not None:
        return long_name
    raw = header[:100].split(b"\x00", 1)[0]
    if header[257:263] == b"ustar\x00":  # POSIX ustar: a name prefix lives at 345
        prefix = header[345:500].split(b"\x00", 1)[0]
        if prefix:
            raw = prefix + b"/" + raw
    name = raw.decode("utf-8", "surrogateescape")
    if kind == b"\x00" and name.endswith("/"):
        return None  # pre-POSIX tar marks a directory by its trailing slash alone
    return name


# The format imports nothing else of align: the limits come in as a function, name -> (max bytes, reason)
# (align.limits.member_limiter(data.limits) builds it); without one, this cap and reason hold.
MemberLimit = Callable[[str], Tuple[int, str]]
MEMBER_TOO_LARGE = "member too large"          # = align.limits.MEMBER_TOO_LARGE (tests/wds/test_reader.py)
DEFAULT_MAX_MEMBER_BYTES = 1 << 30


def default_member_limit(name: str) -> Tuple[int, str]:
    return DEFAULT_MAX_MEMBER_BYTES, MEMBER_TOO_LARGE


def _member_data(stream, name, kind, size, padded, want, limits, seekable):
    """Read (or step over) one member's data and padding: bytes, an Oversize marker, or None (not wanted)."""
    if kind not in _NAME_HEADERS:
        if name is None or (want is not None and not want(name)):
            _skip(stream, padded, seekable)   # a directory, link, device or unwanted member: never read
            return None
        limit, reason = limits(name)
        if size > limit:
            _skip(stream, padded, seekable)
            return Oversize(reason, size, limit)
    data = _read_exact(stream, size, "a tar member") if size else b""
    if padded - size:
        _read_exact(stream, padded - size, "tar padding")
    return data


def iter_members(stream: BinaryIO, first: bytes = b"", limits: MemberLimit | None = None,
                 ) -> Iterator[tuple[str, bytes | Oversize]]:
    """(name, data) of each regular file in an uncompressed tar stream; data is an `Oversize` marker for a
    member over its limit (`limits`: name -> (max bytes, reason), e.g. align.limits.member_limiter).

    first: bytes already read from the stream's start (at most one header block).
    """
    for name, _, _, data in _walk(stream, first, None, limits or default_member_limit):
        yield name, data


def index_members(f: BinaryIO, want, limits: MemberLimit | None = None,
                  ) -> Iterator[tuple[str, int, int, bytes | Oversize | None]]:
    """(name, data offset, size, data or None) of each regular file of an uncompressed tar file.

    want(name) -> bool: whether to read that member's data; the others are skipped with seek and
    can be read later from their byte range (offset, size).  Faults as `iter_members`.
    """
    first = f.read(BLOCK)
    if first.startswith(_COMPRESSED):
        raise tarfile.ReadError("compressed tar: byte ranges need an uncompressed archive")
    return _walk(f, first, want, limits or default_member_limit)


def iter_tar(stream: BinaryIO, limits: MemberLimit | None = None) -> Iterator[tuple[str, bytes | Oversize]]:
    """(name, data) of each regular file: the fast reader, or `tarfile` for a compressed archive."""
    limits = limits or default_member_limit
    first = stream.read(BLOCK)
    if not first.startswith(_COMPRESSED):
        yield from iter_members(stream, first, limits)
        return
    tar = tarfile.open(fileobj=_Prepended(first, stream), mode="r|*")
    for info in tar:
        if info.isreg():
            limit, reason = limits(info.name)
            # tarfile steps over the data of a member that is not extracted
            yield info.name, (Oversize(reason, info.size, limit) if info.size > limit
                              else tar.extractfile(info).read())
        tar.members = []  # streaming: do not keep every header in memory


class _Prepended:
    """A read-only stream: `head` bytes, then the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.stream.read(n - len(out))
