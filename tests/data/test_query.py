"""Query: SQL inputs fingerprinted by their text and their tables' contents.

The behaviour tests run over every backend (a SQLite file, and a fresh PostgreSQL schema
from the ``postgres_url`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from loopline import Query
from loopline.errors import LooplineError, SourceError
from loopline.types import Fingerprinted

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.services("postgres")),
]
SECRET = "s3cret-Pa55"

ORDERS = [
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL, "
    "note TEXT, updated_at INTEGER)",
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)",
    "INSERT INTO customers VALUES (1, 'ada'), (2, 'bob')",
    "INSERT INTO orders VALUES (1, 1, 9.5, 'first', 1), (2, 2, 20.0, NULL, 1), "
    "(3, 1, 31.25, 'x%y:z', 1)",
]


class Database:
    """A database for one test: its URL, and a way to write to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def run(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                # Escaped so that '%' and ':' reach the server as written, as in Query.
                conn.execute(sa.text(statement.replace(":", "\\:")))

    def scalar(self, sql: str) -> object:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()

    @property
    def schema(self) -> str:
        """The schema unqualified names land in (``main`` on SQLite)."""
        if self.engine.dialect.name == "sqlite":
            return "main"
        return str(self.scalar("SELECT current_schema()"))


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    db = Database(url)
    db.run(*ORDERS)
    yield db
    db.engine.dispose()


def _query(db: Database, sql: str = "SELECT * FROM orders", **kwargs: object) -> Query:
    return Query(db.url, sql, **kwargs)  # type: ignore[arg-type]


def _with_password(url: str) -> str:
    """The same database with a password in the URL (trust auth and SQLite ignore it)."""
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


# -- fingerprint -----------------------------------------------------------------------------


def test_same_data_gives_the_same_fingerprint(database: Database) -> None:
    query = _query(database)
    assert query.fingerprint() == query.fingerprint() == _query(database).fingerprint()
    assert len(query.fingerprint()) == 64


def test_insert_changes_the_fingerprint(database: Database) -> None:
    query = _query(database)
    before = query.fingerprint()
    database.run("INSERT INTO orders VALUES (4, 2, 5.0, NULL, 1)")
    assert query.fingerprint() != before


def test_update_that_keeps_the_row_count_changes_the_fingerprint(database: Database) -> None:
    query = _query(database)
    before = query.fingerprint()
    database.run("UPDATE orders SET amount = 21.0 WHERE id = 2")
    assert database.scalar("SELECT count(*) FROM orders") == 3
    assert query.fingerprint() != before


def test_delete_changes_the_fingerprint(database: Database) -> None:
    query = _query(database)
    before = query.fingerprint()
    database.run("DELETE FROM orders WHERE id = 3")
    assert query.fingerprint() != before


def test_delete_and_insert_with_the_same_count_changes_the_fingerprint(
    database: Database,
) -> None:
    query = _query(database)
    before = query.fingerprint()
    database.run(
        "DELETE FROM orders WHERE id = 3", "INSERT INTO orders VALUES (3, 1, 31.5, 'x', 1)"
    )
    assert query.fingerprint() != before


def test_writing_back_the_same_rows_gives_the_fingerprint_back(database: Database) -> None:
    query = _query(database)
    before = query.fingerprint()
    database.run("UPDATE orders SET note = 'changed' WHERE id = 1")
    assert query.fingerprint() != before
    database.run("UPDATE orders SET note = 'first' WHERE id = 1")
    assert query.fingerprint() == before


def test_a_change_to_a_joined_table_changes_the_fingerprint(database: Database) -> None:
    query = _query(
        database, "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id"
    )
    assert query.tables == ("orders", "customers")
    before = query.fingerprint()
    database.run("UPDATE customers SET name = 'bea' WHERE id = 2")
    assert query.fingerprint() != before


def test_different_sql_changes_the_fingerprint(database: Database) -> None:
    base = _query(database, "SELECT id FROM orders WHERE amount > 10")
    assert _query(database, "SELECT id FROM orders WHERE amount > 20").fingerprint() != (
        base.fingerprint()
    )
    layout_only = "select id\n  FROM orders -- big ones\n WHERE amount > 10 ;"
    assert _query(database, layout_only.replace("select", "SELECT")).fingerprint() == (
        base.fingerprint()
    )


def test_schema_qualified_and_quoted_tables_are_fingerprinted(database: Database) -> None:
    database.run('CREATE TABLE "Order Items" (order_id INTEGER, sku TEXT)')
    database.run("""INSERT INTO "Order Items" VALUES (1, 'a'), (2, 'b')""")
    sql = f'SELECT * FROM {database.schema}.orders o JOIN "Order Items" i ON i.order_id = o.id'
    query = _query(database, sql)
    assert query.tables == (f"{database.schema}.orders", '"Order Items"')
    before = query.fingerprint()
    database.run("""UPDATE "Order Items" SET sku = 'c' WHERE order_id = 2""")
    assert query.fingerprint() != before
    assert query.read().num_rows == 2


def test_changed_column_replaces_the_checksum_with_its_maximum(database: Database) -> None:
    query = _query(database, changed_column="updated_at")
    before = query.fingerprint()
    database.run("UPDATE orders SET amount = 1.0, updated_at = 2 WHERE id = 1")
    bumped = query.fingerprint()
    assert bumped != before
    # The documented trade-off: a writer that does not raise the column goes unseen.
    database.run("UPDATE orders SET amount = 2.0 WHERE id = 1")
    assert query.fingerprint() == bumped
    database.run("DELETE FROM orders WHERE id = 2")
    assert query.fingerprint() != bumped


# -- read ------------------------------------------------------------------------------------


def test_read_returns_the_rows(database: Database) -> None:
    table = _query(database, "SELECT id, amount, note FROM orders ORDER BY id").read()
    assert table.column_names == ["id", "amount", "note"]
    assert table.to_pylist() == [
        {"id": 1, "amount": 9.5, "note": "first"},
        {"id": 2, "amount": 20.0, "note": None},
        {"id": 3, "amount": 31.25, "note": "x%y:z"},
    ]


def test_read_sends_the_sql_as_written(database: Database) -> None:
    sql = "SELECT id, ':not_a_param' AS tag FROM orders WHERE note LIKE '%y:z' AND note <> '%s'"
    assert _query(database, sql).read().to_pylist() == [{"id": 3, "tag": ":not_a_param"}]


def test_read_of_an_empty_result_keeps_the_columns(database: Database) -> None:
    table = _query(database, "SELECT id, note FROM orders WHERE id < 0").read()
    assert table.column_names == ["id", "note"]
    assert table.num_rows == 0


# -- errors ----------------------------------------------------------------------------------


def test_missing_table_is_a_source_error_naming_it(database: Database) -> None:
    query = _query(database, "SELECT * FROM orders JOIN nowhere ON true")
    with pytest.raises(SourceError, match=r"table 'nowhere'.*tables=\[") as caught:
        query.fingerprint()
    assert caught.value.table == "nowhere"  # type: ignore[attr-defined]
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    with pytest.raises(SourceError, match="nowhere"):
        query.read()


def test_bad_sql_is_a_source_error(database: Database) -> None:
    with pytest.raises(SourceError, match=r"The query failed at .*SELEC id FROM orders"):
        _query(database, "SELEC id FROM orders", tables=[]).read()


def test_missing_changed_column_is_named_in_the_error(database: Database) -> None:
    query = _query(database, changed_column="modified_at")
    with pytest.raises(SourceError, match="'modified_at' \\(changed_column\\)"):
        query.fingerprint()


def test_password_never_appears_in_params_or_errors(database: Database) -> None:
    url = _with_password(database.url)
    query = Query(url, "SELECT * FROM orders JOIN nowhere ON true")
    assert SECRET not in str(query.to_param())
    assert SECRET not in repr(query)
    for action in (query.fingerprint, query.read):
        with pytest.raises(SourceError) as caught:
            action()
        assert SECRET not in str(caught.value)
        assert SECRET not in str(caught.value.context)


def test_unreachable_postgres_is_a_source_error_without_the_password() -> None:
    url = f"postgresql://loader:{SECRET}@127.0.0.1:1/warehouse"
    query = Query(url, "SELECT * FROM orders")
    with pytest.raises(SourceError, match=r"Cannot connect .*127\.0\.0\.1:1/warehouse") as caught:
        query.fingerprint()
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    with pytest.raises(SourceError, match="Cannot connect"):
        query.read()


def test_missing_sqlite_file_is_a_source_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(SourceError, match="No SQLite database at"):
        Query(f"sqlite:///{path}", "SELECT * FROM t").fingerprint()
    assert not path.exists()


def test_values_arrow_cannot_hold_are_a_source_error(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'mixed.db'}")
    db.run("CREATE TABLE t (v)", "INSERT INTO t VALUES (1), ('one')")
    with pytest.raises(SourceError, match=r"Column 'v'.*CAST\(v AS TEXT\)"):
        Query(db.url, "SELECT v FROM t").read()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "sqlite:///x.db", "sql": ""}, "'sql' parameter of Query"),
        ({"url": "sqlite:///x.db", "sql": " -- nothing\n ; "}, "'sql' parameter of Query"),
        ({"url": "", "sql": "SELECT 1"}, "'url' parameter of Query"),
        ({"url": "not a url", "sql": "SELECT 1"}, "'url' parameter of Query"),
        ({"url": "sqlite:///x.db", "sql": "SELECT 1", "tables": "t"}, "'tables' parameter"),
        ({"url": "sqlite:///x.db", "sql": "SELECT 1", "tables": [""]}, "'tables' parameter"),
        ({"url": "sqlite:///x.db", "sql": "SELECT 1", "changed_column": ""}, "changed_column"),
    ],
)
def test_invalid_parameters_are_source_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        Query(**kwargs)  # type: ignore[arg-type]


