"""The online feature store: the newest feature values per entity, read per request.

One small contract (``OnlineStore``: ``write``, ``read``, ``delete``, ``close``) with an
embedded implementation (``SQLiteOnlineStore``, a file in WAL mode) and a real one
(``RedisOnlineStore``); ``open_online_store`` picks one from a URL. The store knows
nothing about feature definitions: a *view* is a name, an *entity* is a tuple of key
values, and a row is a mapping of feature names to values.

Semantics shared by every implementation (decision 0011):

- Writes are idempotent upserts where the newest event wins, compared by (event
  timestamp, created timestamp), a null created timestamp sorting first. An older event
  never overwrites a newer one; an equal one does, so a replay changes nothing. Within
  one call the same rule applies row by row (on a tie, the later row wins).
- Reads return one dict (or ``None``) per requested entity, in request order. A row
  whose event timestamp is later than ``at`` (default: now) is not served, nor is one
  older than ``at - ttl`` (the bound itself is still served).
- Values round-trip exactly: int, float (NaN and infinities included), str, bool,
  ``None``, dates, and datetimes (returned timezone-aware in UTC, microsecond precision).
  Naive timestamps, in rows and in ``at``, are taken as UTC.

Examples
--------
>>> from datetime import datetime
>>> import pyarrow as pa
>>> store = open_online_store("sqlite://")
>>> rows = pa.table({
...     "user": [1, 2],
...     "ts": pa.array([datetime(2024, 5, 1), datetime(2024, 5, 2)], pa.timestamp("us")),
...     "clicks": [3, 5],
... })
>>> store.write("users", rows, keys=["user"], timestamp="ts")
2
>>> store.read("users", [(2,), (7,)], at=datetime(2024, 6, 1))
[{'clicks': 5}, None]
>>> store.close()
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loopline.errors import OnlineStoreError

if TYPE_CHECKING:
    import redis

__all__ = [
    "OnlineStore",
    "RedisOnlineStore",
    "SQLiteOnlineStore",
    "open_online_store",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_NO_TIME = timedelta(0)
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_KEY_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_SERIALIZE_NUMPY
_NESTED = (dict, list, tuple, set, frozenset)
_WRITE_CHUNK = 8192
"""Rows encoded at a time: bounds the memory a bulk write holds in Python objects."""

ONLINE_URL_HINT = "'online_url' in loopline.toml (or LOOPLINE_ONLINE_URL)"


@runtime_checkable
class OnlineStore(Protocol):
    """The newest feature values per (view, entity); see the module docstring.

    Examples
    --------
    >>> store = open_online_store("sqlite://")
    >>> isinstance(store, OnlineStore)
    True
    >>> store.close()
    """

    url: str

    def write(
        self,
        view: str,
        rows: pa.Table,
        *,
        keys: Sequence[str],
        timestamp: str,
        created: str | None = None,
    ) -> int:
        """Upsert ``rows`` (key columns, timestamps, features) where newer; return ``len(rows)``."""
        ...

    def read(
        self,
        view: str,
        entities: Sequence[Sequence[Any]],
        *,
        features: Sequence[str] | None = None,
        at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> list[dict[str, Any] | None]:
        """One ``{feature: value}`` dict, or ``None``, per entity, in order."""
        ...

    def delete(self, view: str, entities: Sequence[Sequence[Any]] | None = None) -> int:
        """Delete the view's rows (only those of ``entities`` when given); return how many."""
        ...

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


