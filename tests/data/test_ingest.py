"""Ingestion end to end: sources through contracts into dataset versions, nothing lost."""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline import step
from loopline.config import Settings
from loopline.data import profile as profile_module
from loopline.data.contract import Column, Contract
from loopline.data.ingest import Dataset, ingest, read_dataset, read_quarantine
from loopline.data.profile import Profile
from loopline.data.sources.files import FileSource
from loopline.data.sources.sql import SQLSource
from loopline.data.workspace import Workspace
from loopline.errors import ContractError
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.runner import Runner

TRIPS = Contract(
    "trips",
    {
        "id": Column("int64", nullable=False, unique=True),
        "city": Column("string", allowed=["Oslo", "Lima"]),
        "km": Column("float64", min=0),
    },
    max_bad_fraction=0.5,
)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_typed_or_quarantined_with_reasons_and_the_counts_reconcile(
    tmp_path: Path, ws: Workspace
) -> None:
    write(tmp_path / "in" / "a.csv", "id,city,km\n1,Oslo,2.5\n2,Paris,3\n3,Lima,-1\n")
    write(tmp_path / "in" / "b.csv", 'id,city,km\n4,Lima,1e3\n1,Oslo,7\n5,"Oslo,x\n')

    lenient = Contract("trips", dict(TRIPS.columns), max_bad_fraction=0.8)
    result = ingest(FileSource(str(tmp_path / "in" / "*.csv")), contract=lenient, workspace=ws)

    dataset = result.dataset
    assert (dataset.ref, dataset.status) == ("trips@1", "ok")
    assert (dataset.rows_read, dataset.rows, dataset.rows_quarantined) == (6, 2, 4)
    assert read_dataset(dataset, workspace=ws).to_pylist() == [
        {"id": 1, "city": "Oslo", "km": 2.5},
        {"id": 4, "city": "Lima", "km": 1000.0},
    ]
    assert dataset.columns == [("id", "int64"), ("city", "string"), ("km", "double")]
    bad = read_quarantine(dataset, workspace=ws).to_pylist()
    where = {(Path(r["source"]).name, r["location"]): (r["rule"], r["column"]) for r in bad}
    assert where == {
        ("a.csv", 3): ("allowed", "city"),
        ("a.csv", 4): ("min", "km"),
        ("b.csv", 3): ("unique", "id"),
        ("b.csv", 4): ("parse", None),
    }
    assert all(r["reason"] for r in bad)
    assert dataset.profile_hash is not None


def test_unchanged_files_reuse_their_parts_and_changed_ones_are_read_again(
    tmp_path: Path, ws: Workspace
) -> None:
    folder = tmp_path / "in"
    write(folder / "a.csv", "id,city,km\n1,Oslo,2.5\n")
    write(folder / "b.csv", "id,city,km\n2,Lima,3\n")
    source = FileSource(str(folder / "*.csv"))

    first = ingest(source, contract=TRIPS, workspace=ws)
    again = ingest(source, contract=TRIPS, workspace=ws)
    write(folder / "b.csv", "id,city,km\n2,Lima,4\n")
    write(folder / "c.csv", "id,city,km\n3,Oslo,5\n")
    changed = ingest(source, contract=TRIPS, workspace=ws)

    assert (first.parts_read, first.parts_reused) == (2, 0)
    assert (again.parts_read, again.parts_reused) == (0, 2)
    assert again.dataset.content_hash == first.dataset.content_hash
    assert again.dataset.version == 2
    assert (changed.parts_read, changed.parts_reused) == (2, 1)
    assert read_dataset(changed.dataset, workspace=ws).column("km").to_pylist() == [2.5, 4, 5]


def test_a_growing_file_in_pieces_reads_only_its_new_pieces(tmp_path: Path, ws: Workspace) -> None:
    path = tmp_path / "trips.csv"
    cities = ["Oslo", "Lima", "Rome"]  # Rome is not allowed: quarantined
    write(path, "id,city,km\n" + "".join(f"{i},{cities[i % 3]},{i}\n" for i in range(3_000)))
    source = FileSource(str(path), block_size=1024, split_bytes=8_192)
    first = ingest(source, contract=TRIPS, workspace=ws)
    with path.open("a") as more:
        more.write("".join(f"{i},Oslo,{i}\n" for i in range(3_000, 3_500)))
    grown = ingest(source, contract=TRIPS, workspace=ws)
    whole = ingest(
        FileSource(str(path), split_bytes=None), name="whole", contract=TRIPS, workspace=ws
    )

    pieces = first.parts_read
    assert pieces > 3
    assert (grown.parts_read, grown.parts_reused) == (
        len(source.partitions()) - pieces + 1,
        pieces - 1,
    )
    assert read_dataset(grown.dataset, workspace=ws) == read_dataset(whole.dataset, workspace=ws)
    split_bad, whole_bad = (
        read_quarantine(result.dataset, workspace=ws).to_pylist() for result in (grown, whole)
    )
    assert split_bad == whole_bad
    assert len(split_bad) == 1_000
    assert (grown.dataset.rows, grown.dataset.rows_quarantined) == (2_500, 1_000)


