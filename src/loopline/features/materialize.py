"""Materialization: offline feature values into the online store, and reading them back.

``materialize(views, end=...)`` writes, for every entity, the values a training set would
give at time ``end``: a ``FeatureView``'s latest row at or before ``end`` (its own event
time is kept, so the TTL is enforced when the value is read), and a ``WindowView``'s
aggregations as of ``end`` (moved down to the hop), stamped with that time. Both are
computed by the batch engine that builds training sets, so served features equal
training features by construction; a property test checks it for every aggregation.

With ``start``, only the entities whose values can have changed since ``start`` are
written: those with a row in [start, end] (a ``FeatureView``) or an event in
[start - longest window, end) (a ``WindowView``). Running materialization over
contiguous intervals therefore keeps the store exact. Writes are idempotent upserts where
the newest event wins, so running an interval twice changes nothing.

``online_features(views, entities)`` reads the same values back for serving (and the
on-demand features computed from the request), with TTL enforced on read;
``online_feature_columns(views, rows)`` gives the same as plain columns, without building
a Polars frame for a request of a few plain rows (the server's one-row request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import polars as pl

from loopline.errors import FeatureError
from loopline.features.definition import FeatureView, OnDemand, View
from loopline.features.engine import (
    CREATED_TIME,
    EVENT_TIME,
    QUERY_TIME,
    ROW,
    latest_values,
    view_rows,
    window_values,
)
from loopline.features.training import check_keys, check_views, record_views
from loopline.store.online import OnlineStore, open_online_store

if TYPE_CHECKING:
    from loopline.data.workspace import Workspace

__all__ = [
    "Freshness",
    "Materialized",
    "freshness",
    "materialize",
    "online_feature_columns",
    "online_features",
    "online_store",
]

_ONE_US = timedelta(microseconds=1)
_FEW_ROWS = 64
"""Requests of up to this many rows are answered in plain columns by
``online_feature_columns``: well within the 100 rows Polars infers a frame's types from."""
_INT64 = range(-(2**63), 2**63)
_POLARS_UTC = ZoneInfo("UTC")
"""The time zone Polars gives back a UTC datetime with."""


@dataclass(frozen=True)
class Materialized:
    """What one view's materialization wrote."""

    view: str
    version: str
    rows: int
    """Entities written."""
    start: datetime | None
    end: datetime
    newest_event: datetime | None
    """The newest event time among the values written."""


@dataclass(frozen=True)
class Freshness:
    """How current a view's online values are."""

    view: str
    version: str | None
    newest_event: datetime | None
    """The newest event time written by any materialization of the view."""
    materialized_at: datetime | None
    age: timedelta | None
    """``now`` minus ``newest_event``: how old the freshest online value is."""


def _utc(value: datetime, *, parameter: str) -> datetime:
    if not isinstance(value, datetime):
        raise FeatureError(
            f"The {parameter!r} parameter must be a datetime, such as "
            f"datetime(2013, 12, 31, tzinfo=UTC). Got {value!r}."
        )
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def online_store(workspace: Workspace | None = None, url: str | None = None) -> OnlineStore:
    """The configured online store (``online_url``; SQLite under ``home`` by default)."""
    if url is None:
        from loopline.config import Settings

        settings = Settings.load()
        url = settings.online_url or f"sqlite:///{settings.home / 'online.db'}"
    return open_online_store(url)


def _entities(
    rows: pl.DataFrame,
    view: View,
    lower: datetime | None,
    upper: datetime,
    *,
    upper_inclusive: bool,
) -> pl.DataFrame:
    """The distinct entities with a row whose event time lies between ``lower`` and ``upper``."""
    ts = pl.col(view.timestamp)
    keep = ts <= upper if upper_inclusive else ts < upper
    if lower is not None:
        keep = keep & (ts >= lower)
    return rows.filter(keep).select(view.keys).drop_nulls().unique(maintain_order=True)


def _values_at(
    view: View, rows: pl.DataFrame, entities: pl.DataFrame, at: datetime
) -> pl.DataFrame:
    """Each entity's values at ``at``, with ``EVENT_TIME`` (and ``CREATED_TIME``) to write."""
    query = entities.with_row_index(ROW).with_columns(
        pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(QUERY_TIME)
    )
    if isinstance(view, FeatureView):
        # No TTL here: the newest value is stored with its own time; reads enforce the TTL.
        values = latest_values(query, view, rows, ttl=None, keep_times=True)
    else:
        values = window_values(query, view, rows).with_columns(
            pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(EVENT_TIME)
        )
    return query.select(ROW, *view.keys).join(values, on=ROW).sort(ROW).drop(ROW)