def open_online_store(url: str) -> OnlineStore:
    """Open the online store that ``url`` names.

    Parameters
    ----------
    url
        ``sqlite:///relative/online.db``, ``sqlite:////absolute/online.db``, ``sqlite://``
        (in memory), or ``redis://host:port/db`` (also ``rediss://``), optionally with
        ``?prefix=...`` for the Redis key prefix.

    Examples
    --------
    >>> store = open_online_store("sqlite://")
    >>> type(store).__name__
    'SQLiteOnlineStore'
    >>> store.close()
    >>> open_online_store("mongodb://localhost")
    Traceback (most recent call last):
    ...
    loopline.errors.OnlineStoreError: The online store URL 'mongodb://localhost' has the ...
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return SQLiteOnlineStore(url)
    if scheme in ("redis", "rediss"):
        return RedisOnlineStore(url)
    raise OnlineStoreError(
        f"The online store URL {_safe_url(url)!r} has the scheme {scheme or '(none)'!r}, which "
        f"loopline does not know. Use 'sqlite:///path/online.db' or 'redis://host:6379/0' "
        f"in {ONLINE_URL_HINT}.",
        url=_safe_url(url),
    )


# -- encoding ------------------------------------------------------------------------------
#
# A row is stored as the orjson text of {feature: value}. JSON-native values (int, finite
# float, str, bool, null) are stored as themselves; the rest become one-key objects:
# {"t": µs since the epoch, UTC} for a datetime, {"d": days since the epoch} for a date,
# {"f": "nan" | "inf" | "-inf"} for a non-finite float. Feature values are never JSON
# objects otherwise (struct columns are refused), so an object is always such a tag. An
# entity key is the orjson text of the list of its values, tagged the same way, so that
# (1,) and ("1",) differ and composite keys need no separator.


def _untag(tag: dict[str, Any]) -> Any:
    ((kind, value),) = tag.items()
    if kind == "t":
        return _EPOCH + timedelta(microseconds=value)
    if kind == "f":
        return _NONFINITE[value]
    if kind == "d":
        return _EPOCH_DATE + timedelta(days=value)
    raise KeyError(kind)


def _key_default(value: Any) -> Any:
    """orjson's hook for key values it does not serialize itself (datetimes, dates)."""
    if isinstance(value, datetime):
        return {"t": _datetime_micros(value)}
    if isinstance(value, date):
        return {"d": (value - _EPOCH_DATE).days}
    raise TypeError(type(value).__name__)


def _datetime_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _entity_keys(entities: Sequence[Sequence[Any]], owner: str) -> list[bytes]:
    if isinstance(entities, (str, bytes)):
        raise OnlineStoreError(
            f"The 'entities' parameter of {owner} must be a list of key tuples such as "
            f"[(1,), (2,)]. Got {entities!r}."
        )
    encoded = []
    for entity in entities:
        if not isinstance(entity, (tuple, list)):
            raise OnlineStoreError(
                f"The 'entities' parameter of {owner} must hold one tuple of key values per "
                f"entity, such as (42,) or ('JFK', 3). Got {entity!r}."
            )
        try:
            for value in entity:
                if isinstance(value, _NESTED):
                    raise TypeError(f"a {type(value).__name__} is not a single value")
            encoded.append(orjson.dumps(entity, default=_key_default, option=_KEY_OPTIONS))
        except TypeError as exc:
            raise OnlineStoreError(
                f"The entity {entity!r} passed to {owner} holds a value that cannot be a key "
                f"({exc}); keys are str, int, bool, float, date or datetime values."
            ) from None
    return encoded


@dataclass(frozen=True)
class _Column:
    name: str
    index: int
    kind: str
    """How its values become JSON: plain, float, timestamp, date (see _json_values)."""


_PLAIN_TYPES: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_null,
    pa.types.is_boolean,
    pa.types.is_integer,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_string_view,
)


def _kind(data_type: pa.DataType) -> str | None:
    if pa.types.is_dictionary(data_type):
        return _kind(data_type.value_type)
    if any(check(data_type) for check in _PLAIN_TYPES):
        return "plain"
    if pa.types.is_float32(data_type) or pa.types.is_float64(data_type):
        return "float"
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_date(data_type):
        return "date"
    return None


def _micros(array: pa.Array) -> pa.Array:
    """A timestamp array as int64 µs since the epoch in UTC (naive values taken as UTC)."""
    as_us = array.cast(pa.timestamp("us", tz=array.type.tz), safe=False)
    return as_us.cast(pa.int64())