def test_a_changed_contract_reads_everything_again(tmp_path: Path, ws: Workspace) -> None:
    source = FileSource(str(write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n")))
    ingest(source, contract=TRIPS, workspace=ws)
    stricter = Contract("trips", {**TRIPS.columns, "km": Column("float64", min=3)}, on_bad="warn")

    result = ingest(source, contract=stricter, workspace=ws)

    assert (result.parts_read, result.parts_reused) == (1, 0)
    assert (result.rows_passed, result.rows_quarantined) == (0, 1)


def test_a_failing_contract_keeps_a_failed_version_for_its_quarantine(
    tmp_path: Path, ws: Workspace
) -> None:
    source = FileSource(str(write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n")))
    good = ingest(source, contract=TRIPS, workspace=ws)
    write(tmp_path / "a.csv", "id,city,km\n1,Oslo,x\n2,Oslo,y\n3,Lima,1\n")

    with pytest.raises(ContractError) as info:
        ingest(source, contract=TRIPS, workspace=ws)

    message = str(info.value)
    assert "2 of 3 rows" in message
    assert "Kept as failed version trips@2" in message
    assert "loopline quarantine" in message
    failed = ws.metadata.get_dataset("trips@2")
    assert failed.status == "failed"
    assert read_quarantine(failed, workspace=ws).column("rule").to_pylist() == ["type", "type"]
    assert ws.metadata.latest_dataset("trips") == good.dataset


def test_sql_cursor_reads_only_new_rows(tmp_path: Path, ws: Workspace) -> None:
    db = tmp_path / "events.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events (id INTEGER, city TEXT, km REAL)")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(1, "Oslo", 1.0), (2, "Lima", 2)])
    source = SQLSource(f"sqlite:///{db}", table="events", cursor="id")

    first = ingest(source, name="trips", contract=TRIPS, workspace=ws)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(3, "Oslo", 3.0)])
    second = ingest(source, name="trips", contract=TRIPS, workspace=ws)
    third = ingest(source, name="trips", contract=TRIPS, workspace=ws)

    assert first.dataset.cursor == 2
    assert (second.dataset.cursor, second.parts_read, second.dataset.rows) == (3, 1, 3)
    assert read_dataset(second.dataset, workspace=ws).column("id").to_pylist() == [1, 2, 3]
    assert (third.dataset.rows, third.dataset.cursor) == (3, 3)


