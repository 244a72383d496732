"""The online store, one suite run over every implementation (SQLite file, Redis prefix).

What every implementation must keep (decision 0011): newest event wins by (event ts,
created ts, a null created first), ties to the later write; reads honour ``at`` and the
inclusive TTL bound; values and keys round-trip exactly and keys of different types
never meet.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import sqlite3
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.errors import OnlineStoreError, StoreError
from loopline.store import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    open_online_store,
)

IMPLEMENTATIONS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.services("redis")),
]
"""The online-store implementations every test below runs over."""

T0 = datetime(2024, 5, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=365)
US = timedelta(microseconds=1)

STORE_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=IMPLEMENTATIONS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[OnlineStore]:
    opened = open_online_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def fresh_view() -> str:
    """A view name of its own, so that hypothesis examples sharing a store never meet."""
    return f"v-{uuid.uuid4().hex[:12]}"


def ts_array(values: Sequence[datetime | None]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def rows(
    keys: Sequence[Any],
    ts: Sequence[datetime],
    *,
    created: Sequence[datetime | None] | None = None,
    key: str = "id",
    **features: Sequence[Any] | pa.Array,
) -> pa.Table:
    columns: dict[str, Any] = {key: keys, "ts": ts_array(ts)}
    if created is not None:
        columns["created"] = ts_array(created)
    columns.update(features)
    return pa.table(columns)


def write(store: OnlineStore, view: str, table: pa.Table, **kwargs: Any) -> int:
    options: dict[str, Any] = {"keys": ["id"], "timestamp": "ts"}
    if "created" in table.column_names:
        options["created"] = "created"
    options.update(kwargs)
    return store.write(view, table, **options)


def value_of(store: OnlineStore, view: str, entity: tuple[Any, ...], **kwargs: Any) -> Any:
    kwargs.setdefault("at", LATER)
    (row,) = store.read(view, [entity], **kwargs)
    return None if row is None else row["x"]


def same(a: Any, b: Any) -> bool:
    """Exact equality: same type, NaN equal to NaN, the sign of zero kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, datetime):
        return a == b and a.tzinfo is not None and a.utcoffset() == b.utcoffset() == timedelta(0)
    return bool(a == b)


# -- newest wins ---------------------------------------------------------------------------


def test_newer_event_replaces_older(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], x=["old"]))
    write(store, view, rows([1], [T0 + US], x=["new"]))
    assert value_of(store, view, (1,)) == "new"


def test_older_event_never_overwrites_newer(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0 + timedelta(hours=1)], x=["new"]))
    assert write(store, view, rows([1], [T0], x=["old"])) == 1
    assert value_of(store, view, (1,)) == "new"


def test_equal_event_time_is_decided_by_created(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], created=[T0 + US], x=["later created"]))
    write(store, view, rows([1], [T0], created=[T0], x=["earlier created"]))
    write(store, view, rows([1], [T0], created=[None], x=["no created"]))
    assert value_of(store, view, (1,)) == "later created"
    # An equal (ts, created) replaces: the later write wins the exact tie.
    write(store, view, rows([1], [T0], created=[T0 + US], x=["same, written later"]))
    assert value_of(store, view, (1,)) == "same, written later"


def test_null_created_sorts_before_any_created(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], created=[None], x=["null"]))
    write(store, view, rows([1], [T0], created=[T0 - timedelta(days=9000)], x=["dated"]))
    assert value_of(store, view, (1,)) == "dated"
    write(store, view, rows([2], [T0], created=[None], x=["first null"]))
    write(store, view, rows([2], [T0], created=[None], x=["second null"]))
    assert value_of(store, view, (2,)) == "second null"


def test_several_rows_of_one_entity_in_one_call(store: OnlineStore) -> None:
    view = fresh_view()
    table = rows(
        [1, 1, 1, 2, 2],
        [T0 + US, T0, T0 + US, T0, T0],
        x=["tie, first", "older", "tie, later", "a", "b"],
    )
    assert write(store, view, table) == 5
    assert value_of(store, view, (1,)) == "tie, later"
    assert value_of(store, view, (2,)) == "b"