# -- PostgreSQL specifics --------------------------------------------------------------------


@pytest.mark.services("postgres")
def test_postgres_session_settings_do_not_change_the_fingerprint(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.run(
        "CREATE TABLE events (at timestamptz, took interval, ratio float8, raw bytea)",
        "INSERT INTO events VALUES ('2024-03-01 12:00+00', '90 minutes', 0.1, 'ab')",
    )
    options = make_url(postgres_url).query["options"]
    tokyo = make_url(postgres_url).update_query_dict(
        {"options": f"{options} -cTimeZone=Asia/Tokyo -cDateStyle=German"}
    )
    sql = "SELECT * FROM events"
    plain = Query(postgres_url, sql).fingerprint()
    assert Query(tokyo.render_as_string(hide_password=False), sql).fingerprint() == plain
    db.engine.dispose()


@pytest.mark.services("postgres")
def test_postgres_views_are_fingerprinted_by_their_rows(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.run(*ORDERS, "CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 10")
    query = Query(postgres_url, "SELECT * FROM big_orders")
    before = query.fingerprint()
    db.run("UPDATE orders SET note = 'seen' WHERE id = 2")
    assert query.fingerprint() != before
    db.engine.dispose()


# -- table detection and SQL text ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM orders", ("orders",)),
        ("select * from orders;", ("orders",)),
        (
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id "
            "LEFT OUTER JOIN regions AS r USING (region_id)",
            ("orders", "customers", "regions"),
        ),
        ("SELECT * FROM sales.orders, public.customers c", ("sales.orders", "public.customers")),
        (
            'SELECT * FROM "Sales"."Order Items" JOIN "weird ""name""" w ON true',
            ('"Sales"."Order Items"', '"weird ""name"""'),
        ),
        ("SELECT * FROM [my table] JOIN `db`.`t` ON 1", ("[my table]", "`db`.`t`")),
        (
            "SELECT * FROM (SELECT * FROM a) s, b, LATERAL (SELECT 1 FROM c) l",
            ("a", "b", "c"),
        ),
        ("SELECT * FROM ((a JOIN b ON true) JOIN c ON true), d", ("a", "b", "c", "d")),
        ("SELECT x FROM t WHERE y IN (SELECT y FROM u)", ("t", "u")),
        (
            "WITH recent AS (SELECT * FROM events), r2 (n) AS MATERIALIZED (SELECT 1 FROM recent) "
            "SELECT * FROM recent JOIN r2 ON true JOIN users ON true",
            ("events", "users"),
        ),
        (
            "SELECT extract(year FROM ts), trim(both ' ' FROM name), a IS DISTINCT FROM b FROM t",
            ("t",),
        ),
        ("SELECT * FROM generate_series(1, 3) AS g(n), t", ("t",)),
        ("SELECT 'FROM x', $$ FROM y $$ FROM t -- FROM z\n /* JOIN w */", ("t",)),
        ('SELECT * FROM Orders JOIN orders ON true JOIN "Orders" ON true', ("Orders", '"Orders"')),
        ("SELECT 1", ()),
    ],
)
def test_tables_are_detected_from_the_sql(sql: str, tables: tuple[str, ...]) -> None:
    assert Query("sqlite:///unused.db", sql).tables == tables


