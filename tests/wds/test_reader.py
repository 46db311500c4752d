"""The fast tar member reader against Python's tarfile as the reference, and its fault behaviour."""

import gzip
import io
import tarfile

import numpy as np
import pytest

from align.data.stream.faults import CORRUPT_TAR, FaultCounter
from align.data.stream.sources import shard_samples
from align.wds.reader import BLOCK, index_members, iter_tar

from tests.wds_helpers import write_shard


def reference(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def random_tar(rng, fmt) -> bytes:
    """Random members: long names (GNU L / pax / ustar prefix), non-ASCII names, empty files, a dir, a link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i in range(int(rng.integers(1, 30))):
            depth = int(rng.integers(0, 4))
            parts = ["d" * int(rng.integers(1, 60)) for _ in range(depth)]
            name = "/".join(parts + [f"s{i:03d}é" + "x" * int(rng.integers(0, 120)) + ".bin"])
            if fmt == tarfile.USTAR_FORMAT and (len(name.encode()) > 255 or len(name.split("/")[-1].encode()) > 100):
                name = f"short{i}.bin"
            size = int(rng.choice([0, 1, 511, 512, 513, int(rng.integers(0, 5000))]))
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
            if rng.random() < 0.2:
                d = tarfile.TarInfo(f"dir{i}")
                d.type = tarfile.DIRTYPE
                tar.addfile(d)
            if rng.random() < 0.2:
                ustar = fmt == tarfile.USTAR_FORMAT
                link = tarfile.TarInfo(f"link{i}" if ustar else f"link{i}" + "y" * 150)
                link.type, link.linkname = tarfile.SYMTYPE, "target" if ustar else name  # GNU: a K member
                tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile_on_random_archives(fmt):
    rng = np.random.default_rng(fmt)
    for _ in range(25):
        data = random_tar(rng, fmt)
        assert list(iter_tar(io.BytesIO(data))) == reference(data)


def test_compressed_archive_goes_through_tarfile():
    data = random_tar(np.random.default_rng(7), tarfile.PAX_FORMAT)
    packed = gzip.compress(data)
    assert list(iter_tar(io.BytesIO(packed))) == reference(data)


class Trickle(io.RawIOBase):
    """A stream that returns at most 100 bytes per read, as a pipe may."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n=-1):
        n = 100 if n is None or n < 0 else min(n, 100)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def test_short_reads_are_completed():
    data = random_tar(np.random.default_rng(3), tarfile.GNU_FORMAT)
    assert list(iter_tar(Trickle(data))) == reference(data)


def test_bad_checksum_is_a_read_error_not_a_silent_end():
    data = bytearray(random_tar(np.random.default_rng(5), tarfile.USTAR_FORMAT))
    members = reference(bytes(data))
    assert len(members) >= 2
    # Corrupt the second regular member's header name: tarfile's stream mode would just stop there.
    second = BLOCK + -(-len(members[0][1]) // BLOCK) * BLOCK
    data[second] ^= 0x55
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_tar(io.BytesIO(bytes(data))))


def test_cut_inside_a_member_names_it_and_a_cut_on_a_header_boundary_is_a_fault():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, size in [("a.txt", 10), ("b.bin", 2000)]:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"z" * size))
    data = buf.getvalue()
    with pytest.raises(EOFError) as exc:
        list(iter_tar(io.BytesIO(data[:3 * BLOCK + 100])))
    assert exc.value.member == "b.bin"
    with pytest.raises(EOFError):
        list(iter_tar(io.BytesIO(data[:2 * BLOCK + 100])))   # cut inside b.bin's header
    # Cut between members: every writer ends an archive with zero blocks, so their absence is a cut
    # (tarfile's stream mode would end quietly here). The member before the cut is still read whole.
    got = []
    with pytest.raises(EOFError, match="end-of-archive marker"):
        for member in iter_tar(io.BytesIO(data[:2 * BLOCK])):
            got.append(member)
    assert got == [("a.txt", b"z" * 10)]
    with pytest.raises(EOFError, match="end-of-archive marker"):
        list(iter_tar(io.BytesIO(b"")))                       # an empty file is no tar either
    assert list(iter_tar(io.BytesIO(data[:4 * BLOCK + 2048]))) == reference(data)  # one zero block


