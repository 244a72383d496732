"""Ingestion: a source, read through its contract, becomes a versioned dataset.

Each partition of the source (a file, a query's new rows) becomes one Parquet *part*:
the rows that passed, in source order, typed by the contract. The rows that did not pass
go to a quarantine part beside it, each with its rule, column, reason, source and
location. Every part records rows read = rows passed + rows quarantined, and ingestion
stops with an error if that ever fails to hold.

A dataset version is the ordered list of its parts; its content hash is the hash of the
parts' hashes, so two ingests of the same data under the same contract give the same
version hash. In incremental mode (the default) a partition whose fingerprint and
contract are unchanged since the newest version reuses that version's part without being
read again; a source with a cursor column reads only rows past the newest version's
cursor and appends them as a new part.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "trips.csv").write_text("id,km\\n1,2.5\\n2,x\\n")
>>> from loopline.data.contract import Column, Contract
>>> from loopline.data.sources.files import FileSource
>>> ws = Workspace(f"sqlite:///{folder}/meta.db", str(folder / "artifacts"))
>>> columns = {"id": Column("int64"), "km": Column("float64")}
>>> contract = Contract("trips", columns, max_bad_fraction=0.5)
>>> result = ingest(FileSource(str(folder / "trips.csv")), name="trips", contract=contract,
...                 workspace=ws)
>>> result.dataset.ref, result.dataset.rows, result.dataset.rows_quarantined
('trips@1', 1, 1)
>>> read_dataset("trips", workspace=ws).to_pylist()
[{'id': 1, 'km': 2.5}]
>>> read_quarantine(result.dataset, workspace=ws).column("rule").to_pylist()
['type']
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import io
import operator
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopline.data.contract import Contract
from loopline.data.parallel import map_partitions, on_ray
from loopline.data.profile import Profile, profile_table
from loopline.data.sources.base import (
    LOCATION,
    QUARANTINE_SCHEMA,
    Chunk,
    Partition,
    Source,
    quarantined_rejects,
)
from loopline.data.workspace import Workspace, current_workspace
from loopline.errors import ContractError
from loopline.store.metadata import DatasetPartRecord, DatasetRecord

__all__ = [
    "Dataset",
    "IngestResult",
    "ingest",
    "read_dataset",
    "read_quarantine",
]

_COMPRESSION = "zstd"
_T = TypeVar("_T")


@dataclass(frozen=True)
class IngestResult:
    """What one ingest produced: the new dataset version, and what it read and set aside."""

    dataset: DatasetRecord
    parts_read: int
    """Partitions read this time (the others were reused from the previous version)."""
    parts_reused: int
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return self.dataset.rows_read

    @property
    def rows_passed(self) -> int:
        return self.dataset.rows

    @property
    def rows_quarantined(self) -> int:
        return self.dataset.rows_quarantined


def ingest(
    source: Source,
    *,
    name: str | None = None,
    contract: Contract | None = None,
    incremental: bool = True,
    now: datetime | None = None,
    workspace: Workspace | None = None,
) -> IngestResult:
    """Read ``source`` through ``contract`` into a new version of dataset ``name``.

    ``name`` defaults to the contract's name, or the source's when there is no contract.

    Raises ``ContractError`` when the contract fails the run (too many bad rows, stale or
    too little data, a schema change its policy refuses); nothing is recorded then, but
    the quarantine written so far stays in the artifact store.
    """
    ws = workspace or current_workspace()
    name = name or (contract.name if contract is not None else source.name)
    metadata = ws.metadata
    previous = metadata.latest_dataset(name)
    contract_hash = contract.fingerprint() if contract is not None else None

    cursor_column: str | None = getattr(source, "cursor", None)
    appending = bool(cursor_column) and incremental and previous is not None
    if appending and previous is not None and previous.cursor is not None:
        source = source.since(previous.cursor)  # type: ignore[attr-defined]

    reusable: dict[str, DatasetPartRecord] = {}
    kept: list[DatasetPartRecord] = []
    if incremental and previous is not None and previous.contract_hash == contract_hash:
        old_parts = metadata.dataset_parts(previous.id)
        if appending:
            kept = old_parts
        else:
            reusable = {p.partition_key: p for p in old_parts}

    validator = contract.validator() if contract is not None else None
    partitions = source.partitions()
    parts: list[DatasetPartRecord] = list(kept)
    stored: dict[str, Profile] = {}
    cursor_value = previous.cursor if appending and previous is not None else None
    todo: list[tuple[int, Partition]] = []
    reused = 0
    for position, partition in enumerate(partitions, start=len(kept)):
        old = reusable.get(partition.key)
        if (
            old is not None
            and old.partition_fingerprint == partition.fingerprint
            and _profile_readable(ws, old, stored)
        ):
            parts.append(replace(old, position=position))
            reused += 1
        else:
            todo.append((position, partition))
    for written in _ingest_partitions(ws, source, todo, contract, validator, cursor_column):
        if written.part.profile_hash is not None and written.profile is not None:
            stored[written.part.profile_hash] = written.profile
        parts.append(written.part)
        if written.cursor is not None:
            cursor_value = written.cursor
    parts.sort(key=lambda part: part.position)
    read = len(todo)

    warnings: list[str] = []
    failure: ContractError | None = None
    if validator is not None:
        try:
            summary = validator.finish(
                now=now or datetime.now(UTC), previous_rows=previous.rows if previous else None
            )
            warnings = list(summary.warnings)
        except ContractError as exc:
            failure = exc
            warnings = [str(exc)]
    profiles: list[Profile] = []
    for part in parts:
        try:
            profile = _stored_profile(ws, part, stored)
        except ContractError as exc:  # kept from the previous version: not read again here
            raise ContractError(
                f"The profile of part {part.partition_key} of dataset {name!r} cannot be "
                f"read: {exc} Ingest with incremental=False once to read the source whole.",
                dataset=name,
                source=part.partition_key,
            ) from exc
        if profile is not None:
            profiles.append(profile)
    profile_hash = None
    if profiles:
        merged = profiles[0]
        for other in profiles[1:]:
            merged = merged.merge(other)
        profile_hash = ws.artifacts.put_bytes(merged.to_json(), kind="profile").content_hash

    _check_counts(parts)
    dataset = metadata.add_dataset_version(
        name=name,
        content_hash=_version_hash(parts),
        columns=_columns(ws, parts, contract),
        source=_describe(source, partitions),
        source_fingerprint=_source_fingerprint(partitions),
        parts=parts,
        contract=contract.name if contract is not None else None,
        contract_hash=contract_hash,
        profile_hash=profile_hash,
        cursor=cursor_value,
        warnings=warnings,
        status="failed" if failure else ("warned" if warnings else "ok"),
        run_id=ws.run_id,
        step_id=ws.step_id,
    )
    if failure is not None:
        where = f"loopline quarantine {ws.run_id or dataset.id}"
        raise ContractError(
            f"{failure} Kept as failed version {dataset.ref}: '{where}' shows what was set aside.",
            **{**failure.context, "dataset": dataset.ref},
        ) from failure
    return IngestResult(dataset, parts_read=read, parts_reused=reused, warnings=warnings)


def _stored_profile(
    ws: Workspace, part: DatasetPartRecord, cache: dict[str, Profile]
) -> Profile | None:
    """The part's profile (None when it has no rows), read once into ``cache``."""
    if part.profile_hash is None:
        return None
    if part.profile_hash not in cache:
        cache[part.profile_hash] = Profile.from_json(ws.artifacts.read_bytes(part.profile_hash))
    return cache[part.profile_hash]