def test_a_part_profiled_in_an_older_format_is_read_again_not_reused(
    tmp_path: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FileSource(str(write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n")))
    with monkeypatch.context() as patched:  # the profiles an older loopline wrote
        patched.setattr(profile_module, "FORMAT", "loopline.profile/1")
        first = ingest(source, contract=TRIPS, workspace=ws)

    again = ingest(source, contract=TRIPS, workspace=ws)
    twice = ingest(source, contract=TRIPS, workspace=ws)

    assert (again.parts_read, again.parts_reused) == (1, 0)
    assert again.dataset.content_hash == first.dataset.content_hash
    assert again.dataset.profile_hash is not None
    assert Profile.from_json(ws.artifacts.read_bytes(again.dataset.profile_hash)).rows == 1
    assert (twice.parts_read, twice.parts_reused) == (0, 1)


def test_appending_to_parts_profiled_in_an_older_format_says_how_to_rebuild(
    tmp_path: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events (id INTEGER, city TEXT, km REAL)")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(1, "Oslo", 1.0)])
    source = SQLSource(f"sqlite:///{db}", table="events", cursor="id")
    with monkeypatch.context() as patched:
        patched.setattr(profile_module, "FORMAT", "loopline.profile/1")
        ingest(source, name="trips", contract=TRIPS, workspace=ws)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(2, "Lima", 2.0)])

    with pytest.raises(ContractError, match="incremental=False"):
        ingest(source, name="trips", contract=TRIPS, workspace=ws)
    rebuilt = ingest(source, name="trips", contract=TRIPS, incremental=False, workspace=ws)

    assert rebuilt.dataset.rows == 2


def test_a_pinned_version_reads_the_same_bytes(tmp_path: Path, ws: Workspace) -> None:
    source = FileSource(str(write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n")))
    first = ingest(source, contract=TRIPS, workspace=ws)
    write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n2,Lima,1\n")
    ingest(source, contract=TRIPS, workspace=ws)

    pinned = read_dataset("trips@1", workspace=ws)

    assert pinned.equals(read_dataset(first.dataset, workspace=ws))
    assert pinned.num_rows == 1
    assert read_dataset("trips", workspace=ws).num_rows == 2


def test_in_a_pipeline_versions_belong_to_the_run_and_steps_key_on_them(tmp_path: Path) -> None:
    data = write(tmp_path / "a.csv", "id,city,km\n1,Oslo,2.5\n2,Rome,1\n")

    @step(cache=False)
    def load() -> str:
        return ingest(FileSource(str(data)), contract=TRIPS).dataset.ref

    @step
    def total(trips: Dataset = Dataset("trips")) -> float:
        return float(pl.from_arrow(trips.read())["km"].sum())  # type: ignore[index, union-attr]

    settings = Settings.load(start=tmp_path, search=False, env={})
    with Runner(settings) as runner:
        first = runner.run(Pipeline.from_steps([load], name="load"))
        summed = runner.run(Pipeline.from_steps([total], name="total"))
        again = runner.run(Pipeline.from_steps([total], name="total"))
        write(data, "id,city,km\n1,Oslo,2.5\n2,Lima,1\n")
        runner.run(Pipeline.from_steps([load], name="load"))
        fresh = runner.run(Pipeline.from_steps([total], name="total"))

        [version] = runner.metadata.datasets_of_run(first.run_id)
        assert (version.run_id, version.step_id) == (first.run_id, first.steps["load"].id)
        assert runner.output(summed.run_id, "total") == 2.5
        assert again.steps["total"].status == "cached"
        assert fresh.steps["total"].status == "succeeded"
        assert runner.output(fresh.run_id, "total") == 3.5


_cells = st.sampled_from(["1", "2", "-3", "x", "", "Oslo", "Lima", '"', "1,5", "7.5"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.lists(_cells, min_size=2, max_size=4), max_size=25))
def test_every_row_read_is_passed_or_quarantined(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]]
) -> None:
    folder = tmp_path_factory.mktemp("ingest")
    text = "id,city,km\n" + "".join(",".join(r) + "\n" for r in rows)
    path = folder / "in.csv"
    path.write_text(text, encoding="utf-8")
    ws = Workspace(f"sqlite:///{folder}/meta.db", str(folder / "artifacts"))
    lenient = Contract("trips", dict(TRIPS.columns), on_bad="warn")

    result = ingest(FileSource(str(path)), contract=lenient, workspace=ws)

    dataset = result.dataset
    assert dataset.rows_read == dataset.rows + dataset.rows_quarantined
    passed = read_dataset(dataset, workspace=ws)
    bad = read_quarantine(dataset, workspace=ws)
    assert passed.num_rows == dataset.rows
    assert bad.num_rows == dataset.rows_quarantined
    assert all(bad.column("reason").to_pylist())
    lines = set(range(2, len(text.splitlines()) + 1))
    assert set(bad.column("location").to_pylist()) <= lines
    if passed.num_rows:
        assert pa.compute.min(passed.column("km")).as_py() is None or (
            pa.compute.min(passed.column("km")).as_py() >= 0
        )


def _many_chunks(path: Path) -> FileSource:
    """A file read in about 40 chunks, so that the ingest pipeline has many in flight."""
    lines = [f"{i},{('Oslo', 'Lima', 'Paris')[i % 3]},{(i * 7) % 23 - 2}" for i in range(4_000)]
    write(path, "id,city,km\n" + "\n".join(lines) + "\n")
    return FileSource(str(path), block_size=1_024)


def test_the_pipelined_ingest_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    source = _many_chunks(tmp_path / "in.csv")
    lenient = Contract("trips", dict(TRIPS.columns), on_bad="warn")
    outputs = set()
    for run in range(3):
        ws = Workspace(f"sqlite:///{tmp_path}/meta{run}.db", str(tmp_path / f"artifacts{run}"))
        dataset = ingest(source, contract=lenient, workspace=ws).dataset
        (part,) = ws.metadata.dataset_parts(dataset.id)
        outputs.add((part.content_hash, part.quarantine_hash, part.profile_hash))
        assert dataset.rows_read == 4_000
        assert 0 < dataset.rows_quarantined < 4_000
    assert len(outputs) == 1
    passed = read_dataset(dataset, workspace=ws)
    assert passed.column("id").to_pylist() == sorted(passed.column("id").to_pylist())


def test_an_error_while_reading_stops_the_pipeline_and_reaches_the_caller(
    tmp_path: Path, ws: Workspace
) -> None:
    class Failing(FileSource):
        def read(self, partition: Any) -> Iterator[Any]:
            with contextlib.closing(super().read(partition)) as chunks:
                yield next(chunks)
                yield next(chunks)
                raise OSError("the disk went away")

    source = _many_chunks(tmp_path / "in.csv")
    before = set(threading.enumerate())

    with pytest.raises(OSError, match="the disk went away"):
        ingest(Failing(source.patterns[0], block_size=1_024), contract=TRIPS, workspace=ws)

    assert set(threading.enumerate()) <= before
    assert ws.metadata.latest_dataset("trips") is None


def test_an_error_in_the_last_stage_stops_the_threads_ahead_of_it(
    tmp_path: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package re-exports the function ``ingest`` under the module's name.
    ingest_module = importlib.import_module("loopline.data.ingest")
    profile_table = ingest_module.profile_table
    calls: list[int] = []

    def failing_profile(table: pa.Table) -> Any:
        calls.append(table.num_rows)
        if len(calls) == 3:
            raise RuntimeError("profile failed")
        return profile_table(table)

    monkeypatch.setattr(ingest_module, "profile_table", failing_profile)
    before = set(threading.enumerate())

    with pytest.raises(RuntimeError, match="profile failed"):
        ingest(_many_chunks(tmp_path / "in.csv"), contract=TRIPS, workspace=ws)

    assert len(calls) == 3
    assert set(threading.enumerate()) <= before
