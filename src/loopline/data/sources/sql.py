"""Rows of a SQL table or query, read in bounded chunks as Arrow record batches.

``SQLSource`` reads any SQLAlchemy URL. The result streams from the database (a
server-side cursor on PostgreSQL; SQLite's cursor is lazy anyway), ``chunk_rows`` rows
at a time, so memory stays flat however big the table. Column types come from the
database where it declares them (docs/decisions/0008-api-and-sql-sources.md has the
mapping); the fingerprint is ``Query``'s (docs/decisions/0002-sql-fingerprint.md).

Examples
--------
>>> import sqlite3, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "shop.db"
>>> db = sqlite3.connect(path)
>>> _ = db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL, paid BOOLEAN)")
>>> _ = db.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, 9.5, 1), (2, 20.0, 0)])
>>> db.commit()
>>> source = SQLSource(f"sqlite:///{path}", table="orders", cursor="id", chunk_rows=1)
>>> [partition] = source.partitions()
>>> chunks = list(source.read(partition))
>>> [chunk.rows for chunk in chunks]
[1, 1]
>>> chunks[1].batch.to_pylist()
[{'id': 2, 'amount': 20.0, 'paid': False, '_location': 2}]
>>> _ = db.execute("INSERT INTO orders VALUES (3, 5.0, 0)")
>>> db.commit()
>>> newer = source.since(2)
>>> [row["id"] for chunk in newer.read(newer.partitions()[0]) for row in chunk.batch.to_pylist()]
[3]
>>> db.close()
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from loopline.data.query import (
    Query,
    _driver_url,
    _first_line,
    _normalize_sql,
    _redact_text,
    _redact_url,
    _shorten,
)
from loopline.data.sources.base import LOCATION, Chunk, Partition, rejects_table
from loopline.errors import SourceError

__all__ = ["SQLSource"]

_SINCE = "loopline_since"
_REASON_VALUE_CHARS = 80


class SQLSource:
    """A SQL table or query, read in chunks of ``chunk_rows`` rows.

    One partition: the whole result (a table could later be split into key ranges, see
    docs/decisions/0008-api-and-sql-sources.md). Each chunk's rows carry their 1-based
    row number in the result as ``_location``. A value that does not fit its column's
    type (SQLite lets an INTEGER column hold ``'one'``) sends its row to the chunk's
    rejects with the reason, never silently away. A result with no rows yields one empty
    chunk, so the columns and their types still come through.

    The columns are read as the database has them on each read: a table whose schema
    changed since the last run simply comes through with its new columns and types (the
    contract reports the change).

    Parameters
    ----------
    url : str
        A SQLAlchemy database URL, such as ``sqlite:///data/shop.db`` or
        ``postgresql://user:password@host:5432/dbname`` (``postgresql://`` uses psycopg 3).
        The password never appears in ``repr()``, partitions or error messages.
    table : str, optional
        The table (or view) to read, written as in SQL: ``orders``, ``sales.orders``,
        ``"Order Items"``. Give exactly one of ``table`` and ``query``.
    query : str, optional
        A ``SELECT`` to read; it runs as written (``:name`` and ``%`` are not parameter
        markers).
    chunk_rows : int, default 100_000
        The most rows one chunk holds, and the number fetched from the database at a time.
    cursor : str, optional
        A column, written as in SQL, that every new row raises (an auto-increment id, an
        ``updated_at`` timestamp): rows are then read in its order, and ``since(value)``
        reads only the rows after ``value``. With a table, the fingerprint then uses the
        column's maximum instead of a checksum of every row.
    name : str, optional
        A short name for messages and dataset records; by default the table, or
        ``"query"``.

    Attributes
    ----------
    since_value : object
        The cursor value the rows read must exceed (set by ``since``); None reads them all.
    """

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        query: str | None = None,
        chunk_rows: int = 100_000,
        cursor: str | None = None,
        name: str | None = None,
    ) -> None:
        _check_url(url)
        if (table is None) == (query is None):
            raise SourceError(
                "SQLSource reads either a table or a query: give exactly one of "
                "table='orders' or query='SELECT ...'. "
                f"Got table={table!r} and query={query!r}.",
                url=_redact_url(url),
            )
        if table is not None and (not isinstance(table, str) or not table.strip()):
            raise SourceError(
                "The 'table' parameter of SQLSource must be a table name written as in SQL, "
                f"such as 'orders' or 'sales.orders'. Got {table!r}.",
                url=_redact_url(url),
            )
        if query is not None and (not isinstance(query, str) or not _normalize_sql(query)):
            raise SourceError(
                "The 'query' parameter of SQLSource must be a non-empty SELECT such as "
                f"'SELECT * FROM orders'. Got {query!r}.",
                url=_redact_url(url),
            )
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise SourceError(
                "The 'chunk_rows' parameter of SQLSource must be a positive number of rows "
                f"such as 100_000. Got {chunk_rows!r}.",
                url=_redact_url(url),
            )
        if cursor is not None and (not isinstance(cursor, str) or not cursor.strip()):
            raise SourceError(
                "The 'cursor' parameter of SQLSource must be a column name such as "
                f"'updated_at'. Got {cursor!r}.",
                url=_redact_url(url),
            )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SourceError(
                f"The 'name' parameter of SQLSource must be a non-empty string. Got {name!r}.",
                url=_redact_url(url),
            )
        self.url = url
        self.table = table.strip() if table is not None else None
        self.query = query
        self.chunk_rows = chunk_rows
        self.cursor = cursor.strip() if cursor is not None else None
        self.name: str = name if name is not None else (self.table or "query")
        self.since_value: Any = None

    def __repr__(self) -> str:
        what = f"table={self.table!r}" if self.table is not None else f"query={self.query!r}"
        extra = "" if self.cursor is None else f", cursor={self.cursor!r}"
        if self.since_value is not None:
            extra += f", since={self.since_value!r}"
        return f"SQLSource({_redact_url(self.url)!r}, {what}{extra})"

    def since(self, value: Any) -> SQLSource:
        """A copy that reads only the rows whose cursor column is greater than ``value``.

        Rows come in the cursor's order, so the last row read holds the largest value; the
        caller remembers it and passes it here on the next run. Rows whose cursor is NULL
        are read only by a full read, and a row committed later with a cursor value equal
        to ``value`` is not read (the cursor must rise with every new row).
        """
        if self.cursor is None:
            raise SourceError(
                f"SQL source {self.name!r} has no cursor column, so since() cannot tell new "
                f"rows from old ones. Name one: SQLSource(..., cursor='updated_at').",
                url=_redact_url(self.url),
                source=self.name,
            )
        if isinstance(value, pa.Scalar | np.generic):  # as pc.max() or numpy give it
            value = value.as_py() if isinstance(value, pa.Scalar) else value.item()
        newer = copy.copy(self)
        newer.since_value = value
        return newer

    # -- the Source protocol ------------------------------------------------------------

    def partitions(self) -> list[Partition]:
        """The one partition (the whole result), fingerprinted by ``Query``'s rules.

        Connects to the database: the statement is checked (table, columns, SQL) and the
        tables it reads are fingerprinted.
        """
        sql, params = self._statement()
        probe = f"SELECT * FROM ({sql}) AS loopline_probe WHERE 1 = 0"
        with self._connect() as conn:
            conn.execute(_verbatim_with_since(probe), _bound(params, conn))
        fingerprint = self._fingerprint()
        return [Partition(source=self._where(), key=self._key(), fingerprint=fingerprint)]

    def read(self, partition: Partition) -> Iterator[Chunk]:
        """Yield the rows in chunks of at most ``chunk_rows`` rows, in result order."""
        if partition.source != self._where() or partition.key != self._key():
            raise ValueError(
                f"The partition {partition.key!r} of {partition.source!r} does not belong to "
                f"SQL source {self.name!r}; read a partition from its partitions()."
            )
        where = self._where()
        sql, params = self._statement()
        with self._connect() as conn:
            declared = _sqlite_types(conn, self._base_sql()) if _is_sqlite(conn) else None
            result = conn.execute(
                _verbatim_with_since(sql),
                _bound(params, conn),
                execution_options={"stream_results": True, "yield_per": self.chunk_rows},
            )
            try:  # a server-side cursor must be closed, also when the reader stops early
                columns = self._columns(result, declared)
                names = [column.name for column in columns]
                read = 0
                for rows in result.partitions(self.chunk_rows):
                    yield _chunk(columns, names, rows, first=read + 1, source=where)
                    read += len(rows)
                if read == 0:
                    yield _chunk(columns, names, [], first=1, source=where)
            finally:
                result.close()

    # -- what is read -------------------------------------------------------------------

    def _base_sql(self) -> str:
        """The rows before any cursor clause: the table's, or the query as written."""
        if self.table is not None:
            return f"SELECT * FROM {self.table}"
        assert self.query is not None  # checked in __init__
        return self.query

    def _statement(self) -> tuple[str, dict[str, Any]]:
        """The SQL to run (with ``:loopline_since`` as its only parameter) and its value."""
        if self.cursor is None:
            base = self._base_sql() if self.table is not None else _normalize_sql(self._base_sql())
            return base, {}
        # Normalizing drops comments and a final ";", so the query can be wrapped.
        source = (
            self.table
            if self.table is not None
            else f"({_normalize_sql(self._base_sql())}) AS loopline_rows"
        )
        where = ""
        params: dict[str, Any] = {}
        if self.since_value is not None:
            where = f" WHERE {self.cursor} > :{_SINCE}"
            params[_SINCE] = self.since_value
        return f"SELECT * FROM {source}{where} ORDER BY {self.cursor}", params

    def _where(self) -> str:
        url = _redact_url(self.url)
        if self.table is not None:
            return f"table {self.table} at {url}"
        return f"query {_shorten(self._base_sql(), 60)!r} at {url}"

    def _key(self) -> str:
        if self.since_value is None:
            return "all rows"
        return f"{self.cursor} > {self.since_value!r}"

    def _fingerprint(self) -> str:
        sql, _ = self._statement()
        if self.table is not None:
            query = Query(self.url, sql, tables=[self.table], changed_column=self.cursor)
        else:
            query = Query(self.url, sql)
        try:
            signal = query.fingerprint()
        except SourceError as exc:
            raise SourceError(
                f"SQL source {self.name!r}: {exc.message}", **{**exc.context, "source": self.name}
            ) from exc
        since = "" if self.since_value is None else repr(self.since_value)
        return hashlib.sha256(f"{signal}\0since={since}".encode()).hexdigest()

    def _columns(self, result: CursorResult[Any], declared: list[str] | None) -> list[_Column]:
        names = list(result.keys())
        seen: set[str] = set()
        for column in names:
            if column in seen or column == LOCATION:
                why = "twice" if column in seen else f"with loopline's own name {LOCATION!r}"
                raise SourceError(
                    f"SQL source {self.name!r} returns a column named {column!r} {why}. "
                    f"Give the columns distinct names in the SQL (SELECT a.id AS order_id, ...).",
                    url=_redact_url(self.url),
                    source=self.name,
                )
            seen.add(column)
        description = result.cursor.description if result.cursor is not None else None
        if declared is not None and len(declared) == len(names):
            types = [_sqlite_type(decl) for decl in declared]
        elif result.dialect.name == "postgresql" and description is not None:
            types = [_pg_type(column) for column in description]
        else:
            types = [(None, None)] * len(names)
        return [
            _Column(name, arrow, prepare)
            for name, (arrow, prepare) in zip(names, types, strict=True)
        ]

    # -- the database boundary ----------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        parsed = _driver_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            database = str(parsed.database)
            if not database.startswith("file:") and not Path(database).is_file():
                relative = "" if Path(database).is_absolute() else f" (from {Path.cwd()})"
                raise SourceError(
                    f"SQL source {self.name!r}: no SQLite database at {database!r}{relative}. "
                    f"Check the path in {_redact_url(self.url)}; SQLSource reads a database, it "
                    f"never creates one.",
                    url=_redact_url(self.url),
                    source=self.name,
                )
        # Query owns the engine: driver names, connect timeouts and a missing driver's hint.
        try:
            engine = Query(self.url, "SELECT 1", tables=[])._engine()
        except SourceError as exc:
            raise SourceError(
                f"SQL source {self.name!r}: {exc.message}", **{**exc.context, "source": self.name}
            ) from exc
        try:
            # The errors of the caller's block too: it runs inside, at the yield.
            with self._errors(), engine.connect() as conn:
                yield conn  # closed without commit: nothing is ever written
        finally:
            engine.dispose()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate SQLAlchemy and driver errors into ``SourceError`` once, here."""
        try:
            yield
        except SQLAlchemyError as exc:
            url = _redact_url(self.url)
            detail = _redact_text(_first_line(exc), self.url)
            if isinstance(exc, DBAPIError) and exc.statement is None:
                message = (
                    f"SQL source {self.name!r} cannot connect to the database at {url}: "
                    f"{detail}. Check that the server is running and that the URL's host, "
                    f"port, database and user are right."
                )
            else:
                hint = ""
                if self.cursor is not None:
                    hint = f" and has the cursor column {self.cursor!r}"
                    if self.since_value is not None:
                        hint += f", which must compare with the since() value {self.since_value!r}"
                if self.table is not None:
                    message = (
                        f"SQL source {self.name!r} cannot read table {self.table!r} at {url}: "
                        f"{detail}. Check that the table exists{hint}; name it as in SQL, "
                        f"such as 'sales.orders' or '\"Order Items\"'."
                    )
                else:
                    message = (
                        f"The query of SQL source {self.name!r} failed at {url}: {detail}. "
                        f"Check the SQL{hint}: {_shorten(self._base_sql())!r}."
                    )
            raise SourceError(message, url=url, source=self.name) from exc


# -- column types ----------------------------------------------------------------------------

_Prepare = Callable[[Any], Any]


@dataclass
class _Column:
    """One result column: its Arrow type (declared, or fixed by its first values)."""

    name: str
    type: pa.DataType | None
    prepare: _Prepare | None = None
    """Turns each non-null value into one Arrow takes (JSON to text, UUID to text)."""

    def convert(self, values: Sequence[Any]) -> tuple[pa.Array, dict[int, str]]:
        """The values as an array, and the rows (by index) whose value does not fit."""
        if self.prepare is not None:
            prepare = self.prepare
            values = [None if v is None else prepare(v) for v in values]
        try:
            array = _as_arrow(values, self.type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            if self.type is not None:
                return self._convert_each(values)
            # No declared type and values of several kinds (SQLite allows it): their text.
            array = pa.array([None if v is None else str(v) for v in values], pa.string())
        if self.type is None and not pa.types.is_null(array.type):
            self.type = array.type  # later chunks keep this type
        return array, {}

    def _convert_each(self, values: Sequence[Any]) -> tuple[pa.Array, dict[int, str]]:
        """Value by value (the slow path, only after a chunk failed): find what does not fit."""
        kept: list[Any] = []
        bad: dict[int, str] = {}
        for index, value in enumerate(values):
            try:
                _as_arrow([value], self.type)
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                shown = repr(value)
                if len(shown) > _REASON_VALUE_CHARS:
                    shown = shown[: _REASON_VALUE_CHARS - 3] + "..."
                bad[index] = (
                    f"column {self.name!r}: {shown} ({type(value).__name__}) does not fit the "
                    f"column's type {self.type}"
                )
                kept.append(None)
            else:
                kept.append(value)
        return _as_arrow(kept, self.type), bad


def _as_arrow(values: Sequence[Any], target: pa.DataType | None) -> pa.Array:
    """Infer the values' Arrow type, then cast (safely) to ``target``.

    Inferring first keeps the conversion exact: ``pa.array([1.5], pa.int64())`` would
    truncate, while a safe cast from float64 refuses. Text is never parsed into another
    type here; that coercion is the contract's to make, explicitly.
    """
    array = pa.array(values)
    if target is None or array.type == target:
        return array
    if (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)) and not (
        pa.types.is_string(target) or pa.types.is_large_string(target)
    ):
        raise TypeError(f"text is not parsed into {target}")
    return array.cast(target)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _as_float(value: Any) -> float:
    return float(value)


# PostgreSQL type OIDs (pg_type.oid): the Arrow type each maps to, and how values convert.
_PG_TYPES: dict[int, tuple[pa.DataType, _Prepare | None]] = {
    16: (pa.bool_(), None),  # bool
    17: (pa.binary(), None),  # bytea
    18: (pa.string(), None),  # "char"
    19: (pa.string(), None),  # name
    20: (pa.int64(), None),  # int8
    21: (pa.int16(), None),  # int2
    23: (pa.int32(), None),  # int4
    25: (pa.string(), None),  # text
    26: (pa.int64(), None),  # oid (unsigned 32-bit)
    114: (pa.string(), _json_text),  # json: its text
    700: (pa.float32(), None),  # float4
    701: (pa.float64(), None),  # float8
    1042: (pa.string(), None),  # char(n)
    1043: (pa.string(), None),  # varchar
    1082: (pa.date32(), None),  # date
    1083: (pa.time64("us"), None),  # time
    1114: (pa.timestamp("us"), None),  # timestamp (without time zone)
    1184: (pa.timestamp("us", tz="UTC"), None),  # timestamptz: the instant, in UTC
    1186: (pa.duration("us"), None),  # interval (a month counts as 30 days)
    2950: (pa.string(), str),  # uuid
    3802: (pa.string(), _json_text),  # jsonb: its text
}
_PG_NUMERIC = 1700


def _pg_type(column: Any) -> tuple[pa.DataType | None, _Prepare | None]:
    """The Arrow type for a PostgreSQL result column (a DB-API description entry)."""
    oid = getattr(column, "type_code", None)
    if oid == _PG_NUMERIC:
        precision, scale = getattr(column, "precision", None), getattr(column, "scale", None)
        if isinstance(precision, int) and isinstance(scale, int):
            if precision <= 38:
                return pa.decimal128(precision, scale), None
            if precision <= 76:
                return pa.decimal256(precision, scale), None
        # NUMERIC without a declared precision (also what sum() and avg() return): each
        # value may have its own scale, and no Arrow decimal holds them all exactly.
        return pa.float64(), _as_float
    if isinstance(oid, int) and oid in _PG_TYPES:
        return _PG_TYPES[oid]
    return None, None  # arrays, enums, ranges...: inferred from the values


def _sqlite_types(conn: Connection, sql: str) -> list[str]:
    """The declared type of each column ``sql`` returns ('' for an expression).

    SQLite's Python driver does not say; a temporary view over the SQL does (the
    connection is rolled back on close, and the view dropped before).
    """
    view = f"loopline_columns_{uuid.uuid4().hex}"
    conn.exec_driver_sql(f"CREATE TEMP VIEW {view} AS {_normalize_sql(sql)}")
    try:
        rows = conn.exec_driver_sql(f"PRAGMA temp.table_info({view})").fetchall()
    finally:
        conn.exec_driver_sql(f"DROP VIEW temp.{view}")
    return [str(row[2] or "") for row in rows]


def _sqlite_type(declared: str) -> tuple[pa.DataType | None, _Prepare | None]:
    """The Arrow type for a SQLite declared type, by SQLite's own affinity rules.

    https://www.sqlite.org/datatype3.html#determination_of_column_affinity, with BOOLEAN
    as bool and NUMERIC/DECIMAL as float64 (SQLite stores them as integers or reals).
    DATE, DATETIME and untyped columns take the type of their values (text, usually).
    """
    decl = declared.upper()
    if "INT" in decl:
        return pa.int64(), None
    if any(word in decl for word in ("CHAR", "CLOB", "TEXT")):
        return pa.string(), None
    if "BLOB" in decl:
        return pa.binary(), None
    if any(word in decl for word in ("REAL", "FLOA", "DOUB")):
        return pa.float64(), None
    if "BOOL" in decl:
        return pa.bool_(), None
    if "DEC" in decl or "NUM" in decl:
        return pa.float64(), None
    return None, None


def _is_sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


# -- chunks ----------------------------------------------------------------------------------


def _chunk(
    columns: list[_Column],
    names: list[str],
    rows: Sequence[Sequence[Any]],
    *,
    first: int,
    source: str,
) -> Chunk:
    count = len(rows)
    values: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays: list[pa.Array] = []
    bad: dict[int, str] = {}
    for column, column_values in zip(columns, values, strict=True):
        array, problems = column.convert(column_values)
        arrays.append(array)
        for index, reason in problems.items():
            bad.setdefault(index, reason)
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    locations = np.arange(first, first + count, dtype=np.int64)
    if not bad:
        return Chunk.of(batch, source=source, locations=pa.array(locations))
    rejected = sorted(bad)
    keep = np.ones(count, dtype=bool)
    keep[rejected] = False
    rejects = rejects_table(
        [int(locations[i]) for i in rejected],
        [_row_text(names, rows[i]) for i in rejected],
        [bad[i] for i in rejected],
    )
    return Chunk.of(
        batch.filter(pa.array(keep)),
        source=source,
        locations=pa.array(locations[keep]),
        rejects=rejects,
    )


def _row_text(names: list[str], row: Sequence[Any]) -> str:
    """A rejected row as a JSON object of its values, as the database returned them."""
    return orjson.dumps(dict(zip(names, row, strict=True)), default=str).decode()


# -- SQL text and URLs -----------------------------------------------------------------------


def _verbatim_with_since(sql: str) -> sa.TextClause:
    """``sql`` as written, except ``:loopline_since``, the one bound parameter."""
    marker = f":{_SINCE}"
    parts = sql.split(marker)
    escaped = marker.join(part.replace(":", "\\:") for part in parts)
    return sa.text(escaped)


def _check_url(url: object) -> None:
    example = "'sqlite:///data/shop.db' or 'postgresql://user@host:5432/dbname'"
    if not isinstance(url, str) or not url.strip():
        shown = _redact_url(url) if isinstance(url, str) else url
        raise SourceError(
            f"The 'url' parameter of SQLSource must be a database URL such as {example}. "
            f"Got {shown!r}."
        )
    try:
        make_url(url)
    except ArgumentError as exc:
        raise SourceError(
            f"The 'url' parameter of SQLSource must be a database URL such as {example}. "
            f"Got {_redact_url(url)!r}.",
            url=_redact_url(url),
        ) from exc


def _bound(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
    """The parameters as the driver binds them: SQLite has no date or decimal types."""
    if not _is_sqlite(conn):
        return params
    return {key: _sqlite_value(value) for key, value in params.items()}


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value
