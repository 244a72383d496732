"""Served features equal training features: materialize + online read against training sets.

For random events and random label times, the features a training set gives a label row
at time t must be exactly what the online store serves at t after materializing up to
t, for every aggregation kind, on every online store implementation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.workspace import Workspace
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
from loopline.features.materialize import freshness, materialize, online_features
from loopline.store.online import OnlineStore, open_online_store

T0 = datetime(2024, 3, 1, tzinfo=UTC)
KEY = Entity("user", keys=["user"])
ONLINE = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.services("redis")),
]


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(f"sqlite:///{tmp_path}/metadata.db", str(tmp_path / "artifacts"))


@pytest.fixture(params=ONLINE)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/online.db"
    else:
        url = str(request.getfixturevalue("redis_url"))
    opened = open_online_store(url)
    try:
        yield opened
    finally:
        opened.close()


events = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.sampled_from([1, 2, 3]),
            "ts": st.integers(0, 40).map(lambda q: hours(q / 4)),
            "created": st.none() | st.integers(0, 40).map(lambda q: hours(q / 4)),
            "amount": st.none() | st.integers(-50, 50).map(float),
            "kind": st.none() | st.sampled_from(["a", "b", "c"]),
        }
    ),
    max_size=25,
)
SCHEMA = {
    "user": pl.Int64,
    "ts": pl.Datetime("us", "UTC"),
    "created": pl.Datetime("us", "UTC"),
    "amount": pl.Float64,
    "kind": pl.String,
}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=events,
    at=st.lists(st.integers(0, 44).map(lambda q: hours(q / 4)), min_size=1, max_size=4),
    ttl=st.none() | st.integers(1, 12),
    hop=st.none() | st.sampled_from([1, 2]),
)
def test_served_features_equal_training_features(
    store: OnlineStore,
    workspace: Workspace,
    rows: list[dict[str, Any]],
    at: list[datetime],
    ttl: int | None,
    hop: int | None,
) -> None:
    frame = pl.DataFrame(rows, schema=SCHEMA)
    latest = FeatureView(
        "latest",
        entity=KEY,
        source=frame,
        timestamp="ts",
        created="created",
        ttl=None if ttl is None else timedelta(hours=ttl / 2),
        features=["amount", "kind"],
    )
    windows = WindowView(
        "windows",
        entity=KEY,
        source=frame,
        timestamp="ts",
        hop=None if hop is None else timedelta(hours=hop / 2),
        aggregations=[
            *(Aggregate("amount", f, "3h", name=f"amount_{f}") for f in AGGREGATIONS),
            Aggregate("kind", "distinct", "90m", name="kinds"),
        ],
    )
    views = [latest, windows]
    for t in sorted(at):
        store.delete("latest")
        store.delete("windows")
        materialize(views, end=t, store=store, workspace=workspace)
        requests = pl.DataFrame({"user": [1, 2, 3, 4], "t": [t] * 4})
        trained = training_set(requests, views, timestamp="t").frame
        served = online_features(views, requests.select("user"), at=t, store=store)
        for name in (*latest.feature_names, *windows.feature_names):
            for a, b in zip(trained[name].to_list(), served[name].to_list(), strict=True):
                assert same(a, b), (name, t, trained[name].to_list(), served[name].to_list())


def test_incremental_intervals_give_the_same_store_as_one_full_run(
    store: OnlineStore, workspace: Workspace
) -> None:
    frame = pl.DataFrame(
        {
            "user": [1, 2, 1, 3, 2, 1],
            "ts": [hours(h) for h in (0, 1, 2, 5, 7, 9)],
            "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    latest = FeatureView("latest", entity=KEY, source=frame, timestamp="ts", features=["amount"])
    windows = WindowView(
        "windows",
        entity=KEY,
        source=frame,
        timestamp="ts",
        aggregations=[Aggregate("amount", "sum", "4h")],
    )
    requests = pl.DataFrame({"user": [1, 2, 3]})
    # Contiguous intervals [0,4], [4,8], [8,10], as a scheduler would run them.
    edges = [hours(0), hours(4), hours(8), hours(10)]
    for lo, hi in itertools.pairwise(edges):
        materialize([latest, windows], start=lo, end=hi, store=store, workspace=workspace)
    stepwise = online_features([latest, windows], requests, at=hours(10), store=store)
    store.delete("latest")
    store.delete("windows")
    materialize([latest, windows], end=hours(10), store=store, workspace=workspace)
    full = online_features([latest, windows], requests, at=hours(10), store=store)
    assert stepwise.to_dicts() == full.to_dicts()
    assert full["amount"].to_list() == [6.0, 5.0, 4.0]
    # [6h, 10h): user 1 has 6.0 at 9h, user 2 has 5.0 at 7h, user 3's 4.0 at 5h has left.
    assert full["amount_sum_4h"].to_list() == [6.0, 5.0, 0.0]


def test_ttl_is_enforced_on_read_and_on_demand_features_are_computed_online(
    store: OnlineStore, workspace: Workspace
) -> None:
    frame = pl.DataFrame({"user": [1], "ts": [hours(0)], "amount": [8.0]})
    latest = FeatureView(
        "latest", entity=KEY, source=frame, timestamp="ts", ttl="2h", features=["amount"]
    )
    double = OnDemand("double", features={"twice": pl.col("amount") * 2}, inputs=["amount"])
    materialize([latest, double], end=hours(0), store=store, workspace=workspace)
    fresh = online_features([latest, double], [{"user": 1}], at=hours(2), store=store)
    stale = online_features([latest, double], [{"user": 1}], at=hours(2.5), store=store)
    assert fresh.select("amount", "twice").row(0) == (8.0, 16.0)
    assert stale.select("amount", "twice").row(0) == (None, None)


def test_freshness_reports_the_newest_value_written(
    store: OnlineStore, workspace: Workspace
) -> None:
    frame = pl.DataFrame({"user": [1, 2], "ts": [hours(1), hours(3)], "amount": [1.0, 2.0]})
    latest = FeatureView("latest", entity=KEY, source=frame, timestamp="ts", features=["amount"])
    assert freshness([latest], workspace=workspace)[0].newest_event is None
    done = materialize([latest], end=hours(2), store=store, workspace=workspace)
    assert (done[0].rows, done[0].newest_event) == (1, hours(1))
    materialize([latest], end=hours(5), start=hours(2), store=store, workspace=workspace)
    report = freshness([latest], workspace=workspace, now=hours(6))[0]
    assert report.newest_event == hours(3)
    assert report.age == timedelta(hours=3)
    assert report.version == latest.version
    assert [v.version for v in workspace.metadata.feature_view_versions("latest")] == [
        latest.version
    ]


def test_bad_intervals_and_requests_are_clear_errors(
    store: OnlineStore, workspace: Workspace
) -> None:
    frame = pl.DataFrame({"user": [1], "ts": [hours(0)], "amount": [1.0]})
    latest = FeatureView("latest", entity=KEY, source=frame, timestamp="ts", features=["amount"])
    with pytest.raises(FeatureError, match="is after its 'end'"):
        materialize([latest], start=hours(2), end=hours(1), store=store, workspace=workspace)
    with pytest.raises(FeatureError, match="must be a datetime"):
        materialize([latest], end="tomorrow", store=store, workspace=workspace)  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match=r"lacks the key column\(s\) \['user'\]"):
        online_features([latest], [{"who": 1}], store=store)
