"""The batch engine: a view's rows, point-in-time joins and windowed aggregations on Polars.

Every path that computes a feature value goes through the two functions here:
``latest_values`` (a ``FeatureView`` as of each query time) and ``window_values`` (a
``WindowView``'s aggregations as of each query time). The training-set builder calls them
for label rows; materialization calls them for (entity, end) rows; so the online store
holds exactly what a training set would have seen at that time.

Time rule: every timestamp is normalized to UTC with microsecond precision. A naive
timestamp (no time zone) is taken to be UTC; an aware one is converted. A ``Date`` is
midnight UTC. Anything else (strings, integers) is an error: parse it in ``transform``.

Work is vectorized and sorted, never a Python loop over rows. Rows are processed by entity
key (``over``/``by``), so the work splits by entity across workers without changing any
value.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl

from loopline.errors import FeatureError
from loopline.features.definition import Aggregate, FeatureView, View, WindowView

if TYPE_CHECKING:
    from loopline.data.workspace import Workspace

__all__ = [
    "QUERY_TIME",
    "ROW",
    "align_keys",
    "by_entity",
    "given_rows",
    "latest_values",
    "to_utc",
    "view_columns",
    "view_rows",
    "window_values",
]

ROW = "__loopline_row"
"""The column that carries a query row's position, so results return in input order."""
QUERY_TIME = "__loopline_t"
"""The query time column of the frames the engine takes."""
EVENT_TIME = "__loopline_ts"
CREATED_TIME = "__loopline_created"
_IS_QUERY = "__loopline_query"
_PART = "__loopline_part"
_POSITION = "__loopline_position"
UTC = pl.Datetime("us", "UTC")


def _us(duration: timedelta) -> str:
    return f"{duration // timedelta(microseconds=1)}us"


def to_utc(frame: pl.DataFrame, column: str, *, owner: str) -> pl.DataFrame:
    """Return ``frame`` with ``column`` as a UTC microsecond timestamp (see the time rule)."""
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime):
        expr = pl.col(column)
        expr = (
            expr.dt.replace_time_zone("UTC")
            if dtype.time_zone is None
            else expr.dt.convert_time_zone("UTC")
        )
        return frame.with_columns(expr.cast(UTC))
    if dtype == pl.Date:
        return frame.with_columns(
            pl.col(column).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        )
    raise FeatureError(
        f"Column {column!r} of {owner} must hold timestamps (Datetime or Date); it holds "
        f"{dtype}. Parse it first, for example with "
        f"pl.col({column!r}).str.to_datetime() in the view's transform.",
        column=column,
    )


def view_rows(
    view: View,
    *,
    workspace: Workspace | None = None,
    data: Mapping[str, pl.DataFrame | pl.LazyFrame] | None = None,
) -> pl.DataFrame:
    """The view's source rows after ``where`` and ``transform``, with their columns checked.

    A dataset-named source (``"flights"``) is read from the workspace, unless ``data``
    holds a frame under that name: a pipeline step passes the rows it was given, so the
    definition (and its version) stays the one that materialization uses.

    The result holds the entity keys, the event timestamp (UTC), the ``created`` column
    of a ``FeatureView`` (UTC) when it has one, and the value columns, in source order.
    """
    owner = f"{type(view).__name__} {view.name!r}"
    source = view.source
    try:
        if (given := given_rows(view, data)) is not None:
            lazy = given.lazy()
        elif isinstance(source, str):
            from loopline.data.ingest import read_dataset

            loaded = pl.from_arrow(read_dataset(source, workspace=workspace))
            assert isinstance(loaded, pl.DataFrame)  # a Table always gives a frame
            lazy = loaded.lazy()
        else:
            frame = source() if callable(source) else source
            if not isinstance(frame, (pl.DataFrame, pl.LazyFrame)):
                raise FeatureError(
                    f"The source function of {owner} must return a Polars frame; it "
                    f"returned {type(frame).__name__}.",
                    view=view.name,
                )
            lazy = frame.lazy()
        if view.where is not None:
            lazy = lazy.filter(view.where)
        if view.transform:
            lazy = lazy.with_columns(*view.transform)
        names = lazy.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(
            f"The source of {owner} could not be computed: {exc}", view=view.name
        ) from exc
    created = view.created if isinstance(view, FeatureView) else None
    needed = view_columns(view)
    missing = [c for c in needed if c not in names]
    if missing:
        raise FeatureError(
            f"{owner} needs the column(s) {missing}, which its source lacks; it has "
            f"{names}. Add them in the source or compute them in transform=[...].",
            view=view.name,
        )
    try:
        frame = lazy.select(needed).collect()
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(
            f"The source of {owner} could not be computed: {exc}", view=view.name
        ) from exc
    frame = to_utc(frame, view.timestamp, owner=owner)
    if created:
        frame = to_utc(frame, created, owner=owner)
    return frame