def test_replaying_the_same_rows_changes_nothing(store: OnlineStore) -> None:
    view = fresh_view()
    table = rows([1, 2, 3], [T0, T0 + US, T0], x=[1.5, 2.5, 3.5])
    write(store, view, table)
    before = store.read(view, [(1,), (2,), (3,)], at=LATER)
    write(store, view, table)
    write(store, view, table.slice(1))
    assert store.read(view, [(1,), (2,), (3,)], at=LATER) == before
    assert store.delete(view) == 3


events = st.lists(
    st.tuples(
        st.integers(0, 3),  # entity
        st.integers(0, 3),  # event time, in seconds after T0
        st.none() | st.integers(0, 2),  # created, in seconds after T0
    ),
    min_size=1,
    max_size=30,
)


@STORE_SETTINGS
@given(data=st.data(), written=events)
def test_read_is_the_per_entity_max_by_ts_created_order(
    store: OnlineStore, data: st.DataObject, written: list[tuple[int, int, int | None]]
) -> None:
    """Whatever the order and the split into calls, the newest row is what is read."""
    view = fresh_view()
    shuffled = data.draw(st.permutations(written))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    bounds = [0, *cuts, len(shuffled)]
    for start, stop in pairwise(bounds):
        if start == stop:
            continue
        chunk = shuffled[start:stop]
        write(
            store,
            view,
            rows(
                [entity for entity, _, _ in chunk],
                [T0 + timedelta(seconds=ts) for _, ts, _ in chunk],
                created=[None if c is None else T0 + timedelta(seconds=c) for _, _, c in chunk],
                x=list(range(start, stop)),
            ),
        )
    expected: dict[int, tuple[tuple[int, tuple[int, ...], int], int]] = {}
    for order, (entity, ts, created) in enumerate(shuffled):
        rank = (ts, () if created is None else (created,), order)
        if entity not in expected or rank > expected[entity][0]:
            expected[entity] = (rank, order)
    entities = [(e,) for e in range(5)]
    got = store.read(view, entities, at=LATER)
    assert [None if row is None else row["x"] for row in got] == [
        expected[e][1] if e in expected else None for e in range(5)
    ]
    store.delete(view)


# -- at and ttl ----------------------------------------------------------------------------


def test_ttl_lower_bound_is_inclusive(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], x=["v"]))
    ttl = timedelta(hours=3)
    assert value_of(store, view, (1,), at=T0 + ttl, ttl=ttl) == "v"
    assert value_of(store, view, (1,), at=T0 + ttl + US, ttl=ttl) is None
    assert value_of(store, view, (1,), at=T0 + ttl + US, ttl=ttl + US) == "v"
    assert value_of(store, view, (1,), at=T0, ttl=timedelta(0)) == "v"


def test_rows_from_the_future_of_at_are_not_served(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], x=["v"]))
    assert value_of(store, view, (1,), at=T0) == "v"
    assert value_of(store, view, (1,), at=T0 - US) is None


def test_at_defaults_to_now(store: OnlineStore) -> None:
    view = fresh_view()
    now = datetime.now(UTC)
    write(
        store, view, rows([1, 2], [now - timedelta(minutes=1), now + timedelta(days=1)], x=[1, 2])
    )
    assert store.read(view, [(1,), (2,)]) == [{"x": 1}, None]
    assert store.read(view, [(1,)], ttl=timedelta(seconds=1)) == [None]


def test_naive_times_are_utc(store: OnlineStore) -> None:
    view = fresh_view()
    naive = pa.array([datetime(2024, 5, 1, 12)], pa.timestamp("ms"))
    paris = pa.array([datetime(2024, 5, 1, 12, tzinfo=UTC)], pa.timestamp("ns", tz="Europe/Paris"))
    store.write(view, pa.table({"id": [1], "ts": naive, "x": [1]}), keys=["id"], timestamp="ts")
    store.write(view, pa.table({"id": [2], "ts": paris, "x": [2]}), keys=["id"], timestamp="ts")
    noon = datetime(2024, 5, 1, 12)
    assert store.read(view, [(1,), (2,)], at=noon) == [{"x": 1}, {"x": 2}]
    assert store.read(view, [(1,), (2,)], at=noon.replace(tzinfo=UTC) - US) == [None, None]
    in_new_york = noon.replace(tzinfo=timezone(timedelta(hours=-4)))
    assert store.read(view, [(1,)], at=in_new_york, ttl=timedelta(hours=4)) == [{"x": 1}]
    assert store.read(view, [(1,)], at=in_new_york, ttl=timedelta(hours=3)) == [None]