def _profile_readable(ws: Workspace, part: DatasetPartRecord, cache: dict[str, Profile]) -> bool:
    """Whether an old part's profile can be merged; if not (an older profile format), the
    partition is read again rather than reused."""
    try:
        _stored_profile(ws, part, cache)
    except ContractError:
        return False
    return True


@dataclass(frozen=True)
class _Written:
    part: DatasetPartRecord
    cursor: Any
    profile: Profile | None


PARTITION_BYTES = 128 << 20
"""On Ray, consecutive source partitions smaller than this share one task."""


@dataclass(frozen=True)
class _Group:
    """Consecutive source partitions that one task reads, with its own validator."""

    source: Source
    partitions: tuple[tuple[int, Partition], ...]
    contract: Contract | None
    cursor_column: str | None

    def __call__(self) -> tuple[list[_Written], Any]:
        ws = current_workspace()
        validator = self.contract.validator() if self.contract is not None else None
        written = [
            _ingest_partition(ws, self.source, partition, position, validator, self.cursor_column)
            for position, partition in self.partitions
        ]
        return written, validator


def _ingest_partitions(
    ws: Workspace,
    source: Source,
    todo: Sequence[tuple[int, Partition]],
    contract: Contract | None,
    validator: Any,
    cursor_column: str | None,
) -> Iterator[_Written]:
    """Read the partitions in ``todo``: here in order, or as Ray tasks in groups of about
    ``PARTITION_BYTES`` whose validators merge into ``validator`` in source order.

    Partitions stay in this process when the contract has uniqueness keys (whether a row
    repeats an earlier one depends on every partition before it) or the source does not
    travel (a source that cannot be pickled).
    """
    groups = _groups(todo)
    if (
        len(groups) < 2
        or not on_ray(ws)
        or (validator is not None and not validator.mergeable)
        or not _travels(source)
    ):
        for position, partition in todo:
            yield _ingest_partition(ws, source, partition, position, validator, cursor_column)
        return
    tasks = [_Group(source, group, contract, cursor_column) for group in groups]
    for written, checked in map_partitions(operator.call, tasks, name="ingest", workspace=ws):
        if validator is not None:
            validator.merge(checked)
        yield from written


