"""SQLSource: tables and queries read in bounded chunks, with types, cursors and errors.

The behaviour tests run over every backend (a SQLite file, and a fresh PostgreSQL schema
from the ``postgres_url`` fixture in tests/conftest.py); type mapping has a test per
backend, since each declares types its own way.
"""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from loopline.data.sources import LOCATION, Chunk, Partition, Source, SQLSource
from loopline.errors import SourceError

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.services("postgres")),
]
SECRET = "s3cret-Pa55"


class Database:
    """A database for one test: its URL, and a way to write to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def run(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement.replace(":", "\\:")))

    def insert(self, table: str, rows: list[dict[str, object]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.table(table, *map(sa.column, rows[0])).insert(), rows)


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    db = Database(url)
    db.run("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)")
    yield db
    db.engine.dispose()


def _orders(db: Database, ids: list[int]) -> None:
    db.insert("orders", [{"id": i, "customer": f"c{i % 3}", "amount": i * 1.5} for i in ids])


def _chunks(source: SQLSource) -> list[Chunk]:
    [partition] = source.partitions()
    return list(source.read(partition))


def _table(source: SQLSource) -> pa.Table:
    """Every row read, as one table (the chunks must share a schema)."""
    chunks = _chunks(source)
    return pa.Table.from_batches([chunk.batch for chunk in chunks])


# -- reading ---------------------------------------------------------------------------------


def test_sql_source_is_a_source(database: Database) -> None:
    source = SQLSource(database.url, table="orders")
    assert isinstance(source, Source)
    assert source.name == "orders"
    assert SQLSource(database.url, query="SELECT 1 AS x", name="one").name == "one"


def test_a_table_is_read_in_chunks_with_row_numbers(database: Database) -> None:
    _orders(database, list(range(1, 11)))
    source = SQLSource(database.url, table="orders", chunk_rows=3, cursor="id")
    chunks = _chunks(source)
    assert [chunk.rows for chunk in chunks] == [3, 3, 3, 1]
    table = pa.Table.from_batches([chunk.batch for chunk in chunks])
    assert table.column_names == ["id", "customer", "amount", LOCATION]
    assert table.column("id").to_pylist() == list(range(1, 11))
    assert table.column(LOCATION).to_pylist() == list(range(1, 11))
    assert table.column("amount").to_pylist() == [i * 1.5 for i in range(1, 11)]
    assert {chunk.source for chunk in chunks} == {f"table orders at {database.url}"}
    assert all(chunk.rejects.num_rows == 0 for chunk in chunks)


def test_a_query_runs_as_written(database: Database) -> None:
    _orders(database, [1, 2, 3])
    sql = (
        "SELECT id, ':not_a_param' AS tag, '%s' AS pct FROM orders -- the big ones\n"
        "WHERE amount > 2 ORDER BY id DESC;"
    )
    table = _table(SQLSource(database.url, query=sql))
    assert table.to_pylist() == [
        {"id": 3, "tag": ":not_a_param", "pct": "%s", LOCATION: 1},
        {"id": 2, "tag": ":not_a_param", "pct": "%s", LOCATION: 2},
    ]


def test_an_empty_result_yields_one_empty_chunk_with_the_columns(database: Database) -> None:
    chunks = _chunks(SQLSource(database.url, table="orders"))
    assert len(chunks) == 1
    assert chunks[0].rows == 0
    assert chunks[0].batch.schema.names == ["id", "customer", "amount", LOCATION]
    assert chunks[0].batch.schema.field("id").type in (pa.int32(), pa.int64())
    assert chunks[0].batch.schema.field("customer").type == pa.string()


def test_chunk_schemas_agree_when_a_column_is_null_in_early_chunks(database: Database) -> None:
    database.insert(
        "orders",
        [{"id": i, "customer": None if i < 5 else "late", "amount": None} for i in range(8)],
    )
    chunks = _chunks(SQLSource(database.url, table="orders", cursor="id", chunk_rows=2))
    assert len({chunk.batch.schema for chunk in chunks}) == 1
    assert chunks[0].batch.schema.field("customer").type == pa.string()
    assert chunks[0].batch.schema.field("amount").type in (pa.float32(), pa.float64())


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 40), chunk_rows=st.integers(1, 12))
def test_every_row_is_read_once_in_order_with_its_location(rows: int, chunk_rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{Path(folder) / 'p.db'}")
        db.run("CREATE TABLE t (k INTEGER, v TEXT)")
        if rows:
            db.insert("t", [{"k": 1000 - i, "v": str(i)} for i in range(rows)])
        chunks = _chunks(SQLSource(db.url, table="t", cursor="k", chunk_rows=chunk_rows))
        db.engine.dispose()
    assert all(0 < chunk.rows <= chunk_rows for chunk in chunks if rows)
    assert len(chunks) == max(1, -(-rows // chunk_rows))
    table = pa.Table.from_batches([chunk.batch for chunk in chunks])
    assert table.column("k").to_pylist() == sorted(1000 - i for i in range(rows))
    assert table.column(LOCATION).to_pylist() == list(range(1, rows + 1))


@pytest.mark.services("postgres")
def test_postgres_reads_through_a_server_side_cursor(postgres_url: str) -> None:
    # pg_cursors lists the session's named cursors; a client-side read has none.
    sql = (
        "SELECT g, (SELECT count(*) FROM pg_cursors WHERE name <> '') AS open "
        "FROM generate_series(1, 5) g"
    )
    table = _table(SQLSource(postgres_url, query=sql, chunk_rows=2))
    assert table.column("open").to_pylist() == [1] * 5
    assert table.column("g").to_pylist() == [1, 2, 3, 4, 5]


# -- types -----------------------------------------------------------------------------------


@pytest.mark.services("postgres")
def test_postgres_types_map_to_arrow(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.run(
        "CREATE TABLE kinds (i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, "
        "money numeric(12, 2), big numeric(50, 10), loose numeric, flag boolean, "
        "label text, code varchar(5), letter char(2), at timestamptz, naive timestamp, "
        "day date, clock time, took interval, raw bytea, doc jsonb, id uuid, tags text[])",
        "INSERT INTO kinds VALUES (-3, 70000, 9007199254740993, 1.5, 0.1, 1234.56, "
        "12345678901234567890.0123456789, 1.25, true, 'é', 'ab', 'x', "
        "'2024-03-01 12:00+09', '2024-03-01 12:00', '2024-03-01', '13:45:01.5', "
        "'1 day 2 hours', '\\x0102', '{\"a\": [1, 2], \"b\": null}', "
        "'6f1c9f1e-8a8e-4a3c-9d5e-0f9e0a1b2c3d', '{x,y}')",
        "INSERT INTO kinds DEFAULT VALUES",
    )
    table = _table(SQLSource(postgres_url, table="kinds"))
    db.engine.dispose()
    expected = {
        "i2": pa.int16(),
        "i4": pa.int32(),
        "i8": pa.int64(),
        "f4": pa.float32(),
        "f8": pa.float64(),
        "money": pa.decimal128(12, 2),
        "big": pa.decimal256(50, 10),
        "loose": pa.float64(),
        "flag": pa.bool_(),
        "label": pa.string(),
        "code": pa.string(),
        "letter": pa.string(),
        "at": pa.timestamp("us", tz="UTC"),
        "naive": pa.timestamp("us"),
        "day": pa.date32(),
        "clock": pa.time64("us"),
        "took": pa.duration("us"),
        "raw": pa.binary(),
        "doc": pa.string(),
        "id": pa.string(),
        "tags": pa.list_(pa.string()),
        LOCATION: pa.int64(),
    }
    assert {field.name: field.type for field in table.schema} == expected
    first, nulls = table.to_pylist()
    assert first == {
        "i2": -3,
        "i4": 70000,
        "i8": 9007199254740993,
        "f4": 1.5,
        "f8": 0.1,
        "money": decimal.Decimal("1234.56"),
        "big": decimal.Decimal("12345678901234567890.0123456789"),
        "loose": 1.25,
        "flag": True,
        "label": "é",
        "code": "ab",
        "letter": "x ",
        "at": dt.datetime(2024, 3, 1, 3, 0, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 3, 1, 12, 0),
        "day": dt.date(2024, 3, 1),
        "clock": dt.time(13, 45, 1, 500000),
        "took": dt.timedelta(days=1, hours=2),
        "raw": b"\x01\x02",
        "doc": '{"a":[1,2],"b":null}',
        "id": "6f1c9f1e-8a8e-4a3c-9d5e-0f9e0a1b2c3d",
        "tags": ["x", "y"],
        LOCATION: 1,
    }
    assert nulls == dict.fromkeys(expected) | {LOCATION: 2}


@pytest.mark.services("postgres")
def test_postgres_time_zone_of_the_session_does_not_change_instants(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.run(
        "CREATE TABLE events (at timestamptz)", "INSERT INTO events VALUES ('2024-07-01 12:00Z')"
    )
    db.engine.dispose()
    options = make_url(postgres_url).query["options"]
    berlin = make_url(postgres_url).update_query_dict(
        {"options": f"{options} -cTimeZone=Europe/Berlin"}
    )
    table = _table(SQLSource(berlin.render_as_string(hide_password=False), table="events"))
    assert table.column("at").to_pylist() == [dt.datetime(2024, 7, 1, 12, tzinfo=dt.UTC)]


@pytest.mark.services("postgres")
def test_postgres_types_loopline_does_not_map_come_through_as_text(postgres_url: str) -> None:
    sql = "SELECT '10.0.0.1'::inet AS host, 'x' AS other UNION ALL SELECT NULL, 'y'"
    table = _table(SQLSource(postgres_url, query=sql))
    assert table.column("host").type == pa.string()
    assert table.column("host").to_pylist() == ["10.0.0.1", None]


def test_sqlite_declared_types_map_by_affinity(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'kinds.db'}")
    db.run(
        "CREATE TABLE kinds (n INTEGER, big BIGINT, x REAL, d DOUBLE, s TEXT, v VARCHAR(9), "
        "b BLOB, flag BOOLEAN, price DECIMAL(10, 2), at DATETIME, anything)",
        "INSERT INTO kinds VALUES (1, 2, 1.5, 2.5, 'a', 'b', x'00ff', 1, 9.99, "
        "'2024-03-01 12:00:00', 7)",
        "INSERT INTO kinds VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 10, NULL, NULL)",
    )
    table = _table(SQLSource(db.url, table="kinds"))
    db.engine.dispose()
    assert {field.name: field.type for field in table.schema} == {
        "n": pa.int64(),
        "big": pa.int64(),
        "x": pa.float64(),
        "d": pa.float64(),
        "s": pa.string(),
        "v": pa.string(),
        "b": pa.binary(),
        "flag": pa.bool_(),
        "price": pa.float64(),
        "at": pa.string(),  # SQLite keeps text; parsing it is the contract's to declare
        "anything": pa.int64(),  # untyped: the type of its values
        LOCATION: pa.int64(),
    }
    assert table.to_pylist()[0] == {
        "n": 1,
        "big": 2,
        "x": 1.5,
        "d": 2.5,
        "s": "a",
        "v": "b",
        "b": b"\x00\xff",
        "flag": True,
        "price": 9.99,
        "at": "2024-03-01 12:00:00",
        "anything": 7,
        LOCATION: 1,
    }
    assert table.column("flag").to_pylist() == [True, False]
    assert table.column("price").to_pylist() == [9.99, 10.0]


def test_sqlite_values_that_do_not_fit_their_column_go_to_rejects(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'loose.db'}")
    db.run(
        "CREATE TABLE t (id INTEGER, n INTEGER, s TEXT)",
        "INSERT INTO t VALUES (1, 10, 'a'), (2, 'ten', 'b'), (3, 1.5, 'c'), (4, 40, 'd')",
    )
    chunks = _chunks(SQLSource(db.url, table="t", cursor="id", chunk_rows=3))
    db.engine.dispose()
    batch_rows = [row for chunk in chunks for row in chunk.batch.to_pylist()]
    rejects = pa.concat_tables([chunk.rejects for chunk in chunks]).to_pylist()
    assert [row["id"] for row in batch_rows] == [1, 4]
    assert [row[LOCATION] for row in batch_rows] == [1, 4]
    assert [r["location"] for r in rejects] == [2, 3]
    assert rejects[0]["raw"] == '{"id":2,"n":"ten","s":"b"}'
    assert "column 'n': 'ten' (str) does not fit the column's type int64" in rejects[0]["reason"]
    assert "1.5 (float)" in rejects[1]["reason"]
    assert sum(chunk.rows for chunk in chunks) + len(rejects) == 4


def test_sqlite_untyped_columns_of_mixed_values_come_through_as_text(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'mixed.db'}")
    db.run("CREATE TABLE t (v)", "INSERT INTO t VALUES (1), ('one'), (NULL)")
    table = _table(SQLSource(db.url, query="SELECT v || '' AS w, v FROM t"))
    db.engine.dispose()
    assert table.column("v").to_pylist() == ["1", "one", None]
    assert table.column("w").to_pylist() == ["1", "one", None]


# -- incremental reads -----------------------------------------------------------------------


def test_since_reads_only_rows_after_the_cursor_value(database: Database) -> None:
    _orders(database, [5, 1, 3])
    source = SQLSource(database.url, table="orders", cursor="id")
    first = _table(source)
    assert first.column("id").to_pylist() == [1, 3, 5]  # in the cursor's order
    last = pc.max(first.column("id"))
    assert _table(source.since(last)).num_rows == 0  # nothing new
    _orders(database, [7, 6])
    newer = _table(source.since(last))
    assert newer.column("id").to_pylist() == [6, 7]
    assert newer.column(LOCATION).to_pylist() == [1, 2]
    assert source.since_value is None  # since() returns a copy
    assert _table(source.since(None)).num_rows == 5


def test_since_takes_numpy_and_arrow_scalars_and_the_source_pickles(database: Database) -> None:
    _orders(database, [1, 2, 3])
    source = SQLSource(database.url, table="orders", cursor="id")
    ids = _table(source).column("id")
    assert _table(source.since(ids.to_numpy()[1])).column("id").to_pylist() == [3]
    assert _table(source.since(ids[0])).column("id").to_pylist() == [2, 3]
    copied = pickle.loads(pickle.dumps(source.since(1)))
    assert copied.since_value == 1
    assert _table(copied).column("id").to_pylist() == [2, 3]


def test_since_on_a_query_wraps_it(database: Database) -> None:
    _orders(database, [1, 2, 3, 4])
    source = SQLSource(
        database.url,
        query="SELECT id AS k, amount FROM orders WHERE customer <> 'c0' -- note\n;",
        cursor="k",
    )
    assert _table(source).column("k").to_pylist() == [1, 2, 4]
    assert _table(source.since(2)).column("k").to_pylist() == [4]


@pytest.mark.services("postgres")
def test_since_with_a_timestamp_cursor_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.run(
        "CREATE TABLE events (id int, at timestamptz)",
        "INSERT INTO events VALUES (1, '2024-01-01 10:00+01'), (2, '2024-01-01 10:00Z')",
    )
    source = SQLSource(postgres_url, table="events", cursor="at")
    last = pc.max(_table(source).column("at"))
    assert _table(source.since(last)).num_rows == 0
    db.run("INSERT INTO events VALUES (3, '2024-01-01 10:00:00.000001Z')")
    db.engine.dispose()
    assert _table(source.since(last)).column("id").to_pylist() == [3]


def test_since_needs_a_cursor(database: Database) -> None:
    with pytest.raises(SourceError, match=r"no cursor column.*cursor='updated_at'"):
        SQLSource(database.url, table="orders").since(3)


# -- schema changes --------------------------------------------------------------------------


def test_a_table_whose_schema_changed_comes_through_with_its_new_columns(
    database: Database,
) -> None:
    _orders(database, [1, 2])
    source = SQLSource(database.url, table="orders", cursor="id")
    assert _table(source).column_names == ["id", "customer", "amount", LOCATION]
    database.run(
        "ALTER TABLE orders ADD COLUMN channel TEXT", "ALTER TABLE orders DROP COLUMN amount"
    )
    database.insert("orders", [{"id": 3, "customer": "c9", "channel": "web"}])
    table = _table(source)
    assert table.column_names == ["id", "customer", "channel", LOCATION]
    assert table.column("channel").to_pylist() == [None, None, "web"]
    assert _table(source.since(2)).to_pylist() == [
        {"id": 3, "customer": "c9", "channel": "web", LOCATION: 1}
    ]


@pytest.mark.services("postgres")
def test_a_postgres_column_whose_type_changed_comes_through_with_its_new_type(
    postgres_url: str,
) -> None:
    db = Database(postgres_url)
    db.run("CREATE TABLE t (id int, v int)", "INSERT INTO t VALUES (1, 10)")
    source = SQLSource(postgres_url, table="t")
    assert _table(source).schema.field("v").type == pa.int32()
    db.run("ALTER TABLE t ALTER COLUMN v TYPE text")
    db.engine.dispose()
    table = _table(source)
    assert table.schema.field("v").type == pa.string()
    assert table.column("v").to_pylist() == ["10"]


# -- partitions and fingerprints -------------------------------------------------------------


def test_one_partition_fingerprinted_by_the_data(database: Database) -> None:
    _orders(database, [1, 2])
    source = SQLSource(database.url, table="orders")
    [partition] = source.partitions()
    assert partition.key == "all rows"
    assert partition.source == f"table orders at {database.url}"
    assert len(partition.fingerprint) == 64
    assert source.partitions() == [partition]
    database.run("UPDATE orders SET customer = 'zed' WHERE id = 2")
    assert source.partitions()[0].fingerprint != partition.fingerprint


def test_a_cursor_fingerprints_by_its_maximum_and_since_by_its_value(database: Database) -> None:
    _orders(database, [1, 2])
    source = SQLSource(database.url, table="orders", cursor="id")
    before = source.partitions()[0].fingerprint
    # As for Query(changed_column=...): a change that does not raise the cursor goes unseen.
    database.run("UPDATE orders SET customer = 'zed' WHERE id = 2")
    assert source.partitions()[0].fingerprint == before
    _orders(database, [3])
    after = source.partitions()[0].fingerprint
    assert after != before
    newer = source.since(2)
    assert newer.partitions()[0].key == "id > 2"
    assert newer.partitions()[0].fingerprint not in (before, after)
    assert newer.partitions()[0].fingerprint != source.since(1).partitions()[0].fingerprint


def test_a_query_is_fingerprinted_by_the_tables_it_reads(database: Database) -> None:
    _orders(database, [1, 2])
    source = SQLSource(
        database.url, query="SELECT customer, sum(amount) AS total FROM orders GROUP BY customer"
    )
    before = source.partitions()[0].fingerprint
    database.run("UPDATE orders SET amount = 0 WHERE id = 1")
    assert source.partitions()[0].fingerprint != before


def test_a_partition_of_another_source_is_refused(database: Database) -> None:
    [partition] = SQLSource(database.url, table="orders").partitions()
    with pytest.raises(ValueError, match="does not belong"):
        next(SQLSource(database.url, query="SELECT 1 AS x").read(partition))


# -- errors ----------------------------------------------------------------------------------


def test_a_missing_table_is_a_source_error_naming_it(database: Database) -> None:
    source = SQLSource(database.url, table="nowhere")
    with pytest.raises(
        SourceError, match=r"SQL source 'nowhere' cannot read table 'nowhere'"
    ) as caught:
        source.partitions()
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    assert caught.value.source == "nowhere"  # type: ignore[attr-defined]
    partition = Partition(source=f"table nowhere at {database.url}", key="all rows", fingerprint="")
    with pytest.raises(SourceError, match="Check that the table exists"):
        next(source.read(partition))


def test_bad_sql_is_a_source_error_showing_it(database: Database) -> None:
    source = SQLSource(database.url, query="SELEC id FROM orders", name="broken")
    with pytest.raises(SourceError, match=r"The query of SQL source 'broken' failed .*SELEC id"):
        source.partitions()


def test_a_missing_cursor_column_is_named(database: Database) -> None:
    source = SQLSource(database.url, table="orders", cursor="updated_at")
    with pytest.raises(SourceError, match="has the cursor column 'updated_at'"):
        source.partitions()
    with pytest.raises(SourceError, match="has the cursor column 'updated_at'"):
        source.since(3).partitions()


def test_duplicate_column_names_are_a_source_error(database: Database) -> None:
    source = SQLSource(database.url, query="SELECT o.id, p.id FROM orders o JOIN orders p ON true")
    with pytest.raises(SourceError, match="column named 'id' twice"):
        _chunks(source)


def test_unreachable_postgres_is_a_source_error_without_the_password() -> None:
    source = SQLSource(f"postgresql://loader:{SECRET}@127.0.0.1:1/warehouse", table="orders")
    with pytest.raises(
        SourceError, match=r"SQL source 'orders' cannot connect .*127\.0\.0\.1:1"
    ) as caught:
        source.partitions()
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)
    assert "***" in str(caught.value)


def test_a_missing_sqlite_file_is_a_source_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(SourceError, match="no SQLite database at"):
        SQLSource(f"sqlite:///{path}", table="t").partitions()
    assert not path.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "sqlite:///x.db"}, "exactly one of"),
        ({"url": "sqlite:///x.db", "table": "t", "query": "SELECT 1"}, "exactly one of"),
        ({"url": "sqlite:///x.db", "table": " "}, "'table' parameter of SQLSource"),
        ({"url": "sqlite:///x.db", "query": " -- no\n;"}, "'query' parameter of SQLSource"),
        ({"url": "sqlite:///x.db", "table": "t", "chunk_rows": 0}, "'chunk_rows' parameter"),
        ({"url": "sqlite:///x.db", "table": "t", "chunk_rows": True}, "'chunk_rows' parameter"),
        ({"url": "sqlite:///x.db", "table": "t", "cursor": ""}, "'cursor' parameter"),
        ({"url": "sqlite:///x.db", "table": "t", "name": ""}, "'name' parameter"),
        ({"url": "not a url", "table": "t"}, "'url' parameter of SQLSource"),
        ({"url": "", "table": "t"}, "'url' parameter of SQLSource"),
    ],
)
def test_invalid_parameters_are_source_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        SQLSource(**kwargs)  # type: ignore[arg-type]


def test_repr_hides_the_password() -> None:
    source = SQLSource(f"postgresql://u:{SECRET}@h/db", table="t", cursor="id").since(4)
    assert repr(source) == "SQLSource('postgresql://u:***@h/db', table='t', cursor='id', since=4)"


@pytest.mark.services("postgres")
def test_a_reader_that_stops_early_closes_the_cursor(postgres_url: str) -> None:
    source = SQLSource(
        postgres_url, query="SELECT g FROM generate_series(1, 100000) g", chunk_rows=10
    )
    chunks = source.read(source.partitions()[0])
    assert next(chunks).batch.column("g").to_pylist() == list(range(1, 11))
    chunks.close()  # no ResourceWarning: the server-side cursor and connection are closed
