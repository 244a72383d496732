"""Training sets: the point-in-time join and windowed aggregations against a plain-Python oracle.

The oracle below reads DESIGN.md's semantics literally, one label row at a time; the
engine must agree with it on random data (hypothesis), and on the edge cases spelled out
one by one (TTL bounds, ties, nulls, missing entities, label order, time zones, key types).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.errors import FeatureError
from loopline.features import (
    AGGREGATIONS,
    Aggregate,
    Entity,
    FeatureView,
    OnDemand,
    WindowView,
    training_set,
)
from loopline.features import training as training_module

T0 = datetime(2024, 3, 1, tzinfo=UTC)
KEY = Entity("user", keys=["user"])


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


# -- the oracle -------------------------------------------------------------------------------


def oracle_latest(
    events: list[dict[str, Any]],
    key: Any,
    t: datetime | None,
    ttl: timedelta | None,
    features: Sequence[str],
) -> dict[str, Any]:
    """DESIGN.md's point-in-time rule, read literally for one label row."""
    best: tuple[Any, ...] | None = None
    winner: dict[str, Any] | None = None
    for position, row in enumerate(events):
        if key is None or t is None or row["user"] != key or row["ts"] is None:
            continue
        if row["ts"] > t or (ttl is not None and row["ts"] < t - ttl):
            continue
        created = row.get("created")
        rank = (row["ts"], created is not None, created or T0, position)
        if best is None or rank > best:
            best, winner = rank, row
    return {f: None if winner is None else winner[f] for f in features}


def oracle_window(
    events: list[dict[str, Any]], key: Any, t: datetime | None, agg: Aggregate
) -> Any:
    """One aggregation over the entity's events in [t - w, t), read literally."""
    if key is None or t is None:
        return None
    inside = [
        e
        for e in events
        if e["user"] == key and e["ts"] is not None and t - agg.window <= e["ts"] < t
    ]
    values = [e[agg.column] for e in inside if e[agg.column] is not None]
    match agg.function:
        case "count":
            return len(values)
        case "distinct":
            return len(set(values))
        case "sum":
            return sum(values) if values else 0
        case "mean":
            return statistics.fmean(values) if values else None
        case "min":
            return min(values) if values else None
        case "max":
            return max(values) if values else None
        case "std":
            return statistics.stdev(values) if len(values) > 1 else None
        case "last":
            if not inside:
                return None
            latest = max(range(len(inside)), key=lambda i: (inside[i]["ts"], i))
            return inside[latest][agg.column]
    raise AssertionError(agg.function)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


# -- random data ------------------------------------------------------------------------------

users = st.sampled_from([1, 2, 3])
times = st.integers(min_value=0, max_value=40).map(lambda q: hours(q / 4))
event_rows = st.lists(
    st.fixed_dictionaries(
        {
            "user": users,
            "ts": times,
            "created": st.none() | times,
            "amount": st.none() | st.integers(-50, 50).map(float),
            "kind": st.none() | st.sampled_from(["a", "b", "c"]),
        }
    ),
    max_size=30,
)
label_rows = st.lists(
    st.fixed_dictionaries({"user": st.none() | st.sampled_from([1, 2, 3, 4]), "t": times}),
    min_size=1,
    max_size=15,
)
EVENT_SCHEMA = {
    "user": pl.Int64,
    "ts": pl.Datetime("us", "UTC"),
    "created": pl.Datetime("us", "UTC"),
    "amount": pl.Float64,
    "kind": pl.String,
}
LABEL_SCHEMA = {"user": pl.Int64, "t": pl.Datetime("us", "UTC")}


@settings(max_examples=150, deadline=None)
@given(events=event_rows, labels=label_rows, ttl=st.none() | st.integers(1, 12))
def test_latest_values_follow_the_point_in_time_rule(
    events: list[dict[str, Any]], labels: list[dict[str, Any]], ttl: int | None
) -> None:
    lifetime = None if ttl is None else timedelta(hours=ttl / 2)
    view = FeatureView(
        "spend",
        entity=KEY,
        source=pl.DataFrame(events, schema=EVENT_SCHEMA),
        timestamp="ts",
        created="created",
        ttl=lifetime,
        features=["amount", "kind"],
    )
    frame = training_set(pl.DataFrame(labels, schema=LABEL_SCHEMA), [view], timestamp="t").frame
    assert frame.height == len(labels)
    for label, got in zip(labels, frame.iter_rows(named=True), strict=True):
        assert (got["user"], got["t"]) == (label["user"], label["t"])
        expected = oracle_latest(events, label["user"], label["t"], lifetime, ["amount", "kind"])
        assert {k: got[k] for k in expected} == expected


