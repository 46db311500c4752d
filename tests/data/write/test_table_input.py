"""align.data.write.table_input: a CSV/TSV/JSONL/Parquet input read in chunks, never held whole."""
import json

import pytest

from align.data.write.shards import write_shards
from tests.wds_helpers import jpeg_bytes


def test_a_bad_byte_at_a_read_blocks_edge_is_named_where_it_is_in_the_file(tmp_path):
    """The file is checked a MB at a time (it was read whole to find the byte): a character begun at the end of one
    block and broken at the start of the next is named at its first byte, on its line."""
    from align.errors import DataError
    head = b"path,caption\n" + b"a.jpg,x\n" * 10
    row = b"b.jpg," + b"y" * ((1 << 20) - len(head) - 6 - 2)
    data = head + row + b"\xe2\x82" + b"z\n"        # a 3-byte sequence cut after 2 bytes, across 1 MB
    (tmp_path / "t.csv").write_bytes(data)
    with pytest.raises(DataError, match=f"invalid continuation byte at byte {(1 << 20) - 2}, line 12\\)"):
        write_shards(tmp_path / "t.csv", tmp_path / "out", progress=False)


def _tables(tmp_path):
    """A CSV (a caption over two lines, a blank line, a short row, a repeated column name), a JSONL (a broken line,
    blank lines, a row that is not an object, keys first seen late) and a Parquet file, of 23 to 25 rows."""
    lines = ["path,caption,path"] + [f'i{i}.jpg,"cap {i}\nline two",p{i}' if i % 7 == 3 else f"i{i}.jpg,cap {i},p{i}"
                                     for i in range(25)]
    lines[9], lines[15] = "", "short.jpg"
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    js = [json.dumps({"image": f"i{i}.jpg", "text": f"cap {i}", **({"label": i} if i > 17 else {})}) for i in range(25)]
    js[4], js[11], js[12] = "{broken", "", "[1, 2]"
    (tmp_path / "t.jsonl").write_text("\n".join(js) + "\n\n", encoding="utf-8")
    import pandas as pd
    pd.DataFrame({"image": [f"i{i}.jpg" for i in range(25)], "text": [f"cap {i}" for i in range(25)]}
                 ).to_parquet(tmp_path / "t.parquet", row_group_size=4)
    return tmp_path / "t.csv", tmp_path / "t.jsonl", tmp_path / "t.parquet"


def _whole(path):
    """The rows as the readers gave them when they read the whole table (pandas, a JSONL line at a time, pyarrow)."""
    if path.suffix == ".csv":
        import pandas as pd
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        return [(i, None, r, None) for i, r in enumerate(df.to_dict("records"))]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return [(i, None, r, None) for i, r in enumerate(pq.read_table(path).to_pylist())]
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                v = json.loads(line)
                assert isinstance(v, dict)
                out.append((len(out), f"line {n}", v, None))
            except (ValueError, AssertionError):
                out.append((len(out), f"line {n}", {}, "error"))
    return out


def test_a_table_read_in_chunks_gives_the_rows_the_whole_file_gave_in_any_order_asked(tmp_path, monkeypatch):
    """A CSV/JSONL/Parquet input is read CHUNK_ROWS rows at a time (it was held whole: a Python dict per row): the
    same rows, columns, count and column values, also when rows are asked for out of order (a worker's shards, an
    earlier row after a later one: read again from the start, or Parquet's row group)."""
    from align.data.write.inputs import open_input
    from align.data.write.table_input import TableInput
    monkeypatch.setattr(TableInput, "CHUNK_ROWS", 3)
    for path in _tables(tmp_path):
        inp = open_input(path)
        whole = _whole(path)
        got = lambda a, b: [(r.index, r.key, r.values, r.error and "error") for r in inp.rows(a, b)]  # noqa: E731
        assert len(inp) == len(whole) and got(0, 10**6) == whole, path
        for a, b in ((20, 23), (2, 9), (8, 8), (5, 6), (22, 40), (0, 4), (4, 8), (7, 19)):
            assert got(a, b) == whole[a:b], (path, a, b)
        first, second = inp.rows(1, 9), inp.rows(17, 20)      # two readers of one input, interleaved
        assert [(x.index, y.index) for y, x in zip(second, first)] == [(1, 17), (2, 18), (3, 19)]
        assert [r.index for r in first] == [4, 5, 6, 7, 8]
        cols = list(dict.fromkeys(k for _, _, v, _ in whole for k in v))
        assert inp.columns == cols and inp.column(cols[-1]) == [v.get(cols[-1]) for _, _, v, _ in whole]
    assert open_input(tmp_path / "t.csv").columns == ["path", "caption", "path.1"]
    assert open_input(tmp_path / "t.jsonl").columns == ["image", "text", "label"]
    assert open_input(tmp_path / "t.csv").kinds == {"path": "image"}