def _json_values(array: pa.Array, kind: str) -> list[Any]:
    """The values of one column, ready for orjson (tagged where JSON has no spelling)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if kind == "plain":
        return array.to_pylist()  # type: ignore[no-any-return]
    if kind == "float":
        values = array.to_pylist()
        if pc.any(pc.invert(pc.is_finite(array))).as_py():
            return [
                v if v is None or math.isfinite(v) else {"f": "nan" if v != v else str(v)}
                for v in values
            ]
        return values  # type: ignore[no-any-return]
    if kind == "timestamp":
        return [None if v is None else {"t": v} for v in _micros(array).to_pylist()]
    days = array.cast(pa.date32()).cast(pa.int32()).to_pylist()
    return [None if v is None else {"d": v} for v in days]


@dataclass(frozen=True)
class _Batch:
    """Encoded rows, in input order: entity key, event µs, created µs, payload."""

    keys: list[bytes]
    ts: list[int]
    created: list[int | None]
    payloads: list[bytes]


@dataclass(frozen=True)
class _WritePlan:
    keys: tuple[_Column, ...]
    ts: int
    created: int | None
    features: tuple[_Column, ...]

    def encode(self, batch: pa.RecordBatch) -> _Batch:
        key_columns = [_json_values(batch.column(c.index), c.kind) for c in self.keys]
        keys = [orjson.dumps(values) for values in zip(*key_columns, strict=True)]
        ts = _micros(batch.column(self.ts)).to_pylist()
        created = (
            _micros(batch.column(self.created)).to_pylist()
            if self.created is not None
            else [None] * batch.num_rows
        )
        if self.features:
            names = [c.name for c in self.features]
            columns = [_json_values(batch.column(c.index), c.kind) for c in self.features]
            payloads = [
                orjson.dumps(dict(zip(names, values, strict=True)))
                for values in zip(*columns, strict=True)
            ]
        else:
            payloads = [b"{}"] * batch.num_rows
        return _Batch(keys, ts, created, payloads)


def _plan(
    owner: str, rows: pa.Table, keys: Sequence[str], timestamp: str, created: str | None
) -> _WritePlan:
    """Check ``rows`` against the write parameters; say exactly what is wrong if not."""
    if not isinstance(rows, pa.Table):
        raise OnlineStoreError(
            f"The 'rows' parameter of {owner} must be a pyarrow.Table. Got "
            f"{type(rows).__name__} (convert a Polars DataFrame with .to_arrow())."
        )
    names = rows.column_names
    if isinstance(keys, str) or not keys:
        raise OnlineStoreError(
            f"The 'keys' parameter of {owner} must be a non-empty list of column names such as "
            f"['user_id']. Got {keys!r}."
        )
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise OnlineStoreError(f"The rows passed to {owner} repeat the columns {duplicated}.")
    for role, column in (
        [("keys", k) for k in keys]
        + [("timestamp", timestamp)]
        + ([("created", created)] if created is not None else [])
    ):
        if column not in names:
            raise OnlineStoreError(
                f"The {role!r} parameter of {owner} names the column {column!r}, which the "
                f"rows lack. Their columns are: {', '.join(names)}.",
                column=column,
            )
    for role, column in [("timestamp", timestamp)] + (
        [("created", created)] if created is not None else []
    ):
        data_type = rows.schema.field(column).type
        if not pa.types.is_timestamp(data_type):
            raise OnlineStoreError(
                f"The {role!r} column {column!r} passed to {owner} must be an Arrow timestamp "
                f"column. Got {data_type}; convert it, for example with "
                f"pyarrow.compute.cast(column, pa.timestamp('us', tz='UTC')).",
                column=column,
            )
    nulls = rows.column(timestamp).null_count
    if nulls:
        raise OnlineStoreError(
            f"The 'timestamp' column {timestamp!r} passed to {owner} holds {nulls} null "
            f"value(s); every row needs the time its values became known.",
            column=timestamp,
        )
    key_columns = []
    for key in keys:
        data_type = rows.schema.field(key).type
        kind = _kind(data_type)
        if kind is None or pa.types.is_null(data_type):
            raise OnlineStoreError(
                f"The key column {key!r} passed to {owner} has the type {data_type}; keys must "
                f"be strings, integers, booleans, floats, dates or timestamps.",
                column=key,
            )
        column = rows.column(key)
        if column.null_count:
            raise OnlineStoreError(
                f"The key column {key!r} passed to {owner} holds {column.null_count} null "
                f"value(s); drop those rows or fill their keys first.",
                column=key,
            )
        if kind == "float" and not pc.all(pc.is_finite(column)).as_py():
            raise OnlineStoreError(
                f"The key column {key!r} passed to {owner} holds NaN or infinite values, which "
                f"cannot identify an entity; drop those rows first.",
                column=key,
            )
        key_columns.append(_Column(key, names.index(key), kind))
    reserved = {*keys, timestamp, *([created] if created is not None else [])}
    features = []
    for index, name in enumerate(names):
        if name in reserved:
            continue
        data_type = rows.schema.field(name).type
        kind = _kind(data_type)
        if kind is None:
            raise OnlineStoreError(
                f"The feature column {name!r} passed to {owner} has the type {data_type}, "
                f"which the online store cannot hold. Cast it to int64, float64, string, bool, "
                f"date32 or timestamp first.",
                column=name,
            )
        if kind == "timestamp":
            _check_datetime_range(owner, name, rows.column(name))
        features.append(_Column(name, index, kind))
    return _WritePlan(
        keys=tuple(key_columns),
        ts=names.index(timestamp),
        created=None if created is None else names.index(created),
        features=tuple(features),
    )


def _check_datetime_range(owner: str, name: str, column: pa.ChunkedArray) -> None:
    if column.null_count == len(column):
        return
    bounds = pc.min_max(pa.chunked_array([_micros(c) for c in column.chunks], pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low < _MIN_MICROS or high > _MAX_MICROS:
        raise OnlineStoreError(
            f"The feature column {name!r} passed to {owner} holds timestamps outside the years "
            f"1-9999 that Python datetimes can represent; clip or drop them first.",
            column=name,
        )


def _check_view(owner: str, view: str) -> None:
    if not isinstance(view, str) or not view:
        raise OnlineStoreError(
            f"The 'view' parameter of {owner} must be a non-empty string such as "
            f"'user_features'. Got {view!r}."
        )


def _safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# -- the shared template -------------------------------------------------------------------


Stored = tuple[int, bytes] | None
"""What a backend returns for each requested entity: (event µs, payload), or None."""


class _OnlineStoreBase(ABC):
    """Validation, encoding, TTL and decoding once; backends only move bytes (_put, _get, _drop)."""

    url: str

    def write(
        self,
        view: str,
        rows: pa.Table,
        *,
        keys: Sequence[str],
        timestamp: str,
        created: str | None = None,
    ) -> int:
        """Upsert ``rows`` into ``view`` where they are newer; return ``len(rows)``.

        Parameters
        ----------
        view
            The view (feature group) the rows belong to.
        rows
            Key columns, the event timestamp column, an optional created timestamp column;
            every other column is a feature value.
        keys
            The entity key columns (several for a composite key), in key order.
        timestamp
            The event timestamp column: when the row's values became known.
        created
            An optional timestamp column that breaks ties between equal event timestamps.
        """
        owner = f"{type(self).__name__}.write"
        _check_view(owner, view)
        plan = _plan(owner, rows, keys, timestamp, created)
        batches = (plan.encode(b) for b in rows.to_batches(max_chunksize=_WRITE_CHUNK))
        self._put(view, batches)
        return int(rows.num_rows)

    def read(
        self,
        view: str,
        entities: Sequence[Sequence[Any]],
        *,
        features: Sequence[str] | None = None,
        at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> list[dict[str, Any] | None]:
        """Read the newest row of each entity: a dict per entity, or None, in order.

        Parameters
        ----------
        view
            The view to read.
        entities
            Key tuples, one per entity, in the key order the rows were written with.
        features
            Only these features, in this order (default: all the row holds).
        at
            The time of the request (default: now). A row with a later event time is not
            served.
        ttl
            When given, a row whose event time is before ``at - ttl`` is not served.
        """
        owner = f"{type(self).__name__}.read"
        _check_view(owner, view)
        if isinstance(features, str):
            raise OnlineStoreError(
                f"The 'features' parameter of {owner} must be a list of names such as "
                f"[{features!r}]. Got the string {features!r}."
            )
        high = time.time_ns() // 1000 if at is None else _datetime_micros(at)
        low = None
        if ttl is not None:
            if ttl < _NO_TIME:
                raise OnlineStoreError(
                    f"The 'ttl' parameter of {owner} must be a non-negative duration. Got {ttl}."
                )
            low = high - ttl // _MICROSECOND
        keys = _entity_keys(entities, owner)
        if not keys:
            return []
        results: list[dict[str, Any] | None] = []
        append, loads = results.append, orjson.loads
        for item in self._get(view, keys):
            if item is None or item[0] > high or (low is not None and item[0] < low):
                append(None)
                continue
            payload = item[1]
            # The common row (no tagged value) decodes in one C call, and is picked from
            # here; anything else, or a failure (reported by _decode), goes the long way.
            if payload.find(b"{", 1) == -1:
                try:
                    row = loads(payload)
                    append(row if features is None else {name: row[name] for name in features})
                    continue
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    pass
            append(self._decode(view, payload, features))
        return results

    def delete(self, view: str, entities: Sequence[Sequence[Any]] | None = None) -> int:
        """Delete the whole view, or only the rows of ``entities``; return the rows deleted."""
        owner = f"{type(self).__name__}.delete"
        _check_view(owner, view)
        if entities is None:
            return self._drop(view, None)
        keys = _entity_keys(entities, owner)
        return self._drop(view, keys) if keys else 0

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    def __enter__(self) -> _OnlineStoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_safe_url(self.url)!r})"

    def _decode(self, view: str, payload: bytes, features: Sequence[str] | None) -> dict[str, Any]:
        try:
            row: dict[str, Any] = orjson.loads(payload)
            # Only a payload with a "{" after its first byte can hold a tag; most rows skip
            # the per-value scan.
            tagged = payload.find(b"{", 1) != -1
            if features is None:
                if not tagged:
                    return row
                for name, value in row.items():
                    if type(value) is dict:
                        row[name] = _untag(value)
                return row
            if not tagged:
                return {name: row[name] for name in features}
            picked = {}
            for name in features:
                value = row[name]
                picked[name] = _untag(value) if type(value) is dict else value
            return picked
        except KeyError as exc:
            if features is not None and exc.args and exc.args[0] in features:
                missing = exc.args[0]
                raise OnlineStoreError(
                    f"The feature {missing!r} is not stored in the view {view!r}; its rows hold "
                    f"{', '.join(map(repr, row)) or 'no features'}. Request one of those, or "
                    f"materialize {missing!r} into the view first.",
                    view=view,
                    feature=missing,
                ) from None
            raise self._corrupted(view, exc) from exc
        except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError) as exc:
            raise self._corrupted(view, exc) from exc

    def _corrupted(self, view: str, exc: Exception) -> OnlineStoreError:
        return OnlineStoreError(
            f"A row of the view {view!r} in the online store at {_safe_url(self.url)} cannot "
            f"be decoded ({type(exc).__name__}: {exc}); it was not written by loopline. "
            f"Re-materialize the view (delete it first).",
            view=view,
        )

    @abstractmethod
    def _put(self, view: str, batches: Iterator[_Batch]) -> None:
        """Upsert every row of ``batches`` in order, newest-wins, atomically per row."""

    @abstractmethod
    def _get(self, view: str, keys: list[bytes]) -> list[Stored]:
        """The stored (event µs, payload) of each key, in order, None where absent."""

    @abstractmethod
    def _drop(self, view: str, keys: list[bytes] | None) -> int:
        """Delete the keys' rows (all of the view's when None); return how many went."""


# -- SQLite --------------------------------------------------------------------------------

_SQLITE_FORMAT = 1
"""``PRAGMA user_version`` of a loopline online-store file; a newer one is refused."""
_SQLITE_BUSY_S = 60.0
_SQLITE_MMAP_BYTES = 1 << 30
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_rows (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    ts INTEGER NOT NULL,
    created INTEGER,
    payload BLOB NOT NULL,
    PRIMARY KEY (view, entity)
) WITHOUT ROWID
"""
# Newest wins in SQL: an existing row is replaced only by an event that is not older,
# by (ts, created) with a null created sorting first. A later equal row replaces it, so
# a replay is idempotent and, within one executemany, ties go to the later row.
_SQLITE_UPSERT = """
INSERT INTO online_rows (view, entity, ts, created, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, entity) DO UPDATE SET
    ts = excluded.ts, created = excluded.created, payload = excluded.payload
WHERE excluded.ts > online_rows.ts
   OR (excluded.ts = online_rows.ts
       AND (online_rows.created IS NULL OR excluded.created >= online_rows.created))
"""
_SQLITE_GET_ONE = "SELECT ts, payload FROM online_rows WHERE view = ? AND entity = ?"
# One statement for any number of entities: the keys travel as one JSON array, and each
# is looked up by primary key (CROSS JOIN keeps json_each the outer loop, which saves
# the temporary index that ``IN (SELECT ...)`` would build).
_SQLITE_GET_MANY = (
    "SELECT r.entity, r.ts, r.payload FROM json_each(?2) AS j "
    "CROSS JOIN online_rows AS r ON r.view = ?1 AND r.entity = j.value"
)
_SQLITE_DELETE_VIEW = "DELETE FROM online_rows WHERE view = ?"
_SQLITE_DELETE_ONE = "DELETE FROM online_rows WHERE view = ? AND entity = ?"


