"""FileSource: files of every format read in bounded chunks, every row accounted for.

The property test at the end is the contract of the CSV reader: for any file, the rows
read plus the rows rejected are the records written, each good row with its values and
the line where it starts, each bad one with its line, its raw text and the reason.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileOpener
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.sources import LOCATION, Chunk, FileSource, Partition, Source, Span
from loopline.data.sources import files as files_module
from loopline.errors import SourceError

_PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def _chunks(source: FileSource) -> list[Chunk]:
    return [chunk for partition in source.partitions() for chunk in source.read(partition)]


def _read(source: FileSource) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row (with its location) and every reject, over all partitions."""
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for chunk in _chunks(source):
        assert chunk.batch.schema.names[-1] == LOCATION
        rows += chunk.batch.to_pylist()
        rejects += chunk.rejects.to_pylist()
    return rows, rejects


def _csv(tmp_path: Path, content: bytes | str, **options: Any) -> tuple[list[Any], list[Any]]:
    return _read(FileSource(str(_write(tmp_path / "data.csv", content)), **options))


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A folder of its own on fsspec's process-wide in-memory filesystem."""
    root = f"/loopline-test-{uuid.uuid4().hex}"
    yield root
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


# -- the protocol and the parameters -------------------------------------------------------------


def test_file_source_is_a_source_that_pickles(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "x\n1\n")
    source = FileSource(tmp_path / "*.csv", block_size=1024)
    assert isinstance(source, Source)
    assert source.name == str(tmp_path / "*.csv")
    assert FileSource(["a.csv", "b.csv"]).name == "a.csv (+1 more)"
    assert FileSource("a.csv", name="flights").name == "flights"
    copy = pickle.loads(pickle.dumps(source))
    assert _read(copy) == _read(source)
    assert pickle.loads(pickle.dumps(source.partitions())) == source.partitions()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patterns": []}, "The 'patterns' parameter of FileSource must be a path"),
        ({"format": "xlsx"}, "The 'format' parameter of FileSource must be one of csv, tsv"),
        ({"format": "parquet", "delimiter": ";"}, "applies to CSV and TSV files only"),
        ({"delimiter": ";;"}, "The 'delimiter' parameter of FileSource must be one ASCII"),
        ({"delimiter": "\n"}, "The 'delimiter' parameter of FileSource must be one ASCII"),
        ({"quote": "«"}, "The 'quote' parameter of FileSource must be one ASCII"),
        ({"delimiter": "'", "quote": "'"}, "must differ"),
        ({"header": "yes"}, "The 'header' parameter of FileSource must be True or False"),
        ({"encoding": "klingon"}, "The 'encoding' parameter of FileSource must be a text"),
        ({"compression": "bz2"}, "The 'compression' parameter of FileSource must be one of"),
        ({"block_size": 0}, "The 'block_size' parameter of FileSource must be a positive"),
        ({"block_size": True}, "The 'block_size' parameter of FileSource must be a positive"),
        ({"split_bytes": 0}, "The 'split_bytes' parameter of FileSource must be a positive"),
        ({"split_bytes": 1.5}, "The 'split_bytes' parameter of FileSource must be a positive"),
    ],
)
def test_parameters_are_checked_where_they_enter(options: dict[str, Any], message: str) -> None:
    patterns = options.pop("patterns", "a.csv")
    with pytest.raises(SourceError, match=message):
        FileSource(patterns, **options)


@pytest.mark.parametrize("pattern", ["missing.csv", "*.parquet"])
def test_a_missing_path_or_an_empty_glob_is_a_source_error(tmp_path: Path, pattern: str) -> None:
    _write(tmp_path / "a.csv", "x\n1\n")
    with pytest.raises(SourceError, match=re.escape(f"No file matches '{tmp_path / pattern}'")):
        FileSource(str(tmp_path / pattern)).partitions()