def _groups(todo: Sequence[tuple[int, Partition]]) -> list[tuple[tuple[int, Partition], ...]]:
    groups: list[tuple[tuple[int, Partition], ...]] = []
    current: list[tuple[int, Partition]] = []
    size = 0
    for item in todo:
        current.append(item)
        size += item[1].size_bytes or PARTITION_BYTES
        if size >= PARTITION_BYTES:
            groups.append(tuple(current))
            current, size = [], 0
    if current:
        groups.append(tuple(current))
    return groups


def _travels(source: Source) -> bool:
    try:
        importlib.import_module("ray.cloudpickle").dumps(source)  # how Ray ships it
    except Exception:
        return False
    return True


def _ingest_partition(
    ws: Workspace,
    source: Source,
    partition: Partition,
    position: int,
    validator: Any,
    cursor_column: str | None,
) -> _Written:
    """Read, check, write and profile one partition, as a pipeline of three threads.

    Parsing and checking run on one thread, the Parquet writes on a second and the
    profile on the caller's; each stage takes the chunks in source order, one at a time,
    from a queue that holds at most ``_DEPTH`` of them. The output is therefore the same
    whatever the threads' timing, and memory holds a bounded number of chunks.
    """
    artifacts = ws.artifacts
    rows = rows_read = rows_quarantined = 0
    cursor: Any = None
    profile: Profile | None = None
    with artifacts.writer("parquet") as data_out, artifacts.writer("parquet") as bad_out:
        writers: list[pq.ParquetWriter] = []
        data_sink, bad_sink = _native_sink(data_out.handle), _native_sink(bad_out.handle)

        def checked() -> Iterator[tuple[int, pa.Table, pa.Table]]:
            for chunk in source.read(partition):
                passed, quarantined = _check(chunk, validator)
                yield (
                    chunk.rows + chunk.rejects.num_rows,
                    passed.drop_columns([LOCATION]),
                    quarantined,
                )

        def written(
            chunks: Iterator[tuple[int, pa.Table, pa.Table]],
        ) -> Iterator[tuple[int, pa.Table, int]]:
            bad_writer = pq.ParquetWriter(bad_sink, QUARANTINE_SCHEMA, compression=_COMPRESSION)
            writers.append(bad_writer)
            data_writer: pq.ParquetWriter | None = None
            for read, passed, quarantined in chunks:
                if data_writer is None:
                    data_writer = pq.ParquetWriter(
                        data_sink, passed.schema, **_parquet_options(passed)
                    )
                    writers.append(data_writer)
                data_writer.write_table(passed.cast(data_writer.schema))
                if quarantined.num_rows:
                    bad_writer.write_table(quarantined)
                yield read, passed, quarantined.num_rows
            if data_writer is None:  # no chunk at all: an empty file
                writers.append(pq.ParquetWriter(data_sink, pa.schema([]), compression=_COMPRESSION))

        try:
            with _Ahead(checked()) as first, _Ahead(written(first)) as second:
                for read, passed, quarantined_rows in second:
                    rows_read += read
                    rows += passed.num_rows
                    rows_quarantined += quarantined_rows
                    if passed.num_rows:
                        chunk_profile = profile_table(passed)
                        profile = chunk_profile if profile is None else profile.merge(chunk_profile)
                        if cursor_column and cursor_column in passed.column_names:
                            newest = pc.max(passed.column(cursor_column)).as_py()
                            if newest is not None and (cursor is None or newest > cursor):
                                cursor = newest
        finally:
            # Closed on failure too (the writer() blocks then publish nothing), once the
            # threads that use them have stopped; the sinks last, flushing what the
            # writers wrote into the artifact store's handles.
            try:
                for writer in writers:
                    writer.close()
            finally:
                data_sink.close()
                bad_sink.close()
    if rows + rows_quarantined != rows_read:
        raise ContractError(
            f"Ingesting {partition.key} read {rows_read} rows but accounted for "
            f"{rows + rows_quarantined} ({rows} passed, {rows_quarantined} quarantined). "
            f"This is a bug in loopline: please report it with the source.",
            source=partition.source,
        )
    profile_hash = (
        artifacts.put_bytes(profile.to_json(), kind="profile").content_hash if profile else None
    )
    part = DatasetPartRecord(
        position=position,
        partition_key=partition.key,
        partition_fingerprint=partition.fingerprint,
        content_hash=data_out.stored.content_hash,
        size=data_out.stored.size,
        rows=rows,
        rows_read=rows_read,
        rows_quarantined=rows_quarantined,
        quarantine_hash=bad_out.stored.content_hash if rows_quarantined else None,
        profile_hash=profile_hash,
    )
    return _Written(part, _plain(cursor), profile)


