"""The prediction log: nothing lost without being counted, never blocking, never raising.

The invariant behind every test: once ``flush`` (or ``close``) returns, the rows logged
equal ``written_rows + dropped_rows``, and the rows on disk equal ``written_rows``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from loopline.errors import PredictionLogError, ServingError
from loopline.serve.predlog import (
    ParquetSink,
    PredictionLog,
    PredictionLogCollector,
    RowFeatures,
    read_predictions,
)

DAY = 1388534400.0  # 2014-01-01T00:00:00Z


class MemorySink:
    """Keeps the tables it is given; ``gate`` (when set) holds every write until opened."""

    url = "memory://"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()
        self.tables: list[pa.Table] = []

    def write(self, table: pa.Table, *, model: str, date: str) -> str:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        self.tables.append(table)
        return f"memory://{model}/{date}/{len(self.tables)}"

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


def _request(
    predictions: PredictionLog, i: int, rows: int = 2, model: str = "late", **extra: Any
) -> None:
    predictions.log(
        request_id=f"r{i}",
        model=model,
        version=1,
        features={"city": ["Oslo"] * rows, "temp": [float(i)] * rows},
        outputs=[0.5] * rows,
        **extra,
    )


def _accounted(predictions: PredictionLog, logged: int) -> None:
    assert predictions.written_rows + predictions.dropped_rows == logged


def test_rows_from_many_threads_are_all_written_or_counted(tmp_path: Path) -> None:
    predictions = PredictionLog(tmp_path, max_queue=64, flush_rows=500)
    threads, per_thread, rows = 8, 300, 3

    def work(t: int) -> None:
        for i in range(per_thread):
            _request(predictions, t * per_thread + i, rows=rows)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert predictions.flush(timeout=60)
    logged = threads * per_thread * rows
    _accounted(predictions, logged)
    assert read_predictions(tmp_path).height == predictions.written_rows
    predictions.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60),
    max_queue=st.integers(min_value=1, max_value=20),
    flush_rows=st.integers(min_value=1, max_value=100),
    threads=st.integers(min_value=1, max_value=4),
)
def test_rows_in_equal_rows_written_plus_dropped(
    batches: list[int], max_queue: int, flush_rows: int, threads: int
) -> None:
    sink = MemorySink()
    predictions = PredictionLog(sink, max_queue=max_queue, flush_rows=flush_rows)

    def work(offset: int) -> None:
        for i, rows in enumerate(batches[offset::threads]):
            _request(predictions, i, rows=rows)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert predictions.flush(timeout=60)
    _accounted(predictions, sum(batches))
    assert sink.rows == predictions.written_rows
    predictions.close()
    _accounted(predictions, sum(batches))


def test_a_full_queue_drops_and_never_blocks() -> None:
    gate = threading.Event()
    sink = MemorySink(gate)
    predictions = PredictionLog(sink, max_queue=4, flush_rows=1)
    _request(predictions, 0)
    assert sink.entered.wait(30)  # the writer is now held inside its first write
    for i in range(10_000):
        _request(predictions, i + 1)  # returns although nothing drains the queue
    assert predictions.dropped_rows > 0
    assert predictions.queued == 4
    gate.set()
    predictions.close()
    _accounted(predictions, 2 * 10_001)
    assert sink.rows == predictions.written_rows


def test_a_sink_that_cannot_be_written_counts_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    predictions = PredictionLog(blocker / "predictions", flush_rows=4)
    with caplog.at_level(logging.ERROR, logger="loopline.serve"):
        for i in range(10):
            _request(predictions, i)  # never raises into the caller
        assert predictions.flush(timeout=30)
    assert predictions.failed_writes >= 1
    assert predictions.written_rows == 0
    assert predictions.dropped_rows == 20
    assert "cannot write" in caplog.text
    _request(predictions, 11)  # the thread keeps going after a failure
    assert predictions.flush(timeout=30)
    assert predictions.dropped_rows == 22
    predictions.close()


def test_parts_are_hive_partitioned_parquet(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_rows=10_000) as predictions:
        _request(predictions, 1, model="late", at=DAY + 60)
        _request(predictions, 2, model="late", at=DAY + 86400 + 60)
        predictions.log(
            request_id="r3",
            model="delay",
            version=7,
            features={"distance": np.array([100, 2500]), "carrier": ["UA", None]},
            outputs=np.array([3.5, 12.0]),
            at=DAY,
        )
    parts = sorted(tmp_path.rglob("*.parquet"))
    assert len(parts) == 3
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    for part in parts:
        assert re.fullmatch(r"part-\d{8}T\d{12}Z-\d+-\d{6}\.parquet", part.name)
        assert re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", part.parent.name)
        schema = pq.read_schema(part)
        assert schema.field("time").type == pa.timestamp("us", tz="UTC")
        assert schema.field("version").type == pa.int64()
        assert schema.field("output").type == pa.float64()
    # One model's parts share their columns: polars scans them with their partitions.
    late = pl.scan_parquet(f"{tmp_path}/model=late/**/*.parquet", hive_partitioning=True)
    dates = late.select("date").unique().sort("date").collect().get_column("date")
    assert [str(d) for d in dates] == ["2014-01-01", "2014-01-02"]
    every = pl.scan_parquet(
        f"{tmp_path}/**/*.parquet",
        hive_partitioning=True,
        missing_columns="insert",
        extra_columns="ignore",
    )
    assert every.select(pl.len()).collect().item() == 6
    delay = read_predictions(tmp_path, model="delay")
    assert delay.columns == ["request_id", "time", "model", "version", "distance", "carrier",
                             "output"]  # fmt: skip
    assert delay.rows() == [
        ("r3", delay["time"][0], "delay", 7, 100, "UA", 3.5),
        ("r3", delay["time"][0], "delay", 7, 2500, None, 12.0),
    ]
    assert delay["time"][0].timestamp() == DAY
    both = read_predictions(tmp_path)
    assert both.height == 6
    assert both.get_column("time").is_sorted()


def test_a_feature_named_like_a_column_is_prefixed(tmp_path: Path) -> None:
    with PredictionLog(tmp_path) as predictions:
        predictions.log(
            request_id="r1",
            model="m",
            version=1,
            features={"time": [5], "date": ["x"]},
            outputs=[1.0],
        )
    assert read_predictions(tmp_path).columns == [
        "request_id",
        "time",
        "model",
        "version",
        "feature_time",
        "feature_date",
        "output",
    ]


def test_a_bad_record_is_dropped_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="loopline.serve"),
        PredictionLog(tmp_path) as predictions,
    ):
        predictions.log(
            request_id="bad", model="m", version=1, features={"x": [1, 2]}, outputs=[0.5]
        )
        predictions.log(
            request_id="odd",
            model="m",
            version=1,
            features={"x": [1]},
            outputs=object(),  # type: ignore[arg-type]
        )
        _request(predictions, 1, model="m")
    assert predictions.written_rows == 2
    assert predictions.dropped_rows == 1
    assert "has 2 value(s) for 1 output(s)" in caplog.text


def test_close_is_idempotent_and_later_rows_are_counted(tmp_path: Path) -> None:
    predictions = PredictionLog(tmp_path)
    _request(predictions, 1)
    predictions.close()
    predictions.close()
    assert predictions.written_rows == 2
    _request(predictions, 2)  # after close: dropped, counted, no error
    assert predictions.dropped_rows == 2
    assert predictions.flush() is True
    assert not predictions._thread.is_alive()


def test_flush_seconds_writes_without_reaching_flush_rows(tmp_path: Path) -> None:
    predictions = PredictionLog(tmp_path, flush_rows=1_000_000, flush_seconds=0.05)
    _request(predictions, 1)
    for _ in range(600):  # a liveness check, not a timing assertion
        if predictions.written_rows:
            break
        time.sleep(0.05)
    assert predictions.written_rows == 2
    assert read_predictions(tmp_path).height == 2
    predictions.close()


def test_metrics_are_read_when_scraped(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with PredictionLog(tmp_path) as predictions:
        registry.register(PredictionLogCollector(predictions))
        _request(predictions, 1, rows=3)
    text = generate_latest(registry).decode()
    assert 'loopline_prediction_log_rows_total{outcome="written"} 3.0' in text
    assert "loopline_prediction_log_failed_writes_total 0.0" in text
    assert "loopline_prediction_log_queued 0.0" in text


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"max_queue": 0}, "max_queue"),
        ({"flush_rows": 2.5}, "flush_rows"),
        ({"flush_seconds": 0}, "flush_seconds"),
        ({"flush_seconds": True}, "flush_seconds"),
    ],
)
def test_bad_parameters_are_refused(tmp_path: Path, parameters: dict[str, Any], named: str) -> None:
    with pytest.raises(PredictionLogError, match=f"'{named}' parameter") as info:
        PredictionLog(tmp_path, **parameters)
    assert info.value.parameter == named
    assert isinstance(info.value, ServingError | ValueError)


def test_a_url_that_is_not_a_sink_is_refused() -> None:
    with pytest.raises(PredictionLogError, match="'url' parameter"):
        PredictionLog(42)  # type: ignore[arg-type]


def test_a_sink_on_another_filesystem_uploads_whole_parts() -> None:
    sink = ParquetSink("memory://loopline-predlog-test")
    with PredictionLog(sink) as predictions:
        _request(predictions, 1)
    assert predictions.written_rows == 2
    frame = read_predictions("memory://loopline-predlog-test")
    assert frame.get_column("request_id").to_list() == ["r1", "r1"]


def test_one_row_requests_and_column_requests_keep_their_order(tmp_path: Path) -> None:
    names = ("city", "temp")
    with PredictionLog(tmp_path) as predictions:
        predictions.log(
            request_id="a",
            model="m",
            version=1,
            features=RowFeatures(names, {"city": "Oslo", "temp": 4.5, "other": 1}),
            outputs=np.array([0.1]),
        )
        predictions.log(
            request_id="b",
            model="m",
            version=1,
            features={"city": ["Rome", None], "temp": np.array([21.0, 3.0])},
            outputs=np.array([0.2, 0.3]),
        )
        predictions.log(
            request_id="c",
            model="m",
            version=2,
            features=RowFeatures(names, {"city": "Lima"}),  # temp missing: null
            outputs=[0.4],
        )
    rows = read_predictions(tmp_path).select("request_id", "version", *names, "output").rows()
    assert rows == [
        ("a", 1, "Oslo", 4.5, 0.1),
        ("b", 1, "Rome", 21.0, 0.2),
        ("b", 1, None, 3.0, 0.3),
        ("c", 2, "Lima", None, 0.4),
    ]
    assert (predictions.written_rows, predictions.dropped_rows) == (4, 0)