def test_a_name_without_a_known_extension_needs_a_format(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.txt", "x\n1\n")
    with pytest.raises(SourceError, match=r"Cannot tell the format of .*data\.txt.*format='csv'"):
        FileSource(str(path)).partitions()
    rows, _ = _read(FileSource(str(path), format="csv"))
    assert rows == [{"x": "1", LOCATION: 2}]


# -- formats, compression, where files live --------------------------------------------------------


def test_csv_values_are_strings_exactly_as_written(tmp_path: Path) -> None:
    rows, rejects = _csv(tmp_path, 'n,x,s\n1,"1,234", 7 \n2,NaN,\n3,inf,""\n4,1e3,"a ""b"""\n')
    assert rejects == []
    assert [(r["n"], r["x"], r["s"]) for r in rows] == [
        ("1", "1,234", " 7 "),
        ("2", "NaN", ""),
        ("3", "inf", ""),
        ("4", "1e3", 'a "b"'),
    ]
    assert [r[LOCATION] for r in rows] == [2, 3, 4, 5]
    [chunk] = _chunks(FileSource(str(tmp_path / "data.csv")))
    assert chunk.batch.schema.types == [pa.string()] * 3 + [pa.int64()]


def test_tsv_is_split_on_tabs_and_other_delimiters_are_honoured(tmp_path: Path) -> None:
    _write(tmp_path / "a.tsv", "a\tb\n1,5\t2\n")
    assert _read(FileSource(str(tmp_path / "a.tsv")))[0] == [{"a": "1,5", "b": "2", LOCATION: 2}]
    _write(tmp_path / "b.csv", "a;b\n1,5;2\n")
    rows, _ = _read(FileSource(str(tmp_path / "b.csv"), delimiter=";"))
    assert rows == [{"a": "1,5", "b": "2", LOCATION: 2}]


def test_quote_none_reads_quotes_as_text(tmp_path: Path) -> None:
    rows, rejects = _csv(tmp_path, 'a,b\n5" screen,"x\n', quote=None)
    assert rejects == []
    assert rows == [{"a": '5" screen', "b": '"x', LOCATION: 2}]


def test_header_false_names_the_columns_by_position(tmp_path: Path) -> None:
    rows, rejects = _csv(tmp_path, "1,2\n3,4\n5\n", header=False)
    assert rows == [
        {"column_1": "1", "column_2": "2", LOCATION: 1},
        {"column_1": "3", "column_2": "4", LOCATION: 2},
    ]
    assert rejects == [{"location": 3, "raw": "5", "reason": "expected 2 fields, found 1"}]


def test_parquet_rows_keep_their_types_and_are_numbered_in_the_file(tmp_path: Path) -> None:
    table = pa.table({"x": list(range(10)), "s": [f"v{i}" for i in range(10)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    pq.write_table(table.slice(0, 0), tmp_path / "empty.pq")
    source = FileSource(str(tmp_path / "a.parquet"), block_size=64)
    chunks = _chunks(source)
    assert len(chunks) > 1
    assert chunks[0].batch.schema.field("x").type == pa.int64()
    rows = [row for chunk in chunks for row in chunk.batch.to_pylist()]
    assert [(r["x"], r["s"], r[LOCATION]) for r in rows] == [(i, f"v{i}", i + 1) for i in range(10)]
    [empty] = _chunks(FileSource(str(tmp_path / "empty.pq")))
    assert empty.rows == 0
    assert empty.batch.schema.names == ["x", "s", LOCATION]


def test_jsonl_rows_are_located_by_line_and_bad_lines_are_rejected(tmp_path: Path) -> None:
    content = (
        b'{"a": 1, "b": "x"}\n\n{"a": 2}\r\n   \n{"a": \n[1, 2]\n{"a": "\xff"}\n{"a": 3, "c": true}'
    )
    path = _write(tmp_path / "a.ndjson", content)
    rows, rejects = _read(FileSource(str(path)))
    assert [(r["a"], r.get("b"), r[LOCATION]) for r in rows] == [
        (1, "x", 1),
        (2, None, 3),
        (3, None, 8),
    ]
    assert rows[-1]["c"] is True
    assert [(r["location"], r["reason"]) for r in rejects] == [
        (5, "invalid JSON: unexpected end of data: line 1 column 7 (char 6)"),
        (6, "expected a JSON object, found list"),
        (7, "invalid UTF-8 at byte 8"),
    ]
    assert rejects[2]["raw"] == '{"a": "\\xff"}'


def test_jsonl_types_that_change_between_lines_split_the_chunk(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2}\n{"a": "x"}\n')
    chunks = _chunks(FileSource(str(path)))
    rows = [(r["a"], r[LOCATION]) for c in chunks for r in c.batch.to_pylist()]
    assert rows == [(1, 1), (2, 2), ("x", 3)]
    assert sum(c.rejects.num_rows for c in chunks) == 0


def _compressed(kind: str, content: bytes, path: Path) -> Path:
    if kind == "gzip":
        return _write(path.with_name(path.name + ".gz"), gzip.compress(content))
    if kind == "zstd":
        target = path.with_name(path.name + ".zst")
        with pa.CompressedOutputStream(str(target), "zstd") as out:
            out.write(content)
        return target
    return _write(path, content)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
@pytest.mark.parametrize(
    ("name", "content"),
    [("a.csv", b"x,y\n1,2\n3,4\n"), ("a.tsv", b"x\ty\n1\t2\n3\t4\n")],
)
def test_each_compression_gives_the_same_rows(
    tmp_path: Path, kind: str, name: str, content: bytes
) -> None:
    path = _compressed(kind, content, tmp_path / name)
    rows, rejects = _read(FileSource(str(path), block_size=3))
    assert rows == [{"x": "1", "y": "2", LOCATION: 2}, {"x": "3", "y": "4", LOCATION: 3}]
    assert rejects == []


def test_a_compressed_jsonl_file_and_compression_given_by_name(tmp_path: Path) -> None:
    path = _compressed("gzip", b'{"a": 1}\n{"a": 2}\n', tmp_path / "a.jsonl")
    assert [r["a"] for r in _read(FileSource(str(path)))[0]] == [1, 2]
    plain = _write(tmp_path / "b.csv", gzip.compress(b"a\n1\n"))
    assert _read(FileSource(str(plain), compression="gzip"))[0] == [{"a": "1", LOCATION: 2}]


def test_a_corrupt_gzip_stream_is_a_source_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv.gz", gzip.compress(b"a\n" + b"1\n" * 1000)[:-20] + b"junk")
    with pytest.raises(SourceError, match=r"a\.csv\.gz' cannot be read"):
        _read(FileSource(str(path)))


def test_every_member_of_a_zip_archive_is_a_partition(tmp_path: Path) -> None:
    archive = tmp_path / "year=2013" / "bundle.zip"
    archive.parent.mkdir()
    buffer = io.BytesIO()
    pq.write_table(pa.table({"p": [7]}), buffer)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("a.csv", "x\n1\n2\n")
        out.writestr("month=2/b.jsonl", '{"x": 3}\n')
        out.writestr("c.parquet", buffer.getvalue())
        out.writestr("folder/", "")
    source = FileSource(str(archive))
    partitions = source.partitions()
    assert [p.key for p in partitions] == [
        f"zip://a.csv::{archive}",
        f"zip://month=2/b.jsonl::{archive}",
        f"zip://c.parquet::{archive}",
    ]
    assert len({p.fingerprint for p in partitions}) == 3
    assert [[r for c in source.read(p) for r in c.batch.to_pylist()] for p in partitions] == [
        [{"x": "1", "year": "2013", LOCATION: 2}, {"x": "2", "year": "2013", LOCATION: 3}],
        [{"x": 3, "year": "2013", "month": "2", LOCATION: 1}],
        [{"p": 7, "year": "2013", LOCATION: 1}],
    ]
    assert next(iter(source.read(partitions[0]))).source == f"zip://a.csv::{archive}"


def test_memory_urls_and_globs_are_read(memory_root: str) -> None:
    memory = fsspec.filesystem("memory")
    memory.pipe(
        {
            f"{memory_root}/day=1/a.csv": b"x\n1\n",
            f"{memory_root}/day=2/b.csv": b"x\n2\n",
            f"{memory_root}/day=2/c.jsonl": b'{"x": 3}\n',
        }
    )
    source = FileSource(f"memory://{memory_root}/**/*.csv")
    partitions = source.partitions()
    assert [p.source for p in partitions] == [
        f"memory://{memory_root}/day=1/a.csv",
        f"memory://{memory_root}/day=2/b.csv",
    ]
    assert [p.size_bytes for p in partitions] == [4, 4]
    assert _read(source)[0] == [
        {"x": "1", "day": "1", LOCATION: 2},
        {"x": "2", "day": "2", LOCATION: 2},
    ]


def test_hive_folders_become_string_columns(tmp_path: Path) -> None:
    _write(tmp_path / "year=2013" / "month=1" / "a.csv", "x\n1\n")
    _write(tmp_path / "year=2013" / "month=__HIVE_DEFAULT_PARTITION__" / "b.csv", "x\n2\n")
    _write(tmp_path / "year=2014" / "city=New%20York" / "c.csv", "x\n3\n")
    rows, _ = _read(FileSource(str(tmp_path / "**" / "*.csv")))
    assert rows == [
        {"x": "1", "year": "2013", "month": "1", LOCATION: 2},
        {"x": "2", "year": "2013", "month": None, LOCATION: 2},
        {"x": "3", "year": "2014", "city": "New York", LOCATION: 2},
    ]
    plain, _ = _read(
        FileSource(str(tmp_path / "year=2013" / "month=1" / "a.csv"), hive_partitioning=False)
    )
    assert plain == [{"x": "1", LOCATION: 2}]


def test_a_column_named_like_a_hive_folder_is_a_source_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "year=2013" / "a.csv", "year,x\n2013,1\n")
    with pytest.raises(SourceError, match=r"Column 'year' .* is also a partition folder name"):
        _read(FileSource(str(path)))
    assert _read(FileSource(str(path), hive_partitioning=False))[0] == [
        {"year": "2013", "x": "1", LOCATION: 2}
    ]


# -- bad input, reason by reason ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "rows", "rejects"),
    [
        pytest.param(
            b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n",
            [(2, "1"), (5, "10")],
            [
                (3, "4,5", "expected 3 fields, found 2"),
                (4, "6,7,8,9", "expected 3 fields, found 4"),
            ],
            id="ragged rows",
        ),
        pytest.param(
            b'a,b\n1,x"y\n2,z\n',
            [(3, "2")],
            [(2, '1,x"y', "broken quoting: quote inside an unquoted field at byte 4")],
            id="quote inside an unquoted field",
        ),
        pytest.param(
            b'a,b\n1,"x"y\n2,z\n',
            [(3, "2")],
            [(2, '1,"x"y', "broken quoting: text after a closing quote at byte 5")],
            id="text after a closing quote",
        ),
        pytest.param(
            b'a,b\n1,"never closed\n2,z\n3,"q"\n',
            [(3, "2"), (4, "3")],
            [
                (
                    2,
                    '1,"never closed',
                    "broken quoting: quoted field opened at byte 3 is never closed",
                )
            ],
            id="a quote never closed, later quotes",
        ),
        pytest.param(
            b'a,b\n1,2\n3,"never closed\n4,z\n5,z',
            [(2, "1"), (4, "4"), (5, "5")],
            [
                (
                    3,
                    '3,"never closed',
                    "broken quoting: quoted field opened at byte 3 is never closed",
                )
            ],
            id="a quote never closed until the end of the file",
        ),
        pytest.param(
            b'a,b\n1,"two\nlines"\n2,"three\n\nlines"\n3,z\n',
            [(2, "1"), (4, "2"), (7, "3")],
            [],
            id="quoted line breaks and a blank line inside quotes",
        ),
        pytest.param(
            b"a,b\n1,\xff\n2,caf\xc3\xa9\n3,\xed\xa0\x80x\n",
            [(3, "2")],
            [
                (2, "1,\\xff", "invalid UTF-8 at byte 3"),
                (4, "3,\\xed\\xa0\\x80x", "invalid UTF-8 at byte 3"),
            ],
            id="invalid UTF-8",
        ),
        pytest.param(
            b'a,b\n1,2\na,b\n"a","b"\n3,4\n',
            [(2, "1"), (5, "3")],
            [(3, "a,b", "repeated header line"), (4, '"a","b"', "repeated header line")],
            id="repeated header lines",
        ),
        pytest.param(
            b"\xef\xbb\xbfa,b\r\n1,2\r\n\r\n\n3,4\r\n",
            [(2, "1"), (5, "3")],
            [],
            id="byte-order mark, CRLF and blank lines",
        ),
        pytest.param(
            b'a,b\n1,2\r3\n4,"5\r6"\n',
            [(3, "4")],
            [(2, "1,2\r3", "bare carriage return (CR without LF) at byte 4")],
            id="a bare carriage return",
        ),
        pytest.param(
            b"a,b\n1,2\n3,4",
            [(2, "1"), (3, "3")],
            [],
            id="no line end at the end",
        ),
    ],
)
@pytest.mark.parametrize("block_size", [1, 5, 1 << 20])
def test_bad_rows_are_rejected_with_their_line_text_and_reason(
    tmp_path: Path,
    content: bytes,
    rows: list[tuple[int, str]],
    rejects: list[tuple[int, str, str]],
    block_size: int,
) -> None:
    got_rows, got_rejects = _csv(tmp_path, content, block_size=block_size)
    assert [(r[LOCATION], r["a"]) for r in got_rows] == rows
    assert [(r["location"], r["raw"], r["reason"]) for r in got_rejects] == rejects


def test_quoted_values_keep_their_line_breaks_and_carriage_returns(tmp_path: Path) -> None:
    rows, _ = _csv(tmp_path, b'a,b\r\n1,"x\r\ny"\r\n2,"p\rq"\r\n')
    assert [(r["b"], r[LOCATION]) for r in rows] == [("x\r\ny", 2), ("p\rq", 4)]


def test_an_empty_file_yields_nothing(tmp_path: Path) -> None:
    for content in (b"", b"\xef\xbb\xbf", b"\n\r\n"):
        assert _chunks(FileSource(str(_write(tmp_path / "e.csv", content)))) == []
    assert _chunks(FileSource(str(_write(tmp_path / "e.jsonl", b"")))) == []


@pytest.mark.parametrize("content", [b"a,b\n", b"a,b", b"\xef\xbb\xbfa,b\r\n\r\n"])
def test_a_header_only_file_yields_one_empty_chunk_with_its_columns(
    tmp_path: Path, content: bytes
) -> None:
    [chunk] = _chunks(FileSource(str(_write(tmp_path / "h.csv", content))))
    assert chunk.rows == 0
    assert chunk.batch.schema.names == ["a", "b", LOCATION]
    assert chunk.rejects.num_rows == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'a,"b\n1,2\n', r"header of .*h\.csv' \(line 1\) cannot be read: broken quoting"),
        (b"a,\xffb\n1,2\n", r"\(line 1\) cannot be read: invalid UTF-8 at byte 3"),
        (b"a,b,a\n1,2,3\n", r"\(line 1\) repeats 'a'"),
        (b"a,_location\n1,2\n", r"uses the reserved name '_location'"),
    ],
)
def test_a_header_that_cannot_name_the_columns_is_a_source_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    with pytest.raises(SourceError, match=message) as caught:
        _chunks(FileSource(str(_write(tmp_path / "h.csv", content))))
    assert caught.value.line == 1  # type: ignore[attr-defined]


