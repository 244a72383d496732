"""Feature definitions: entities, feature views, windowed aggregations, on-demand features.

A definition is declared once and executed by every path: the training-set builder,
materialization into the online store and, later, the streaming engine and the server.
Each definition has a *version*: the sha256 of its canonical description (name, keys,
timestamps, TTL, features, transforms, aggregations), so a changed definition is a new
version, and a training set records the versions it was built from.

Examples
--------
>>> from datetime import timedelta
>>> import polars as pl
>>> rider = Entity("rider", keys=["rider_id"])
>>> trips = pl.DataFrame({"rider_id": [1], "ts": [0], "fare": [12.5]})
>>> view = FeatureView("rider_fares", entity=rider, source=trips, timestamp="ts",
...                    ttl="7d", features=["fare"])
>>> view.ttl == timedelta(days=7), view.feature_names
(True, ('fare',))
>>> window = WindowView("rider_windows", entity=rider, source=trips, timestamp="ts",
...                     aggregations=[Aggregate("fare", "sum", "24h")])
>>> window.feature_names
('fare_sum_24h',)
>>> len(view.version)
64
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeAlias

import orjson
import polars as pl

from loopline.errors import FeatureError

__all__ = [
    "AGGREGATIONS",
    "Aggregate",
    "Entity",
    "FeatureView",
    "OnDemand",
    "Source",
    "View",
    "WindowView",
    "definitions_in",
    "definitions_version",
    "parse_duration",
]

AggregationName: TypeAlias = Literal[
    "count", "sum", "mean", "min", "max", "std", "last", "distinct"
]
AGGREGATIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "std", "last", "distinct")
"""The windowed aggregations, each over the entity's events with time in [t - w, t)."""