# -- keys ----------------------------------------------------------------------------------


def test_composite_keys(store: OnlineStore) -> None:
    view = fresh_view()
    table = pa.table(
        {
            "origin": ["JFK", "LAX", "JFK"],
            "dest": ["LAX", "JFK", "SFO"],
            "hour": [7, 7, 7],
            "ts": ts_array([T0, T0, T0]),
            "x": [1, 2, 3],
        }
    )
    store.write(view, table, keys=["origin", "dest", "hour"], timestamp="ts")
    assert store.read(
        view, [("LAX", "JFK", 7), ("JFK", "LAX", 7), ("JFK", "SFO", 8), ("JFK", "SFO", 7)], at=LATER
    ) == [{"x": 2}, {"x": 1}, None, {"x": 3}]
    assert store.read(view, [("JFK", "LAX")], at=LATER) == [None]


def test_keys_of_different_types_never_meet(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], x=["int"]))
    write(store, view, rows(["1"], [T0], x=["str"]))
    write(store, view, rows([True], [T0], x=["bool"]))
    write(store, view, rows([1.5], [T0], x=["float"]))
    assert [value_of(store, view, key) for key in [(1,), ("1",), (True,), (1.5,), (2,)]] == [
        "int",
        "str",
        "bool",
        "float",
        None,
    ]


def test_date_and_datetime_keys(store: OnlineStore) -> None:
    view = fresh_view()
    day = pa.array([date(2024, 5, 1)], pa.date32())
    when = pa.array([datetime(2024, 5, 1, 6, 30, 0, 1)], pa.timestamp("us"))
    table = pa.table({"day": day, "when": when, "ts": ts_array([T0]), "x": ["v"]})
    store.write(view, table, keys=["day", "when"], timestamp="ts")
    aware = datetime(2024, 5, 1, 6, 30, 0, 1, tzinfo=UTC)
    for key in [(date(2024, 5, 1), aware), (date(2024, 5, 1), aware.replace(tzinfo=None))]:
        assert store.read(view, [key], at=LATER) == [{"x": "v"}]
    assert store.read(view, [("2024-05-01", aware)], at=LATER) == [None]


def test_numpy_key_values_match_python_ones(store: OnlineStore) -> None:
    np = pytest.importorskip("numpy")
    view = fresh_view()
    write(store, view, rows([7], [T0], x=["v"]))
    assert store.read(view, [(np.int64(7),), [7]], at=LATER) == [{"x": "v"}, {"x": "v"}]


def test_view_names_are_isolated_even_with_separators_and_wildcards(store: OnlineStore) -> None:
    base = fresh_view()
    names = [base, f"{base}:b", f"{base}*", f"{base}?", f"{base}%3Ab", f"{base}[x]"]
    for i, name in enumerate(names):
        write(store, name, rows([1, 2], [T0, T0], x=[i, i]))
    assert store.delete(f"{base}*") == 2
    assert store.delete(base) == 2
    assert [value_of(store, name, (1,)) for name in names] == [None, 1, None, 3, 4, 5]


# -- values --------------------------------------------------------------------------------

feature_columns = st.sampled_from(["int", "float", "str", "bool", "timestamp", "date"])
VALUES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "str": (pa.string(), st.text(max_size=20)),
    "bool": (pa.bool_(), st.booleans()),
    "timestamp": (
        pa.timestamp("us", tz="UTC"),
        st.datetimes(timezones=st.just(UTC)),
    ),
    "date": (pa.date32(), st.dates()),
}


