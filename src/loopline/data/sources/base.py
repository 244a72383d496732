"""What every source yields: Arrow record batches whose rows know where they came from.

A source (files, a SQL table or query, an HTTP API) is split into partitions (a file, a
range of rows, a page) that can be read independently, in parallel or on other machines.
Reading a partition yields ``Chunk`` objects of bounded size: the rows that parsed, each
with its location (``LOCATION``), and the rows that could not be parsed at all, kept as
raw text with their location and the reason. Nothing is dropped on the way: a row is
either in ``Chunk.batch`` or in ``Chunk.rejects``.

Locations are 1-based: the physical line number in a text file (the header is line 1,
so the first data row of a CSV file with a header is line 2), the row number in a
Parquet file or a SQL result, the item number across an API's pages.

Examples
--------
>>> chunk = Chunk.of(pa.table({"x": [1, 2]}), source="a.csv", locations=[2, 3])
>>> chunk.batch.column_names
['x', '_location']
>>> chunk.rows, chunk.rejects.num_rows
(2, 0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pyarrow as pa

__all__ = [
    "LOCATION",
    "QUARANTINE_SCHEMA",
    "REJECT_SCHEMA",
    "Chunk",
    "Partition",
    "Source",
    "Span",
    "quarantined_rejects",
    "rejects_table",
]

LOCATION = "_location"
"""The column every chunk's batch carries: the row's 1-based line or row number."""

REJECT_SCHEMA = pa.schema(
    [
        pa.field("location", pa.int64(), nullable=False),
        pa.field("raw", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
"""Rows that could not be parsed: where, the raw text (invalid bytes escaped), and why."""


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("location", pa.int64(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("column", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("row", pa.string()),
    ]
)
"""A row set aside: where it came from, the first rule it broke (``parse`` for a row that
could not be parsed), the column, every reason in words, and the row as read (a JSON
object of its values, or the raw text of an unparsable row)."""


def rejects_table(
    locations: Sequence[int] = (), raws: Sequence[str | None] = (), reasons: Sequence[str] = ()
) -> pa.Table:
    """A table of unparsable rows in ``REJECT_SCHEMA``."""
    return pa.table(
        {
            "location": pa.array(locations, pa.int64()),
            "raw": pa.array(raws, pa.string()),
            "reason": pa.array(reasons, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


@dataclass(frozen=True)
class Span:
    """A piece of one file: bytes ``[start, stop)`` of a text file, or row groups
    ``[start, stop)`` of a Parquet file, whose first row is at location ``first``."""

    start: int
    stop: int
    first: int


@dataclass(frozen=True)
class Partition:
    """A piece of a source that can be read on its own."""

    source: str
    """Where the rows come from, as a person would name it: a file URL, ``table users``."""
    key: str
    """What identifies the piece within the source: the file, a row range, a page cursor."""
    fingerprint: str
    """Content identity: equal fingerprints mean equal rows (file: its sha256)."""
    size_bytes: int | None = None
    """Approximate size, for splitting work by bytes; None when unknown."""
    span: Span | None = None
    """The piece of ``source`` this is, when a large file is split; None for all of it."""


@dataclass
class Chunk:
    """Rows read from one partition: parsed rows with their locations, and rejects."""

    batch: pa.RecordBatch
    """The parsed rows; the last column is ``LOCATION`` (int64)."""
    source: str
    """The partition's ``source``: recorded with every quarantined row."""
    rejects: pa.Table = field(default_factory=rejects_table)
    """Rows that could not be parsed, in ``REJECT_SCHEMA``."""

    @property
    def rows(self) -> int:
        return int(self.batch.num_rows)

    @classmethod
    def of(
        cls,
        table: pa.Table | pa.RecordBatch,
        *,
        source: str,
        locations: Sequence[int] | pa.Array,
        rejects: pa.Table | None = None,
    ) -> Chunk:
        """A chunk from data columns and the location of each row."""
        if isinstance(table, pa.Table):
            table = table.combine_chunks()
            batch = (
                table.to_batches()[0]
                if table.num_rows
                else pa.RecordBatch.from_pylist([], schema=table.schema)
            )
        else:
            batch = table
        location = pa.array(locations, pa.int64())
        if len(location) != batch.num_rows:
            raise ValueError(
                f"{len(location)} locations for {batch.num_rows} rows from {source!r}."
            )
        batch = batch.append_column(pa.field(LOCATION, pa.int64(), nullable=False), location)
        return cls(batch=batch, source=source, rejects=rejects or rejects_table())


@runtime_checkable
class Source(Protocol):
    """A readable source of rows: partitions, then bounded chunks per partition."""

    name: str
    """A short name for messages and dataset records."""

    def partitions(self) -> list[Partition]:
        """The pieces to read, in a stable order; their fingerprints identify the content."""
        ...

    def read(self, partition: Partition) -> Iterator[Chunk]:
        """Yield the partition's rows in chunks of bounded size, in source order."""
        ...


def quarantined_rejects(chunk: Chunk) -> pa.Table:
    """The chunk's unparsable rows as quarantine rows (rule ``parse``)."""
    rejects = chunk.rejects
    count = rejects.num_rows
    return pa.table(
        {
            "source": pa.array([chunk.source] * count, pa.string()),
            "location": rejects.column("location"),
            "rule": pa.array(["parse"] * count, pa.string()),
            "column": pa.nulls(count, pa.string()),
            "reason": rejects.column("reason"),
            "row": rejects.column("raw"),
        },
        schema=QUARANTINE_SCHEMA,
    )
