"""loopline's point-in-time join against Feast's ``get_historical_features``, row for row.

The oracle is Feast 0.67 on its DuckDB offline store (``feast_oracle``, whose docstring
lists where Feast's behaviour differs). Hypothesis builds small random feature tables on
a coarse time grid, so that equal timestamps, TTL edges and created-timestamp ties are
common, and label rows that sit exactly on the edges (ts, ts + ttl, one microsecond
either side). The hand-written cases pin each rule of DESIGN.md's "Key semantics" to an
explicit expected value, so that loopline and Feast cannot agree on a wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from feast_oracle import OracleView, feast_historical_features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from loopline.features import Entity, FeatureView, training_set

BASE = datetime(2024, 1, 1)
US = timedelta(microseconds=1)
DRIVERS = [0, 1, 2, 3]  # labels also ask for 4 and 5, which no feature row has
ZONES = ["a", "b"]
RIDERS = ["r0", "r1", "r2"]


def loopline_view(view: OracleView) -> FeatureView:
    """The loopline definition of the view the oracle gives Feast."""
    return FeatureView(
        view.name,
        entity=Entity("_".join(view.keys), keys=list(view.keys)),
        source=view.source,
        timestamp=view.timestamp,
        created=view.created,
        ttl=view.ttl,
        features=list(view.features),
    )


def both(
    labels: pl.DataFrame, views: Sequence[OracleView], timestamp: str = "t"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(loopline's training set, Feast's historical features) for the same inputs."""
    ours = training_set(labels, [loopline_view(v) for v in views], timestamp=timestamp).frame
    return ours, feast_historical_features(labels, views, timestamp=timestamp)


def at(minutes: int) -> datetime:
    """``minutes`` after BASE, UTC."""
    return (BASE + timedelta(minutes=minutes)).replace(tzinfo=UTC)


# -- hand-written cases: each rule, with the value it must give -------------------------------


def stats_view(rows: dict[str, list[Any]], *, ttl: timedelta | None, created: bool) -> OracleView:
    return OracleView(
        "stats",
        keys=("driver_id",),
        source=pl.DataFrame(rows),
        timestamp="ts",
        created="created" if created else None,
        ttl=ttl,
        features={"rate": "float64"},
    )


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        pytest.param(timedelta(0), 1.0, id="at-ts"),
        pytest.param(-US, None, id="just-before-ts"),
        pytest.param(timedelta(minutes=5), 1.0, id="at-ts-plus-ttl"),
        pytest.param(timedelta(minutes=5) + US, None, id="just-after-ts-plus-ttl"),
    ],
)
def test_ttl_bounds_are_inclusive(offset: timedelta, expected: float | None) -> None:
    view = stats_view(
        {"driver_id": [1], "ts": [at(10)], "rate": [1.0]}, ttl=timedelta(minutes=5), created=False
    )
    labels = pl.DataFrame({"driver_id": [1], "t": [at(10) + offset]})
    ours, feast = both(labels, [view])
    assert ours["rate"].to_list() == [expected]
    assert_frame_equal(ours, feast)


def test_ties_on_ts_go_to_the_larger_created_and_a_null_created_loses() -> None:
    view = stats_view(
        {
            "driver_id": [1, 1, 1, 2, 2],
            "ts": [at(5), at(5), at(5), at(5), at(5)],
            "created": [at(7), at(9), at(8), None, at(1)],
            "rate": [7.0, 9.0, 8.0, 0.0, 1.0],
        },
        ttl=None,
        created=True,
    )
    labels = pl.DataFrame({"driver_id": [1, 2], "t": [at(6), at(6)]})
    ours, feast = both(labels, [view])
    assert ours["rate"].to_list() == [9.0, 1.0]
    assert_frame_equal(ours, feast)


def test_the_latest_row_is_taken_whole_a_null_stays_null() -> None:
    view = stats_view(
        {"driver_id": [1, 1], "ts": [at(1), at(2)], "rate": [1.0, None]}, ttl=None, created=False
    )
    labels = pl.DataFrame({"driver_id": [1, 1], "t": [at(1), at(3)]})
    ours, feast = both(labels, [view])
    assert ours["rate"].to_list() == [1.0, None]
    assert_frame_equal(ours, feast)