def _old_style(data: bytes) -> bytes:
    """Rewrite every regular member's typeflag '0' as NUL (pre-POSIX tar), and every directory's '5' as
    NUL with a trailing slash on its name (how such tars mark directories), fixing the checksums."""
    out, pos = bytearray(data), 0
    while pos + BLOCK <= len(out) and any(out[pos:pos + BLOCK]):
        header = out[pos:pos + BLOCK]
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        if header[156:157] == b"5":
            end = header.index(0)
            assert end < 99
            header[end] = ord("/")
        if header[156:157] in (b"0", b"5"):
            header[156] = 0
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header)
            out[pos:pos + BLOCK] = header
        pos += BLOCK + -(-size // BLOCK) * BLOCK
    return bytes(out)


def test_old_style_regular_files_typeflag_nul_are_members_like_tarfile_reads_them():
    rng, dirs = np.random.default_rng(11), 0
    for _ in range(8):
        data = _old_style(random_tar(rng, tarfile.USTAR_FORMAT))
        assert b"0" not in bytes(data[156:157])
        ref = reference(data)
        assert ref and list(iter_tar(io.BytesIO(data))) == ref
        dirs += data.count(b"/\0")
    assert dirs  # some archives held NUL-typed directories, which tarfile (and the reader) skip


def _signed_checksums(data: bytes) -> bytes:
    """Store each header's checksum as the sum of its bytes read as *signed* chars (old Sun/ BSD tars)."""
    out, pos = bytearray(data), 0
    while pos + BLOCK <= len(out) and any(out[pos:pos + BLOCK]):
        header = out[pos:pos + BLOCK]
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        header[148:156] = b" " * 8
        signed = sum(b - 256 if b > 127 else b for b in header)
        header[148:156] = b"%06o\0 " % signed
        out[pos:pos + BLOCK] = header
        pos += BLOCK + -(-size // BLOCK) * BLOCK
    return bytes(out)


def test_signed_checksum_fallback_matches_tarfile():
    # Non-ASCII names put bytes > 127 into the headers, where signed and unsigned sums differ.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, name in enumerate(["ünïcödé.txt", "ascii.bin", "日本.txt"]):
            info = tarfile.TarInfo(name)
            info.size = 100 * i
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    data = _signed_checksums(buf.getvalue())
    assert data != buf.getvalue()          # the checksums really changed
    ref = reference(data)
    assert [n for n, _ in ref] == ["ünïcödé.txt", "ascii.bin", "日本.txt"]
    assert list(iter_tar(io.BytesIO(data))) == ref
    bad = bytearray(data)
    bad[148:154] = b"%06o" % (int(bytes(bad[148:154]), 8) + 1)  # neither sum: still a fault
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_tar(io.BytesIO(bytes(bad))))


def test_index_members_gives_byte_ranges_and_skips_unwanted_data(tmp_path):
    data = random_tar(np.random.default_rng(13), tarfile.PAX_FORMAT)
    path = tmp_path / "x.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        index = list(index_members(f, want=lambda name: name.endswith("0.bin")))
    ref = reference(data)
    assert [n for n, _, _, _ in index] == [n for n, _ in ref]
    for (name, offset, size, got), (_, content) in zip(index, ref):
        assert data[offset:offset + size] == content and size == len(content)
        assert got == (content if name.endswith("0.bin") else None)


def test_a_cut_in_the_next_sample_keeps_the_complete_one_before_it(tmp_path):
    path = write_shard(tmp_path / "s.tar", [
        {"__key__": "k0", "txt": "zero", "bin": b"q" * 700},
        {"__key__": "k1", "txt": "one", "bin": b"r" * 3000},
    ])
    data = open(path, "rb").read()
    # k0 is 2 members (bin 1+2 blocks, txt 1+1: the writer sorts extensions); cut inside k1's bin.
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:5 * BLOCK + 2 * BLOCK + BLOCK + 100])
    faults = FaultCounter()
    got = list(shard_samples(str(cut), faults))
    assert [s["__key__"] for s in got] == ["k0"]
    assert faults.total == {CORRUPT_TAR: 1}
    # Cut just after k1's first header: k0 is still complete and kept.
    cut.write_bytes(data[:5 * BLOCK + BLOCK + 1])
    faults = FaultCounter()
    assert [s["__key__"] for s in shard_samples(str(cut), faults)] == ["k0"]
    assert faults.total == {CORRUPT_TAR: 1}


# -- sizes from the header are not trusted (issue 24) --------------------------------------------------------

