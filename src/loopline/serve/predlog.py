"""The prediction log: every served prediction, written in the background as Parquet.

``PredictionLog.log`` takes one request's rows (its id, time, model, version, feature
columns and outputs) and only puts a reference to them on a bounded queue: no copy, no
conversion, no I/O on the request's thread. A full queue drops the request's rows and
counts them in ``dropped_rows``; ``log`` never blocks and never raises, so logging can
neither slow nor fail a request (DESIGN.md, principle 7). A daemon thread takes the
records off the queue, converts them to Arrow, and writes a part when ``flush_rows`` rows
are pending or ``flush_seconds`` have passed since the oldest pending one arrived. A part
that cannot be written is logged, counted in ``failed_writes`` and its rows in
``dropped_rows``; the thread goes on with the next one. Once ``flush`` returns, every
row logged before it is either written or dropped: ``rows logged == written_rows +
dropped_rows``.

Parts are Hive-partitioned Parquet files under the log's URL (a folder or any fsspec
URL; the server's default is ``<artifact_url>/predictions``)::

    model=<name>/date=YYYY-MM-DD/part-<UTC time>-<pid>-<seq>.parquet

written to a temporary name in the same folder and renamed (on an object store, uploaded
whole), so a reader never sees half a file. ``read_predictions`` reads them back; so
does ``polars.scan_parquet(f"{url}/model={name}/**/*.parquet", hive_partitioning=True)``
for one model (across models, whose features differ, add ``missing_columns="insert"``;
always name the ``*.parquet`` files: a part being written has a temporary ``.tmp``
name). The date is the request's date in UTC. One part holds one model and one set of
feature columns (two versions of a model may take different features); its rows are:

==============  ========================  ============================================
column          type                      value
==============  ========================  ============================================
request_id      string                    the request's id, on each of its rows
time            timestamp[us, tz=UTC]     when the request was answered
model           string                    the served model's name (also the partition)
version         int64                     the model version that answered
<feature>       inferred per part         one column per feature, as the model saw it
output          float64                   the prediction (probability or value)
==============  ========================  ============================================

A feature named like one of these columns (or ``date``) is stored as
``feature_<name>``. Pass the columns as they were predicted from, and do not change
them after the call: the writer reads them later, on its own thread.

A ``PredictionLog`` starts its thread when it is made: make it in the process that
serves (after ``loopline serve`` forks its workers), and ``close`` it on shutdown.

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> predictions = PredictionLog(folder)
>>> predictions.log(request_id="r1", model="late", version=3, at=1388534400.0,
...                 features={"city": ["Oslo", "Rome"], "temp": [4.5, 21.0]},
...                 outputs=[0.81, 0.12])
>>> predictions.close()
>>> predictions.written_rows, predictions.dropped_rows
(2, 0)
>>> read_predictions(folder).select("request_id", "version", "city", "output").rows()
[('r1', 3, 'Oslo', 0.81), ('r1', 3, 'Rome', 0.12)]
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeAlias
from urllib.parse import quote

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from loopline.errors import PredictionLogError
from loopline.store.artifacts import filesystem

__all__ = [
    "COLUMNS",
    "ParquetSink",
    "PredictionLog",
    "PredictionLogCollector",
    "PredictionSink",
    "RowFeatures",
    "read_predictions",
]

log = logging.getLogger("loopline.serve")

COLUMNS = ("request_id", "time", "model", "version", "output")
"""The columns every part has besides the features."""
_RESERVED = frozenset({*COLUMNS, "date"})  # ``date`` is a partition column
_DROP_WARNING_SECONDS = 60.0

_POLL_SECONDS = 0.25
"""The writer looks at the queue at least this often (more often when woken)."""

_OneRow: TypeAlias = tuple[tuple[str, ...], tuple[Any, ...]]
"""A one-row request's (feature names, values), read by ``log``."""
_Record: TypeAlias = tuple[
    str,
    str,
    int,
    "Mapping[str, Sequence[Any]] | _OneRow",
    "Sequence[float] | np.ndarray[Any, Any]",
    float,
]
"""(request_id, model, version, features, outputs, time): what ``log`` queues."""


class _Marker:
    """Put on the queue by ``flush`` and ``close``: set once everything before it is done."""

    def __init__(self, *, stop: bool) -> None:
        self.stop = stop
        self.done = threading.Event()