@STORE_SETTINGS
@given(data=st.data(), kinds=st.lists(feature_columns, min_size=1, max_size=6))
def test_values_round_trip_exactly(
    store: OnlineStore, data: st.DataObject, kinds: list[str]
) -> None:
    view = fresh_view()
    count = data.draw(st.integers(1, 4))
    columns: dict[str, pa.Array] = {}
    expected: list[dict[str, Any]] = [{} for _ in range(count)]
    for i, kind in enumerate(kinds):
        data_type, values = VALUES[kind]
        column = data.draw(st.lists(st.none() | values, min_size=count, max_size=count))
        columns[f"{kind}_{i}"] = pa.array(column, data_type)
        for row, value in zip(expected, column, strict=True):
            row[f"{kind}_{i}"] = value
    table = pa.table({"id": list(range(count)), "ts": ts_array([T0] * count), **columns})
    write(store, view, table)
    got = store.read(view, [(i,) for i in range(count)], at=LATER)
    for row, want in zip(got, expected, strict=True):
        assert row is not None
        assert list(row) == list(want)
        for name, value in want.items():
            assert same(row[name], value), (name, row[name], value)
    store.delete(view)


def test_special_floats_and_float32(store: OnlineStore) -> None:
    view = fresh_view()
    special = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.0, None]
    table = rows(
        list(range(7)),
        [T0] * 7,
        x=pa.array(special, pa.float64()),
        single=pa.array([0.1] * 7, pa.float32()),
        count=pa.array(range(7), pa.uint8()),
        label=pa.array(["a", "b", "a", "b", "a", "b", None]).dictionary_encode(),
    )
    write(store, view, table)
    got = store.read(view, [(i,) for i in range(7)], at=LATER)
    for i, row in enumerate(got):
        assert row is not None
        assert same(row["x"], special[i])
        assert same(row["single"], float(pa.scalar(0.1, pa.float32()).as_py()))
        assert same(row["count"], i)
    assert [row["label"] for row in got if row] == ["a", "b", "a", "b", "a", "b", None]


def test_rows_with_only_keys_store_an_empty_row(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, pa.table({"id": [1], "ts": ts_array([T0])}))
    assert store.read(view, [(1,), (2,)], at=LATER) == [{}, None]


# -- reads ---------------------------------------------------------------------------------


def test_many_entities_in_request_order_with_missing_ones_none(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows(list(range(0, 600, 2)), [T0] * 300, x=list(range(0, 600, 2))))
    wanted = [(i,) for i in range(599, -1, -3)] + [(4,), (4,), ("4",)]
    got = store.read(view, wanted, at=LATER)
    assert [None if row is None else row["x"] for row in got] == [
        key[0] if isinstance(key[0], int) and key[0] % 2 == 0 else None for key in wanted
    ]
    assert store.read(view, [], at=LATER) == []
    assert store.read(fresh_view(), [(1,), (2,)], at=LATER) == [None, None]


def test_features_subset_in_requested_order(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], a=[1], b=[T0], c=["c"]))
    assert store.read(view, [(1,), (2,)], features=["c", "b"], at=LATER) == [
        {"c": "c", "b": T0},
        None,
    ]
    assert store.read(view, [(1,)], features=[], at=LATER) == [{}]


def test_unknown_feature_names_it_and_the_stored_ones(store: OnlineStore) -> None:
    view = fresh_view()
    write(store, view, rows([1], [T0], a=[1], b=[2.0]))
    with pytest.raises(OnlineStoreError, match=r"'dleay'.*'a', 'b'") as caught:
        store.read(view, [(1,)], features=["a", "dleay"], at=LATER)
    assert caught.value.feature == "dleay"  # type: ignore[attr-defined]
    # Entities without a row raise nothing: there is no row to lack the feature.
    assert store.read(view, [(2,)], features=["dleay"], at=LATER) == [None]


# -- delete --------------------------------------------------------------------------------