class _NoBigReads(io.BytesIO):
    """A non-seekable stream that fails the test on any read larger than `most` bytes."""

    def __init__(self, data: bytes, most: int):
        super().__init__(data)
        self.most = most

    def read(self, n=-1):
        assert n is not None and 0 <= n <= self.most, f"read({n}) of a stream holding {len(self.getvalue())} bytes"
        return super().read(n)

    def seekable(self):
        return False


def _two_sample_shard(tmp_path, claim: int) -> str:
    from tests.wds_helpers import image_text, set_member_size

    path = write_shard(tmp_path / "s.tar", [image_text("a", 1), image_text("b", 2), image_text("c", 3)])
    set_member_size(path, "b.jpg", claim)
    return path


@pytest.mark.parametrize("claim", [50 * 2 ** 30, 8 ** 11 - 1, 2 ** 80])   # 50 GB, octal max, base-256
def test_a_header_claiming_50_gb_drops_the_shard_rest_without_reading_it(tmp_path, claim):
    """A flipped size field after one good sample: the good sample is kept, the shard counted as corrupt
    (its rest cannot be trusted) and no read asks for more than the limit (was: MemoryError)."""
    path = _two_sample_shard(tmp_path, claim)
    faults = FaultCounter(warn=False)
    assert [s["__key__"] for s in shard_samples(path, faults)] == ["a"]
    assert dict(faults.total) == {CORRUPT_TAR: 1}
    # an unseekable stream of unknown length: stepped over in bounded reads, until the stream ends
    data = open(path, "rb").read()
    with pytest.raises(EOFError):
        list(iter_tar(_NoBigReads(data, most=1 << 20)))


def test_a_member_over_its_limit_is_stepped_over_and_the_next_sample_read(tmp_path):
    from align.limits import JSON_TOO_LARGE, MEMBER_TOO_LARGE, TEXT_TOO_LONG, member_limiter
    from align.wds.reader import Oversize
    from tests.wds_helpers import image_text

    big = {"__key__": "big", "jpg": b"\xff" * 5000, "txt": "x" * 300, "json": "[" + "1," * 400 + "1]"}
    path = write_shard(tmp_path / "s.tar", [image_text("a", 1), big, image_text("c", 3)])
    limits = member_limiter({"max_member_bytes": 4096, "max_text_bytes": 200, "max_json_bytes": 500})
    got = dict(iter_tar(open(path, "rb"), limits))
    assert got["big.jpg"] == Oversize(MEMBER_TOO_LARGE, 5000, 4096)
    assert got["big.txt"] == Oversize(TEXT_TOO_LONG, 300, 200)
    assert got["big.json"] == Oversize(JSON_TOO_LARGE, 803, 500)
    assert got["c.jpg"] == image_text("c", 3)["jpg"]
    # the same through an unseekable stream: stepped over in reads of at most 1 MiB, the next sample intact
    members = dict(iter_tar(_NoBigReads(open(path, "rb").read(), most=1 << 20), limits))
    assert members == got


@pytest.mark.parametrize("kind", [b"L", b"x"])
def test_a_giant_long_name_header_is_damage(tmp_path, kind):
    """A GNU long-name or pax header claiming 1 GB is not read as a name: the shard's rest is dropped."""
    from tests.wds_helpers import image_text

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    data = bytearray(buf.getvalue())
    header = bytearray(512)
    header[:13] = b"././@LongLink"
    header[124:136] = b"%011o\x00" % (1 << 30)
    header[156:157] = kind
    header[257:265] = b"ustar  \x00"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    stream = _NoBigReads(bytes(data[:1024]) + bytes(header) + bytes(data[1024:]), most=1 << 20)
    with pytest.raises(tarfile.ReadError, match="long-name header"):
        list(iter_tar(stream))


def test_the_format_caps_members_without_align_limits_and_names_the_same_reason():
    # align.wds imports nothing else of align: its default cap and reason mirror align.limits
    from align import limits
    from align.wds import reader

    assert reader.MEMBER_TOO_LARGE == limits.MEMBER_TOO_LARGE
    assert reader.default_member_limit("x.jpg") == (reader.DEFAULT_MAX_MEMBER_BYTES, limits.MEMBER_TOO_LARGE)
    assert reader.DEFAULT_MAX_MEMBER_BYTES >= limits.DEFAULT_LIMITS.max_member_bytes