def test_explicit_tables_replace_the_detected_ones() -> None:
    query = Query("sqlite:///unused.db", "SELECT * FROM v", tables=["a", "s.b"])
    assert query.tables == ("a", "s.b")
    assert query.to_param()["tables"] == ["a", "s.b"]


def test_to_param_is_json_and_redacts_every_password() -> None:
    url = f"postgresql://loader:{SECRET}@db.internal:5432/warehouse?password={SECRET}"
    query = Query(url, "SELECT * FROM orders")
    assert query.to_param() == {
        "url": "postgresql://loader:***@db.internal:5432/warehouse?password=%2A%2A%2A",
        "sql": "SELECT * FROM orders",
        "tables": ["orders"],
        "changed_column": None,
    }
    assert SECRET not in repr(query)


def test_query_is_a_fingerprinted_parameter_that_pickles() -> None:
    query = Query("sqlite:///shop.db", "SELECT * FROM t", changed_column="updated_at")
    assert isinstance(query, Fingerprinted)
    assert pickle.loads(pickle.dumps(query)) == query
    assert hash(query) == hash(
        Query("sqlite:///shop.db", "SELECT * FROM t", changed_column="updated_at")
    )
    assert query != Query("sqlite:///shop.db", "SELECT * FROM t")
    assert issubclass(SourceError, LooplineError)