def test_other_encodings_are_transcoded_and_their_bad_bytes_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", "a,b\n1,café\n".encode("latin-1") + b"2,\x81x\n")
    rows, rejects = _read(FileSource(str(path), encoding="latin-1"))
    assert [r["b"] for r in rows] == ["café", "\x81x"]
    rows, rejects = _read(FileSource(str(path), encoding="cp1252"))
    assert [r["b"] for r in rows] == ["café"]
    assert rejects == [{"location": 3, "raw": "2,\\x81x", "reason": "invalid cp1252 at byte 3"}]
    utf16 = _write(tmp_path / "u.csv", "a,b\n1,ü\n".encode("utf-16"))
    assert _read(FileSource(str(utf16), encoding="utf-16"))[0] == [
        {"a": "1", "b": "ü", LOCATION: 2}
    ]


def test_a_quote_open_past_the_record_limit_rejects_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "_MIN_MAX_RECORD", 64)
    content = b'a,b\n1,"open\n' + b"2,x\n" * 40 + b'3,"q"\n'
    rows, rejects = _csv(tmp_path, content, block_size=16)
    assert rejects == [
        {
            "location": 2,
            "raw": '1,"open',
            "reason": "broken quoting: quoted field opened at byte 3 is not closed within 64 bytes",
        }
    ]
    assert [r[LOCATION] for r in rows] == list(range(3, 44))