Source: TypeAlias = "pl.DataFrame | pl.LazyFrame | str | Callable[[], pl.DataFrame | pl.LazyFrame]"
"""Where a view's rows come from: a frame, a dataset (``"flights"``, ``"flights@3"``), or a
function returning a frame (called each time the view is computed)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,199}$")
_DURATION = re.compile(r"(\d+)(us|ms|s|m|h|d|w)")
_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_duration(value: str | timedelta, *, parameter: str, owner: str) -> timedelta:
    """A positive duration from a ``timedelta`` or a string such as ``"90s"``, ``"1h30m"``.

    Examples
    --------
    >>> parse_duration("1h30m", parameter="ttl", owner="FeatureView")
    datetime.timedelta(seconds=5400)
    >>> parse_duration("0s", parameter="window", owner="Aggregate")
    Traceback (most recent call last):
    ...
    loopline.errors.FeatureError: The 'window' parameter of Aggregate must be a positive ...
    """
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, str) and _DURATION.sub("", value.strip()) == "" and value.strip():
        duration = sum(
            (int(n) * _UNITS[unit] for n, unit in _DURATION.findall(value.strip())), timedelta()
        )
    else:
        duration = timedelta(0)
    if duration <= timedelta(0):
        raise FeatureError(
            f"The {parameter!r} parameter of {owner} must be a positive duration such as "
            f"'1h' or '7d'. Got {value!r}."
        )
    return duration


def _check_name(value: object, *, parameter: str, owner: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise FeatureError(
            f"The {parameter!r} parameter of {owner} must be a name of letters, digits, '_' "
            f"and '-', starting with a letter or '_'. Got {value!r}."
        )
    return value


def _check_columns(value: object, *, parameter: str, owner: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise FeatureError(
            f"The {parameter!r} parameter of {owner} must be a non-empty list of column "
            f"names. Got {value!r}."
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise FeatureError(
                f"The {parameter!r} parameter of {owner} must list column names as "
                f"strings. Got {name!r}."
            )
    if len(set(names)) != len(names):
        raise FeatureError(f"The {parameter!r} parameter of {owner} repeats a name: {names}.")
    return names


def _micros(duration: timedelta | None) -> int | None:
    return None if duration is None else duration // timedelta(microseconds=1)


def _digest(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(description, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Entity:
    """What features describe, and the columns that identify one of them.

    Parameters
    ----------
    name
        The entity's name (``"carrier"``).
    keys
        The join key columns, one or more (``["origin", "dest"]`` for a route).

    Examples
    --------
    >>> Entity("route", keys=["origin", "dest"]).keys
    ('origin', 'dest')
    """

    name: str
    keys: tuple[str, ...]

    def __init__(self, name: str, *, keys: Sequence[str]) -> None:
        object.__setattr__(self, "name", _check_name(name, parameter="name", owner="Entity"))
        object.__setattr__(self, "keys", _check_columns(keys, parameter="keys", owner="Entity"))


@dataclass(frozen=True)
class Aggregate:
    """One windowed aggregation of a column: ``Aggregate("dep_delay", "mean", "24h")``.

    The value at time t covers the entity's events whose timestamp lies in [t - window, t):
    events at t itself are not yet known. ``count`` and ``distinct`` count non-null values
    (0 for an empty window); ``sum`` is 0 for an empty window; ``mean``, ``min``, ``max``,
    ``std`` (sample, ddof 1) and ``last`` (the latest event's value, a null kept) are null.

    Parameters
    ----------
    column
        The column aggregated.
    function
        One of ``count``, ``sum``, ``mean``, ``min``, ``max``, ``std``, ``last``,
        ``distinct``.
    window
        The window length (``"1h"``, ``"7d"``, a ``timedelta``).
    name
        The feature's name; ``{column}_{function}_{window}`` by default.

    Examples
    --------
    >>> Aggregate("dep_delay", "mean", "24h").name
    'dep_delay_mean_24h'
    """

    column: str
    function: str
    window: timedelta
    name: str

    def __init__(
        self,
        column: str,
        function: AggregationName,
        window: str | timedelta,
        *,
        name: str | None = None,
    ) -> None:
        if not isinstance(column, str) or not column:
            raise FeatureError(
                f"The 'column' parameter of Aggregate must be a column name. Got {column!r}."
            )
        if function not in AGGREGATIONS:
            raise FeatureError(
                f"The 'function' parameter of Aggregate must be one of "
                f"{', '.join(AGGREGATIONS)}. Got {function!r}."
            )
        duration = parse_duration(window, parameter="window", owner="Aggregate")
        label = window if isinstance(window, str) else f"{_micros(duration)}us"
        default = f"{column}_{function}_{label}"
        object.__setattr__(self, "column", column)
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "window", duration)
        object.__setattr__(
            self,
            "name",
            _check_name(name if name is not None else default, parameter="name", owner="Aggregate"),
        )


@dataclass(frozen=True, eq=False, repr=False)
class _ViewBase:
    """What every view shares: a name, an entity, a source and its event timestamp."""

    name: str
    entity: Entity
    source: Any
    timestamp: str
    transform: tuple[pl.Expr, ...] = field(default=())
    where: pl.Expr | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.entity.keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, version={self.version[:12]!r})"

    def describe(self) -> dict[str, Any]:
        """The canonical description whose sha256 is the version."""
        source = self.source if isinstance(self.source, str) else type(self.source).__name__
        return {
            "kind": type(self).__name__,
            "name": self.name,
            "entity": {"name": self.entity.name, "keys": list(self.entity.keys)},
            "source": source,
            "timestamp": self.timestamp,
            "transform": [e.meta.serialize(format="json") for e in self.transform],
            "where": None if self.where is None else self.where.meta.serialize(format="json"),
        }

    @property
    def version(self) -> str:
        """The sha256 of the definition: a changed definition is a new version."""
        return _digest(self.describe())


def _common(
    owner: str,
    name: str,
    entity: Entity,
    timestamp: str,
    transform: Sequence[pl.Expr] | pl.Expr | None,
    where: pl.Expr | None,
) -> tuple[str, tuple[pl.Expr, ...]]:
    _check_name(name, parameter="name", owner=owner)
    if not isinstance(entity, Entity):
        raise FeatureError(
            f"The 'entity' parameter of {owner} {name!r} must be an Entity, such as "
            f"Entity('carrier', keys=['carrier']). Got {entity!r}."
        )
    if not isinstance(timestamp, str) or not timestamp:
        raise FeatureError(
            f"The 'timestamp' parameter of {owner} {name!r} must name the column holding "
            f"the time each value became known. Got {timestamp!r}."
        )
    exprs = (transform,) if isinstance(transform, pl.Expr) else tuple(transform or ())
    for expr in exprs:
        if not isinstance(expr, pl.Expr):
            raise FeatureError(
                f"The 'transform' parameter of {owner} {name!r} must be Polars expressions "
                f"(such as pl.col('a') * 2). Got {expr!r}."
            )
    if where is not None and not isinstance(where, pl.Expr):
        raise FeatureError(
            f"The 'where' parameter of {owner} {name!r} must be a Polars expression. Got {where!r}."
        )
    return name, exprs


def _check_source(owner: str, name: str, source: object) -> None:
    if not (isinstance(source, (pl.DataFrame, pl.LazyFrame, str)) or callable(source)):
        raise FeatureError(
            f"The 'source' parameter of {owner} {name!r} must be a Polars frame, a dataset "
            f"name such as 'flights' or 'flights@3', or a function returning a frame. "
            f"Got {type(source).__name__}."
        )


@dataclass(frozen=True, eq=False, repr=False)
class FeatureView(_ViewBase):
    """Features whose latest value, as of a time, is joined point in time.

    For a label row (entity, t), the row of this view with the latest timestamp ts <= t
    and ts >= t - ttl (both bounds inclusive; no ttl, no lower bound) gives every
    feature; ties on ts go to the larger ``created`` timestamp, exact ties to the last
    row in source order; a null in the winning row stays null; no row gives nulls.

    Parameters
    ----------
    name
        The view's name, unique among the views of a training set.
    entity
        The entity the rows describe; its keys must be columns of the source.
    source
        A Polars frame, a dataset name (``"flights"`` or ``"flights@3"``), or a function
        returning a frame.
    timestamp
        The column holding the time each row's values became known (event time).
        Naive timestamps are UTC; aware ones are converted to UTC.
    features
        The feature columns (after ``transform``).
    created
        An optional column holding when the row was written, the tie-break on equal
        event times.
    ttl
        How old a value may be and still be served (``"3h"``); None for no limit.
    transform
        Polars expressions evaluated on the source's rows first (``with_columns``).
    where
        A Polars expression keeping only the rows for which it is true.
    prefix
        Prepended to every feature's output name, to tell apart features of two views.

    Examples
    --------
    >>> import polars as pl
    >>> v = FeatureView("w", entity=Entity("origin", keys=["origin"]),
    ...                 source=pl.DataFrame({"origin": ["JFK"], "t": [0], "temp": [40.0]}),
    ...                 timestamp="t", features=["temp"], prefix="origin_")
    >>> v.feature_names, v.ttl is None
    (('origin_temp',), True)
    """

    features: tuple[str, ...] = ()
    created: str | None = None
    ttl: timedelta | None = None
    prefix: str = ""

    def __init__(
        self,
        name: str,
        *,
        entity: Entity,
        source: Source,
        timestamp: str,
        features: Sequence[str],
        created: str | None = None,
        ttl: str | timedelta | None = None,
        transform: Sequence[pl.Expr] | pl.Expr | None = None,
        where: pl.Expr | None = None,
        prefix: str = "",
    ) -> None:
        name, exprs = _common("FeatureView", name, entity, timestamp, transform, where)
        _check_source("FeatureView", name, source)
        columns = _check_columns(features, parameter="features", owner=f"FeatureView {name!r}")
        clash = set(columns) & {*entity.keys, timestamp, *([created] if created else [])}
        if clash:
            raise FeatureError(
                f"FeatureView {name!r} lists {sorted(clash)} as features, but they are its "
                f"keys or timestamps; list only value columns."
            )
        if created is not None and (not isinstance(created, str) or not created):
            raise FeatureError(
                f"The 'created' parameter of FeatureView {name!r} must be a column name or "
                f"None. Got {created!r}."
            )
        if not isinstance(prefix, str):
            raise FeatureError(
                f"The 'prefix' parameter of FeatureView {name!r} must be a string. Got {prefix!r}."
            )
        duration = (
            None if ttl is None else parse_duration(ttl, parameter="ttl", owner="FeatureView")
        )
        for key, value in (
            ("name", name),
            ("entity", entity),
            ("source", source),
            ("timestamp", timestamp),
            ("transform", exprs),
            ("where", where),
            ("features", columns),
            ("created", created),
            ("ttl", duration),
            ("prefix", prefix),
        ):
            object.__setattr__(self, key, value)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The output names of the features, in order (``prefix`` applied)."""
        return tuple(f"{self.prefix}{c}" for c in self.features)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "features": list(self.features),
            "created": self.created,
            "ttl_us": _micros(self.ttl),
            "prefix": self.prefix,
        }


