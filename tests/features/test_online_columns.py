"""``online_feature_columns`` equals ``online_features(...).to_dict(as_series=False)``.

The fast path for a few rows answers in plain Python columns, so for random requests
(known, unknown and expired entities, missing and mixed-type columns, with and without
on-demand groups) it must give exactly the columns, values and Python types the Polars
frame does, and raise exactly the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.workspace import Workspace
from loopline.errors import FeatureError
from loopline.features import Aggregate, Entity, FeatureView, OnDemand, View, WindowView
from loopline.features.materialize import materialize, online_feature_columns, online_features
from loopline.store.online import OnlineStore, open_online_store

T0 = datetime(2024, 3, 1, tzinfo=UTC)
KEY = Entity("user", keys=["user"])


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


EVENTS = pl.DataFrame(
    {
        "user": [1, 1, 2, 3, 3],
        "ts": [hours(1), hours(8), hours(3), hours(6), hours(9)],
        "amount": [2.5, None, 4.0, -1.0, float("nan")],
        "label": ["a", "b", None, "c", "d"],
        "flag": [True, False, True, None, False],
        "day": [date(2024, 1, d) for d in (1, 2, 3, 4, 5)],
    }
)
LATEST = FeatureView(
    "latest", entity=KEY, source=EVENTS, timestamp="ts", ttl="2h", features=["amount"]
)
STAMPS = FeatureView(
    "stamps",
    entity=KEY,
    source=EVENTS,
    timestamp="ts",
    transform=[pl.col("ts").alias("seen_at")],
    features=["seen_at", "label", "flag", "day"],
)
WINDOWS = WindowView(
    "windows",
    entity=KEY,
    source=EVENTS,
    timestamp="ts",
    aggregations=[
        Aggregate("amount", "sum", window="4h"),
        Aggregate("amount", "count", window="4h"),
        Aggregate("amount", "mean", window="4h"),
    ],
    hop="1h",
)
DOUBLE = OnDemand("double", features={"twice": pl.col("amount") * 2}, inputs=["amount"])
CLOCK = OnDemand(
    "clock", features={"hour": pl.col("hour_of_request") + 1}, inputs=["hour_of_request"]
)
VIEWS: dict[str, View | OnDemand] = {v.name: v for v in (LATEST, STAMPS, WINDOWS, DOUBLE, CLOCK)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnlineStore]:
    folder = tmp_path_factory.mktemp("online_columns")
    workspace = Workspace(f"sqlite:///{folder}/metadata.db", str(folder / "artifacts"))
    opened = open_online_store(f"sqlite:///{folder}/online.db")
    materialize([LATEST, STAMPS, WINDOWS], end=hours(10), store=opened, workspace=workspace)
    # A row another writer left with a string amount: Polars makes the column strings.
    odd = pa.table({"user": [5], "ts": pa.array([hours(9)]), "amount": ["x"]})
    opened.write("latest", odd, keys=["user"], timestamp="ts")
    try:
        yield opened
    finally:
        opened.close()


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call gave, strictly comparable: the repr (types, NaN, key order) or the error."""
    try:
        return ("ok", repr(call()))
    except Exception as exc:
        return ("error", type(exc), str(exc))