_DEPTH = 2
"""Chunks a pipeline stage may run ahead of the next: bounds the memory in flight."""

_SINK_BUFFER = 4 << 20
"""Bytes of Parquet buffered natively before they are handed to the artifact store."""


class _Unclosed(io.RawIOBase):
    """A file that writes through to ``handle`` and leaves it open when closed: the
    artifact store closes (and publishes) its own handle."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return int(self._handle.write(data))

    def flush(self) -> None:
        self._handle.flush()


def _native_sink(handle: Any) -> pa.NativeFile:
    """An Arrow stream that buffers what the Parquet writer writes into ``handle``.

    Given a Python file, the writer calls into Python (and so takes the GIL) for every
    page and page header it writes: thousands of calls per gigabyte, each of which waits
    for the GIL while another stage runs Python. Buffered natively, it calls once per
    ``_SINK_BUFFER`` bytes.
    """
    return pa.BufferedOutputStream(pa.PythonFile(_Unclosed(handle), mode="w"), _SINK_BUFFER)


class _Ahead(Generic[_T]):
    """Iterate ``items`` on a thread of its own, at most ``_DEPTH`` items ahead.

    Items arrive in the order ``items`` yields them; an exception it raises is raised in
    the consumer at the same place in the sequence. Leaving the ``with`` block early stops
    the thread (it closes ``items`` on that thread) and waits for it.
    """

    def __init__(self, items: Iterator[_T]) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(items, contextvars.copy_context()), daemon=True
        )

    def __enter__(self) -> Iterator[_T]:
        self._thread.start()
        return self._items()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _items(self) -> Iterator[_T]:
        while True:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def _run(self, items: Iterator[_T], context: contextvars.Context) -> None:
        context.run(self._feed, items)

    def _feed(self, items: Iterator[_T]) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        self._put(("done", None))

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


def _parquet_options(first: pa.Table) -> dict[str, Any]:
    """How a part's rows are written to Parquet, from its first chunk.

    Each choice depends on the schema and the first chunk's values only, so the same input
    always gives the same bytes. Measured on the ingest benchmark's passed rows, together
    they write 29% faster and 12% smaller than dictionary-encoding every text column with
    the defaults (docs/decisions/0012-ingest-throughput.md):

    - zstd (level 1, Arrow's default).
    - Dictionary encoding for the text columns whose first chunk repeats its values (at
      most half of them distinct): a near-unique column (ids, e-mail addresses) outgrows
      the dictionary page and falls back to plain encoding anyway, after hashing every
      value for nothing. Numbers and timestamps are not dictionary-encoded (they rarely
      repeat enough; encoding only the text columns wrote 30% faster and 14% smaller).
    - ``DELTA_BINARY_PACKED`` for integers, dates and timestamps: cheaper to encode than
      plain values, and smaller once compressed (ids and times move in small steps).
    - Min/max statistics for every column but text: comparing every string costs a
      sixth of the write, and no reader of a dataset filters on them.
    """
    text = (pa.types.is_string, pa.types.is_large_string)
    dictionary: list[str] = []
    statistics: list[str] = []
    deltas: dict[str, str] = {}
    for column in first.schema:
        name, kind = column.name, column.type
        if pa.types.is_dictionary(kind):
            dictionary.append(name)
            continue
        if any(test(kind) for test in text):
            values = first.column(name)
            present = len(values) - values.null_count
            if 2 * pc.count_distinct(values).as_py() <= present or not present:
                dictionary.append(name)
            continue
        if pa.types.is_integer(kind) or pa.types.is_date32(kind) or pa.types.is_timestamp(kind):
            deltas[name] = "DELTA_BINARY_PACKED"
        statistics.append(name)
    return {
        "compression": _COMPRESSION,
        "use_dictionary": dictionary,
        "write_statistics": statistics,
        "column_encoding": deltas or None,
    }


def _check(chunk: Chunk, validator: Any) -> tuple[pa.Table, pa.Table]:
    if validator is None:
        return pa.Table.from_batches([chunk.batch]), quarantined_rejects(chunk)
    checked = validator.check(chunk)
    return checked.passed, checked.quarantined


def _plain(value: Any) -> Any:
    """A cursor value as JSON can hold it (datetimes as ISO text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _check_counts(parts: Sequence[DatasetPartRecord]) -> None:
    for part in parts:
        if part.rows + part.rows_quarantined != part.rows_read:
            raise ContractError(
                f"Part {part.partition_key} does not reconcile: {part.rows_read} rows read, "
                f"{part.rows} passed, {part.rows_quarantined} quarantined.",
                source=part.partition_key,
            )


def _version_hash(parts: Sequence[DatasetPartRecord]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.content_hash}\n".encode())
    return digest.hexdigest()


def _source_fingerprint(partitions: Sequence[Partition]) -> str:
    digest = hashlib.sha256()
    for partition in partitions:
        digest.update(f"{partition.key}\0{partition.fingerprint}\n".encode())
    return digest.hexdigest()


def _describe(source: Source, partitions: Sequence[Partition]) -> str:
    described = str(getattr(source, "description", "") or "")
    if described:
        return described
    where = sorted({p.source for p in partitions})
    return ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")


def _columns(
    ws: Workspace, parts: Sequence[DatasetPartRecord], contract: Contract | None
) -> list[tuple[str, str]]:
    for part in parts:
        with ws.artifacts.open(part.content_hash) as handle:
            schema = pq.read_schema(handle)
        if len(schema):
            return [(f.name, str(f.type)) for f in schema]
    if contract is not None:
        return [(n, c.type) for n, c in contract.columns.items()]
    return []


# -- reading ------------------------------------------------------------------------------


def _part_tables(
    dataset: DatasetRecord, ws: Workspace, *, quarantine: bool = False
) -> Iterator[pa.Table]:
    for part in ws.metadata.dataset_parts(dataset.id):
        content = part.quarantine_hash if quarantine else part.content_hash
        if content is None:
            continue
        with ws.artifacts.open(content) as handle:
            yield pq.read_table(handle)


def read_dataset(dataset: DatasetRecord | str, *, workspace: Workspace | None = None) -> pa.Table:
    """The rows of a dataset version (a record, ``name@version``, name or id), in order."""
    ws = workspace or current_workspace()
    record = dataset if isinstance(dataset, DatasetRecord) else ws.metadata.get_dataset(dataset)
    tables = [t for t in _part_tables(record, ws) if t.num_columns]
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name, _ in record.columns})
    return pa.concat_tables(tables, promote_options="permissive")


def read_quarantine(
    dataset: DatasetRecord | str, *, workspace: Workspace | None = None
) -> pa.Table:
    """The rows a dataset version set aside, with rule, column, reason and location."""
    ws = workspace or current_workspace()
    record = dataset if isinstance(dataset, DatasetRecord) else ws.metadata.get_dataset(dataset)
    tables = list(_part_tables(record, ws, quarantine=True))
    return pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()


@dataclass(frozen=True)
class Dataset:
    """A dataset version as a step parameter: ``Dataset("flights")`` or ``("flights", 3)``.

    The step's cache key depends on the version's content hash, so a step that reads the
    newest version re-runs when a new version with other rows appears, and a step pinned
    to a version reproduces its output byte for byte.
    """

    name: str
    version: int | None = None

    def record(self) -> DatasetRecord:
        return current_workspace().metadata.get_dataset(self.name, self.version)

    def fingerprint(self) -> str:
        return self.record().content_hash

    def to_param(self) -> Any:
        return {"dataset": self.name, "version": self.version}

    def read(self) -> pa.Table:
        return read_dataset(self.record())
