"""Batch scoring: a model over Parquet or CSV files, one bounded batch at a time.

``predict_batch`` reads its input (a file, a folder of parts, a glob, or an fsspec URL of
one of these) one file after another, each in batches of ``batch_rows`` rows (Parquet by
``ParquetFile.iter_batches``, a row group at a time; CSV by ``pyarrow.csv.open_csv``, a
block at a time), so memory holds about one batch and one row group whatever the
input's size. ``pyarrow.dataset`` is not used: its scanner reads ahead as far as the
consumer lags behind, which while a model predicts is most of a file. Each batch goes the way of
a served request: with ``views``, its features are read from the online store by
``loopline.features.materialize.online_features`` (and the on-demand ones computed),
exactly as ``POST /predict`` reads them; then ``ModelBundle.predict`` encodes the rows
with the bundle's own preprocessing and predicts them. Unlike ``/predict``, an entity the
online store has never held is not an error: its features are missing.

The output is

- a folder of Parquet parts ``part-00000.parquet``, ``part-00001.parquet``, ... (one per
  batch, in input order), unless ``output`` ends with
- ``.parquet``: one Parquet file (one row group per batch), or
- ``.csv``: one CSV file with a header.

Every row holds the kept columns (every input column by default) and the prediction
(``output_column``, float64: the positive-class probability, or the value). The output
is written under a temporary name beside ``output`` and renamed when every batch is
done, so a failure (a bad value in the last file, a full disk) leaves nothing behind.
The input's columns are checked before anything is written: a missing feature column
or one of a type the model cannot take is reported at once.

Examples
--------
>>> import tempfile
>>> from loopline.train import LightGBMModel, train_bundle
>>> rows = pl.DataFrame({"distance": [200.0, 1500.0, 300.0, 2500.0] * 10,
...                      "carrier": ["UA", "AA", "UA", "DL"] * 10,
...                      "delayed": [False, True, False, True] * 10})
>>> bundle = train_bundle(rows, features=["distance", "carrier"], label="delayed",
...                       model=LightGBMModel(num_rounds=5, min_data_in_leaf=2))
>>> folder = Path(tempfile.mkdtemp())
>>> rows.drop("delayed").write_parquet(folder / "flights.parquet")
>>> result = predict_batch(bundle, folder / "flights.parquet", folder / "scored",
...                        batch_rows=16)
>>> result.rows, result.parts
(40, 3)
>>> scored = pl.read_parquet(folder / "scored")
>>> scored.columns
['distance', 'carrier', 'prediction']
>>> bool((scored["prediction"].to_numpy() == bundle.predict(rows)).all())
True
"""

from __future__ import annotations

import contextlib
import glob
import operator
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loopline.data.parallel import map_partitions, on_ray, ray_cpus
from loopline.errors import BatchPredictionError, LooplineError, SourceError
from loopline.features.definition import OnDemand, View

if TYPE_CHECKING:
    from loopline.store.online import OnlineStore
    from loopline.train.bundle import ModelBundle

__all__ = ["FORMATS", "BatchResult", "predict_batch"]

FORMATS = ("parquet", "csv")
"""Input formats ``predict_batch`` reads."""
Format = Literal["parquet", "csv"]

_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_ARROW_TYPES = {
    "Boolean": pa.bool_(),
    "String": pa.string(),
    "Categorical": pa.string(),
    "Enum": pa.string(),
}