def given_rows(
    view: View, data: Mapping[str, pl.DataFrame | pl.LazyFrame] | None
) -> pl.DataFrame | pl.LazyFrame | None:
    """The frame ``data`` holds for a view's dataset-named source, if it holds one."""
    if not isinstance(view.source, str) or not data:
        return None
    return data.get(view.source.partition("@")[0])


def view_columns(view: View) -> list[str]:
    """The source columns ``view_rows`` keeps: keys, timestamp, ``created``, values."""
    created = view.created if isinstance(view, FeatureView) else None
    values = view.features if isinstance(view, FeatureView) else view.columns
    return list(
        dict.fromkeys([*view.keys, view.timestamp, *([created] if created else []), *values])
    )


def align_keys(
    query: pl.DataFrame, rows: pl.DataFrame, keys: Sequence[str], *, owner: str, query_name: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give each key column one type on both sides, or say why the two cannot be joined.

    Integers of any width join as Int64 and text (String, Categorical, Enum) as String;
    any other pair of different types is an error, as joining ``1`` to ``"1"`` is almost
    always a mistake.
    """
    casts_q: list[pl.Expr] = []
    casts_r: list[pl.Expr] = []
    for key in keys:
        left, right = query.schema[key], rows.schema[key]
        if left == right and not isinstance(left, (pl.Categorical, pl.Enum)):
            continue
        if left.is_integer() and right.is_integer():
            target: pl.DataType = pl.Int64()
        elif _is_text(left) and _is_text(right):
            target = pl.String()
        elif left == pl.Null or right == pl.Null:
            target = right if left == pl.Null else left
        else:
            raise FeatureError(
                f"Key {key!r} is {left} in {query_name} but {right} in {owner}; the two "
                f"cannot be joined. Cast one side, for example with pl.col({key!r}).cast("
                f"pl.{right}) on {query_name}.",
                column=key,
            )
        casts_q.append(pl.col(key).cast(target))
        casts_r.append(pl.col(key).cast(target))
    if casts_q:
        query, rows = query.with_columns(casts_q), rows.with_columns(casts_r)
    return query, rows


def by_entity(
    query: pl.DataFrame,
    rows: pl.DataFrame,
    keys: Sequence[str],
    partitions: int,
    *,
    seed: int = 0,
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Split query rows and view rows into ``partitions`` parts by a hash of the keys.

    An entity's query rows and view rows land in the same part, and every value depends
    on one entity's rows only, so the parts can be computed apart (on other workers) and
    concatenated. Call after ``align_keys``: equal keys then hash equally on both sides.
    Parts without query rows are left out. Splitting a part again takes another
    ``seed``: with the same one, its keys would all fall in a few of the new parts.
    """
    if partitions == 1:
        yield query, rows
        return
    # One key column is hashed as it is: a one-field struct hashes ten times slower.
    key = pl.col(keys[0]) if len(keys) == 1 else pl.struct(list(keys))
    part = key.hash(seed=seed) % partitions
    queries = query.with_columns(part.alias(_PART)).partition_by(_PART, as_dict=True)
    views = rows.with_columns(part.alias(_PART)).partition_by(_PART, as_dict=True)
    empty_rows = rows.clear()
    for name, q in queries.items():
        yield q.drop(_PART), views[name].drop(_PART) if name in views else empty_rows


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def stable_sort(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """Sort by ``columns`` (nulls first), equal rows kept in their order.

    One stable single-column sort per column, the last column first (a least-significant
    -digit sort): several times faster in Polars than one stable multi-column sort, and
    with the same result.
    """
    for column in reversed(columns):
        frame = frame.sort(column, maintain_order=True, nulls_last=False)
    return frame


def latest_values(
    query: pl.DataFrame,
    view: FeatureView,
    rows: pl.DataFrame,
    *,
    ttl: timedelta | None,
    keep_times: bool = False,
) -> pl.DataFrame:
    """For each query row (``ROW``, keys, ``QUERY_TIME``), the view's row as of that time.

    The winner is the row with the latest event time ts <= t and ts >= t - ttl, ties on
    ts to the larger created time (a null created loses), exact ties to the last row in
    source order. Returns ``ROW`` and the features under their output names (and, with
    ``keep_times``, the winner's event and created times), in no particular order.
    """
    keys = list(view.keys)
    # Only the keys, times and row positions are sorted and joined; the winners' values
    # are gathered by position afterwards, so no copy of the value columns is ever made.
    times = [EVENT_TIME, *([CREATED_TIME] if view.created else [])]
    right = _without_nulls(
        rows.select(
            *keys,
            pl.col(view.timestamp).alias(EVENT_TIME),
            *([pl.col(view.created).alias(CREATED_TIME)] if view.created else []),
        ).with_row_index(_POSITION),
        [*keys, EVENT_TIME],
    )
    # A stable sort: among equal (ts, created) the last row in source order is last, and
    # the as-of join takes the last of equal keys.
    right = stable_sort(right, times)
    left = query.select(ROW, *keys, QUERY_TIME).sort(QUERY_TIME, maintain_order=True)
    joined = _as_of(left, right, keys, tolerance=ttl, exact=True)
    position = joined.get_column(_POSITION)
    values = rows.select(
        pl.col(c).gather(position).alias(n)
        for c, n in zip(view.features, view.feature_names, strict=True)
    )
    kept = joined.select(ROW, *(times if keep_times else []))
    return pl.concat([kept, values], how="horizontal")


def _without_nulls(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """``frame`` without the rows that have a null in ``columns`` (no copy when none has)."""
    if any(frame.get_column(c).null_count() for c in columns):
        return frame.drop_nulls(list(columns))
    return frame


def hop_floor(column: str, hop: timedelta | None) -> pl.Expr:
    """The time in ``column`` moved down to a multiple of ``hop`` since the Unix epoch."""
    if hop is None:
        return pl.col(column)
    step = hop // timedelta(microseconds=1)
    return (
        ((pl.col(column).dt.epoch("us") // step) * step)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )


def window_values(query: pl.DataFrame, view: WindowView, rows: pl.DataFrame) -> pl.DataFrame:
    """For each query row (``ROW``, keys, ``QUERY_TIME``), the view's aggregations.

    ``Aggregate(c, f, w)`` at time t (moved down to the hop) covers the entity's events
    with event time in [t - w, t). Returns ``ROW`` and the features, in no particular
    order. A query row with a null key or time gets nulls throughout; an entity with no
    events in the window gets 0 for count, distinct and sum and null for the rest.
    """
    keys = list(view.keys)
    points = query.select(ROW, *keys, hop_floor(QUERY_TIME, view.hop).alias(QUERY_TIME))
    targets = points.drop_nulls([*keys, QUERY_TIME]).select(*keys, QUERY_TIME).unique()
    events = (
        rows.select(*keys, pl.col(view.timestamp).alias(QUERY_TIME), *view.columns)
        .drop_nulls([*keys, QUERY_TIME])
        .with_columns(pl.lit(False).alias(_IS_QUERY))
    )
    rolling = [
        _rolling(agg).over(keys).alias(agg.name)
        for agg in view.aggregations
        if agg.function not in ("last", "distinct")
    ]
    result = targets
    timeline: pl.DataFrame | None = None
    if rolling or any(a.function == "distinct" for a in view.aggregations):
        probes = targets.with_columns(
            *[pl.lit(None, dtype=events.schema[c]).alias(c) for c in view.columns],
            pl.lit(True).alias(_IS_QUERY),
        ).select(events.columns)
        # Stable: events keep their source order among equal times (the probes, whose
        # windows are half-open, do not see events at their own time anyway).
        timeline = stable_sort(pl.concat([events, probes]), [*keys, QUERY_TIME])
        result = (
            timeline.with_columns(rolling)
            .filter(pl.col(_IS_QUERY))
            .select(*keys, QUERY_TIME, *[e.meta.output_name() for e in rolling])
        )
    by_time: pl.DataFrame | None = None
    for agg in view.aggregations:
        if agg.function == "last":
            if by_time is None:
                by_time = events.sort(QUERY_TIME, maintain_order=True)
            found = _last(targets, by_time, keys, agg.column, agg.window)
        elif agg.function == "distinct":
            assert timeline is not None  # built above whenever a 'distinct' is asked for
            found = _distinct(timeline, keys, agg.column, agg.window)
        else:
            continue
        result = result.join(
            found.rename({agg.column: agg.name}), on=[*keys, QUERY_TIME], how="left"
        )
    names = list(view.feature_names)
    return points.join(result, on=[*keys, QUERY_TIME], how="left").select(ROW, *names)


_ROLLING = {
    "sum": pl.Expr.rolling_sum_by,
    "mean": pl.Expr.rolling_mean_by,
    "min": pl.Expr.rolling_min_by,
    "max": pl.Expr.rolling_max_by,
    "std": pl.Expr.rolling_std_by,
}


def _rolling(agg: Aggregate) -> pl.Expr:
    """The aggregation over each row's [t - w, t), by event time (rows sorted by time)."""
    column = pl.col(agg.column)
    if agg.function == "count":
        column, function = column.is_not_null().cast(pl.UInt32), pl.Expr.rolling_sum_by
    else:
        function = _ROLLING[agg.function]
    return function(column, QUERY_TIME, _us(agg.window), closed="left")


def _last(
    targets: pl.DataFrame, by_time: pl.DataFrame, keys: list[str], column: str, window: timedelta
) -> pl.DataFrame:
    """The value of the latest event with time in [t - w, t) (a null value stays null).

    ``by_time`` holds the events sorted by time, equal times in source order, so that the
    as-of join's "last of equal keys" is the last in source order.
    """
    right = by_time.select(*keys, pl.col(QUERY_TIME).alias(EVENT_TIME), column)
    joined = _as_of(targets.sort(QUERY_TIME), right, keys, tolerance=window, exact=False)
    return joined.select(*keys, QUERY_TIME, column)


def _as_of(
    left: pl.DataFrame,
    right: pl.DataFrame,
    keys: list[str],
    *,
    tolerance: timedelta | None,
    exact: bool,
) -> pl.DataFrame:
    """Each left row (at ``QUERY_TIME``) with the right row (at ``EVENT_TIME``) of its keys
    that comes last at or before it (strictly before unless ``exact``), at most
    ``tolerance`` earlier; both sides sorted by their time."""
    with warnings.catch_warnings():
        # Sortedness inside the key groups follows from the global sort by time.
        warnings.simplefilter("ignore", UserWarning)
        return left.join_asof(
            right,
            left_on=QUERY_TIME,
            right_on=EVENT_TIME,
            by=keys,
            strategy="backward",
            tolerance=tolerance,
            allow_exact_matches=exact,
            check_sortedness=False,
        )


def _distinct(
    timeline: pl.DataFrame, keys: list[str], column: str, window: timedelta
) -> pl.DataFrame:
    """The number of distinct non-null values among the events in [t - w, t)."""
    counted = timeline.rolling(
        index_column=QUERY_TIME, period=_us(window), closed="left", group_by=keys
    ).agg(pl.col(column).drop_nulls().n_unique().cast(pl.UInt32))
    # Rows at one (key, time) share one window, hence one value.
    return counted.unique([*keys, QUERY_TIME])