_LAYOUT = st.lists(st.sampled_from([" ", "  ", "\n", "\t", " -- note\n", " /* c */ "]), min_size=4)
_LITERAL = st.text(
    alphabet=st.characters(blacklist_characters="'\x00", blacklist_categories=("Cs",)), max_size=8
)


def test_sql_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(SourceError, match="not valid Unicode"):
        Query("sqlite:///unused.db", "SELECT '\ud800'")


@settings(max_examples=60, deadline=None)
@given(layout=_LAYOUT, text=_LITERAL)
def test_layout_outside_literals_does_not_change_the_fingerprint(
    layout: list[str], text: str
) -> None:
    words = ["SELECT", f"'{text}'", "AS", "v", "WHERE", "1=1"]
    spaced = "".join(w + s for w, s in zip(words, layout + [" "] * len(words), strict=False))
    plain = " ".join(words)
    # No table: the fingerprint is the SQL's alone, and nothing connects.
    assert Query("sqlite:///unused.db", spaced).fingerprint() == (
        Query("sqlite:///unused.db", plain).fingerprint()
    )


@settings(max_examples=60, deadline=None)
@given(first=_LITERAL, second=_LITERAL)
def test_literals_change_the_fingerprint(first: str, second: str) -> None:
    one = Query("sqlite:///unused.db", f"SELECT '{first}'").fingerprint()
    two = Query("sqlite:///unused.db", f"SELECT '{second}'").fingerprint()
    assert (one == two) == (first == second)