def test_a_line_past_the_record_limit_is_rejected_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "_MIN_MAX_RECORD", 64)
    content = b"a,b\n1,2\n3," + b"x" * 500 + b"\n4,5\n"
    rows, rejects = _csv(tmp_path, content, block_size=16)
    assert [r[LOCATION] for r in rows] == [2, 4]
    [reject] = rejects
    assert (reject["location"], reject["reason"]) == (3, "line longer than 64 bytes")
    assert reject["raw"].startswith("3,xxx")
    assert reject["raw"].endswith("…")
    with pytest.raises(SourceError, match=r"first line of .* is longer than 64 bytes"):
        _csv(tmp_path, b"a" * 200 + b"\n1\n", block_size=16)


# -- every row accounted for, whatever the file -----------------------------------------------


@dataclass
class _Expected:
    content: bytes
    rows: list[tuple[int, list[str]]]
    rejects: list[tuple[int, str, str]]


_PLAIN = st.text("abcz019", min_size=1, max_size=4)
_ANY = st.text('abz19 ,"\n\ré', max_size=6)
_KINDS = ["good"] * 6 + [
    "blank",
    "extra",
    "missing",
    "stray",
    "after",
    "open",
    "utf8",
    "header",
    "cr",
]


def _quote(value: str, force: bool) -> str:
    if force or any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def _csv_files(draw: st.DrawFn) -> _Expected:
    """A CSV file with random values, line ends and corruptions, and what reading it gives."""
    width = draw(st.integers(1, 4))
    names = [f"h{i}" for i in range(width)]
    header = ",".join(_quote(n, draw(st.booleans())) for n in names)
    out = bytearray(b"\xef\xbb\xbf" if draw(st.booleans()) else b"")
    out += header.encode() + b"\n"
    rows: list[tuple[int, list[str]]] = []
    rejects: list[tuple[int, str, str]] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(_KINDS))
        end = draw(st.sampled_from([b"\n", b"\r\n"]))
        line = out.count(b"\n") + 1
        if kind == "blank":
            out += end
            continue
        if kind == "header":
            out += header.encode() + end
            rejects.append((line, header, "repeated header line"))
            continue
        if kind in ("good", "utf8", "extra", "missing"):
            count = {"extra": width + 1, "missing": width - 1}.get(kind, width)
            if count == 0:
                continue
            values = [draw(_ANY) for _ in range(count)]
            fields = [_quote(v, draw(st.booleans()) or (count == 1 and not v)) for v in values]
            record = ",".join(fields).encode()
            if kind == "utf8":
                at = draw(st.integers(0, count - 1))
                start = len(",".join(fields[:at]).encode()) + (1 if at else 0)
                start += fields[at].startswith('"')
                bad = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82"]))
                record = record[:start] + bad + record[start:]
                raw = record.decode("utf-8", "backslashreplace")
                rejects.append((line, raw, f"invalid UTF-8 at byte {start + 1}"))
            elif kind == "good":
                rows.append((line, values))
            else:
                found = f"expected {width} fields, found {count}"
                rejects.append((line, record.decode(), found))
            out += record + end
            continue
        # Corruptions of a one-line record of plain values.
        values = [draw(_PLAIN) for _ in range(width)]
        at = draw(st.integers(0, width - 1))
        fields = list(values)
        value = values[at]
        if kind == "stray":
            fields[at] = value[0] + '"' + value[1:]
            offset, reason = 2, "broken quoting: quote inside an unquoted field"
        elif kind == "after":
            fields[at] = f'"{value}"z'
            offset, reason = len(value) + 2, "broken quoting: text after a closing quote"
        elif kind == "open":
            fields[at] = '"' + value
            offset = 1
        else:  # cr
            fields[at] = value[0] + "\rq"
            offset, reason = 2, "bare carriage return (CR without LF)"
        text = ",".join(fields)
        byte = len(",".join(fields[:at])) + (1 if at else 0) + offset
        if kind == "open":
            reason = f"broken quoting: quoted field opened at byte {byte} is never closed"
        else:
            reason = f"{reason} at byte {byte}"
        rejects.append((line, text, reason))
        out += text.encode() + end
        if kind == "open":
            # Only last: before more records its quote could close validly (say on a
            # line that starts with a quote), which is another, valid, reading of the file.
            break
    if out.endswith(b"\n") and draw(st.booleans()):
        del out[-1]  # no line end after the last line (a CR left there ends it alone)
        if out.endswith(b"\r"):
            del out[-1]
    return _Expected(bytes(out), rows, rejects)