@dataclass(frozen=True)
class BatchResult:
    """What ``predict_batch`` wrote."""

    rows: int
    """Rows predicted (and written)."""
    seconds: float
    """Wall time, from opening the input to the renamed output."""
    parts: int
    """Batches written: Parquet parts of a folder, or row groups of one file."""
    output: str
    """Where the output is."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def predict_batch(
    bundle: ModelBundle,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_rows: int = 200_000,
    views: Sequence[View | OnDemand] | None = None,
    online_store: OnlineStore | None = None,
    online_url: str | None = None,
    at: datetime | None = None,
    output_column: str = "prediction",
    keep_columns: Sequence[str] | None = None,
    format: Format | None = None,
    overwrite: bool = False,
) -> BatchResult:
    """Predict every row of ``source`` with ``bundle`` and write them to ``output``.

    Parameters
    ----------
    bundle
        The model, with its preprocessing.
    source
        A Parquet or CSV file, a folder of them (read in name order; hidden files and
        ``_SUCCESS`` skipped; folder names such as ``date=...`` are not read as columns),
        a glob such as ``data/*.parquet``, or an fsspec URL of one of these.
    output
        A folder of Parquet parts, or one ``.parquet`` or ``.csv`` file (see the
        module). It must not exist unless ``overwrite``.
    batch_rows
        Rows per batch: memory holds about one batch (its frame, encoded matrix and
        output) and the Parquet row group being read.
    views, online_store, online_url, at
        Read the model's features from the online store, as ``POST /predict`` does: the
        input then needs the views' entity keys and the request-time columns. The
        store is ``online_store``, or the one at ``online_url``, or the configured one;
        ``at`` is the time the features are read as of (now by default). On the ``ray``
        engine each task opens its own store, so give a URL rather than a store.
    output_column
        The name of the prediction column.
    keep_columns
        The columns to write beside the prediction (input columns, or features read
        from the views); every input column when None; ``[]`` for the prediction alone.
    format
        ``'parquet'`` or ``'csv'``; by default taken from the file names.
    overwrite
        Replace an existing ``output`` (only once the new one is complete).

    Raises
    ------
    SourceError
        ``source`` does not exist, matches no file, or cannot be read.
    BatchPredictionError
        The input lacks a column the model needs, holds a type it cannot take, or the
        output exists or cannot be written; ``.column`` or ``.path`` says which.
    """
    start = time.perf_counter()
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise BatchPredictionError(
            f"The 'batch_rows' parameter of predict_batch must be a positive integer such as "
            f"200000. Got {batch_rows!r}.",
            parameter="batch_rows",
        )
    if not isinstance(output_column, str) or not output_column:
        raise BatchPredictionError(
            f"The 'output_column' parameter of predict_batch must be a column name such as "
            f"'prediction'. Got {output_column!r}.",
            parameter="output_column",
        )
    if format is not None and format not in FORMATS:
        raise BatchPredictionError(
            f"The 'format' parameter of predict_batch must be one of {', '.join(FORMATS)} "
            f"(or None to take it from the file names). Got {format!r}.",
            parameter="format",
        )
    views = list(views) if views else None
    reader = _Source(bundle, source, format)
    have = list(reader.schemas[0].names)
    request, keep = _plan(bundle, have, views, keep_columns, output_column)
    read = [*dict.fromkeys([*request, *(c for c in keep if c in have)])]
    for path, schema in zip(reader.paths, reader.schemas, strict=True):
        missing = [c for c in read if c not in schema.names]
        if missing:
            raise BatchPredictionError(
                f"The input file {path} lacks the column(s) {', '.join(map(repr, missing))}, "
                f"which {reader.paths[0]} has and the output needs. Give every file the same "
                f"columns, or score the files apart.",
                column=missing[0],
                path=path,
            )
        _check_types(bundle, schema, path=path)
    target = _Output(output, overwrite=overwrite)
    scoring = _Scoring(request, keep, read, views, online_url, at, output_column, batch_rows)
    ranges = _ranges(reader, batch_rows) if online_store is None and on_ray() else []
    if len(ranges) > 1:
        with target.writing() as writer:
            rows = _score_on_ray(bundle, reader, scoring, ranges, writer)
        return BatchResult(rows, time.perf_counter() - start, target.parts, str(target.path))
    store = online_store if online_store is not None or not views else scoring.open_store()
    rows = 0
    try:
        with target.writing() as writer:
            for table in reader.batches(read, batch_rows):
                out = scoring.score(bundle, table, store)
                writer.write(out)
                rows += out.num_rows
    finally:
        if views and online_store is None and store is not None:
            store.close()
    return BatchResult(rows, time.perf_counter() - start, target.parts, str(target.path))


# -- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scoring:
    """How a batch of input rows becomes a batch of output rows."""

    request: list[str]
    keep: list[str]
    read: list[str]
    views: list[View | OnDemand] | None
    online_url: str | None
    at: datetime | None
    output_column: str
    batch_rows: int

    def open_store(self) -> OnlineStore:
        if self.online_url is not None:
            from loopline.store.online import open_online_store

            return open_online_store(self.online_url)
        from loopline.features.materialize import online_store as configured

        return configured()

    def score(self, bundle: ModelBundle, table: pa.Table, store: OnlineStore | None) -> pa.Table:
        frame = pl.DataFrame(pl.from_arrow(table))
        scored = frame
        if self.views:
            from loopline.features.materialize import online_features

            scored = online_features(
                self.views, frame.select(self.request), at=self.at, store=store
            )
        predictions = bundle.predict(scored)
        kept = [(frame if name in frame.columns else scored).get_column(name) for name in self.keep]
        return pl.DataFrame([*kept, pl.Series(self.output_column, predictions)]).to_arrow()


RAY_BATCHES = 4
"""On Ray, a task scores about this many batches (fewer when the cluster has CPUs idle)."""


def _ranges(reader: _Source, batch_rows: int) -> list[tuple[int, int]]:
    """Batch ranges ``[first, end)`` for Ray tasks: Parquet only (row counts are known
    from the footers, so each task can start at its first row)."""
    if reader.kind != "parquet":
        return []
    batches = -(-sum(reader.row_counts()) // batch_rows)
    per_task = max(1, min(RAY_BATCHES, batches // ray_cpus()))
    return [(first, min(first + per_task, batches)) for first in range(0, batches, per_task)]


@dataclass(frozen=True)
class _RangeTask:
    """Score batches ``[first, end)`` of the input; write each as a part into ``folder``."""

    bundle: bytes
    bundle_hash: str
    reader: _Source
    scoring: _Scoring
    first: int
    end: int
    folder: str

    def __call__(self) -> int:
        bundle = _bundle(self.bundle, self.bundle_hash)
        store = self.scoring.open_store() if self.scoring.views else None
        rows_ = self.scoring.batch_rows
        rows = 0
        try:
            batches = self.reader.batches(
                self.scoring.read, rows_, start=self.first * rows_, stop=self.end * rows_
            )
            for number, table in enumerate(batches, start=self.first):
                out = self.scoring.score(bundle, table, store)
                pq.write_table(out, Path(self.folder) / _part_name(number), compression="zstd")
                rows += out.num_rows
        finally:
            if store is not None:
                store.close()
        return rows


_BUNDLES: dict[str, ModelBundle] = {}


def _bundle(data: bytes, content_hash: str) -> ModelBundle:
    """The bundle, loaded once per worker process."""
    bundle = _BUNDLES.get(content_hash)
    if bundle is None:
        from loopline.train.bundle import ModelBundle

        bundle = _BUNDLES[content_hash] = ModelBundle.from_bytes(data, expected_hash=content_hash)
    return bundle


def _score_on_ray(
    bundle: ModelBundle,
    reader: _Source,
    scoring: _Scoring,
    ranges: Sequence[tuple[int, int]],
    writer: _Output,
) -> int:
    """Score the input as Ray tasks that each write their parts; the parts are the
    output folder's, or are copied, in order, into the output file."""
    data = bundle.to_bytes()
    folder = writer.parts_folder()
    tasks = [
        _RangeTask(data, bundle.content_hash, reader, scoring, first, end, str(folder))
        for first, end in ranges
    ]
    try:
        rows = sum(map_partitions(operator.call, tasks, name="predict"))
    except BaseException:
        writer.discard_parts(folder)
        raise
    writer.adopt_parts(folder, ranges[-1][1])
    return rows


def _part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


# -- the input ----------------------------------------------------------------------------


def _format_of(paths: Iterable[str], given: Format | None, source: str) -> Format:
    if given is not None:
        return given
    found = {_SUFFIXES.get(Path(p.removesuffix(".gz")).suffix.lower()) for p in paths}
    found.discard(None)
    if len(found) == 1:
        return found.pop()  # type: ignore[return-value]
    raise SourceError(
        f"Cannot tell whether {source} holds Parquet or CSV from its file names "
        f"({'both' if found else 'neither'} .parquet and .csv); pass format='parquet' or "
        f"format='csv' (loopline predict --format).",
        path=source,
    )


@contextlib.contextmanager
def _reading(source: str) -> Iterator[None]:
    """Errors of pyarrow and the filesystem, while reading ``source``, as ``SourceError``."""
    try:
        yield
    except LooplineError:
        raise
    except FileNotFoundError as exc:
        raise SourceError(
            f"The input {source} does not exist ({exc}). Check the path.", path=source
        ) from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"The input {source} cannot be read: {first}. Check that it is Parquet or CSV "
            f"(pass format= if its names do not say which) and not damaged.",
            path=source,
        ) from exc


class _Source:
    """The input files, read one after another, each in bounded batches.

    ``pyarrow.dataset`` scanners read ahead as far as the consumer lags (most of a file
    while the model predicts), so each file is read sequentially instead: Parquet by
    ``ParquetFile.iter_batches`` (one row group at a time, no pre-buffering), CSV by
    ``pyarrow.csv.open_csv`` (one block at a time).
    """

    def __init__(self, bundle: ModelBundle, source: str | os.PathLike[str], given: Format | None):
        text = os.fspath(source)
        self.text = text
        with _reading(text):
            if "://" in text and not text.startswith("file://"):
                self.fs, root = fsspec.core.url_to_fs(text)
            else:
                # Absolute: Ray's workers do not share this process's working directory.
                self.fs, root = None, os.path.abspath(text.removeprefix("file://"))
            self.paths = self._find(root, given)
            self.kind = _format_of(self.paths, given, text)
            schema = bundle.schema
            # The model's columns are read as the model's types: CSV inference on the
            # first block could guess integers for a column with decimals further down.
            self._csv_types = {
                name: _ARROW_TYPES.get(schema[name].split("(", 1)[0], pa.float64())
                for name in bundle.features
            }
            self.schemas = [self._schema(path) for path in self.paths]

    def _find(self, root: str, given: Format | None) -> list[str]:
        fs = self.fs
        pattern = any(c in root for c in "*?[")
        if fs is not None:
            if pattern:
                paths = sorted(fs.glob(root))
            elif fs.isdir(root):
                paths = sorted(p for p in fs.find(root) if _data_file(Path(p).name, given))
            elif fs.exists(root):
                paths = [root]
            else:
                paths = []
        elif pattern:
            paths = sorted(glob.glob(root, recursive=True))
        elif Path(root).is_dir():
            paths = sorted(
                str(p) for p in Path(root).rglob("*") if p.is_file() and _data_file(p.name, given)
            )
        elif Path(root).exists():
            paths = [root]
        else:
            raise SourceError(
                f"The input {self.text} does not exist. Give a Parquet or CSV file, a folder "
                f"of them, or a glob such as 'data/*.parquet'.",
                path=self.text,
            )
        if not paths:
            raise SourceError(
                f"The input {self.text} holds no files to read. Give a Parquet or CSV file, "
                f"a folder of them, or a glob such as 'data/*.parquet'.",
                path=self.text,
            )
        return paths

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[Any]:
        if self.fs is None:
            yield path
        else:
            with self.fs.open(path, "rb") as handle:
                yield handle

    def _csv(self, handle: Any, columns: list[str] | None = None) -> Any:
        convert = pacsv.ConvertOptions(
            column_types=self._csv_types, strings_can_be_null=True, include_columns=columns
        )
        return pacsv.open_csv(handle, convert_options=convert)

    def _schema(self, path: str) -> pa.Schema:
        with _reading(path), self._open(path) as handle:
            if self.kind == "parquet":
                return pq.read_schema(handle)
            reader = self._csv(handle)
            schema = reader.schema
            reader.close()
            return schema

    def row_counts(self) -> list[int]:
        """Rows per Parquet file, from the footers."""
        counts = []
        for path in self.paths:
            with _reading(path), self._open(path) as handle:
                counts.append(pq.ParquetFile(handle).metadata.num_rows)
        return counts

    def batches(
        self, columns: list[str], batch_rows: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[pa.Table]:
        """The input as tables of ``batch_rows`` rows (the last one shorter), in order;
        rows ``[start, stop)`` of it only, for Parquet (row groups before ``start`` are
        not read)."""
        left = None if stop is None else stop - start
        for table in self._batches(columns, batch_rows, start, stop):
            if left is not None and table.num_rows >= left:
                if left:
                    yield table.slice(0, left)
                return
            if left is not None:
                left -= table.num_rows
            yield table

    def _batches(
        self, columns: list[str], batch_rows: int, start: int, stop: int | None
    ) -> Iterator[pa.Table]:
        pending: list[pa.RecordBatch] = []
        held = 0
        offset = 0  # the first row of the file (or row group) being read
        for path in self.paths:
            if stop is not None and offset >= stop:
                break
            with _reading(path), self._open(path) as handle:
                if self.kind == "parquet":
                    parquet = pq.ParquetFile(handle, pre_buffer=False)
                    groups, skip, offset = _row_groups(parquet, offset, start, stop)
                    stream: Iterable[pa.RecordBatch] = _skipped(
                        parquet.iter_batches(
                            batch_size=batch_rows,
                            columns=columns,
                            use_threads=True,
                            row_groups=groups,
                        ),
                        skip,
                    )
                else:
                    stream = self._csv(handle, columns)
                for batch in stream:
                    if batch.num_rows == 0:
                        continue
                    pending.append(batch.select(columns))
                    held += batch.num_rows
                    while held >= batch_rows:
                        table = pa.Table.from_batches(pending)
                        yield table.slice(0, batch_rows)
                        rest = table.slice(batch_rows)
                        pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending)


def _row_groups(
    parquet: pq.ParquetFile, offset: int, start: int, stop: int | None
) -> tuple[list[int], int, int]:
    """The row groups of a file starting at row ``offset`` that hold rows of
    ``[start, stop)``, the rows to skip in the first of them, and the next file's offset."""
    groups: list[int] = []
    skip = 0
    for i in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(i).num_rows
        end = offset + rows
        if end > start and (stop is None or offset < stop):
            if not groups:
                skip = max(0, start - offset)
            groups.append(i)
        offset = end
    # Rows past ``stop`` in the last group are cut by the caller's batching (it stops
    # after the range's last batch).
    return groups, skip, offset


def _skipped(batches: Iterable[pa.RecordBatch], skip: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0


def _data_file(name: str, given: Format | None) -> bool:
    """Whether a file in an input folder is data: not hidden (``.``, ``_SUCCESS``), and of
    a known suffix unless the format is given."""
    if name[:1] in "._":
        return False
    return given is not None or Path(name.removesuffix(".gz")).suffix.lower() in _SUFFIXES


def _plan(
    bundle: ModelBundle,
    have: Sequence[str],
    views: Sequence[View | OnDemand] | None,
    keep_columns: Sequence[str] | None,
    output_column: str,
) -> tuple[list[str], list[str]]:
    """(the columns the model's path reads, the columns kept in the output)."""
    produced: list[str] = []
    needed: list[str] = []
    for view in views or ():
        if isinstance(view, OnDemand):
            needed.extend(c for c in view.inputs if c not in produced)
        else:
            needed.extend(view.keys)
        produced.extend(view.feature_names)
    needed.extend(f for f in bundle.features if f not in produced)
    request = list(dict.fromkeys(needed))
    missing = [c for c in request if c not in have]
    if missing:
        what = "the model's feature" if not views else "the model's feature or entity key"
        raise BatchPredictionError(
            f"The input lacks {what} column(s) {', '.join(map(repr, missing))}. It has: "
            f"{', '.join(have) or 'no columns'}. Add them"
            + (
                ""
                if views
                else ", or give the feature definitions that read them from the online store"
            )
            + ".",
            column=missing[0],
        )
    if keep_columns is None:
        keep = list(have)
    else:
        if isinstance(keep_columns, str) or not all(isinstance(c, str) for c in keep_columns):
            raise BatchPredictionError(
                "The 'keep_columns' parameter of predict_batch must be a list of column names "
                f"(or None for every input column). Got {keep_columns!r}.",
                parameter="keep_columns",
            )
        keep = list(dict.fromkeys(keep_columns))
        if output_column in keep:
            raise BatchPredictionError(
                f"The output column {output_column!r} is also a column to keep; name the "
                f"prediction otherwise (output_column=..., loopline predict --output-column).",
                column=output_column,
            )
        unknown = [c for c in keep if c not in have and c not in produced]
        if unknown:
            raise BatchPredictionError(
                f"keep_columns names {', '.join(map(repr, unknown))}, which is neither an input "
                f"column nor a feature read from the views. The input has: {', '.join(have)}.",
                column=unknown[0],
            )
    if output_column in keep:
        raise BatchPredictionError(
            f"The output column {output_column!r} is also a column to keep; name the "
            f"prediction otherwise (output_column=..., loopline predict --output-column).",
            column=output_column,
        )
    return request, keep


def _check_types(bundle: ModelBundle, schema: pa.Schema, *, path: str) -> None:
    """Refuse, before any output, a feature column that is neither text nor a number."""
    for name in bundle.features:
        if name not in schema.names:
            continue  # read from the online store
        arrow = schema.field(name).type
        if (
            pa.types.is_string(arrow)
            or pa.types.is_large_string(arrow)
            or pa.types.is_string_view(arrow)
            or pa.types.is_dictionary(arrow)
            or pa.types.is_integer(arrow)
            or pa.types.is_floating(arrow)
            or pa.types.is_boolean(arrow)
            or pa.types.is_null(arrow)
            or pa.types.is_decimal(arrow)
        ):
            continue
        raise BatchPredictionError(
            f"The input column {name!r} is {arrow} (in {path}), but the model takes it as "
            f"{bundle.schema[name]}; give it values of that type (text or numbers).",
            column=name,
            path=path,
        )


# -- the output ---------------------------------------------------------------------------


class _Output:
    """Writes under a temporary name beside ``path``; renames it there when complete."""

    def __init__(self, output: str | os.PathLike[str], *, overwrite: bool) -> None:
        if "://" in os.fspath(output):
            raise BatchPredictionError(
                f"The output {os.fspath(output)} is a URL; predict_batch writes to a local "
                f"path. Write there and copy the result (the output is renamed into place "
                f"when done).",
                path=os.fspath(output),
            )
        # Absolute: Ray's workers, which may write the parts, have their own directory.
        path = self.path = Path(output).absolute()
        self.kind = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower(), "folder")
        if path.exists() and not overwrite:
            raise BatchPredictionError(
                f"The output {path} exists already. Remove it, choose another, or pass "
                f"overwrite=True (loopline predict --overwrite).",
                path=str(path),
            )
        self.parts = 0
        self._schema: pa.Schema | None = None
        self._writer: Any = None
        self._temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"

    @contextlib.contextmanager
    def writing(self) -> Iterator[_Output]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "folder":
                self._temporary.mkdir()
        except OSError as exc:
            raise self._cannot(exc) from exc
        try:
            yield self
            if self.parts == 0:
                raise BatchPredictionError(
                    "The input has no rows to predict; nothing was written.", path=str(self.path)
                )
            self._close()
            self._publish()
        except BaseException:
            with contextlib.suppress(Exception):
                self._close()
            _remove(self._temporary)
            raise

    def write(self, table: pa.Table) -> None:
        try:
            if self.kind == "folder":
                pq.write_table(table, self._temporary / _part_name(self.parts), compression="zstd")
            else:
                if self._writer is None:
                    self._schema = table.schema
                    if self.kind == "parquet":
                        self._writer = pq.ParquetWriter(
                            self._temporary, table.schema, compression="zstd"
                        )
                    else:
                        self._writer = pacsv.CSVWriter(self._temporary, table.schema)
                elif table.schema != self._schema:
                    table = table.cast(self._schema)
                self._writer.write_table(table)
        except (OSError, pa.ArrowException) as exc:
            raise self._cannot(exc) from exc
        self.parts += 1

    def parts_folder(self) -> Path:
        """Where other processes write this output's parts (``part-00000.parquet``, ...):
        the output folder itself, or a scratch folder beside a one-file output."""
        if self.kind == "folder":
            return self._temporary
        folder = self._temporary.with_name(self._temporary.name + ".parts")
        try:
            folder.mkdir()
        except OSError as exc:
            raise self._cannot(exc) from exc
        return folder

    def adopt_parts(self, folder: Path, count: int) -> None:
        """Take the ``count`` parts written into ``parts_folder()``: a one-file output
        copies them in order, a row group (or CSV rows) each, then drops the folder."""
        try:
            if self.kind == "folder":
                self.parts = count
                return
            for number in range(count):
                self.write(pq.read_table(folder / _part_name(number)))
        finally:
            self.discard_parts(folder)

    def discard_parts(self, folder: Path) -> None:
        """Remove a scratch folder of parts (the output folder goes with the output)."""
        if self.kind != "folder":
            _remove(folder)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _publish(self) -> None:
        try:
            if self.path.exists():  # overwrite: the old output goes only now
                trash = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
                os.replace(self.path, trash)
                os.replace(self._temporary, self.path)
                _remove(trash)
            else:
                os.replace(self._temporary, self.path)
        except OSError as exc:
            raise self._cannot(exc) from exc

    def _cannot(self, exc: BaseException) -> BatchPredictionError:
        return BatchPredictionError(
            f"The output {self.path} cannot be written: {exc}. Check the folder's permissions "
            f"and free space, or choose another output.",
            path=str(self.path),
        )


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