def materialize(
    views: Sequence[View | OnDemand],
    *,
    end: datetime,
    start: datetime | None = None,
    store: OnlineStore | None = None,
    data: Mapping[str, pl.DataFrame | pl.LazyFrame] | None = None,
    workspace: Workspace | None = None,
) -> list[Materialized]:
    """Write the views' values as of ``end`` into the online store.

    Parameters
    ----------
    views
        The views to materialize (``OnDemand`` groups are skipped: they are computed at
        request time).
    end
        The time the values are computed for: a ``FeatureView`` writes each entity's
        latest row at or before ``end``; a ``WindowView`` its aggregations over
        [end - w, end) (``end`` moved down to the hop).
    start
        Only write entities whose values can have changed since ``start``; every
        entity when None.
    store
        The online store; the configured one by default.
    data
        Frames to use for dataset-named sources, by dataset name (as in
        ``training_set``).
    workspace
        Where dataset sources are read and materializations recorded.
    """
    from loopline.data.workspace import current_workspace

    end = _utc(end, parameter="end")
    start = None if start is None else _utc(start, parameter="start")
    if start is not None and start > end:
        raise FeatureError(
            f"The 'start' of a materialization ({start.isoformat()}) is after its 'end' "
            f"({end.isoformat()}); give an interval with start <= end."
        )
    check_views(views)
    ws = workspace or current_workspace()
    target = store if store is not None else online_store(ws)
    results = []
    try:
        record_views(views, ws)
        for view in views:
            if isinstance(view, OnDemand):
                continue
            results.append(_materialize_view(view, start, end, target, ws, data))
    finally:
        if store is None:
            target.close()
    return results


def _materialize_view(
    view: View,
    start: datetime | None,
    end: datetime,
    store: OnlineStore,
    ws: Workspace,
    data: Mapping[str, pl.DataFrame | pl.LazyFrame] | None,
) -> Materialized:
    rows = view_rows(view, workspace=ws, data=data)
    if isinstance(view, FeatureView):
        at = end
        entities = _entities(rows, view, start, end, upper_inclusive=True)
    else:
        at = _hop(end, view.hop)
        lower = None if start is None else start - view.longest_window
        entities = _entities(rows, view, lower, at, upper_inclusive=False)
    values = _values_at(view, rows, entities, at)
    if isinstance(view, FeatureView):
        values = values.filter(pl.col(EVENT_TIME).is_not_null())
    created = CREATED_TIME if isinstance(view, FeatureView) and view.created else None
    table = values.select(
        *view.keys, EVENT_TIME, *([created] if created else []), *view.feature_names
    ).to_arrow()
    if table.num_rows:
        store.write(view.name, table, keys=view.keys, timestamp=EVENT_TIME, created=created)
    newest = values.get_column(EVENT_TIME).max() if values.height else None
    assert newest is None or isinstance(newest, datetime)
    ws.metadata.add_materialization(
        view=view.name,
        version=view.version,
        online_url=store.url,
        start=None if start is None else start.timestamp(),
        end=end.timestamp(),
        rows=values.height,
        newest_event=None if newest is None else newest.timestamp(),
        run_id=ws.run_id,
    )
    return Materialized(view.name, view.version, values.height, start, end, newest)


