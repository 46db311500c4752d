"""The one shard writer: webdataset's `TarWriter` with fixed headers, so equal samples give equal bytes.

Every member gets mtime 0, mode 0644, uid/gid 0 and empty user/group names, so a shard's bytes depend
only on its samples (not on the clock, the user or the machine).  webdataset writes a sample's members
in sorted extension order.  Measured against a hand-written `tarfile` loop in
`benchmarks/tar_writer.py` (figures in benchmarks/RESULTS.md, "Shard format owner").

    with SampleWriter(path_or_binary_file) as w:
        w.write("s000001", {"jpg": jpeg_bytes, "txt": "a caption", "cls": "3"})

`NumberedShards` rolls over to a new numbered tar every `per_shard` samples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, List, Mapping, Optional, Union

from align.wds.format import check_key


class SampleWriter:
    """Samples -> one uncompressed tar (a path, created or replaced, or an open binary file left open)."""

    def __init__(self, target: Union[str, os.PathLike, BinaryIO]):
        from webdataset import TarWriter

        self._own = None
        if isinstance(target, (str, os.PathLike)):
            target = self._own = open(target, "wb")
        self._tar = TarWriter(target, user="", group="", mode=0o644, mtime=0, encoder=False, compress=False)
        self.samples = 0

    def write(self, key: str, members: Mapping[str, Union[bytes, str]]) -> int:
        """Write one sample (str values are UTF-8 encoded); returns its payload bytes."""
        check_key(key)
        sample = {"__key__": key}
        for ext, data in members.items():
            if not ext or "/" in ext or ext.startswith("_"):
                raise ValueError(f"sample {key!r}: extension {ext!r} cannot be written")
            sample[ext] = data.encode("utf-8") if isinstance(data, str) else data
        self.samples += 1
        return self._tar.write(sample)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()     # writes the end-of-archive blocks
            self._tar = None
        if self._own is not None:
            self._own.close()
            self._own = None

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_shard(path: Union[str, os.PathLike], samples: List[dict]) -> str:
    """[{"__key__": k, ext: bytes | str, ...}] -> one tar at `path`; returns the path as str."""
    with SampleWriter(path) as w:
        for s in samples:
            w.write(s["__key__"], {k: v for k, v in s.items() if k != "__key__"})
    return str(path)


class NumberedShards:
    """Samples into `directory/name_fn(i)` tars of at most `per_shard` samples each (i = 0, 1, ...)."""

    def __init__(self, directory: Union[str, os.PathLike], name_fn: Callable[[int], str], per_shard: int):
        self.directory, self.name_fn, self.per_shard = Path(directory), name_fn, per_shard
        self.names: List[str] = []
        self.sizes: List[int] = []
        self._w: Optional[SampleWriter] = None

    def write(self, key: str, members: Mapping[str, Union[bytes, str]]) -> None:
        if self._w is None or self.sizes[-1] >= self.per_shard:
            self.close()
            self.names.append(self.name_fn(len(self.names)))
            self.sizes.append(0)
            self._w = SampleWriter(self.directory / self.names[-1])
        self._w.write(key, members)
        self.sizes[-1] += 1

    @property
    def paths(self) -> List[str]:
        return [str(self.directory / n) for n in self.names]

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