@_PROPERTY_SETTINGS
@given(expected=_csv_files(), block_size=st.sampled_from([1, 2, 3, 7, 16, 64, 1 << 16]))
def test_every_record_is_read_or_rejected_with_its_line_and_reason(
    tmp_path_factory: pytest.TempPathFactory, expected: _Expected, block_size: int
) -> None:
    path = _write(tmp_path_factory.mktemp("csv") / "data.csv", expected.content)
    rows, rejects = _read(FileSource(str(path), block_size=block_size))
    records = len(expected.rows) + len(expected.rejects)
    assert len(rows) + len(rejects) == records
    width = len(rows[0]) - 1 if rows else 0
    got_rows = [(r[LOCATION], [r[f"h{i}"] for i in range(width)]) for r in rows]
    assert got_rows == expected.rows
    assert [(r["location"], r["raw"], r["reason"]) for r in rejects] == sorted(expected.rejects)
    # An independent reading of the good records: Python's csv module agrees on the values.
    starts = [0] + [i + 1 for i, byte in enumerate(expected.content) if byte == ord("\n")]
    for location, values in expected.rows:
        text = expected.content[starts[location - 1] :].decode("utf-8", "replace")
        parsed = next(csv.reader(io.StringIO(text, newline=""), strict=True))
        assert parsed == values