def _hop(at: datetime, hop: timedelta | None) -> datetime:
    """``at`` moved down to a multiple of ``hop`` since the epoch (as the engine does)."""
    if hop is None:
        return at
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((at - epoch) // hop) * hop


def _ttl(view: View) -> timedelta | None:
    """How long a stored value may be served: the TTL, or a window value until the next hop."""
    if isinstance(view, FeatureView):
        return view.ttl
    return None if view.hop is None else view.hop - _ONE_US


def _empty_values(view: View) -> dict[str, Any]:
    """What an entity with no stored row is served: a window's counts and sums are 0."""
    if isinstance(view, FeatureView):
        return {}
    return {a.name: 0 for a in view.aggregations if a.function in ("count", "distinct", "sum")}


def online_features(
    views: Sequence[View | OnDemand],
    entities: pl.DataFrame | Sequence[Mapping[str, Any]],
    *,
    at: datetime | None = None,
    store: OnlineStore | None = None,
) -> pl.DataFrame:
    """Read the views' features for ``entities`` from the online store, as served.

    Parameters
    ----------
    views
        The views to read, in order; ``OnDemand`` groups are computed from the request
        columns and the features read before them, exactly as in training.
    entities
        One row per request: the entity keys of every view and the on-demand inputs.
    at
        The time of the request (now by default): values older than the TTL, or newer
        than ``at``, are null.
    store
        The online store; the configured one by default.

    Returns
    -------
    polars.DataFrame
        The request columns, then the features, in request order.
    """
    frame = entities if isinstance(entities, pl.DataFrame) else pl.DataFrame(list(entities))

    def join(computed: pl.DataFrame | None, read: dict[str, list[Any]]) -> pl.DataFrame:
        return _joined(frame if computed is None else computed, read)

    computed, read = _serve(
        views,
        frame.columns,
        lambda name: frame.get_column(name).to_list(),
        join,
        at=at,
        store=store,
    )
    return join(computed, read)


def online_feature_columns(
    views: Sequence[View | OnDemand],
    rows: Sequence[Mapping[str, Any]],
    *,
    at: datetime | None = None,
    store: OnlineStore | None = None,
) -> dict[str, list[Any]]:
    """``online_features(views, rows, ...).to_dict(as_series=False)``, fast for a few rows.

    The same columns, values, Python types and errors; but a request of a few rows of
    plain values (None, bool, int, float, str) is answered without a Polars frame, which
    costs more than the store's reads: this is the server's one-row request. A frame is
    built only for an ``OnDemand`` group (its features are Polars expressions), and for
    whatever Polars would convert (mixed types, nested values, many rows).

    Parameters
    ----------
    views, at, store
        As for ``online_features``.
    rows
        One dict per request row: the entity keys of every view and the on-demand inputs.

    Returns
    -------
    dict
        Column name → values: the request columns, then the features, in request order.

    Examples
    --------
    >>> import polars as pl
    >>> from loopline.features import Entity, FeatureView
    >>> temps = pl.DataFrame({"origin": ["JFK"], "at": [datetime(2013, 1, 1, 5, tzinfo=UTC)],
    ...                       "temp": [39.0]})
    >>> view = FeatureView("weather", entity=Entity("origin", keys=["origin"]), source=temps,
    ...                    timestamp="at", ttl="3h", features=["temp"])
    >>> store = open_online_store("sqlite://")
    >>> store.write("weather", temps.to_arrow(), keys=["origin"], timestamp="at")
    1
    >>> online_feature_columns([view], [{"origin": "JFK"}, {"origin": "LGA"}],
    ...                        at=datetime(2013, 1, 1, 6), store=store)
    {'origin': ['JFK', 'LGA'], 'temp': [39.0, None]}
    >>> store.close()
    """
    rows = list(rows)
    request = _request_columns(rows)
    if request is None:
        return online_features(views, rows, at=at, store=store).to_dict(as_series=False)

    def join(computed: pl.DataFrame | None, read: dict[str, list[Any]]) -> pl.DataFrame:
        features = _plain_columns(read)
        if features is None:
            return _joined(pl.DataFrame(rows) if computed is None else computed, read)
        if computed is None:
            return _frame(request | features)
        return computed.hstack(_frame(features).get_columns()) if features else computed

    computed, read = _serve(views, list(request), request.__getitem__, join, at=at, store=store)
    features = _plain_columns(read)
    if features is None:
        return join(computed, read).to_dict(as_series=False)
    return (request if computed is None else computed.to_dict(as_series=False)) | features


def _serve(
    views: Sequence[View | OnDemand],
    columns: Sequence[str],
    column: Callable[[str], list[Any]],
    join: Callable[[pl.DataFrame | None, dict[str, list[Any]]], pl.DataFrame],
    *,
    at: datetime | None,
    store: OnlineStore | None,
) -> tuple[pl.DataFrame | None, dict[str, list[Any]]]:
    """Check a request and read its features: the work of ``online_features``.

    The request has the columns ``columns``, and ``column(name)`` gives one's values.
    ``join(computed, read)`` makes the frame an ``OnDemand`` group is applied to: the
    frame the previous group computed (None before the first) with the features read
    since, by name. Returns the frame the last group computed (None without one) and the
    features read after it.
    """
    check_views(views, reserved=columns)
    check_keys(columns, views, what="The request")
    when = _utc(at, parameter="at") if at is not None else datetime.now(UTC)
    target = store if store is not None else online_store()
    computed: pl.DataFrame | None = None
    # Features read but not yet in a frame: joined in one go before an on-demand group
    # needs them, and by the caller at the end (a frame per view costs more than a read).
    read: dict[str, list[Any]] = {}
    try:
        for view in views:
            if isinstance(view, OnDemand):
                computed = view.apply(join(computed, read))
                read = {}
                continue
            keys = list(zip(*(column(k) for k in view.keys), strict=True))
            empty = _empty_values(view)
            found = target.read(
                view.name, keys, features=view.feature_names, at=when, ttl=_ttl(view)
            )
            for name in view.feature_names:
                read[name] = [empty.get(name) if row is None else row[name] for row in found]
    finally:
        if store is None:
            target.close()
    return computed, read


def _joined(frame: pl.DataFrame, columns: Mapping[str, list[Any]]) -> pl.DataFrame:
    if not columns:
        return frame
    return frame.hstack(pl.DataFrame(dict(columns), strict=False).get_columns())


def _frame(columns: Mapping[str, list[Any]]) -> pl.DataFrame:
    """A frame of plain columns (see ``_as_polars``), of one or more rows.

    Built from a list of dicts, which takes Polars a fraction of the time a dict of
    lists takes for a few rows, and gives plain values the same types.
    """
    names = list(columns)
    return pl.DataFrame(
        [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    )


def _request_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]] | None:
    """The rows as the columns ``pl.DataFrame(rows)`` would hold, or None if that takes Polars.

    Polars names a column for every key in the order the keys first appear, a row
    without one holding null there, and infers the types from the first 100 rows only:
    beyond ``_FEW_ROWS`` rows the frame is built.
    """
    if not rows or len(rows) > _FEW_ROWS or any(type(row) is not dict for row in rows):
        return None
    names = dict.fromkeys(name for row in rows for name in row)
    if any(type(name) is not str for name in names):
        return None
    return _plain_columns({name: [row.get(name) for row in rows] for name in names})