class _SQLiteErrors:
    """Translate sqlite3 errors into ``OnlineStoreError``, once, at this boundary."""

    __slots__ = ("_where",)

    def __init__(self, where: str) -> None:
        self._where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            detail = str(exc).strip() or type(exc).__name__
            hint = (
                " Another process held the write lock longer than the busy timeout; retry, "
                "or write from fewer processes at once."
                if "locked" in detail
                else f" Check that the file is readable and writable, or point {ONLINE_URL_HINT}"
                " at another file."
            )
            raise OnlineStoreError(
                f"The online store at {self._where} failed: {detail}.{hint}", url=self._where
            ) from exc


def _sqlite_path(url: str) -> str | None:
    """The file a ``sqlite://`` URL names, or None for an in-memory database."""
    if not url.lower().startswith("sqlite://"):
        raise OnlineStoreError(
            f"SQLiteOnlineStore needs a URL such as 'sqlite:///path/online.db'. Got {url!r}."
        )
    path = url[len("sqlite://") :]
    if path in ("", "/", "/:memory:"):
        return None
    if not path.startswith("/"):
        raise OnlineStoreError(
            f"The SQLite URL {url!r} needs three slashes before a relative path "
            f"('sqlite:///online.db') and four before an absolute one "
            f"('sqlite:////var/online.db')."
        )
    return path[1:]