# -- memory, fingerprints, files that move ---------------------------------------------------


_POOLS: list[pa.MemoryPool] = []


def test_memory_stays_flat_as_the_file_grows(tmp_path: Path) -> None:
    """A 64 MB file read 1 MiB at a time: peak Python and Arrow memory stays a few MiB."""
    line = b'20130101,1234,5678,-12.5,UA,N14228,"EWR","IAH",1400,227,"a, b"\n'
    rows = (64 << 20) // len(line)
    path = _write(tmp_path / "big.csv", b"d,t,a,x,c,n,o,e,m,r,s\n" + line * rows)
    source = FileSource(str(path), block_size=1 << 20)
    [partition] = source.partitions()
    _csv(tmp_path, b"a\n1\n")  # first use imports modules (pandas, via pyarrow): not the read's
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    _POOLS.append(pool)  # buffers it allocated may outlive the test: it must outlive them
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        seen = rejected = 0
        for chunk in source.read(partition):
            seen += chunk.rows
            rejected += chunk.rejects.num_rows
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    assert (seen, rejected) == (rows, 0)
    size = path.stat().st_size
    assert python_peak < 16 << 20, f"{python_peak / 2**20:.1f} MiB for a {size >> 20} MiB file"
    assert pool.max_memory() < 16 << 20, f"{pool.max_memory() / 2**20:.1f} MiB of Arrow memory"


def test_a_partition_is_a_file_fingerprinted_by_its_sha256(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", "x\n1\n")
    _write(tmp_path / "b.csv", "x\n2\n")
    source = FileSource(str(tmp_path / "*.csv"))
    first = source.partitions()
    assert first == [
        Partition(str(a), str(a), hashlib.sha256(b"x\n1\n").hexdigest(), 4),
        Partition(
            str(tmp_path / "b.csv"),
            str(tmp_path / "b.csv"),
            hashlib.sha256(b"x\n2\n").hexdigest(),
            4,
        ),
    ]
    assert source.partitions() == first
    _write(a, "x\n9\n")
    second = source.partitions()
    assert second[0].fingerprint != first[0].fingerprint
    assert second[1] == first[1]
    _write(tmp_path / "c.csv", "x\n3\n")
    assert len(source.partitions()) == 3


def test_a_file_changed_after_listing_is_not_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "x\n1\n")
    source = FileSource(str(path))
    [partition] = source.partitions()
    _write(path, "x\n2\n")
    with pytest.raises(SourceError, match="changed after its partitions were listed"):
        list(source.read(partition))