def _plain_columns(columns: Mapping[str, list[Any]]) -> dict[str, list[Any]] | None:
    """The columns as a Polars frame of them gives them back, or None if that takes Polars."""
    plain = {}
    for name, values in columns.items():
        as_polars = _as_polars(values)
        if as_polars is None:
            return None
        plain[name] = as_polars
    return plain


def _as_polars(values: list[Any]) -> list[Any] | None:
    """``values`` as a Polars column of them gives them back, or None if that takes Polars.

    A column has one type: a column of ints and floats is a float column, and a UTC
    datetime comes back with the ``ZoneInfo`` time zone. Other mixtures (where Polars
    casts to string or int), nested values and ints beyond 64 bits are left to Polars.
    """
    kinds = {type(value) for value in values}
    kinds.discard(type(None))
    if len(kinds) == 1:
        (kind,) = kinds
        if kind in (bool, float, str, date):
            return values
        if kind is int:
            return values if all(v is None or v in _INT64 for v in values) else None
        if kind is datetime and all(v is None or v.tzinfo is UTC for v in values):
            return [None if v is None else v.replace(tzinfo=_POLARS_UTC, fold=0) for v in values]
        return None
    if not kinds:
        return values
    if kinds == {int, float} and all(type(v) is not int or v in _INT64 for v in values):
        return [None if v is None else float(v) for v in values]
    return None


def freshness(
    views: Sequence[View | OnDemand],
    *,
    workspace: Workspace | None = None,
    now: datetime | None = None,
) -> list[Freshness]:
    """The age of the newest online value of each view, from the materialization records."""
    from loopline.data.workspace import current_workspace

    ws = workspace or current_workspace()
    when = datetime.now(UTC) if now is None else _utc(now, parameter="now")
    report = []
    for view in views:
        if isinstance(view, OnDemand):
            continue
        records = ws.metadata.materializations(view.name, limit=1000)
        newest = max((r.newest_event for r in records if r.newest_event is not None), default=None)
        newest_at = None if newest is None else datetime.fromtimestamp(newest, UTC)
        report.append(
            Freshness(
                view=view.name,
                version=records[0].version if records else None,
                newest_event=newest_at,
                materialized_at=(
                    datetime.fromtimestamp(records[0].created_at, UTC) if records else None
                ),
                age=None if newest_at is None else when - newest_at,
            )
        )
    return report