def test_delete_entities_then_the_view(store: OnlineStore) -> None:
    view, other = fresh_view(), fresh_view()
    write(store, view, rows([1, 2, 3], [T0] * 3, x=[1, 2, 3]))
    write(store, other, rows([1], [T0], x=[9]))
    assert store.delete(view, [(1,), (3,), (4,), ("2",)]) == 2
    assert store.read(view, [(1,), (2,), (3,)], at=LATER) == [None, {"x": 2}, None]
    assert store.delete(view, []) == 0
    assert store.delete(view) == 1
    assert store.delete(view) == 0
    assert store.read(other, [(1,)], at=LATER) == [{"x": 9}]
    # A deleted row is gone, not shadowing: an older event can be written again.
    write(store, view, rows([1], [T0 - timedelta(days=1)], x=[0]))
    assert value_of(store, view, (1,)) == 0


# -- concurrency ---------------------------------------------------------------------------


def _writer(url: str, view: str, me: int, go: Any) -> None:
    """One writing process: every entity, ten calls in its own shuffled order."""
    store = open_online_store(url)
    calls = list(range(10))
    random.Random(me).shuffle(calls)
    go.wait(60)
    for call in calls:
        entities = list(range(200))
        # Process 1 - parity holds the newest event of each entity, at its call 9.
        ts = [T0 + timedelta(seconds=2 * call + (me ^ (e % 2))) for e in entities]
        table = pa.table({"id": entities, "ts": ts_array(ts), "x": [f"{me}-{call}"] * 200})
        store.write(view, table, keys=["id"], timestamp="ts")
    store.close()


def test_two_processes_writing_at_once(store: OnlineStore, store_url: str) -> None:
    """Two processes write the same entities at once; the newest event wins, whoever wrote last."""
    # fork: the children start with loopline already imported (a fresh interpreter spends
    # seconds importing it) and open their own connections.
    context = multiprocessing.get_context("fork")
    view, go = fresh_view(), context.Event()
    writers = [context.Process(target=_writer, args=(store_url, view, me, go)) for me in (0, 1)]
    for writer in writers:
        writer.start()
    go.set()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    got = store.read(view, [(e,) for e in range(200)], at=LATER)
    assert [None if row is None else row["x"] for row in got] == [
        f"{1 - e % 2}-9" for e in range(200)
    ]


# -- errors --------------------------------------------------------------------------------


def test_write_errors_say_what_to_fix(store: OnlineStore) -> None:
    view = fresh_view()
    table = rows([1], [T0], x=[1])
    with pytest.raises(OnlineStoreError, match=r"'keys'.*'user'.*Their columns are: id, ts, x"):
        store.write(view, table, keys=["user"], timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"'timestamp'.*'when'"):
        store.write(view, table, keys=["id"], timestamp="when")
    with pytest.raises(OnlineStoreError, match=r"'keys'.*non-empty list"):
        store.write(view, table, keys="id", timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"must be an Arrow timestamp column. Got int64"):
        store.write(view, table, keys=["ts"], timestamp="x")
    with pytest.raises(OnlineStoreError, match=r"'created' column 'x'.*timestamp"):
        store.write(view, table, keys=["id"], timestamp="ts", created="x")
    nulls = pa.table({"id": [1, 2], "ts": ts_array([T0, None])})
    with pytest.raises(OnlineStoreError, match=r"1 null value"):
        store.write(view, nulls, keys=["id"], timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"key column 'id'.*null"):
        store.write(view, rows([None, 1], [T0, T0]), keys=["id"], timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"NaN"):
        store.write(view, rows([math.nan], [T0]), keys=["id"], timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"'x'.*list<item: int64>.*Cast it"):
        store.write(view, rows([1], [T0], x=[[1, 2]]), keys=["id"], timestamp="ts")
    with pytest.raises(OnlineStoreError, match=r"pyarrow.Table.*dict"):
        store.write(view, {"id": [1]}, keys=["id"], timestamp="ts")  # type: ignore[arg-type]
    with pytest.raises(OnlineStoreError, match=r"'view'"):
        store.write("", table, keys=["id"], timestamp="ts")
    assert store.read(view, [(1,)], at=LATER) == [None]