@dataclass(frozen=True, eq=False, repr=False)
class WindowView(_ViewBase):
    """Windowed aggregations of an entity's events, as of each label time.

    The value of ``Aggregate(column, function, w)`` at time t covers the entity's events
    with timestamp in [t - w, t). With ``hop``, t is first moved down to a multiple of the
    hop (counted from the Unix epoch), identically in training, materialization and
    streaming: the value then changes only at hop boundaries.

    Parameters
    ----------
    name, entity, source, timestamp, transform, where
        As for ``FeatureView``; ``timestamp`` is when each event became known.
    aggregations
        The ``Aggregate`` features; several windows and functions at once.
    hop
        An optional step (``"5m"``) that coarsens the times at which windows are
        evaluated.

    Examples
    --------
    >>> import polars as pl
    >>> v = WindowView("c", entity=Entity("carrier", keys=["carrier"]),
    ...                source=pl.DataFrame({"carrier": ["AA"], "t": [0], "delay": [3]}),
    ...                timestamp="t", hop="5m",
    ...                aggregations=[Aggregate("delay", "mean", "1h"),
    ...                              Aggregate("delay", "count", "7d")])
    >>> v.feature_names, v.longest_window.days
    (('delay_mean_1h', 'delay_count_7d'), 7)
    """

    aggregations: tuple[Aggregate, ...] = ()
    hop: timedelta | None = None

    def __init__(
        self,
        name: str,
        *,
        entity: Entity,
        source: Source,
        timestamp: str,
        aggregations: Sequence[Aggregate],
        hop: str | timedelta | None = None,
        transform: Sequence[pl.Expr] | pl.Expr | None = None,
        where: pl.Expr | None = None,
    ) -> None:
        name, exprs = _common("WindowView", name, entity, timestamp, transform, where)
        _check_source("WindowView", name, source)
        aggs = tuple(aggregations) if isinstance(aggregations, Sequence) else ()
        if not aggs or not all(isinstance(a, Aggregate) for a in aggs):
            raise FeatureError(
                f"The 'aggregations' parameter of WindowView {name!r} must be a non-empty "
                f"list of Aggregate, such as [Aggregate('delay', 'mean', '24h')]. "
                f"Got {aggregations!r}."
            )
        names = [a.name for a in aggs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FeatureError(
                f"WindowView {name!r} names two aggregations {repeated}; give one a name= "
                f"of its own."
            )
        clash = {a.column for a in aggs} & {*entity.keys, timestamp}
        if clash:
            raise FeatureError(
                f"WindowView {name!r} aggregates {sorted(clash)}, which are its keys or "
                f"timestamp; aggregate value columns."
            )
        duration = None if hop is None else parse_duration(hop, parameter="hop", owner="WindowView")
        for key, value in (
            ("name", name),
            ("entity", entity),
            ("source", source),
            ("timestamp", timestamp),
            ("transform", exprs),
            ("where", where),
            ("aggregations", aggs),
            ("hop", duration),
        ):
            object.__setattr__(self, key, value)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The aggregations' names, in order."""
        return tuple(a.name for a in self.aggregations)

    @property
    def columns(self) -> tuple[str, ...]:
        """The source columns the aggregations read, each once, in order."""
        return tuple(dict.fromkeys(a.column for a in self.aggregations))

    @property
    def longest_window(self) -> timedelta:
        return max(a.window for a in self.aggregations)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "aggregations": [
                {
                    "column": a.column,
                    "function": a.function,
                    "window_us": _micros(a.window),
                    "name": a.name,
                }
                for a in self.aggregations
            ],
            "hop_us": _micros(self.hop),
        }