class PredictionSink(Protocol):
    """Where a prediction log's parts go: one Arrow table of one model and day at a time."""

    url: str

    def write(self, table: pa.Table, *, model: str, date: str) -> str:
        """Store ``table`` whole (or not at all); return where it went."""
        ...


class ParquetSink:
    """Parquet parts in Hive-style partitions under a folder or fsspec URL.

    Parameters
    ----------
    url
        A local folder or an fsspec URL (``s3://bucket/predictions``).

    Examples
    --------
    >>> import tempfile
    >>> sink = ParquetSink(tempfile.mkdtemp())
    >>> path = sink.write(pa.table({"output": [0.5]}), model="late", date="2014-01-01")
    >>> Path(path).parent.name, Path(path).parent.parent.name
    ('date=2014-01-01', 'model=late')
    """

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self.fs, self.root, self.local, self._prefix = filesystem(self.url)
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"ParquetSink({self.url!r})"

    def write(self, table: pa.Table, *, model: str, date: str) -> str:
        folder = f"{self.root.rstrip('/')}/model={quote(model, safe='')}/date={date}"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"part-{stamp}-{os.getpid()}-{next(self._seq):06d}.parquet"
        final = f"{folder}/{name}"
        if self.local:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # A dot name without the .parquet suffix: ``**/*.parquet`` never matches it.
            temporary = f"{folder}/.{name}.tmp"
            try:
                pq.write_table(table, temporary, compression="zstd")
                os.replace(temporary, final)  # atomic: readers see the whole part or none
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            return final
        fd, temporary = tempfile.mkstemp(prefix="predlog-", suffix=".parquet")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
            self.fs.put_file(temporary, final)  # an object store publishes a PUT whole
        finally:
            os.unlink(temporary)
        return self._prefix + final