def test_read_errors_say_what_to_fix(store: OnlineStore) -> None:
    with pytest.raises(OnlineStoreError, match=r"one tuple of key values per entity"):
        store.read("v", [1, 2])  # type: ignore[list-item]
    with pytest.raises(OnlineStoreError, match=r"list of key tuples"):
        store.read("v", "abc")
    with pytest.raises(OnlineStoreError, match=r"cannot be a key"):
        store.read("v", [({"a": 1},)])
    with pytest.raises(OnlineStoreError, match=r"'features'.*\['a'\]"):
        store.read("v", [(1,)], features="a")
    with pytest.raises(OnlineStoreError, match=r"'ttl'.*non-negative"):
        store.read("v", [(1,)], ttl=timedelta(seconds=-1))


def test_online_store_errors_are_store_errors() -> None:
    assert issubclass(OnlineStoreError, StoreError)


def test_unknown_url_scheme() -> None:
    with pytest.raises(OnlineStoreError, match=r"scheme 'postgresql'.*sqlite:///.*redis://"):
        open_online_store("postgresql://u:secret@localhost/db")
    with pytest.raises(OnlineStoreError, match=r"\*\*\*") as caught:
        open_online_store("mongodb://u:secret@localhost/db")
    assert "secret" not in str(caught.value)


def test_sqlite_file_settings_and_format(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "online.db"
    with SQLiteOnlineStore(f"sqlite:///{path}") as store:
        write(store, "v", rows([1], [T0], x=[1]))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'online_rows'").fetchone()
        assert "WITHOUT ROWID" in sql[0]
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(OnlineStoreError, match=r"format 99, newer"):
        SQLiteOnlineStore(f"sqlite:///{path}")
    with pytest.raises(OnlineStoreError, match=r"three slashes"):
        SQLiteOnlineStore("sqlite://relative.db")


def test_sqlite_closed_store_says_so(tmp_path: Path) -> None:
    store = SQLiteOnlineStore(f"sqlite:///{tmp_path / 'online.db'}")
    store.close()
    with pytest.raises(OnlineStoreError, match=r"closed"):
        store.read("v", [(1,)])


def test_sqlite_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OnlineStoreError, match=r"cannot be created"):
        SQLiteOnlineStore(f"sqlite:///{blocker / 'online.db'}")


def test_in_memory_sqlite_is_shared_by_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with SQLiteOnlineStore("sqlite://") as store:
        write(store, "v", rows([1], [T0], x=[1]))
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda _: store.read("v", [(1,)], at=LATER), range(4)))
    assert got == [[{"x": 1}]] * 4


def test_missing_redis_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(OnlineStoreError, match=r"pip install 'loopline\[redis\]'"):
        open_online_store("redis://127.0.0.1:6379/0")


def test_unreachable_redis_says_where_and_what_to_do() -> None:
    pytest.importorskip("redis")
    with pytest.raises(OnlineStoreError, match=r"127.0.0.1:1/0 is not reachable.*online_url") as e:
        RedisOnlineStore("redis://:secret@127.0.0.1:1/0?prefix=x:")
    assert "secret" not in str(e.value)


@pytest.mark.services("redis")
def test_redis_prefix_comes_from_the_url(redis_url: str) -> None:
    other_url = redis_url.replace("prefix=", "prefix=other-")
    with RedisOnlineStore(redis_url) as one, RedisOnlineStore(other_url) as other:
        assert one.prefix != other.prefix
        assert one.prefix.startswith("t-")
        write(one, "v", rows([1], [T0], x=[1]))
        assert other.read("v", [(1,)], at=LATER) == [None]
        assert one.read("v", [(1,)], at=LATER) == [{"x": 1}]
        assert other.delete("v") == 0
    default = RedisOnlineStore(redis_url.split("?")[0])
    try:
        assert default.prefix == "loopline:"
    finally:
        default.close()


@pytest.mark.services("redis")
def test_redis_foreign_value_is_reported_not_misread(redis_url: str) -> None:
    import redis

    with RedisOnlineStore(redis_url) as store:
        client = redis.Redis.from_url(redis_url.split("?")[0])
        try:
            client.set(f"{store.prefix}v:[1]".encode(), b"not a loopline row")
        finally:
            client.close()
        with pytest.raises(OnlineStoreError, match=r"cannot be decoded"):
            store.read("v", [(1,)], at=LATER)
