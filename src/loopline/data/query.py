"""SQL inputs that the pipeline cache fingerprints by the query and its tables' contents.

The fingerprint is decided in docs/decisions/0002-sql-fingerprint.md: the normalized SQL
text plus, per table the query reads, its row count and an order-independent checksum of
its rows (or, when a ``changed_column`` is named, that column's maximum instead).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from loopline.errors import SourceError

__all__ = ["Query"]

_REDACTED = "***"
_BATCH = 10_000
# Pin the settings that change how PostgreSQL prints values, so the same rows give the same
# checksum whatever the client's time zone or date style. SET LOCAL: the transaction is
# rolled back when the connection closes, so the session is left as it was.
_PG_SETTINGS = (
    "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),"
    " set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true),"
    " set_config('bytea_output', 'hex', true)"
)


class Query:
    """A SQL query read by a step, fingerprinted by its text and its tables' contents.

    As a step parameter, ``Query`` makes the step's cache key depend on the data the query
    reads: ``fingerprint()`` hashes the normalized SQL text (runs of whitespace and
    comments count as one space; string literals are kept as written) and, for each table,
    its row count and a checksum of its rows. Every committed insert, update or delete
    changes the fingerprint, including an update that keeps the row count; restoring the
    same rows gives the same fingerprint back. The checksum costs a full scan of each table
    on every run (on PostgreSQL it is computed by the server; elsewhere the rows are
    streamed and hashed here). For large tables whose writers always bump a timestamp, name
    that column as ``changed_column``: the fingerprint then uses ``count(*)`` and
    ``max(changed_column)`` instead, which is much cheaper but misses a change that does
    not raise the column's maximum.

    Parameters
    ----------
    url : str
        A SQLAlchemy database URL, such as ``sqlite:///data/shop.db`` or
        ``postgresql://user:password@host:5432/dbname`` (``postgresql://`` uses psycopg 3).
        The password never appears in ``to_param()``, ``repr()`` or error messages.
    sql : str
        The query. It runs as written: ``:name`` and ``%`` are not parameter markers.
    tables : sequence of str, optional
        The tables whose contents the fingerprint covers, each written as it would be in
        SQL (``orders``, ``sales.orders``, ``"Order Items"``). By default, the names that
        follow ``FROM`` and ``JOIN`` in ``sql``, outside function calls and without the
        query's own ``WITH`` names. The detection reads quotes and comments but is not a
        full SQL parser: pass ``tables`` when the query reads tables through a view or a
        function, or when the detected list is wrong.
    changed_column : str, optional
        A column, written as in SQL, that every writer of the tables raises on each change
        (an ``updated_at`` timestamp or a version counter). It replaces the checksum's full
        scan with ``count(*)`` and ``max(changed_column)``.

    Examples
    --------
    >>> import sqlite3, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "shop.db"
    >>> db = sqlite3.connect(path)
    >>> _ = db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)")
    >>> _ = db.executemany("INSERT INTO orders (amount) VALUES (?)", [(9.5,), (20.0,)])
    >>> db.commit()
    >>> query = Query(f"sqlite:///{path}", "SELECT id, amount FROM orders WHERE amount > 10")
    >>> query.tables
    ('orders',)
    >>> query.read().to_pylist()
    [{'id': 2, 'amount': 20.0}]
    >>> before = query.fingerprint()
    >>> _ = db.execute("UPDATE orders SET amount = 30.0 WHERE id = 2")
    >>> db.commit()
    >>> query.fingerprint() == before
    False
    >>> db.close()
    """

    def __init__(
        self,
        url: str,
        sql: str,
        *,
        tables: Sequence[str] | None = None,
        changed_column: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise SourceError(
                f"The 'url' parameter of Query must be a database URL such as "
                f"'sqlite:///data/shop.db' or 'postgresql://user@host:5432/dbname'. "
                f"Got {_redact_url(url) if isinstance(url, str) else url!r}.",
            )
        try:
            make_url(url)
        except ArgumentError as exc:
            raise SourceError(
                f"The 'url' parameter of Query must be a database URL such as "
                f"'sqlite:///data/shop.db' or 'postgresql://user@host:5432/dbname'. "
                f"Got {_redact_url(url)!r}.",
                url=_redact_url(url),
            ) from exc
        if not isinstance(sql, str) or not _normalize_sql(sql):
            raise SourceError(
                f"The 'sql' parameter of Query must be a non-empty SQL query such as "
                f"'SELECT * FROM orders'. Got {sql!r}.",
                url=_redact_url(url),
            )
        try:
            sql.encode()
        except UnicodeEncodeError as exc:
            raise SourceError(
                f"The 'sql' parameter of Query holds text that is not valid Unicode "
                f"({exc.reason} at character {exc.start + 1}); a database cannot be sent it.",
                url=_redact_url(url),
            ) from exc
        if tables is not None and (
            isinstance(tables, str) or not all(isinstance(t, str) and t.strip() for t in tables)
        ):
            raise SourceError(
                f"The 'tables' parameter of Query must be a list of table names such as "
                f"['orders', 'sales.customers']. Got {tables!r}.",
                url=_redact_url(url),
            )
        if changed_column is not None and (
            not isinstance(changed_column, str) or not changed_column.strip()
        ):
            raise SourceError(
                f"The 'changed_column' parameter of Query must be a column name such as "
                f"'updated_at'. Got {changed_column!r}.",
                url=_redact_url(url),
            )
        self.url = url
        self.sql = sql
        self.tables: tuple[str, ...] = (
            _tables_in(sql) if tables is None else tuple(t.strip() for t in tables)
        )
        self.changed_column = changed_column

    def __repr__(self) -> str:
        extra = "" if self.changed_column is None else f", changed_column={self.changed_column!r}"
        return (
            f"Query({_redact_url(self.url)!r}, {self.sql!r}, tables={list(self.tables)!r}{extra})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (self.url, self.sql, self.tables, self.changed_column)

    def to_param(self) -> Any:
        return {
            "url": _redact_url(self.url),
            "sql": self.sql,
            "tables": list(self.tables),
            "changed_column": self.changed_column,
        }

    def fingerprint(self) -> str:
        """Return a sha256 of the normalized SQL and each table's row count and checksum."""
        digest = hashlib.sha256(f"{_normalize_sql(self.sql)}\n".encode())
        # The kind of signal, so a checksum and a column maximum can never be confused.
        signal_kind = f"max({self.changed_column})" if self.changed_column else "checksum"
        digest.update(f"{signal_kind}\n".encode())
        if not self.tables:
            return digest.hexdigest()
        with self._connect() as conn:
            if conn.dialect.name == "postgresql":
                with self._errors():
                    conn.execute(sa.text(_PG_SETTINGS))
            for table in self.tables:
                with self._errors(table=table):
                    count, signal = self._statistics(conn, table)
                digest.update(f"{table}\0{count}\0{signal}\n".encode())
        return digest.hexdigest()

    def read(self) -> pa.Table:
        """Run the query and return its rows as an Arrow table (all rows at once).

        Column types are inferred from the values; an empty result has null-typed columns.
        """
        with self._connect() as conn, self._errors():
            result = conn.execute(_verbatim(self.sql))
            if not result.returns_rows:
                raise SourceError(
                    f"The query on {_redact_url(self.url)} returned no rows to read: "
                    f"{_shorten(self.sql)!r}. Query reads SELECT statements; run other "
                    f"statements in a step of their own.",
                    url=_redact_url(self.url),
                )
            names = list(result.keys())
            rows = result.fetchall()
        return _to_arrow(names, rows, url=_redact_url(self.url))

    # -- the database boundary ------------------------------------------------------------

    def _statistics(self, conn: Connection, table: str) -> tuple[int, str]:
        if self.changed_column is not None:
            row = conn.execute(
                _verbatim(f"SELECT count(*), max({self.changed_column}) FROM {table}")
            ).one()
            return int(row[0]), str(row[1])
        if conn.dialect.name == "postgresql":
            # hashtextextended gives each row's text a 64-bit hash; their sum (numeric, so it
            # cannot overflow) is the same for the same rows in any order. ROW(r.*) rather
            # than r: a column named like the alias would shadow the whole-row reference.
            row = conn.execute(
                _verbatim(
                    "SELECT count(*), sum(hashtextextended(ROW(loopline_row.*)::text, 0)) "
                    f"FROM {table} AS loopline_row"
                )
            ).one()
            return int(row[0]), str(row[1])
        # No hash function in SQL (SQLite, others): stream the rows and sum their hashes here.
        count = 0
        total = 0
        result = conn.execute(_verbatim(f"SELECT * FROM {table}"))
        for batch in result.partitions(_BATCH):
            for values in batch:
                row_hash = hashlib.blake2b(repr(tuple(values)).encode(), digest_size=8)
                total += int.from_bytes(row_hash.digest(), "little")
                count += 1
        return count, str(total)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        engine = self._engine()
        try:
            with self._errors(), engine.connect() as conn:
                yield conn  # closed without commit: anything the SQL wrote is rolled back
        finally:
            engine.dispose()

    def _engine(self) -> Engine:
        parsed = _driver_url(self.url)
        backend = parsed.get_backend_name()
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            database = str(parsed.database)
            if not database.startswith("file:") and not Path(database).is_file():
                relative = "" if Path(database).is_absolute() else f" (from {Path.cwd()})"
                raise SourceError(
                    f"No SQLite database at {database!r}{relative}. Check the path in "
                    f"{_redact_url(self.url)}; Query reads a database, it never creates one.",
                    url=_redact_url(self.url),
                )
        connect_args: dict[str, Any] = {"connect_timeout": 10} if backend == "postgresql" else {}
        try:
            return sa.create_engine(parsed, connect_args=connect_args)
        except (NoSuchModuleError, ImportError) as exc:
            install = (
                "Install it with pip install 'loopline[postgres]'."
                if backend == "postgresql"
                else "Install that module, or name an installed driver in the URL (such as "
                "'mysql+pymysql://')."
            )
            raise SourceError(
                f"No database driver for {parsed.drivername!r} (from {_redact_url(self.url)}): "
                f"{exc}. {install}",
                url=_redact_url(self.url),
            ) from exc

    @contextmanager
    def _errors(self, *, table: str | None = None) -> Iterator[None]:
        """Translate SQLAlchemy and driver errors into ``SourceError`` once, here."""
        try:
            yield
        except SQLAlchemyError as exc:
            url = _redact_url(self.url)
            detail = _redact_text(_first_line(exc), self.url)
            if isinstance(exc, DBAPIError) and exc.statement is None:
                message = (
                    f"Cannot connect to the database at {url}: {detail}. Check that the "
                    f"server is running and that the URL's host, port, database and user "
                    f"are right."
                )
            elif table is not None:
                column = (
                    ""
                    if self.changed_column is None
                    else f" and has the column {self.changed_column!r} (changed_column)"
                )
                message = (
                    f"Cannot read table {table!r} at {url} to fingerprint the query: {detail}. "
                    f"Check that the table exists{column}, or pass the tables the query "
                    f"reads with Query(..., tables=[...])."
                )
            else:
                message = (
                    f"The query failed at {url}: {detail}. Check the SQL and the tables it "
                    f"reads: {_shorten(self.sql)!r}."
                )
            raise SourceError(message, url=url, table=table) from exc