def test_a_file_that_disappears_mid_read_is_a_source_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "x\n" + "1\n" * 1000)
    source = FileSource(str(path), block_size=100)
    [partition] = source.partitions()
    chunks = source.read(partition)
    next(chunks)
    os.remove(path)
    with pytest.raises(SourceError, match="disappeared while it was being read") as caught:
        list(chunks)
    assert "Nothing read from it should be kept" in str(caught.value)
    assert caught.value.path == str(path)  # type: ignore[attr-defined]


def test_a_file_rewritten_mid_read_is_a_source_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "x\n" + "1\n" * 1000)
    source = FileSource(str(path), block_size=100)
    [partition] = source.partitions()
    chunks = source.read(partition)
    next(chunks)
    with path.open("ab") as more:
        more.write(b"2\n")
    with pytest.raises(SourceError, match="changed while it was being read"):
        list(chunks)


def test_a_read_that_fails_midway_is_a_source_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object store answering 404 to the next range read: the read raises."""
    path = _write(tmp_path / "a.csv", "x\n" + "1\n" * 1000)
    source = FileSource(str(path), block_size=100)
    [partition] = source.partitions()
    chunks = source.read(partition)
    next(chunks)

    def gone(self: Any, *args: Any) -> bytes:
        raise FileNotFoundError(str(path))

    monkeypatch.setattr(LocalFileOpener, "read", gone)
    with pytest.raises(SourceError, match="disappeared while it was being read") as caught:
        list(chunks)
    assert caught.value.path == str(path)  # type: ignore[attr-defined]


def test_a_first_row_that_cannot_be_read_without_a_header_is_a_source_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(SourceError, match=r"The first row of .* \(line 1\) cannot be read"):
        _csv(tmp_path, b'1,"2\n', header=False)


# -- large files in pieces ---------------------------------------------------------------------


def _spans(parts: list[Partition]) -> list[Span]:
    spans = [p.span for p in parts]
    assert all(span is not None for span in spans)
    return [span for span in spans if span is not None]


def _note_rows(count: int) -> str:
    """CSV rows, every fifth with a quoted line break."""
    return "".join(f'{i},"line\n{i}"\n' if i % 5 == 0 else f"{i},plain\n" for i in range(count))


def test_a_large_csv_is_split_at_record_starts_and_reads_as_the_whole_file(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "big.csv", "\ufeffid,note\n" + _note_rows(2000) + '7,"open\n8,9,0\n')
    content = path.read_bytes()
    split = FileSource(str(path), block_size=256, split_bytes=4096)
    parts = split.partitions()
    spans = _spans(parts)
    assert len(parts) > 3
    assert [p.key for p in parts] == [f"{path} [bytes {s.start}-{s.stop}]" for s in spans]
    assert {p.source for p in parts} == {str(path)}
    assert [s.start for s in spans] == [0] + [s.stop for s in spans[:-1]]
    assert spans[-1].stop == len(content) == sum(p.size_bytes or 0 for p in parts)
    for span in spans[1:]:
        assert span.stop - span.start >= 4096 or span is spans[-1]
        assert content[span.start - 1 : span.start] == b"\n"
        assert span.first == content[: span.start].count(b"\n") + 1
        # a cut is never inside a quoted line break: the piece starts with a row's id
        assert re.match(rb"\d+,", content[span.start :])
    assert _read(split) == _read(FileSource(str(path), block_size=256))
    rows, rejects = _read(split)
    assert len(rows) == 2000
    assert [r["reason"] for r in rejects] == [
        "broken quoting: quoted field opened at byte 3 is never closed",
        "expected 2 fields, found 3",
    ]


@settings(max_examples=100, deadline=None)
@given(
    expected=_csv_files(),
    block_size=st.sampled_from([1, 2, 3, 7, 16, 64]),
    split_bytes=st.sampled_from([1, 4, 16, 64]),
)
def test_a_split_csv_reads_as_the_whole_file_whatever_it_holds(
    tmp_path_factory: pytest.TempPathFactory,
    expected: _Expected,
    block_size: int,
    split_bytes: int,
) -> None:
    """Rows, locations and rejects: the pieces together are the whole file."""
    path = _write(tmp_path_factory.mktemp("csv") / "data.csv", expected.content)
    whole = _read(FileSource(str(path), block_size=block_size))
    split = FileSource(str(path), block_size=block_size, split_bytes=split_bytes)
    assert _read(split) == whole


def test_header_false_pieces_are_named_by_the_first_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.csv", _note_rows(500))
    whole = FileSource(str(path), header=False, block_size=128)
    split = FileSource(str(path), header=False, block_size=128, split_bytes=1024)
    assert len(split.partitions()) > 2
    rows, _ = _read(split)
    assert rows == _read(whole)[0]
    assert list(rows[-1]) == ["column_1", "column_2", LOCATION]


def test_a_large_jsonl_file_is_split_at_line_ends(tmp_path: Path) -> None:
    lines = [json.dumps({"a": i, "b": f"q{i}"}) if i % 11 else "not json" for i in range(600)]
    path = _write(tmp_path / "big.jsonl", "\n".join(lines) + "\n")
    split = FileSource(str(path), block_size=300, split_bytes=2000)
    assert len(split.partitions()) > 3
    rows, rejects = _read(split)
    assert (rows, rejects) == _read(FileSource(str(path), block_size=300))
    assert len(rows) + len(rejects) == 600
    assert [r["location"] for r in rejects] == [i + 1 for i in range(0, 600, 11)]


def test_a_large_parquet_file_is_split_between_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    table = pa.table({"x": range(10_000), "s": [f"value {i}" for i in range(10_000)]})
    pq.write_table(table, path, row_group_size=1_000)
    split = FileSource(str(path), split_bytes=20_000)
    parts = split.partitions()
    spans = _spans(parts)
    assert len(parts) > 2
    assert [p.key for p in parts] == [f"{path} [row groups {s.start}-{s.stop}]" for s in spans]
    assert [s.start for s in spans] == [0] + [s.stop for s in spans[:-1]]
    assert spans[-1].stop == 10
    assert [s.first for s in spans] == [1 + 1_000 * s.start for s in spans]
    assert _read(split) == _read(FileSource(str(path)))
    single = tmp_path / "one.parquet"
    pq.write_table(table, single)  # one row group: nothing to split between
    [whole] = FileSource(str(single), split_bytes=1).partitions()
    assert (whole.key, whole.span) == (str(single), None)


def test_files_that_cannot_be_split_stay_whole(tmp_path: Path) -> None:
    text = "id,note\n" + _note_rows(300)
    gzipped = _write(tmp_path / "a.csv.gz", gzip.compress(text.encode()))
    latin = _write(tmp_path / "b.csv", text.replace("plain", "pl\xe4in").encode("latin-1"))
    small = _write(tmp_path / "c.csv", text)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        archive.writestr("inner.csv", text)
    cases: list[tuple[Path, dict[str, Any]]] = [
        (gzipped, {}),
        (latin, {"encoding": "latin-1"}),
        (small, {"split_bytes": len(text)}),
        (tmp_path / "d.zip", {}),
        (small, {"split_bytes": None}),
    ]
    for path, options in cases:
        [part] = FileSource(str(path), **{"split_bytes": 64, **options}).partitions()
        assert part.span is None


def test_a_piece_changed_after_listing_is_not_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.csv", "id,note\n" + _note_rows(1000))
    source = FileSource(str(path), block_size=256, split_bytes=2048)
    parts = source.partitions()
    start = _spans(parts)[2].start
    with path.open("r+b") as handle:  # same size, one byte of the third piece changed
        handle.seek(start)
        handle.write(b"9")
    list(source.read(parts[1]))
    with pytest.raises(SourceError, match="changed after its partitions were listed") as caught:
        list(source.read(parts[2]))
    assert f"the content of {parts[2].key} no longer matches" in str(caught.value)
    with path.open("r+b") as handle:
        handle.truncate(start + 10)
    with pytest.raises(SourceError, match="was truncated after its partitions were listed"):
        list(source.read(parts[3]))


def test_a_parquet_piece_changed_after_listing_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    table = pa.table({"x": range(5_000)})
    pq.write_table(table, path, row_group_size=500)
    source = FileSource(str(path), split_bytes=2_000)
    parts = source.partitions()
    pq.write_table(pa.table({"x": range(1, 5_001)}), path, row_group_size=500)
    chunks = source.read(parts[1])
    with pytest.raises(SourceError, match="changed after its partitions were listed"):
        next(chunks)


def test_a_growing_file_keeps_its_earlier_pieces_and_a_new_header_changes_all(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "log.csv", "id,note\n" + _note_rows(1000))
    source = FileSource(str(path), block_size=256, split_bytes=2048)
    before = source.partitions()
    with path.open("a") as more:
        more.write(_note_rows(300))
    after = source.partitions()
    assert after[: len(before) - 1] == before[:-1]
    assert after[len(before) - 1].key != before[-1].key
    assert len(after) > len(before)
    _write(path, path.read_text().replace("id,note", "id,text", 1))
    renamed = source.partitions()
    assert [p.key for p in renamed] == [p.key for p in after]
    assert all(r.fingerprint != a.fingerprint for r, a in zip(renamed, after, strict=True))
