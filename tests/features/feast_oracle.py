"""Feast 0.67 as the conformance oracle for loopline's point-in-time join.

``feast_historical_features(labels, views, timestamp=...)`` builds a throwaway Feast repo
in a temporary folder (provider ``local``, offline store ``duckdb``, a file registry, an
SQLite online store that is never used), writes each view's rows to a Parquet
``FileSource``, applies, runs ``FeatureStore.get_historical_features`` and returns the
result in label order: the label columns, then each view's features under their plain
names.

How Feast's DuckDB offline store behaves, found by experiment on Feast 0.67.0 (duckdb
2.0.1, ibis 12) against the semantics in DESIGN.md ("Key semantics"):

Where it agrees
    - The bounds are inclusive: a feature row at ts matches a label at t when
      ``ts <= t`` and ``ts + ttl >= t`` (Feast computes ``event_expire_timestamp =
      ts + ttl``); a TTL of ``timedelta(0)`` (Feast's default) means no lower bound.
    - Ties on ts go to the larger created timestamp; a null created timestamp loses to
      any non-null one (``ORDER BY created DESC`` puts nulls last).
    - The winning row is taken whole: a null feature in it stays null, Feast does not
      fall back to an older non-null value. No match gives nulls.
    - Label rows are neither dropped nor merged: two equal label rows both come back,
      each with the features (Feast keys its internal row id on the join keys and the
      timestamp, so equal rows share one lookup, and the final left join keeps both).
    - A null entity key, in the labels or in the feature rows, never matches (SQL
      equality); a null label timestamp gets nulls; feature rows with a null event
      timestamp never match.
    - Naive timestamps, in the labels (``coerce_tz_aware``) and in the Parquet files (the
      ibis DuckDB session runs in UTC, whatever ``TZ`` says), are taken as UTC. Aware
      label times in another zone are converted to UTC. The returned timestamp is
      UTC-aware, in microseconds.
    - A composite key is one Feast entity per join key column; a label row matches only
      on all of them.

Where it differs, and what this oracle does about it
    - Exact ties on (event ts, created ts) are arbitrary in Feast (``ROW_NUMBER()``
      over a window ordered by ts and created only): in small single-threaded runs it
      took the *first* row in source order, where loopline takes the last. The
      conformance test never generates such ties.
    - The output order is the join's, not the label order: this oracle adds a row
      number column to the labels, which Feast passes through, and sorts by it.
    - Feast works in microseconds: a label time with a sub-microsecond part makes Feast
      fail with ``ArrowInvalid`` (``Casting from timestamp[ns] ... would lose data``).
      This oracle refuses such labels with a ``ValueError`` before calling Feast.
    - Feast receives the labels as a pandas frame, so an integer key column with nulls
      comes back as float64. This oracle returns the caller's label columns unchanged
      (only the timestamp as Feast returns it) and checks that Feast returned each
      label row exactly once.
    - Two views with a feature of the same name make Feast raise
      ``FeatureNameCollisionError`` (as loopline raises ``FeatureError``); the oracle
      lets it raise.

Feast's default ``file`` (dask) offline store, which the benchmark measures, does drop
and merge label rows: it keeps one row per (join keys, label time), and it drops a label
row whose entity has feature rows, but only later ones (its TTL filter runs after the
entity join).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.types import Bool, Float64, Int64, String

__all__ = ["DTYPES", "OracleView", "feast_historical_features"]

DTYPES: dict[str, tuple[Any, pl.DataType]] = {
    "float64": (Float64, pl.Float64()),
    "int64": (Int64, pl.Int64()),
    "string": (String, pl.String()),
    "bool": (Bool, pl.Boolean()),
}
"""Feature dtype name -> (Feast type, Polars type) that the oracle supports."""

_ROW = "__oracle_row"
_EVENT_TIMESTAMP = "event_timestamp"  # the name Feast looks for in the entity frame


@dataclass(frozen=True)
class OracleView:
    """A feature view as Feast sees it: rows, join keys, timestamps, TTL, typed features.

    Parameters
    ----------
    name
        The feature view's name (unique among the views of one call).
    keys
        The entity join key columns, one or more; each must also be a label column.
    source
        The feature rows (written to Parquet as they are, features cast to their dtypes).
    timestamp
        The event timestamp column of ``source``.
    features
        Feature column -> dtype name, one of ``DTYPES``.
    created
        The created timestamp column of ``source`` that breaks ties on ``timestamp``.
    ttl
        How far back a feature row may lie; None for no limit.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> rows = pl.DataFrame({"driver_id": [1], "ts": [datetime(2024, 1, 1)], "rate": [0.5]})
    >>> view = OracleView("stats", keys=("driver_id",), source=rows, timestamp="ts",
    ...                   features={"rate": "float64"}, ttl=timedelta(hours=2))
    >>> view.keys, dict(view.features)
    (('driver_id',), {'rate': 'float64'})
    """

    name: str
    keys: tuple[str, ...]
    source: pl.DataFrame
    timestamp: str
    features: Mapping[str, str]
    created: str | None = None
    ttl: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError(f"OracleView {self.name!r} needs at least one key column.")
        unknown = {f: d for f, d in self.features.items() if d not in DTYPES}
        if unknown:
            raise ValueError(
                f"OracleView {self.name!r}: unsupported dtypes {unknown}; use {list(DTYPES)}."
            )
        if self.ttl is not None and self.ttl <= timedelta(0):
            # Feast reads a zero TTL as "no limit"; a caller meaning that passes None.
            raise ValueError(f"OracleView {self.name!r}: ttl must be positive or None.")


def _value_type(dtype: pl.DataType, *, column: str) -> ValueType:
    if dtype.is_integer():
        return ValueType.INT64
    if dtype == pl.String:
        return ValueType.STRING
    raise ValueError(f"Key column {column!r} is {dtype}; the oracle supports integer or string.")


def _feast_labels(labels: pl.DataFrame, timestamp: str) -> pl.DataFrame:
    """The entity frame Feast gets: a row number, the keys, the time as ``event_timestamp``."""
    if timestamp not in labels.columns:
        raise ValueError(f"The labels have no column {timestamp!r}; they have {labels.columns}.")
    dtype = labels.schema[timestamp]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"Label column {timestamp!r} must be a Datetime; it is {dtype}.")
    time = pl.col(timestamp)
    time = time.dt.replace_time_zone("UTC") if dtype.time_zone is None else time
    frame = labels.with_columns(time.dt.convert_time_zone("UTC"))
    micros = frame[timestamp].cast(pl.Datetime("us", "UTC"))
    lost = (frame[timestamp] != micros.cast(frame.schema[timestamp])).fill_null(False).any()
    if lost:
        raise ValueError(
            f"Label column {timestamp!r} has sub-microsecond times, which Feast cannot take."
        )
    return frame.with_columns(micros).with_row_index(_ROW)


def feast_historical_features(
    labels: pl.DataFrame, views: Sequence[OracleView], *, timestamp: str
) -> pl.DataFrame:
    """Feast's ``get_historical_features`` on its DuckDB offline store, in label order.

    Parameters
    ----------
    labels
        The entity rows: every view's key columns, ``timestamp`` and any other columns.
    views
        The feature views to join, in output order.
    timestamp
        The label time column: a Datetime, naive (taken as UTC) or aware, in whole
        microseconds (Feast refuses finer times).

    Returns
    -------
    pl.DataFrame
        The label columns (``timestamp`` as Feast returns it: UTC, microseconds), then
        each view's features, one row per label row in label order.
    """
    if _EVENT_TIMESTAMP in labels.columns and timestamp != _EVENT_TIMESTAMP:
        raise ValueError(f"Rename the label column {_EVENT_TIMESTAMP!r}: Feast reserves it.")
    entity_rows = _feast_labels(labels, timestamp)
    with tempfile.TemporaryDirectory(prefix="loopline-feast-") as folder:
        repo = Path(folder)
        objects: list[Any] = []
        entities: dict[str, Entity] = {}
        refs: list[str] = []
        for view in views:
            path = repo / f"{view.name}.parquet"
            casts = [pl.col(f).cast(DTYPES[d][1]) for f, d in view.features.items()]
            view.source.with_columns(casts).write_parquet(path)
            source = FileSource(
                name=f"{view.name}_source",
                path=str(path),
                timestamp_field=view.timestamp,
                created_timestamp_column=view.created or "",
            )
            for key in view.keys:
                if key not in entities:
                    value_type = _value_type(labels.schema[key], column=key)
                    entities[key] = Entity(name=key, join_keys=[key], value_type=value_type)
            objects.append(
                FeatureView(
                    name=view.name,
                    entities=[entities[k] for k in view.keys],
                    ttl=view.ttl or timedelta(0),
                    source=source,
                    schema=[Field(name=f, dtype=DTYPES[d][0]) for f, d in view.features.items()],
                )
            )
            refs.extend(f"{view.name}:{f}" for f in view.features)
        config = RepoConfig(
            project="oracle",
            provider="local",
            registry=str(repo / "registry.db"),
            offline_store={"type": "duckdb"},
            online_store={"type": "sqlite", "path": str(repo / "online.db")},
            entity_key_serialization_version=3,
            repo_path=str(repo),
        )
        entity_df = entity_rows.select(
            _ROW, *entities, pl.col(timestamp).alias(_EVENT_TIMESTAMP)
        ).to_pandas()
        with warnings.catch_warnings():
            # Feast, ibis and duckdb deprecate each other's APIs; none of it is ours, and
            # the suite turns warnings into errors.
            warnings.simplefilter("ignore")
            store = FeatureStore(config=config, repo_path=str(repo))
            store.apply([*entities.values(), *objects])
            table = store.get_historical_features(entity_df=entity_df, features=refs).to_arrow()
    result = pl.from_arrow(table)
    assert isinstance(result, pl.DataFrame)
    result = result.sort(_ROW)
    if result[_ROW].to_list() != list(range(labels.height)):
        raise RuntimeError(
            f"Feast returned {result.height} rows for {labels.height} label rows, not each "
            "label row once; the oracle cannot line them up."
        )
    features = [f for view in views for f in view.features]
    time = result[_EVENT_TIMESTAMP].cast(pl.Datetime("us", "UTC")).alias(timestamp)
    return labels.with_columns(time).hstack(result.select(features).get_columns())