@settings(max_examples=150, deadline=None)
@given(
    events=event_rows,
    labels=label_rows,
    window=st.integers(1, 16),
    hop=st.none() | st.sampled_from([1, 3]),
)
def test_window_values_cover_the_half_open_window(
    events: list[dict[str, Any]], labels: list[dict[str, Any]], window: int, hop: int | None
) -> None:
    width = timedelta(hours=window / 4)
    aggs = [Aggregate("amount", f, width, name=f"amount_{f}") for f in AGGREGATIONS]
    aggs.append(Aggregate("kind", "distinct", width, name="kinds"))
    step = None if hop is None else timedelta(hours=hop / 2)
    view = WindowView(
        "activity",
        entity=KEY,
        source=pl.DataFrame(events, schema=EVENT_SCHEMA),
        timestamp="ts",
        aggregations=aggs,
        hop=step,
    )
    frame = training_set(pl.DataFrame(labels, schema=LABEL_SCHEMA), [view], timestamp="t").frame
    for label, got in zip(labels, frame.iter_rows(named=True), strict=True):
        t = label["t"]
        if step is not None:
            t = datetime.fromtimestamp(
                (t.timestamp() // step.total_seconds()) * step.total_seconds(), UTC
            )
        for agg in aggs:
            expected = oracle_window(events, label["user"], t, agg)
            assert same(got[agg.name], expected), (agg.name, label, got[agg.name], expected)


@settings(max_examples=60, deadline=None)
@given(events=event_rows, labels=label_rows, parts=st.integers(2, 5))
def test_partitions_by_entity_change_nothing(
    events: list[dict[str, Any]], labels: list[dict[str, Any]], parts: int
) -> None:
    source = pl.DataFrame(events, schema=EVENT_SCHEMA)
    views = [
        FeatureView(
            "spend",
            entity=KEY,
            source=source,
            timestamp="ts",
            created="created",
            ttl="3h",
            features=["amount", "kind"],
        ),
        WindowView(
            "activity",
            entity=KEY,
            source=source,
            timestamp="ts",
            aggregations=[Aggregate("amount", f, "2h") for f in AGGREGATIONS],
        ),
    ]
    frame = pl.DataFrame(labels, schema=LABEL_SCHEMA)
    whole = training_set(frame, views, timestamp="t").frame
    split = training_set(frame, views, timestamp="t", partitions=parts).frame
    assert split.equals(whole, null_equal=True)
    # Each partition computed in pieces (a few hundred bytes each here: several pieces).
    with mock.patch.object(training_module, "PIECE_BYTES", 300):
        pieces = training_set(frame, views, timestamp="t", partitions=parts).frame
    assert pieces.equals(whole, null_equal=True)


# -- the rules one by one --------------------------------------------------------------------


def spend_view(rows: dict[str, list[Any]], **options: Any) -> FeatureView:
    return FeatureView(
        "spend",
        entity=KEY,
        source=pl.DataFrame(rows),
        timestamp="ts",
        features=["amount"],
        **options,
    )


def test_ttl_bounds_are_inclusive() -> None:
    view = spend_view({"user": [1], "ts": [hours(0)], "amount": [5.0]}, ttl="2h")
    labels = pl.DataFrame({"user": [1, 1, 1, 1], "t": [hours(0), hours(2), hours(2.01), hours(-1)]})
    got = training_set(labels, [view], timestamp="t").frame["amount"].to_list()
    assert got == [5.0, 5.0, None, None]


def test_equal_times_go_to_the_larger_created_then_to_the_last_row() -> None:
    rows = {
        "user": [1, 1, 1, 1],
        "ts": [hours(1)] * 4,
        "created": [hours(3), hours(5), None, hours(5)],
        "amount": [1.0, 2.0, 3.0, 4.0],
    }
    view = spend_view(rows, created="created")
    labels = pl.DataFrame({"user": [1], "t": [hours(1)]})
    assert training_set(labels, [view], timestamp="t").frame["amount"].to_list() == [4.0]


def test_the_winning_row_is_taken_whole_so_a_null_stays_null() -> None:
    view = spend_view({"user": [1, 1], "ts": [hours(1), hours(2)], "amount": [7.0, None]})
    labels = pl.DataFrame({"user": [1], "t": [hours(3)]})
    assert training_set(labels, [view], timestamp="t").frame["amount"].to_list() == [None]


def test_every_label_row_is_kept_in_order_even_duplicates() -> None:
    view = spend_view({"user": [1, 2], "ts": [hours(0), hours(0)], "amount": [1.0, 2.0]})
    labels = pl.DataFrame(
        {"user": [2, 1, 2, 9, 2], "t": [hours(5), hours(1), hours(5), hours(1), hours(-1)]}
    )
    frame = training_set(labels, [view], timestamp="t").frame
    assert frame["user"].to_list() == [2, 1, 2, 9, 2]
    assert frame["amount"].to_list() == [2.0, 1.0, 2.0, None, None]


def test_unsorted_feature_rows_are_sorted_by_time() -> None:
    view = spend_view(
        {"user": [1, 1, 1], "ts": [hours(3), hours(1), hours(2)], "amount": [3.0, 1.0, 2.0]}
    )
    labels = pl.DataFrame({"user": [1, 1], "t": [hours(2.5), hours(1.5)]})
    assert training_set(labels, [view], timestamp="t").frame["amount"].to_list() == [2.0, 1.0]


def test_naive_times_are_utc_and_aware_times_are_converted() -> None:
    oslo = timezone(timedelta(hours=1))
    view = spend_view(
        {
            "user": [1, 1],
            # 10:00 at UTC+1 is 09:00 UTC.
            "ts": [datetime(2024, 3, 1, 10, tzinfo=oslo), datetime(2024, 3, 1, 11, tzinfo=oslo)],
            "amount": [9.0, 10.0],
        }
    )
    labels = pl.DataFrame({"user": [1], "t": [datetime(2024, 3, 1, 9, 30)]})  # naive: UTC
    frame = training_set(labels, [view], timestamp="t").frame
    assert frame["amount"].to_list() == [9.0]
    assert frame.schema["t"] == pl.Datetime("us", "UTC")


def test_null_keys_and_times_get_nulls_and_rows_with_null_keys_are_never_matched() -> None:
    view = spend_view(
        {"user": [None, 1], "ts": [hours(0), None], "amount": [1.0, 2.0]},
    )
    labels = pl.DataFrame(
        {"user": [None, 1, 1], "t": [hours(1), hours(1), None]},
        schema={"user": pl.Int64, "t": pl.Datetime("us", "UTC")},
    )
    assert training_set(labels, [view], timestamp="t").frame["amount"].to_list() == [None] * 3


def test_integer_keys_of_other_widths_join_and_text_against_numbers_is_an_error() -> None:
    view = spend_view({"user": [1], "ts": [hours(0)], "amount": [1.0]})
    narrow = pl.DataFrame({"user": pl.Series([1], dtype=pl.Int16), "t": [hours(1)]})
    assert training_set(narrow, [view], timestamp="t").frame["amount"].to_list() == [1.0]
    text = pl.DataFrame({"user": ["1"], "t": [hours(1)]})
    with pytest.raises(FeatureError, match=r"Key 'user' is String in the label table but Int64"):
        training_set(text, [view], timestamp="t")


def test_composite_keys() -> None:
    route = Entity("route", keys=["origin", "dest"])
    view = FeatureView(
        "route_stats",
        entity=route,
        source=pl.DataFrame(
            {
                "origin": ["JFK", "JFK", "EWR"],
                "dest": ["LAX", "SFO", "LAX"],
                "ts": [hours(0)] * 3,
                "minutes": [330, 360, 340],
            }
        ),
        timestamp="ts",
        features=["minutes"],
    )
    labels = pl.DataFrame(
        {"origin": ["EWR", "JFK", "JFK"], "dest": ["LAX", "SFO", "ORD"], "t": [hours(1)] * 3}
    )
    got = training_set(labels, [view], timestamp="t").frame["minutes"].to_list()
    assert got == [340, 360, None]


def test_a_window_longer_than_the_data_and_a_label_before_any_data() -> None:
    view = WindowView(
        "activity",
        entity=KEY,
        source=pl.DataFrame({"user": [1, 1], "ts": [hours(1), hours(2)], "amount": [2.0, 4.0]}),
        timestamp="ts",
        aggregations=[Aggregate("amount", "sum", "365d"), Aggregate("amount", "mean", "365d")],
    )
    labels = pl.DataFrame({"user": [1, 1], "t": [hours(10), hours(-10)]})
    frame = training_set(labels, [view], timestamp="t").frame
    assert frame["amount_sum_365d"].to_list() == [6.0, 0.0]
    assert frame["amount_mean_365d"].to_list() == [3.0, None]


def test_an_event_at_the_label_time_is_not_yet_known() -> None:
    view = WindowView(
        "activity",
        entity=KEY,
        source=pl.DataFrame({"user": [1, 1], "ts": [hours(0), hours(1)], "amount": [2.0, 4.0]}),
        timestamp="ts",
        aggregations=[Aggregate("amount", "count", "1h")],
    )
    labels = pl.DataFrame({"user": [1, 1], "t": [hours(1), hours(2)]})
    frame = training_set(labels, [view], timestamp="t").frame
    # [0h, 1h) holds the first event; [1h, 2h) the second.
    assert frame["amount_count_1h"].to_list() == [1, 1]


def test_on_demand_features_read_request_columns_and_earlier_features() -> None:
    view = spend_view({"user": [1], "ts": [hours(0)], "amount": [10.0]})
    ratio = OnDemand(
        "ratio",
        features={"share": pl.col("price") / pl.col("amount")},
        inputs=["price", "amount"],
    )
    labels = pl.DataFrame({"user": [1], "t": [hours(1)], "price": [2.5]})
    result = training_set(labels, [view, ratio], timestamp="t")
    assert result.frame["share"].to_list() == [0.25]
    assert set(result.versions) == {"spend", "ratio"}


def test_a_source_may_be_a_function_and_transforms_run_first() -> None:
    def source() -> pl.DataFrame:
        return pl.DataFrame(
            {"user": [1, 1], "when": ["2024-03-01 01:00", "2024-03-01 02:00"], "cents": [150, 250]}
        )

    view = FeatureView(
        "spend",
        entity=KEY,
        source=source,
        timestamp="ts",
        features=["amount"],
        transform=[
            pl.col("when").str.to_datetime("%Y-%m-%d %H:%M").alias("ts"),
            (pl.col("cents") / 100).alias("amount"),
        ],
        where=pl.col("cents") > 200,
    )
    labels = pl.DataFrame({"user": [1, 1], "t": [hours(1.5), hours(3)]})
    assert training_set(labels, [view], timestamp="t").frame["amount"].to_list() == [None, 2.5]


# -- errors ------------------------------------------------------------------------------------


def test_versions_change_with_the_definition_only() -> None:
    a = spend_view({"user": [1], "ts": [hours(0)], "amount": [1.0]}, ttl="1h")
    b = spend_view({"user": [2], "ts": [hours(5)], "amount": [9.0]}, ttl="1h")
    c = spend_view({"user": [1], "ts": [hours(0)], "amount": [1.0]}, ttl="2h")
    assert a.version == b.version != c.version


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Entity("user", keys=[]), "non-empty list of column names"),
        (lambda: Aggregate("a", "median", "1h"), "must be one of count, sum"),  # type: ignore[arg-type]
        (lambda: Aggregate("a", "sum", "-1h"), "positive duration"),
        (lambda: Aggregate("a", "sum", "soon"), "positive duration"),
        (
            lambda: FeatureView(
                "v", entity=KEY, source=pl.DataFrame(), timestamp="ts", features=["user"]
            ),
            "its keys or timestamps",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=KEY,
                source=42,
                timestamp="ts",  # type: ignore[arg-type]
                features=["a"],
            ),
            "must be a Polars frame, a dataset name",
        ),
        (
            lambda: WindowView(
                "v",
                entity=KEY,
                source=pl.DataFrame(),
                timestamp="ts",
                aggregations=[Aggregate("a", "sum", "1h"), Aggregate("a", "sum", "1h")],
            ),
            "give one a name= of its own",
        ),
        (
            lambda: FeatureView(
                "bad name", entity=KEY, source=pl.DataFrame(), timestamp="ts", features=["a"]
            ),
            "must be a name of letters",
        ),
    ],
)
def test_definitions_are_checked_where_they_enter(make: Any, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        make()


def test_data_errors_name_the_view_and_what_to_do() -> None:
    labels = pl.DataFrame({"user": [1], "t": [hours(1)]})
    missing = spend_view({"user": [1], "ts": [hours(0)]})
    with pytest.raises(FeatureError, match=r"needs the column\(s\) \['amount'\]"):
        training_set(labels, [missing], timestamp="t")
    text_time = spend_view({"user": [1], "ts": ["2024-03-01"], "amount": [1.0]})
    with pytest.raises(FeatureError, match=r"must hold timestamps.*str.to_datetime"):
        training_set(labels, [text_time], timestamp="t")
    view = spend_view({"user": [1], "ts": [hours(0)], "amount": [1.0]})
    with pytest.raises(FeatureError, match=r"no column 'when'"):
        training_set(labels, [view], timestamp="when")
    with pytest.raises(FeatureError, match=r"lacks the key column\(s\) \['user'\]"):
        training_set(labels.rename({"user": "who"}), [view], timestamp="t")
    with pytest.raises(FeatureError, match=r"Two views are named 'spend'"):
        training_set(labels, [view, view], timestamp="t")
    clash = pl.DataFrame({"user": [1], "t": [hours(1)], "amount": [0.0]})
    with pytest.raises(FeatureError, match=r"also a column of the label table.*prefix"):
        training_set(clash, [view], timestamp="t")