def test_equal_label_rows_are_all_kept_in_label_order() -> None:
    view = stats_view(
        {"driver_id": [1, 2], "ts": [at(1), at(1)], "rate": [1.0, 2.0]}, ttl=None, created=False
    )
    labels = pl.DataFrame(
        {
            "driver_id": [2, 1, 2, 1, 9],
            "t": [at(3), at(3), at(3), at(0), at(3)],
            "label": [0, 1, 2, 3, 4],
        }
    )
    ours, feast = both(labels, [view])
    assert ours["label"].to_list() == [0, 1, 2, 3, 4]
    assert ours["rate"].to_list() == [2.0, 1.0, 2.0, None, None]
    assert_frame_equal(ours, feast)


def test_exact_ties_go_to_the_last_row_in_source_order_where_feast_is_arbitrary() -> None:
    view = stats_view(
        {
            "driver_id": [1, 1, 1],
            "ts": [at(1)] * 3,
            "created": [at(2)] * 3,
            "rate": [1.0, 2.0, 3.0],
        },
        ttl=None,
        created=True,
    )
    labels = pl.DataFrame({"driver_id": [1], "t": [at(5)]})
    ours, feast = both(labels, [view])
    assert ours["rate"].to_list() == [3.0]
    assert feast["rate"].to_list()[0] in {1.0, 2.0, 3.0}


# -- the property: random tables, every rule at once ------------------------------------------

ZONE_NAMES = st.sampled_from([None, "UTC", "Asia/Tokyo"])
TTLS = st.one_of(st.none(), st.integers(1, 20).map(lambda m: timedelta(minutes=m)))
MINUTES = st.integers(0, 40)


def _times(minutes: list[int | None], zone: str | None) -> pl.Series:
    values = [None if m is None else BASE + timedelta(minutes=m) for m in minutes]
    series = pl.Series(values, dtype=pl.Datetime("us"))
    return series if zone is None else series.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)


def _utc(times: pl.Series) -> pl.Series:
    zone = times.dtype.time_zone if isinstance(times.dtype, pl.Datetime) else None
    return times.dt.convert_time_zone("UTC") if zone else times.dt.replace_time_zone("UTC")


@st.composite
def stats_rows(draw: st.DrawFn, zone: str | None) -> pl.DataFrame:
    """Rows keyed by driver with a created column; no two rows tie on (key, ts, created)."""
    n = draw(st.integers(6, 24))
    drivers = draw(st.lists(st.sampled_from([*DRIVERS, None]), min_size=n, max_size=n))
    # A coarser grid than the other views, so that many rows tie on (key, ts).
    coarse = st.integers(0, 8).map(lambda m: 5 * m)
    minutes = draw(st.lists(st.one_of(coarse, st.none()), min_size=n, max_size=n))
    # Distinct created times rule out exact ties; at most one null per (key, ts).
    created: list[int | None] = draw(st.permutations(list(range(n))))
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seen: set[tuple[int | None, int | None]] = set()
    for i in range(n):
        if nulls[i] and (drivers[i], minutes[i]) not in seen:
            seen.add((drivers[i], minutes[i]))
            created[i] = None
    floats = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))
    return pl.DataFrame(
        {
            "driver_id": pl.Series(drivers, dtype=pl.Int64),
            "ts": _times(minutes, zone),
            "created": _times(created, zone),
            "conv_rate": pl.Series(
                draw(st.lists(floats, min_size=n, max_size=n)), dtype=pl.Float64
            ),
            "trips": pl.Series(
                draw(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=n, max_size=n)),
                dtype=pl.Int64,
            ),
            "grade": pl.Series(
                draw(st.lists(st.sampled_from([None, "A", "B", ""]), min_size=n, max_size=n)),
                dtype=pl.String,
            ),
            "active": pl.Series(
                draw(st.lists(st.sampled_from([None, True, False]), min_size=n, max_size=n)),
                dtype=pl.Boolean,
            ),
        }
    )