def both(
    views: Sequence[View | OnDemand], rows: Any, store: OnlineStore, **kwargs: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    fast = outcome(lambda: online_feature_columns(views, rows, store=store, **kwargs))
    frame = outcome(
        lambda: online_features(views, rows, store=store, **kwargs).to_dict(as_series=False)
    )
    return fast, frame


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=2),
    st.just(2**63),
    st.just(date(2024, 1, 2)),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
    st.lists(st.integers(0, 2), max_size=2),
)
users = st.one_of(st.sampled_from([1, 2, 3, 4, 5]), st.just(1.0), st.just("1"), st.none())
rows = st.lists(
    st.dictionaries(
        st.sampled_from(["user", "hour_of_request", "extra", "more"]),
        values,
        max_size=3,
    ).flatmap(
        lambda row: st.one_of(
            st.just(row),
            users.map(lambda user: {"user": user, **row}),
            users.map(lambda user: {**row, "user": user}),
        )
    ),
    max_size=6,
)
# Rows of plain values only: the fast path, which the rows above reach less often.
plain_rows = st.lists(
    st.fixed_dictionaries(
        {"user": st.sampled_from([1, 2, 3, 4, 5])},
        optional={"hour_of_request": st.integers(0, 23) | st.none(), "extra": st.text(max_size=2)},
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    names=st.lists(st.sampled_from(sorted(VIEWS)), unique=True, max_size=5),
    request=plain_rows | rows,
    at=st.none() | st.integers(0, 56).map(lambda q: hours(q / 4)),
)
def test_columns_equal_the_frame_served(
    store: OnlineStore, names: list[str], request: list[dict[str, Any]], at: datetime | None
) -> None:
    fast, frame = both([VIEWS[n] for n in names], request, store, at=at)
    assert fast == frame


def test_a_plain_request_builds_no_frame(
    store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    request: list[dict[str, Any]] = [{"user": 3, "extra": "x"}, {"user": 4, "extra": None}]
    expected = online_features([LATEST, STAMPS, WINDOWS], request, at=hours(10), store=store)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built a Polars frame")

    monkeypatch.setattr(pl, "DataFrame", refuse)
    columns = online_feature_columns([LATEST, STAMPS, WINDOWS], request, at=hours(10), store=store)
    monkeypatch.undo()
    assert repr(columns) == repr(expected.to_dict(as_series=False))
    assert columns["seen_at"] == [hours(9), None]
    # An unknown entity's window sum is 0, a float next to user 3's (NaN) sum.
    assert repr(columns["amount_sum_4h"]) == "[nan, 0.0]"
    assert columns["amount_count_4h"] == [2, 0]


def test_known_expired_and_unknown_entities(store: OnlineStore) -> None:
    columns = online_feature_columns(
        [LATEST, DOUBLE, WINDOWS],
        [{"user": 2}, {"user": 1}, {"user": 9}],
        at=hours(4),
        store=store,
    )
    assert columns == {
        "user": [2, 1, 9],
        "amount": [4.0, None, None],  # user 1's 2.5 at 1h is older than the 2h TTL
        "twice": [8.0, None, None],
        "amount_sum_4h": [0, 0, 0],  # the values stamped at 10h are not served at 4h
        "amount_count_4h": [0, 0, 0],
        "amount_mean_4h": [None, None, None],
    }


@pytest.mark.parametrize(
    ("views", "request_rows", "kwargs", "message"),
    [
        pytest.param(
            [LATEST], [{"who": 1}], {}, r"lacks the key column\(s\) \['user'\]", id="keys"
        ),
        pytest.param([LATEST], [], {}, r"it has \[\]", id="no-rows"),
        pytest.param(
            [LATEST], [{"user": 1, "amount": 2.0}], {}, "is also a column of", id="reserved"
        ),
        pytest.param([LATEST, LATEST], [{"user": 1}], {}, "Two views are named", id="twice"),
        pytest.param(["latest"], [{"user": 1}], {}, "Expected FeatureView", id="not-a-view"),
        pytest.param([LATEST], [{"user": 1}], {"at": "tomorrow"}, "must be a datetime", id="at"),
        pytest.param([DOUBLE, LATEST], [{"user": 1}], {}, "needs the column", id="on-demand"),
        pytest.param(
            [CLOCK], [{"hour_of_request": "x"}], {}, "could not be computed", id="on-demand-type"
        ),
    ],
)
def test_bad_requests_fail_as_online_features_does(
    store: OnlineStore,
    views: list[Any],
    request_rows: list[dict[str, Any]],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    kwargs = {"at": hours(9), **kwargs}
    fast, frame = both(views, request_rows, store, **kwargs)
    assert fast == frame
    with pytest.raises(FeatureError, match=message):
        online_feature_columns(views, request_rows, store=store, **kwargs)


def test_many_rows_and_rows_polars_converts_take_the_frame(store: OnlineStore) -> None:
    many = [{"user": 1 + i % 4} for i in range(100)] + [{"user": 2.5, "late": 1}]
    mixed = [{"user": 1, "extra": 1}, {"user": 2, "extra": "a"}, {"user": True}]
    for request in (many, mixed):
        fast, frame = both([LATEST, DOUBLE, WINDOWS], request, store, at=hours(9))
        assert fast == frame