class SQLiteOnlineStore(_OnlineStoreBase):
    """The embedded online store: one SQLite file (WAL), safe for several processes.

    Rows live in one ``WITHOUT ROWID`` table keyed by (view, entity); the upsert's
    ``WHERE`` clause keeps the newest event. Each thread gets its own connection, so
    reads in one thread never wait for a bulk write in another. Writes take the write
    lock (``BEGIN IMMEDIATE``) and wait up to ``busy_timeout`` seconds for another
    process's write to finish; commits are synchronous (``synchronous = FULL``), so a
    write that returned survives a power cut.

    Parameters
    ----------
    url
        ``sqlite:///relative/online.db``, ``sqlite:////absolute/online.db``, or
        ``sqlite://`` for a private in-memory database (one connection, shared under a
        lock). The file's folder is created if missing.
    busy_timeout
        Seconds a write waits for another process's write lock.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> import pyarrow as pa
    >>> store = SQLiteOnlineStore("sqlite://")
    >>> ts = pa.array([datetime(2024, 5, 1), datetime(2024, 5, 3), datetime(2024, 5, 2)])
    >>> rows = pa.table({"user": ["a", "a", "b"], "ts": ts, "spend": [1.5, 2.5, float("nan")]})
    >>> store.write("users", rows, keys=["user"], timestamp="ts")
    3
    >>> store.read("users", [("a",), ("b",)], at=datetime(2024, 5, 4), ttl=timedelta(days=1))
    [{'spend': 2.5}, None]
    >>> store.delete("users")
    2
    >>> store.close()
    """

    def __init__(self, url: str = "sqlite://", *, busy_timeout: float = _SQLITE_BUSY_S) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self._path = _sqlite_path(url)
        self._errors = _SQLiteErrors(self._path or ":memory:")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # An in-memory database lives in one connection, so every thread shares it.
        self._guard: AbstractContextManager[Any] = (
            threading.RLock() if self._path is None else nullcontext()
        )
        self._shared: sqlite3.Connection | None = None
        try:
            if self._path is None:
                self._shared = self._connect()
            else:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                self._conn()
        except OSError as exc:
            raise OnlineStoreError(
                f"The online store file {self._path} cannot be created ({exc}); point "
                f"{ONLINE_URL_HINT} at a writable location.",
                url=self._path,
            ) from exc

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        with self._errors:
            conn = sqlite3.connect(
                self._path or ":memory:",
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=64,
            )
            try:
                if self._path is not None:
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                # Reads through a memory map skip a system call per page: random lookups in
                # a file larger than the page cache take about a third less time.
                conn.execute(f"PRAGMA mmap_size = {_SQLITE_MMAP_BYTES}")
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > _SQLITE_FORMAT:
                    raise OnlineStoreError(
                        f"The online store file {self._path} has format {version}, newer than "
                        f"this loopline's ({_SQLITE_FORMAT}); upgrade loopline or point "
                        f"{ONLINE_URL_HINT} at another file.",
                        url=self._path,
                    )
                if version < _SQLITE_FORMAT:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(_SQLITE_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {_SQLITE_FORMAT}")
                    conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
        with self._lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _put(self, view: str, batches: Iterator[_Batch]) -> None:
        with self._guard, self._errors:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for batch in batches:
                    keys, ts, created, payloads = (
                        batch.keys,
                        batch.ts,
                        batch.created,
                        batch.payloads,
                    )
                    # In key order the B-tree fills page by page instead of splitting pages
                    # at random (a fresh bulk write takes half the time). The sort is
                    # stable, so rows of one entity keep their order and ties still go
                    # to the later row.
                    order = sorted(range(len(keys)), key=keys.__getitem__)
                    conn.executemany(
                        _SQLITE_UPSERT,
                        [(view, keys[i].decode(), ts[i], created[i], payloads[i]) for i in order],
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _get(self, view: str, keys: list[bytes]) -> list[Stored]:
        with self._guard, self._errors:
            conn = self._conn()
            if len(keys) == 1:
                row = conn.execute(_SQLITE_GET_ONE, (view, keys[0].decode())).fetchone()
                return [row]
            texts = [key.decode() for key in keys]
            found = {
                entity: (ts, payload)
                for entity, ts, payload in conn.execute(
                    _SQLITE_GET_MANY, (view, orjson.dumps(texts).decode())
                )
            }
        return [found.get(text) for text in texts]

    def _drop(self, view: str, keys: list[bytes] | None) -> int:
        with self._guard, self._errors:
            conn = self._conn()
            if keys is None:
                return conn.execute(_SQLITE_DELETE_VIEW, (view,)).rowcount
            return conn.executemany(
                _SQLITE_DELETE_ONE, [(view, key.decode()) for key in keys]
            ).rowcount


# -- Redis ---------------------------------------------------------------------------------

_REDIS_DEFAULT_PREFIX = "loopline:"
_REDIS_OFFSET = 1 << 63
"""Added to µs timestamps so that they print as 16 unsigned hex digits."""
_REDIS_NULL = b"-" * 16
_REDIS_ROWS_PER_CALL = 1000
_REDIS_KEYS_PER_CALL = 10_000
# A stored value is a 32-byte header (event µs and created µs, each offset by 2**63 as 16
# hex digits, "-" * 16 for a null created) followed by the payload. The script compares
# headers 32 bits at a time, because Lua numbers are doubles: exact to 2**53, not 2**64.
_REDIS_CAS = """
local NULL = '----------------'
local function cmp(a, b)
  if a == b then return 0 end
  local ah, bh = tonumber(string.sub(a, 1, 8), 16), tonumber(string.sub(b, 1, 8), 16)
  if ah ~= bh then
    if ah < bh then return -1 end
    return 1
  end
  if tonumber(string.sub(a, 9, 16), 16) < tonumber(string.sub(b, 9, 16), 16) then
    return -1
  end
  return 1
end
local written = 0
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local old = redis.call('GETRANGE', key, 0, 31)
  local wins = true
  if old ~= '' then
    local c = cmp(string.sub(new, 1, 16), string.sub(old, 1, 16))
    if c == 0 then
      local nc, oc = string.sub(new, 17, 32), string.sub(old, 17, 32)
      if nc == NULL then
        wins = oc == NULL
      elseif oc ~= NULL then
        wins = cmp(nc, oc) >= 0
      end
    else
      wins = c > 0
    end
  end
  if wins then
    redis.call('SET', key, new)
    written = written + 1
  end
end
return written
"""


def _import_redis() -> ModuleType:
    try:
        import redis
    except ImportError as exc:
        raise OnlineStoreError(
            "RedisOnlineStore needs the 'redis' package, which is not installed: "
            "pip install 'loopline[redis]'."
        ) from exc
    return redis


def _glob_escape(text: bytes) -> bytes:
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        text = text.replace(special, b"\\" + special)
    return text


class _RedisErrors:
    """Translate redis-py errors into ``OnlineStoreError``, once, at this boundary."""

    __slots__ = ("_connection", "_error", "_where")

    def __init__(self, module: ModuleType, where: str) -> None:
        self._error: type[Exception] = module.RedisError
        self._connection = (module.ConnectionError, module.TimeoutError)
        self._where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, self._connection):
            raise OnlineStoreError(
                f"Redis at {self._where} is not reachable ({exc}). Start Redis there, or point "
                f"{ONLINE_URL_HINT} at a running server.",
                url=self._where,
            ) from exc
        if isinstance(exc, self._error):
            raise OnlineStoreError(
                f"Redis at {self._where} failed: {exc}. Check that the server is a Redis 6 or "
                f"newer that allows Lua scripts, and that the prefix holds only loopline keys.",
                url=self._where,
            ) from exc


def split_redis_prefix(url: str, default: str) -> tuple[str, str]:
    """A Redis URL without its ``prefix`` query parameter, and the prefix (``default``
    when it has none): ``redis://h:6379/0?prefix=shop:`` namespaces every key."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[-1] if prefixes else default


class RedisOnlineStore(_OnlineStoreBase):
    """The online store on Redis: one string key per (view, entity), read with ``MGET``.

    The key is ``<prefix><view>:<entity>`` (``:`` and ``%`` in the view name are
    percent-escaped); the value is a 32-byte header with the event and created
    timestamps, then the row. Writes run a Lua compare-and-set (``EVALSHA``) over up
    to 1,000 rows per call, the calls of a batch pipelined in one round trip, so the
    newest event wins atomically even with several writers. ``delete(view)`` scans the
    view's keys (``SCAN``), so it costs time in proportion to the whole keyspace.

    Parameters
    ----------
    url
        ``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS). The query
        parameter ``prefix`` (default ``loopline:``) namespaces every key; the others go
        to redis-py (``socket_timeout=5``, ...). The store connects when it opens.

    Examples
    --------
    It checks the server at once, so a wrong URL fails here rather than on a request:

    >>> RedisOnlineStore("redis://127.0.0.1:1/0?prefix=shop:")
    Traceback (most recent call last):
    ...
    loopline.errors.OnlineStoreError: ...

    With a server, it reads and writes like every other store::

        store = RedisOnlineStore("redis://localhost:6379/0?prefix=shop:")
        store.write("users", rows, keys=["user"], timestamp="ts")
        store.read("users", [("a",), ("b",)])
    """

    def __init__(self, url: str) -> None:
        self.url = url
        module = _import_redis()
        client_url, self.prefix = split_redis_prefix(url, _REDIS_DEFAULT_PREFIX)
        where = _safe_url(urlunsplit(urlsplit(url)._replace(query="")))
        self._errors = _RedisErrors(module, where)
        self._prefix = self.prefix.encode()
        self._views: dict[str, bytes] = {}
        try:
            self._client: redis.Redis = module.Redis.from_url(
                client_url, socket_connect_timeout=2.0, socket_timeout=30.0
            )
        except ValueError as exc:
            raise OnlineStoreError(
                f"The Redis URL {_safe_url(url)!r} is not valid ({exc}); write it as "
                f"'redis://host:6379/0?prefix=loopline:' in {ONLINE_URL_HINT}.",
                url=where,
            ) from exc
        try:
            with self._errors:
                self._client.ping()
        except BaseException:
            self._client.close()
            raise
        self._cas = self._client.register_script(_REDIS_CAS)

    def close(self) -> None:
        self._client.close()

    def _view_prefix(self, view: str) -> bytes:
        prefix = self._views.get(view)
        if prefix is None:
            escaped = view.replace("%", "%25").replace(":", "%3A")
            prefix = self._views[view] = self._prefix + escaped.encode() + b":"
        return prefix

    def _put(self, view: str, batches: Iterator[_Batch]) -> None:
        prefix = self._view_prefix(view)
        offset, null, step = _REDIS_OFFSET, _REDIS_NULL, _REDIS_ROWS_PER_CALL
        with self._errors:
            for batch in batches:
                names = [prefix + key for key in batch.keys]
                values = [
                    b"%016x%b%b"
                    % (ts + offset, null if created is None else b"%016x" % (created + offset), p)
                    for ts, created, p in zip(batch.ts, batch.created, batch.payloads, strict=True)
                ]
                pipe = self._client.pipeline(transaction=False)
                for start in range(0, len(names), step):
                    self._cas(
                        keys=names[start : start + step],
                        args=values[start : start + step],
                        client=pipe,
                    )
                pipe.execute()

    def _get(self, view: str, keys: list[bytes]) -> list[Stored]:
        prefix = self._view_prefix(view)
        names = [prefix + key for key in keys]
        with self._errors:
            if len(names) <= _REDIS_KEYS_PER_CALL:
                values: list[bytes | None] = self._client.mget(names)  # type: ignore[assignment]
            else:
                pipe = self._client.pipeline(transaction=False)
                for start in range(0, len(names), _REDIS_KEYS_PER_CALL):
                    pipe.mget(names[start : start + _REDIS_KEYS_PER_CALL])
                values = [value for part in pipe.execute() for value in part]
        try:
            return [
                None if value is None else (int(value[:16], 16) - _REDIS_OFFSET, value[32:])
                for value in values
            ]
        except ValueError as exc:
            raise self._corrupted(view, exc) from exc

    def _drop(self, view: str, keys: list[bytes] | None) -> int:
        prefix = self._view_prefix(view)
        deleted = 0
        with self._errors:
            if keys is not None:
                names = [prefix + key for key in keys]
                for start in range(0, len(names), _REDIS_KEYS_PER_CALL):
                    deleted += int(
                        self._client.unlink(*names[start : start + _REDIS_KEYS_PER_CALL])
                    )
                return deleted
            found: list[bytes] = []
            for name in self._client.scan_iter(match=_glob_escape(prefix) + b"*", count=1000):
                found.append(name)
                if len(found) == _REDIS_ROWS_PER_CALL:
                    deleted += int(self._client.unlink(*found))
                    found = []
            if found:
                deleted += int(self._client.unlink(*found))
        return deleted
