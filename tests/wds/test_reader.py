"""The fast tar member reader against Python's tarfile as the reference, and its fault behaviour."""

import gzip
import io
import tarfile

import numpy as np
import pytest

from align.data.faults import CORRUPT_TAR, FaultCounter
from align.data.sources import shard_samples
from align.wds.reader import BLOCK, iter_tar

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


def test_cut_inside_a_member_names_it_and_a_cut_on_a_header_boundary_is_a_clean_end():
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
    assert list(iter_tar(io.BytesIO(data[:2 * BLOCK]))) == [("a.txt", b"z" * 10)]


def test_a_cut_in_the_next_sample_keeps_the_complete_one_before_it(tmp_path):
    path = write_shard(tmp_path / "s.tar", [
        {"__key__": "k0", "txt": "zero", "bin": b"q" * 700},
        {"__key__": "k1", "txt": "one", "bin": b"r" * 3000},
    ])
    data = open(path, "rb").read()
    # k0 is 2 members (txt 1+1 blocks, bin 1+2 blocks); cut inside k1's second member.
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:5 * BLOCK + 2 * BLOCK + BLOCK + 100])
    faults = FaultCounter()
    got = list(shard_samples(str(cut), faults))
    assert [s["__key__"] for s in got] == ["k0"]
    assert faults.total == {CORRUPT_TAR: 1}
    # Cut inside k1's first member: k0 is still complete and kept.
    cut.write_bytes(data[:5 * BLOCK + BLOCK + 1])
    faults = FaultCounter()
    assert [s["__key__"] for s in shard_samples(str(cut), faults)] == ["k0"]
    assert faults.total == {CORRUPT_TAR: 1}
