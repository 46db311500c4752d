"""A CSV / TSV / JSONL / Parquet file as an `Input` of align.data.write.inputs (`TableInput`), read in chunks.

`open_input` opens one for a file of a TABLE_SUFFIXES suffix. The table is never held whole: a billion-row CSV was
a Python dict per row before its first shard was written.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from align.data.write.input_base import Input, Row, hash_file
from align.errors import DataError
from align.wds.format import file_modality


def _first_bad_byte(path: Path, e: UnicodeDecodeError, block: int = 1 << 20) -> str:
    """Where the file stops being UTF-8, as a person finds it: byte offset and line. The error a reader raises
    counts from the start of its own buffer (pandas decodes in chunks), not of the file. Read a block at a time."""
    import codecs
    import itertools
    decoder, offset, lines = codecs.getincrementaldecoder("utf-8")(), 0, 0
    with open(path, "rb") as f:
        for data in itertools.chain(iter(lambda: f.read(block), b""), [b""]):
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as bad:   # bad.object: the decoder's held bytes (no newline among them) + data
                at = offset - (len(bad.object) - len(data)) + bad.start
                line = lines + bad.object.count(b"\n", 0, bad.start) + 1
                return f"{bad.reason} at byte {at}, line {line}"
            offset, lines = offset + len(data), lines + data.count(b"\n")
    return f"{e.reason}"


class TableInput(Input):
    """CSV / TSV / JSONL / Parquet file. CSV cells stay strings (no NA guessing).

    The table is never held whole: it is read in chunks of CHUNK_ROWS rows, once when opened (to check that it
    parses, count the rows and find the columns; a file pandas or pyarrow cannot parse is refused there, in one line,
    before any shard is written) and then forward as the shards are written (`rows`: the chunk that holds the row
    asked for is kept until a later one is needed; an earlier row reads the file again from its start, or for
    Parquet from the row group that holds it). A CSV of a billion rows was held as a Python dict per row (~1 KB a
    row). Only `rows` makes a Row (that dict) of every row: the first read, and `iter_column`'s, make none past the
    first SNIFF_ROWS (they made one of every row: ~3/4 of a CSV's reading time, in each read before the shards).
    The first read cannot be the writing one: the shards' boundaries, job.json's row count, a cached table's shard
    size and the workers' shares need the row count, and every sample a JSONL's columns, before the first shard."""

    _lazy = ("_cursor",)
    CHUNK_ROWS = 10_000

    def __init__(self, path: Path, fmt: str):
        super().__init__(str(path), path.parent)
        self.path, self.kind = path, fmt
        self._cursor: Optional[_Cursor] = None
        self._n = 0
        head = self._scan()
        self.kinds = self._kinds_by_suffix(head)

    # A column whose first values all name files of one modality holds that modality: `path` of a speech CSV
    # holds audio (the name alone says image, AUTO_COLUMNS), and `data.train=speech.csv` has no --audio-col.
    SNIFF_ROWS = 20

    def _kinds_by_suffix(self, head: List[Row]) -> Dict[str, str]:
        kinds = {}
        for col in self.columns:
            values = (r.values.get(col) for r in head if r.error is None)
            names = [v for v in values if isinstance(v, str) and v.strip()]
            mods = {file_modality(v.strip()) if len(v) < 4096 and "\n" not in v else None for v in names}
            if names and len(mods) == 1 and mods <= {"image", "audio"}:
                kinds[col] = mods.pop()
        return kinds

    def _scan(self) -> List[Row]:
        """One pass over the file, a chunk at a time, that parses it whole: the row count, the columns (a JSONL's:
        every key of any row, in the order first seen), and the first SNIFF_ROWS rows as Rows, returned."""
        head: List[Row] = []
        cols: Dict[str, None] = {}
        if self.kind in ("csv", "tsv"):
            import pandas as pd
            with self._reading():
                cols = dict.fromkeys(str(c) for c in pd.read_csv(self.path, nrows=0, **self._csv_options()).columns)
            for df in self._frames():                   # pandas parses every cell; no dict of a row is made
                if len(head) < self.SNIFF_ROWS:
                    head += self._frame_rows(self._n, df.iloc[: self.SNIFF_ROWS - len(head)])
                self._n += len(df)
        elif self.kind == "parquet":
            with self._reading():
                import pyarrow.parquet as pq
                cols = dict.fromkeys(pq.ParquetFile(self.path).schema_arrow.names)
            for _, batch in self._batches(0, None):     # arrow decodes every page; no dict of a row is made
                if len(head) < self.SNIFF_ROWS:
                    head += self._batch_rows(self._n, batch.slice(0, self.SNIFF_ROWS - len(head)))
                self._n += batch.num_rows
        else:
            for lineno, obj, why in self._jsonl_lines():     # json.loads of every line: any row's keys are columns
                if obj is not None:
                    cols.update(dict.fromkeys(obj))
                if len(head) < self.SNIFF_ROWS:
                    head.append(self._jsonl_row(self._n, lineno, obj, why))
                self._n += 1
        self.columns = [str(c) for c in cols]
        return head

    def _csv_options(self) -> Dict[str, Any]:
        return dict(sep="\t" if self.kind == "tsv" else ",", dtype=str, keep_default_na=False, na_filter=False,
                    encoding="utf-8")

    @contextmanager
    def _reading(self):
        """The file's read errors as one-line DataErrors."""
        try:
            yield
        except FileNotFoundError:
            raise DataError(f"input file not found: {self.path}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}: not UTF-8 text ({_first_bad_byte(self.path, e)})") from None
        except (OSError, ValueError) as e:  # pandas ParserError and pyarrow errors are ValueError/OSError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot read {self.kind.upper()} file {self.path}: {first}") from None

    def _frames(self):
        """A CSV/TSV's DataFrames of CHUNK_ROWS rows (cells as strings), in file order."""
        import pandas as pd
        with self._reading():
            with pd.read_csv(self.path, chunksize=self.CHUNK_ROWS, **self._csv_options()) as reader:
                yield from reader

    @staticmethod
    def _frame_rows(first: int, df) -> List[Row]:
        return [Row(first + j, None, {str(k): v for k, v in r.items()}) for j, r in enumerate(df.to_dict("records"))]

    def _batches(self, start: int, columns: Optional[List[str]]):
        """(index of its first row, arrow RecordBatch of up to CHUNK_ROWS rows) of a Parquet file in file order,
        from the row group that holds row `start`; `columns`: only those (None: all)."""
        with self._reading():
            import pyarrow.parquet as pq
            f = pq.ParquetFile(self.path)
            group, i = 0, 0
            while group < f.num_row_groups and i + f.metadata.row_group(group).num_rows <= start:
                i += f.metadata.row_group(group).num_rows
                group += 1
            for batch in f.iter_batches(batch_size=self.CHUNK_ROWS, row_groups=range(group, f.num_row_groups),
                                        columns=columns):
                yield i, batch
                i += batch.num_rows

    @staticmethod
    def _batch_rows(first: int, batch) -> List[Row]:
        return [Row(first + j, None, v) for j, v in enumerate(batch.to_pylist())]

    def _chunks(self, start: int) -> Iterator[Tuple[int, List[Row]]]:
        """(index of its first row, rows) of each chunk of CHUNK_ROWS rows in file order, from the chunk holding
        row `start` for Parquet (whose row groups can be found) and from the first for CSV and JSONL."""
        with self._reading():
            if self.kind in ("csv", "tsv"):
                i = 0
                for df in self._frames():
                    yield i, self._frame_rows(i, df)
                    i += len(df)
            elif self.kind == "jsonl":
                yield from self._jsonl_chunks()
            else:
                for i, batch in self._batches(start, None):
                    yield i, self._batch_rows(i, batch)

    def _jsonl_lines(self) -> Iterator[Tuple[int, Optional[dict], Optional[str]]]:
        """(line number, the object or None, why it is not one or None) of each line that is not blank."""
        with self._reading():
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise ValueError(f"expected an object, got {type(obj).__name__}")
                    except ValueError as e:
                        yield lineno, None, str(e)
                    else:
                        yield lineno, obj, None

    def _jsonl_row(self, i: int, lineno: int, obj: Optional[dict], why: Optional[str]) -> Row:
        if obj is None:
            return Row(i, f"line {lineno}", {}, f"row: invalid JSON on line {lineno} of {self.path.name} ({why})",
                       "row: invalid JSON")
        return Row(i, f"line {lineno}", obj)

    def _jsonl_chunks(self) -> Iterator[Tuple[int, List[Row]]]:
        rows: List[Row] = []
        i = 0
        for lineno, obj, why in self._jsonl_lines():
            rows.append(self._jsonl_row(i + len(rows), lineno, obj, why))
            if len(rows) == self.CHUNK_ROWS:
                yield i, rows
                i, rows = i + len(rows), []
        if rows:
            yield i, rows

    def __len__(self) -> int:
        return self._n

    def fingerprint(self) -> str:
        return hash_file(self.path, hashlib.sha256()).hexdigest()

    def rows(self, start: int, stop: int) -> Iterator[Row]:
        stop = min(stop, self._n)
        while start < stop:
            if self._cursor is None or start < self._cursor.first:   # forward only: an earlier row starts over
                self._cursor = _Cursor(self._chunks(start))
            chunk = self._cursor.seek(start)
            if chunk is None:
                return
            first = self._cursor.first
            # a slice of the chunk, so a second reader of this input moving the cursor meanwhile changes nothing here
            part = chunk[start - first: stop - first]
            yield from part
            start += len(part)

    def column(self, col: str) -> List[Any]:
        return list(self.iter_column(col))

    def iter_column(self, col: str) -> Iterator[Any]:
        """The column's values read a chunk at a time with no Row made: what a Row's values.get(col) gives (None
        where a row lacks it, or is not a JSONL object)."""
        if self.kind == "jsonl":
            return (None if obj is None else obj.get(col) for _, obj, _ in self._jsonl_lines())
        if self.kind in ("csv", "tsv"):
            return (v for df in self._frames() for v in (df[col].tolist() if col in df.columns else [None] * len(df)))
        if self.columns.count(col) == 1:             # a Parquet file: only that column is read
            return (v for _, batch in self._batches(0, [col]) for v in batch.column(0).to_pylist())
        return (r.values.get(col) for _, chunk in self._chunks(0) for r in chunk)


class _Cursor:
    """A table's chunks read forward: the one chunk that holds the row last asked for."""

    def __init__(self, chunks: Iterator[Tuple[int, List[Row]]]):
        self.chunks, self.first, self.chunk = chunks, 0, []

    def seek(self, i: int) -> Optional[List[Row]]:
        """The chunk holding row i (i >= first), reading on as far as it; None past the last row."""
        while i >= self.first + len(self.chunk):
            nxt = next(self.chunks, None)
            if nxt is None:
                return None
            self.first, self.chunk = nxt
        return self.chunk