@st.composite
def unique_rows(
    draw: st.DrawFn, keys: dict[str, list[Any]], zone: str | None
) -> dict[str, list[Any]]:
    """Rows without a created column: (keys, ts) unique, since Feast breaks no such tie."""
    key_values = st.tuples(*[st.sampled_from(v) for v in keys.values()], MINUTES)
    rows = draw(st.lists(key_values, min_size=2, max_size=16, unique=True))
    columns: dict[str, list[Any]] = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    columns["ts"] = _times([r[-1] for r in rows], zone).to_list()
    return columns


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[pl.DataFrame, list[OracleView]]:
    feature_zone = draw(st.sampled_from([None, "UTC", "America/New_York"]))
    stats_frame = draw(stats_rows(feature_zone))
    pair = draw(unique_rows({"driver_id": DRIVERS, "zone": ZONES}, feature_zone))
    rider = draw(unique_rows({"rider_id": RIDERS}, feature_zone))
    n_pair, n_rider = len(pair["ts"]), len(rider["ts"])
    floats = st.floats(0, 100, allow_nan=False, allow_infinity=False)
    pair["surge"] = draw(st.lists(st.one_of(st.none(), floats), min_size=n_pair, max_size=n_pair))
    rider["rating"] = draw(st.lists(floats, min_size=n_rider, max_size=n_rider))
    rider["visits"] = draw(st.lists(st.integers(0, 9), min_size=n_rider, max_size=n_rider))
    dtype = pl.Datetime("us", feature_zone)
    views = [
        OracleView(
            "stats",
            keys=("driver_id",),
            source=stats_frame,
            timestamp="ts",
            created="created",
            ttl=draw(TTLS),
            features={
                "conv_rate": "float64",
                "trips": "int64",
                "grade": "string",
                "active": "bool",
            },
        ),
        OracleView(
            "pair",
            keys=("driver_id", "zone"),
            source=pl.DataFrame(
                pair,
                schema={"driver_id": pl.Int64, "zone": pl.String, "ts": dtype, "surge": pl.Float64},
            ),
            timestamp="ts",
            ttl=draw(TTLS),
            features={"surge": "float64"},
        ),
        OracleView(
            "rider",
            keys=("rider_id",),
            source=pl.DataFrame(
                rider,
                schema={
                    "rider_id": pl.String,
                    "ts": dtype,
                    "rating": pl.Float64,
                    "visits": pl.Int64,
                },
            ),
            timestamp="ts",
            ttl=draw(TTLS),
            features={"rating": "float64", "visits": "int64"},
        ),
    ]
    return draw(label_rows(views)), views


LABEL_KEYS = ("driver_id", "zone", "rider_id")
ANY_KEY = {
    "driver_id": st.sampled_from([*DRIVERS, 4, 5, None]),
    "zone": st.sampled_from([*ZONES, "z", None]),
    "rider_id": st.sampled_from([*RIDERS, "r9", None]),
}


@st.composite
def label_rows(draw: st.DrawFn, views: list[OracleView]) -> pl.DataFrame:
    """Label rows: random ones, and ones anchored on a feature row.

    An anchored row takes the feature row's keys (the other keys at random) and a time on
    one of its edges: ts, ts - 1us, ts + ttl, ts + ttl + 1us, or a few minutes later.
    """
    anchors: list[tuple[dict[str, Any], datetime, timedelta | None]] = []
    for view in views:
        keyed = view.source.with_columns(_utc(view.source[view.timestamp]).alias("__t"))
        for found in keyed.drop_nulls([*view.keys, "__t"]).iter_rows(named=True):
            anchors.append(({k: found[k] for k in view.keys}, found["__t"], view.ttl))

    @st.composite
    def anchored(inner: st.DrawFn) -> tuple[Any, ...]:
        keys, ts, ttl = inner(st.sampled_from(anchors))
        offsets = [timedelta(0), -US, *([ttl, ttl + US] if ttl else [])]
        offset = inner(st.one_of(st.sampled_from(offsets), st.integers(1, 10).map(_minutes)))
        values = {k: keys[k] if k in keys else inner(ANY_KEY[k]) for k in LABEL_KEYS}
        return (*values.values(), ts + offset)

    anywhere = st.tuples(*ANY_KEY.values(), st.one_of(MINUTES.map(at), st.none()))
    row = st.one_of(anywhere, anchored(), anchored()) if anchors else anywhere
    rows = draw(st.lists(row, min_size=12, max_size=40))
    times = pl.Series([r[-1] for r in rows], dtype=pl.Datetime("us", "UTC"))
    label_zone = draw(ZONE_NAMES)
    if label_zone is None:
        times = times.dt.replace_time_zone(None)
    else:
        times = times.dt.convert_time_zone(label_zone)
    return pl.DataFrame(
        {
            "driver_id": pl.Series([r[0] for r in rows], dtype=pl.Int64),
            "zone": pl.Series([r[1] for r in rows], dtype=pl.String),
            "rider_id": pl.Series([r[2] for r in rows], dtype=pl.String),
            "t": times,
            "label": pl.Series(range(len(rows)), dtype=pl.Int64),
        }
    )


def _minutes(m: int) -> timedelta:
    return timedelta(minutes=m)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_training_set_matches_feast_row_for_row(
    scenario: tuple[pl.DataFrame, list[OracleView]],
) -> None:
    labels, views = scenario
    ours, feast = both(labels, views)
    assert ours.height == labels.height
    assert_frame_equal(ours, feast)