class PredictionLog:
    """Logs served predictions through a bounded queue to Parquet parts (see the module).

    Parameters
    ----------
    url
        The folder or fsspec URL the parts go under, or a ``PredictionSink``.
    max_queue
        How many requests may wait to be written; the rows of a request logged while
        it is full are dropped (and counted).
    flush_rows
        Write a part once this many rows are pending.
    flush_seconds
        Write a part once the oldest pending row has waited this long.

    Attributes
    ----------
    written_rows, dropped_rows, failed_writes
        Rows written; rows dropped (a full queue, a record that cannot be converted, a
        failed write, or logged after ``close``); parts that could not be written.
    """

    written_rows: int
    dropped_rows: int
    failed_writes: int
    counted: Callable[[str, float], None] | None = None
    """Called with ``written`` or ``dropped`` and a row count, when set (the server's
    counters in multi-process mode)."""
    failed: Callable[[str, float], None] | None = None
    """Called on each part that could not be written, when set."""

    def __init__(
        self,
        url: str | os.PathLike[str] | PredictionSink,
        *,
        max_queue: int = 10_000,
        flush_rows: int = 5_000,
        flush_seconds: float = 5.0,
    ) -> None:
        for name, value in (("max_queue", max_queue), ("flush_rows", flush_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PredictionLogError(
                    f"The {name!r} parameter of PredictionLog must be a positive integer such "
                    f"as 10000. Got {value!r}.",
                    parameter=name,
                )
        if (
            isinstance(flush_seconds, bool)
            or not isinstance(flush_seconds, int | float)
            or not flush_seconds > 0
        ):
            raise PredictionLogError(
                "The 'flush_seconds' parameter of PredictionLog must be a positive number of "
                f"seconds such as 5.0. Got {flush_seconds!r}.",
                parameter="flush_seconds",
            )
        if isinstance(url, str | os.PathLike):
            self.sink: PredictionSink = ParquetSink(url)
        elif callable(getattr(url, "write", None)):
            self.sink = url
        else:
            raise PredictionLogError(
                "The 'url' parameter of PredictionLog must be a folder, an fsspec URL such as "
                f"'s3://bucket/predictions', or a PredictionSink. Got {type(url).__name__}.",
                parameter="url",
            )
        self.url = str(getattr(self.sink, "url", url))
        self.max_queue = max_queue
        self.flush_rows = flush_rows
        self.flush_seconds = float(flush_seconds)
        self.written_rows = 0
        self.dropped_rows = 0
        self.failed_writes = 0
        self._queue: queue.Queue[_Record | _Marker] = queue.Queue(maxsize=max_queue)
        self._count_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._warned_drops = 0
        self._warned_at = -_DROP_WARNING_SECONDS
        # The writer sleeps until woken or until its poll comes round, then drains the
        # queue in one go: a writer woken by every record would take the GIL from the
        # request threads once per request.
        self._wake = threading.Event()
        self._wake_at = max(1, min(1024, max_queue // 4))
        self._poll = min(self.flush_seconds, _POLL_SECONDS)
        self._thread = threading.Thread(target=self._run, name="loopline-predlog", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"PredictionLog({self.url!r})"

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def queued(self) -> int:
        """Requests waiting in the queue now."""
        return self._queue.qsize()

    # -- the caller's side ----------------------------------------------------------------

    def log(
        self,
        *,
        request_id: str,
        model: str,
        version: int,
        features: Mapping[str, Sequence[Any]],
        outputs: Sequence[float] | np.ndarray[Any, Any],
        at: float | None = None,
    ) -> None:
        """Queue one request's rows; never blocks and never raises.

        Parameters
        ----------
        request_id
            The request's id, stored on each of its rows.
        model, version
            The model version that answered.
        features
            The feature columns the model predicted from, one value per row (lists or
            numpy arrays); not copied, so leave them unchanged.
        outputs
            One prediction per row.
        at
            When the request was answered, in seconds since the epoch (now by default).
        """
        rows = 0
        try:
            rows = len(outputs)
            if self._closed:
                self._drop(rows)
                return
            when = time.time() if at is None else at
            queued: Mapping[str, Sequence[Any]] | _OneRow = features
            if isinstance(features, RowFeatures) and rows == 1:
                # Read the one row now, into a tuple of plain values: the garbage collector
                # never tracks it, whereas the request's own objects, kept for seconds in
                # the queue, would reach its oldest generation and make every full
                # collection longer (by 100 ms and more at a few thousand requests a second).
                queued = (features.names, tuple(map(features.row.get, features.names)))
                outputs = (float(outputs[0]),)
            self._queue.put_nowait((request_id, model, version, queued, outputs, when))
            if self._queue.qsize() >= self._wake_at:
                self._wake.set()
        except queue.Full:
            self._drop(rows)
        except Exception:  # a request is never failed by its logging
            self._drop(rows)

    def _drop(self, rows: int) -> None:
        with self._count_lock:  # callers drop from many threads at once
            self.dropped_rows += rows
        if self.counted is not None:
            self.counted("dropped", rows)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row logged before this call is written (or dropped).

        Returns False if ``timeout`` seconds passed first.
        """
        if self._closed or not self._thread.is_alive():
            return True
        marker = _Marker(stop=False)
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self) -> None:
        """Write what is pending and stop the writer thread; later calls do nothing."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            marker = _Marker(stop=True)
            self._queue.put(marker)
            self._wake.set()
            self._thread.join()
        # A record queued while closing, after the stop marker, is dropped and counted.
        for item in self._drained():
            if isinstance(item, _Marker):
                item.done.set()
            else:
                self._drop(_rows_of(item))

    def _drained(self) -> Iterator[_Record | _Marker]:
        """What is in the queue now, taken one by one without waiting."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        pending: list[_Record] = []
        rows = 0
        oldest: float | None = None  # when the oldest pending record arrived
        while True:
            self._wake.wait(self._poll)
            self._wake.clear()
            for item in self._drained():
                if isinstance(item, _Marker):
                    self._write(pending)
                    pending, rows, oldest = [], 0, None
                    item.done.set()
                    if item.stop:
                        return
                    continue
                pending.append(item)
                rows += _rows_of(item)
                if oldest is None:
                    oldest = time.monotonic()
                if rows >= self.flush_rows:
                    self._write(pending)
                    pending, rows, oldest = [], 0, None
            if oldest is not None and time.monotonic() - oldest >= self.flush_seconds:
                self._write(pending)
                pending, rows, oldest = [], 0, None

    def _write(self, records: list[_Record]) -> None:
        """Write ``records`` as one part per (model, date, feature columns); never raises."""
        try:
            self._write_parts(records)
        except Exception:  # the thread must outlive any bug in a batch
            log.exception("prediction log: cannot write %d request(s); dropped", len(records))
            self._drop(sum(_rows_of(r) for r in records))
        self._warn_drops()

    def _write_parts(self, records: list[_Record]) -> None:
        groups: dict[tuple[str, str, tuple[str, ...]], list[_Record]] = {}
        for record in records:
            _, model, _, features, outputs, at = record
            try:
                rows = len(outputs)
                names: tuple[str, ...]
                if isinstance(features, tuple):  # (names, values) of one row, from ``log``
                    names = features[0]
                else:
                    names = tuple(features)
                    lengths = {n: len(v) for n, v in features.items()}
                    bad = [n for n, length in lengths.items() if length != rows]
                    if bad:
                        raise ValueError(
                            f"feature {bad[0]!r} has {lengths[bad[0]]} value(s) for "
                            f"{rows} output(s)"
                        )
                key = (str(model), time.strftime("%Y-%m-%d", time.gmtime(at)), names)
            except Exception as exc:
                log.warning("prediction log: a record of request %r is dropped: %s", record[0], exc)
                self._drop(_rows_of(record))
                continue
            groups.setdefault(key, []).append(record)
        for (model, date, names), group in groups.items():
            rows = sum(len(r[4]) for r in group)
            try:
                table = _table(group, names)
            except Exception as exc:
                log.warning(
                    "prediction log: %d row(s) of model %r cannot be converted to Arrow (%s); "
                    "dropped. Log feature values of one type per column.",
                    rows,
                    model,
                    exc,
                )
                self._drop(rows)
                continue
            try:
                self.sink.write(table, model=model, date=date)
            except Exception:
                log.exception(
                    "prediction log: cannot write %d row(s) of model %r to %s; dropped",
                    rows,
                    model,
                    self.url,
                )
                self.failed_writes += 1
                if self.failed is not None:
                    self.failed("", 1)
                self._drop(rows)
                continue
            self.written_rows += rows
            if self.counted is not None:
                self.counted("written", rows)

    def _warn_drops(self) -> None:
        dropped = self.dropped_rows
        now = time.monotonic()
        if dropped > self._warned_drops and now - self._warned_at >= _DROP_WARNING_SECONDS:
            log.warning(
                "prediction log: %d row(s) dropped so far (%d since the last warning); raise "
                "max_queue, or write to a faster sink than %s",
                dropped,
                dropped - self._warned_drops,
                self.url,
            )
            self._warned_drops, self._warned_at = dropped, now


def _rows_of(record: _Record) -> int:
    try:
        return len(record[4])
    except Exception:
        return 0


def _plain(values: Any) -> Any:
    """A list polars can read: numpy arrays and polars series as Python values."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, pl.Series):
        return values.to_list()
    return values


class RowFeatures(Mapping[str, Sequence[Any]]):
    """One request row's features as columns of one value each, without copying them.

    What a server logs for a one-row request: ``RowFeatures(names, row)`` costs nothing
    on the request's path, and the writer reads the row's values straight into its
    columns. A feature the row lacks is None.

    Examples
    --------
    >>> features = RowFeatures(("city", "temp"), {"city": "Oslo", "temp": 4.5, "id": 7})
    >>> dict(features)
    {'city': ['Oslo'], 'temp': [4.5]}
    """

    __slots__ = ("names", "row")

    def __init__(self, names: Sequence[str], row: Mapping[str, Any]) -> None:
        self.names = tuple(names)
        self.row = row

    def __getitem__(self, name: str) -> list[Any]:
        if name not in self.names:
            raise KeyError(name)
        return [self.row.get(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


_SPILL_ROWS = 256
"""One-row records are turned into columns this many at a time, the writer yielding the
interpreter between chunks (a request waits at most one chunk for it)."""


def _series(name: str, values: list[Any]) -> pl.Series:
    """One feature column; the writer yields the interpreter after each."""
    series = pl.Series(name, values, strict=False)
    time.sleep(0)
    return series


def _table(records: list[_Record], names: tuple[str, ...]) -> pa.Table:
    """The rows of ``records`` (all of one model and one set of features) as one table."""
    request_ids: list[str] = []
    times: list[float] = []
    versions: list[int] = []
    outputs: list[float] = []
    columns: dict[str, list[Any]] = {name: [] for name in names}
    pairs = list(columns.items())
    singles: list[tuple[Any, ...]] = []  # one-row records' values, a row at a time

    def spill() -> None:  # the one-row records so far, into the columns in order
        for start in range(0, len(singles), _SPILL_ROWS):
            chunk = singles[start : start + _SPILL_ROWS]
            for (_, column), values in zip(pairs, zip(*chunk, strict=True), strict=True):
                column.extend(values)
            time.sleep(0)  # let a request thread take the interpreter between chunks
        singles.clear()

    for request_id, _, version, features, values, at in records:
        rows = len(values)
        if rows == 1:
            request_ids.append(request_id)
            times.append(at)
            versions.append(version)
        else:
            request_ids.extend([request_id] * rows)
            times.extend([at] * rows)
            versions.extend([version] * rows)
        outputs.extend(_plain(values))
        if isinstance(features, tuple):  # one row, read by ``log``
            singles.append(features[1])
            continue
        if isinstance(features, RowFeatures):
            singles.append(tuple(map(features.row.get, names)))
            continue
        if singles:
            spill()
        for name, column in pairs:
            column.extend(_plain(features[name]))
    if singles:
        spill()
    micros = np.round(np.asarray(times, dtype=np.float64) * 1e6).astype(np.int64)
    frame = pl.DataFrame(
        [
            pl.Series("request_id", request_ids, dtype=pl.String),
            pl.Series("time", micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            pl.Series("model", [records[0][1]] * len(outputs), dtype=pl.String),
            pl.Series("version", versions, dtype=pl.Int64),
            *(
                _series(f"feature_{name}" if name in _RESERVED else name, values)
                for name, values in columns.items()
            ),
            pl.Series("output", outputs, dtype=pl.Float64, strict=False),
        ]
    )
    return frame.to_arrow()


def read_predictions(url: str | os.PathLike[str], model: str | None = None) -> pl.DataFrame:
    """Every logged row under ``url`` (of one ``model`` if given), in time order.

    Parts with other feature columns (another model, another version) are stacked with
    nulls where a part lacks a column. No parts: an empty frame of the fixed columns.

    Examples
    --------
    >>> import tempfile
    >>> read_predictions(tempfile.mkdtemp()).columns
    ['request_id', 'time', 'model', 'version', 'output']
    """
    fs, root, _, _ = filesystem(os.fspath(url))
    partition = "*" if model is None else quote(model, safe="")
    paths = sorted(fs.glob(f"{root.rstrip('/')}/model={partition}/date=*/part-*.parquet"))
    if not paths:
        return pl.DataFrame(
            schema={
                "request_id": pl.String,
                "time": pl.Datetime("us", "UTC"),
                "model": pl.String,
                "version": pl.Int64,
                "output": pl.Float64,
            }
        )
    frames = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            frames.append(pl.read_parquet(handle))
    frame = pl.concat(frames, how="diagonal_relaxed")
    features = [c for c in frame.columns if c not in COLUMNS]
    return frame.select(*COLUMNS[:4], *features, "output").sort("time", maintain_order=True)


class PredictionLogCollector:
    """Prometheus metrics of a ``PredictionLog``, read when scraped (nothing per request).

    Register it with a server's ``CollectorRegistry``:
    ``metrics.registry.register(PredictionLogCollector(predictions))``.

    - ``loopline_prediction_log_rows_total{outcome="written"|"dropped"}``
    - ``loopline_prediction_log_failed_writes_total``: parts that could not be written
    - ``loopline_prediction_log_queued``: requests waiting to be written

    Examples
    --------
    >>> import tempfile
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> with PredictionLog(tempfile.mkdtemp()) as predictions:
    ...     registry.register(PredictionLogCollector(predictions))
    >>> b'loopline_prediction_log_rows_total{outcome="dropped"} 0.0' in generate_latest(registry)
    True
    """

    def __init__(self, predictions: PredictionLog) -> None:
        self.predictions = predictions

    def collect(self) -> Iterator[Metric]:
        p = self.predictions
        rows = CounterMetricFamily(
            "loopline_prediction_log_rows",
            "Prediction rows the log wrote, or dropped (full queue, bad record, failed write).",
            labels=("outcome",),
        )
        rows.add_metric(("written",), p.written_rows)
        rows.add_metric(("dropped",), p.dropped_rows)
        yield rows
        yield CounterMetricFamily(
            "loopline_prediction_log_failed_writes",
            "Prediction log parts that could not be written.",
            value=p.failed_writes,
        )
        yield GaugeMetricFamily(
            "loopline_prediction_log_queued",
            "Requests waiting in the prediction log's queue.",
            value=p.queued,
        )

    def describe(self) -> list[Metric]:
        return []