def _written(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_shards_of_a_table_are_the_same_whatever_its_chunks_also_resumed(tmp_path, monkeypatch):
    """Shards, skipped.jsonl, stats and done records of a CSV and a JSONL written with 4-row chunks are byte for byte
    those of one chunk (the whole table, as it was read before), and so is a resume after a shard was lost."""
    from align.data.write.table_input import TableInput
    (tmp_path / "imgs").mkdir()
    for i in range(23):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    rows = [{"image": f"imgs/gone{i}.jpg" if i % 4 == 1 else "" if i == 10 else f"imgs/{i}.jpg",
             "text": f"caption {i}" if i != 7 else " ", "label": str(i % 3)} for i in range(23)]
    import pandas as pd
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    lines = [json.dumps(r) for r in rows]
    lines[6] = "{not json"
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("t.csv", "t.jsonl"):
        outs = {}
        for chunk in (10**6, 4):
            monkeypatch.setattr(TableInput, "CHUNK_ROWS", chunk)
            out = tmp_path / f"{name}-{chunk}"
            stats = write_shards(tmp_path / name, out, shard_size=5, progress=False)
            outs[chunk] = _written(out)
        assert outs[4] == outs[10**6] and stats["skipped"] > 5 and stats["written"] > 5, name
        (out / "shard-000002.tar").unlink()
        (out / ".done" / "shard-000002.json").unlink()
        write_shards(tmp_path / name, out, shard_size=5, progress=False)
        assert _written(out) == outs[4], name


def test_the_rows_held_while_shards_are_written_are_one_chunk_not_the_table(tmp_path, monkeypatch):
    """Writing a table's shards holds at most a chunk of its rows (and the slice of the chunk a shard is reading),
    counted with a weak set of every row made: before, every row was alive for the whole job."""
    import weakref

    from align.data.write import shards as shards_mod
    from align.data.write import table_input
    live, peak, encode = weakref.WeakSet(), [], shards_mod.encode_row

    class Counted(table_input.Row):
        __hash__ = object.__hash__

        def __init__(self, *args):
            super().__init__(*args)
            live.add(self)

    def counting(row, key, job):
        peak.append(len(live))
        return encode(row, key, job)
    monkeypatch.setattr(table_input, "Row", Counted)
    monkeypatch.setattr(table_input.TableInput, "CHUNK_ROWS", 5)
    monkeypatch.setattr(shards_mod, "encode_row", counting)
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"caption {i},{i % 3}\n" for i in range(60)))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": f"c {i}", "label": i % 3}) + "\n" for i in range(60)))
    for name in ("t.csv", "t.jsonl"):
        peak.clear()
        stats = write_shards(tmp_path / name, tmp_path / f"out-{name}", shard_size=7, progress=False)
        assert stats["written"] == 60 and len(peak) == 60 and 0 < max(peak) <= 10, (name, max(peak))


def test_each_row_is_made_a_dict_once_as_its_shard_is_written_and_a_bad_line_still_stops_the_job_first(
        tmp_path, monkeypatch):
    """`align data shards` of a CSV/TSV/JSONL/Parquet with string labels made a Row (a Python dict of the row's values)
    of every row three times: in the read that checks, counts and finds the columns, in the label column's read (the
    class names) and as the shards were written. The first two make none past the first SNIFF_ROWS (the head that
    tells an audio column from an image one), and a line pandas cannot parse late in the file still stops the job
    before any shard is written. (The shards are those of before: the other tests of this file.)"""
    from align.data.write import table_input
    from align.errors import DataError
    made = []

    class Counted(table_input.Row):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self.index)
    monkeypatch.setattr(table_input, "Row", Counted)
    monkeypatch.setattr(table_input.TableInput, "CHUNK_ROWS", 4)
    monkeypatch.setattr(table_input.TableInput, "SNIFF_ROWS", 3)
    rows = [{"text": f"caption {i}", "label": "cat dog bird".split()[i % 3]} for i in range(30)]
    import pandas as pd
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet", row_group_size=7)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("t.csv", "t.tsv", "t.jsonl", "t.parquet"):
        made.clear()
        stats = write_shards(tmp_path / name, tmp_path / f"out-{name}", shard_size=8, progress=False)
        assert stats["written"] == 30 and sorted(made) == sorted([0, 1, 2] + list(range(30))), (name, made)
        assert json.loads((tmp_path / f"out-{name}" / "classes.json").read_text()) == ["bird", "cat", "dog"], name
    (tmp_path / "bad.csv").write_text("text,label\n" + "".join(f"caption {i},cat\n" for i in range(25)) + "a,b,c\n")
    with pytest.raises(DataError, match=r"cannot read CSV file .*bad\.csv: Error tokenizing data.*line 27"):
        write_shards(tmp_path / "bad.csv", tmp_path / "out-bad", shard_size=8, progress=False)
    assert not (tmp_path / "out-bad").exists()


def test_a_columns_values_are_its_rows_values_in_every_format(tmp_path, monkeypatch):
    """iter_column reads one column without making a Row: its values are the Rows' values.get(col) of every row,
    None where a row lacks the column or is not a JSON object, and None throughout for a column the table lacks."""
    from align.data.write.inputs import open_input
    from align.data.write.table_input import TableInput
    monkeypatch.setattr(TableInput, "CHUNK_ROWS", 3)
    for path in _tables(tmp_path):
        inp = open_input(path)
        for col in inp.columns + ["absent"]:
            assert list(inp.iter_column(col)) == [r.values.get(col) for r in inp.rows(0, len(inp))], (path, col)