# -- SQL text ------------------------------------------------------------------------------

_TOKENS = re.compile(
    r"""
      (?P<space> \s+ | --[^\n]* | /\*.*?(?:\*/|\Z) )
    | (?P<literal>
          [eE]'(?:[^'\\]|\\.|'')*'                  # E'...' (backslash escapes)
        | '(?:[^']|'')*'                            # '...'
        | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$  # $tag$...$tag$ (PostgreSQL)
      )
    | (?P<quoted> "(?:[^"]|"")*" | `(?:[^`]|``)*` | \[[^\]]*\] )
    | (?P<word> \w+ )
    | (?P<other> . )
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(sql: str) -> list[tuple[str, str, bool]]:
    """Split ``sql`` into (kind, text, follows_space) tokens; whitespace and comments drop."""
    tokens: list[tuple[str, str, bool]] = []
    spaced = False
    for match in _TOKENS.finditer(sql):
        kind = str(match.lastgroup)  # the outer group: "literal", never "tag"
        if kind == "space":
            spaced = True
            continue
        tokens.append((kind, match.group(), spaced))
        spaced = False
    while tokens and tokens[-1][1] == ";":
        tokens.pop()
    return tokens


def _normalize_sql(sql: str) -> str:
    """``sql`` with each run of whitespace and comments as one space, and no final ``;``.

    Literals and quoted names are kept byte for byte, so two queries normalize alike only
    when they differ in layout alone.
    """
    return "".join(
        (" " if spaced and i else "") + text for i, (_, text, spaced) in enumerate(_tokens(sql))
    )


# Words after a table name that start the next clause rather than name an alias.
_NOT_ALIAS = frozenset(
    [
        "AS",
        "CROSS",
        "EXCEPT",
        "FETCH",
        "FOR",
        "FROM",
        "FULL",
        "GROUP",
        "HAVING",
        "INNER",
        "INTERSECT",
        "JOIN",
        "LATERAL",
        "LEFT",
        "LIMIT",
        "NATURAL",
        "OFFSET",
        "ON",
        "ORDER",
        "OUTER",
        "QUALIFY",
        "RETURNING",
        "RIGHT",
        "TABLESAMPLE",
        "UNION",
        "USING",
        "WHERE",
        "WINDOW",
    ]
)
_QUERY_START = frozenset({"SELECT", "WITH", "VALUES"})

_Tokens = list[tuple[str, str]]


def _tables_in(sql: str) -> tuple[str, ...]:
    """The table names after ``FROM`` and ``JOIN`` in ``sql``, as written, first seen first.

    A heuristic over tokens, not a parser. Each parenthesis holds a query (it starts with
    ``SELECT``, ``WITH`` or ``VALUES``), a table expression (it follows ``FROM`` or
    ``JOIN``: ``FROM (a JOIN b ON ...)``) or anything else (function arguments,
    arithmetic). ``FROM`` and ``JOIN`` count only at the top level and inside the first
    two kinds, so ``extract(year FROM ts)`` does not; nor does ``IS DISTINCT FROM``.
    ``FROM a, (SELECT ...) s, b`` lists give every name, a name followed by ``(`` is a
    table function and is left out, and so are the names the query defines with ``WITH``.
    """
    tokens = [(kind, text) for kind, text, _ in _tokens(sql)]
    words = [text.upper() if kind == "word" else text for kind, text in tokens]
    ctes = _cte_names(tokens, words)
    found: dict[str, str] = {}
    # One entry per open parenthesis: what it holds, and whether it is an item of a
    # FROM list (so a comma after it continues the list).
    context: list[tuple[str, bool]] = [("query", False)]
    item = False  # the next "(" opens an item of a FROM list
    i = 0
    while i < len(tokens):
        word = words[i]
        if word == "(":
            after = words[i + 1] if i + 1 < len(words) else ""
            before = words[i - 1] if i else ""
            if after in _QUERY_START:
                kind = "query"
            elif before in ("FROM", "JOIN") or (before == "(" and context[-1][0] == "tables"):
                kind = "tables"
            else:
                kind = "other"
            context.append((kind, item))
            item = False
            if kind == "tables":
                i, item = _read_table_list(tokens, words, i + 1, found, ctes, many=True)
                continue
        elif word == ")" and len(context) > 1:
            if context.pop()[1]:
                i = _skip_alias(tokens, words, i + 1)
                if i < len(words) and words[i] == ",":
                    i, item = _read_table_list(tokens, words, i + 1, found, ctes, many=True)
                continue
        elif word in ("FROM", "JOIN") and context[-1][0] != "other":
            if word == "FROM" and words[i - 1] == "DISTINCT":
                i += 1  # IS [NOT] DISTINCT FROM
                continue
            many = word == "FROM"
            i, item = _read_table_list(tokens, words, i + 1, found, ctes, many=many)
            continue
        i += 1
    return tuple(found.values())


def _read_table_list(
    tokens: _Tokens, words: list[str], i: int, found: dict[str, str], ctes: set[str], *, many: bool
) -> tuple[int, bool]:
    """Record the names of a FROM list (``many``) or after a JOIN, from ``i``.

    Return where the main scan goes on, and whether the "(" there is an item of the list.
    """
    while True:
        while i < len(words) and words[i] in ("LATERAL", "ONLY"):
            i += 1
        name, end = _read_name(tokens, i)
        if name is None:  # a subquery or a table expression; the main scan reads it
            return i, many and i < len(words) and words[i] == "("
        if end < len(words) and words[end] == "(":  # a table function
            return end, many
        if _fold(name) not in ctes:
            found.setdefault(_fold(name), name)
        if not many:
            return end, False
        i = _skip_alias(tokens, words, end)
        if i >= len(words) or words[i] != ",":
            return i, False
        i += 1


def _skip_alias(tokens: _Tokens, words: list[str], i: int) -> int:
    """Skip ``[AS] alias [(column, ...)]`` from ``i``."""
    if i < len(words) and words[i] == "AS":
        i += 1
    if i < len(tokens) and tokens[i][0] in ("word", "quoted") and words[i] not in _NOT_ALIAS:
        i += 1
        if i < len(words) and words[i] == "(":
            i = _skip_parens(words, i)
    return i


def _read_name(tokens: _Tokens, i: int) -> tuple[str | None, int]:
    """Read ``part(.part)*`` from ``i``; return it as written and the index after it."""
    if i >= len(tokens) or tokens[i][0] not in ("word", "quoted"):
        return None, i
    parts = [tokens[i][1]]
    i += 1
    while i + 1 < len(tokens) and tokens[i][1] == "." and tokens[i + 1][0] in ("word", "quoted"):
        parts.append(tokens[i + 1][1])
        i += 2
    return ".".join(parts), i


def _cte_names(tokens: _Tokens, words: list[str]) -> set[str]:
    names: set[str] = set()
    for start, word in enumerate(words):
        if word != "WITH":
            continue
        i = start + 1
        if i < len(words) and words[i] == "RECURSIVE":
            i += 1
        while True:
            name, i = _read_name(tokens, i)
            if name is None:
                break
            if i < len(words) and words[i] == "(":
                i = _skip_parens(words, i)
            if i >= len(words) or words[i] != "AS":
                break
            i += 1
            while i < len(words) and words[i] in ("NOT", "MATERIALIZED"):
                i += 1
            names.add(_fold(name))
            if i >= len(words) or words[i] != "(":
                break
            i = _skip_parens(words, i)
            if i >= len(words) or words[i] != ",":
                break
            i += 1
    return names


def _skip_parens(words: list[str], i: int) -> int:
    """Return the index after the parenthesis that opens at ``i`` closes."""
    depth = 0
    while i < len(words):
        depth += {"(": 1, ")": -1}.get(words[i], 0)
        i += 1
        if depth == 0:
            break
    return i


def _fold(name: str) -> str:
    """Compare names as SQL does: unquoted parts ignore case, quoted parts do not."""
    return ".".join(
        part if part[:1] in ('"', "`", "[") else part.lower() for part in name.split(".")
    )


def _verbatim(sql: str) -> sa.TextClause:
    # Escape colons so text() binds no ':name' parameters; it also escapes '%' for
    # drivers whose parameter style uses it, so the SQL reaches the server as written.
    return sa.text(sql.replace(":", "\\:"))


def _shorten(sql: str, limit: int = 120) -> str:
    text = _normalize_sql(sql)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- URLs and messages ---------------------------------------------------------------------


def _driver_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _redact_url(url: str) -> str:
    """``url`` with its password (also a ``?password=`` query option) shown as ``***``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\g<1>{_REDACTED}@", url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": _REDACTED})
    return parsed.render_as_string(hide_password=True)


def _redact_text(text: str, url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return text
    secrets = [parsed.password, parsed.query.get("password")]
    for secret in secrets:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, _REDACTED)
    return text


def _first_line(exc: SQLAlchemyError) -> str:
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return lines[0].strip().rstrip(".") if lines else type(origin).__name__


def _to_arrow(names: list[str], rows: Sequence[Sequence[Any]], *, url: str) -> pa.Table:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays = []
    for name, values in zip(names, columns, strict=True):
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, OverflowError) as exc:
            sample = next((v for v in values if v is not None), None)
            raise SourceError(
                f"Column {name!r} of the query at {url} holds values Arrow cannot convert "
                f"({type(sample).__name__}: {exc}). Cast it in the SQL, for example "
                f"CAST({name} AS TEXT).",
                url=url,
            ) from exc
    return pa.Table.from_arrays(arrays, names=names)