View: TypeAlias = FeatureView | WindowView
"""A view whose values come from a source: latest values or windowed aggregations."""


@dataclass(frozen=True, eq=False)
class OnDemand:
    """Features computed from request data at prediction time, the same way in training.

    Each feature is a Polars expression over the request's columns (those of the label
    table in training, the request body in serving) and the features of the views
    joined before it. The training-set builder and the server evaluate the very same
    expressions, so the two cannot disagree.

    Parameters
    ----------
    name
        The group's name.
    features
        Output name → Polars expression.
    inputs
        The columns the expressions read; checked before they run, so a missing one is
        a clear error rather than a Polars one.

    Examples
    --------
    >>> import polars as pl
    >>> hour = OnDemand("clock", features={"sched_hour": pl.col("sched_dep_time") // 100},
    ...                 inputs=["sched_dep_time"])
    >>> hour.apply(pl.DataFrame({"sched_dep_time": [1745, 905]}))["sched_hour"].to_list()
    [17, 9]
    """

    name: str
    features: Mapping[str, pl.Expr]
    inputs: tuple[str, ...]

    def __init__(
        self, name: str, *, features: Mapping[str, pl.Expr], inputs: Sequence[str]
    ) -> None:
        _check_name(name, parameter="name", owner="OnDemand")
        if not isinstance(features, Mapping) or not features:
            raise FeatureError(
                f"The 'features' parameter of OnDemand {name!r} must map output names to "
                f"Polars expressions. Got {features!r}."
            )
        for out, expr in features.items():
            _check_name(out, parameter="features", owner=f"OnDemand {name!r}")
            if not isinstance(expr, pl.Expr):
                raise FeatureError(
                    f"OnDemand {name!r} feature {out!r} must be a Polars expression. Got {expr!r}."
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "features", dict(features))
        object.__setattr__(
            self, "inputs", _check_columns(inputs, parameter="inputs", owner=f"OnDemand {name!r}")
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "OnDemand",
            "name": self.name,
            "inputs": list(self.inputs),
            "features": {k: e.meta.serialize(format="json") for k, e in self.features.items()},
        }

    @property
    def version(self) -> str:
        return _digest(self.describe())

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Return ``frame`` with the on-demand features added (or replaced)."""
        missing = [c for c in self.inputs if c not in frame.columns]
        if missing:
            raise FeatureError(
                f"OnDemand {self.name!r} needs the column(s) {missing}, which the request "
                f"data lacks; it has {frame.columns}.",
                view=self.name,
            )
        try:
            return frame.with_columns(**self.features)
        except pl.exceptions.PolarsError as exc:
            raise FeatureError(
                f"OnDemand {self.name!r} could not be computed: {exc}", view=self.name
            ) from exc


def definitions_version(views: Sequence[FeatureView | WindowView | OnDemand]) -> str:
    """One version for a list of definitions: it changes when any of them changes.

    A step that builds a training set from module-level definitions declares it as its
    ``version`` (``@step(version=definitions_version(VIEWS))``), so that editing a
    definition re-runs the step instead of answering from the cache.

    Examples
    --------
    >>> import polars as pl
    >>> hour = OnDemand("hour", features={"h": pl.col("t") // 100}, inputs=["t"])
    >>> len(definitions_version([hour])), definitions_version([]) == definitions_version([])
    (16, True)
    """
    return _digest({"views": [[v.name, v.version] for v in views]})[:16]


def definitions_in(namespace: Mapping[str, Any], *, source: str) -> list[View | OnDemand]:
    """The definitions a module declares: its ``VIEWS`` list, or every one at module level.

    Examples
    --------
    >>> import polars as pl
    >>> hour = OnDemand("hour", features={"h": pl.col("t") // 100}, inputs=["t"])
    >>> [d.name for d in definitions_in({"hour": hour, "x": 1}, source="defs.py")]
    ['hour']
    """
    kinds = (FeatureView, WindowView, OnDemand)
    declared = namespace.get("VIEWS")
    if isinstance(declared, (list, tuple)):
        found = [v for v in declared if isinstance(v, kinds)]
    else:
        found = list({id(v): v for v in namespace.values() if isinstance(v, kinds)}.values())
    if not found:
        raise FeatureError(
            f"{source} defines no FeatureView, WindowView or OnDemand; define them at module "
            f"level or list them in VIEWS = [...].",
            path=source,
        )
    return found
