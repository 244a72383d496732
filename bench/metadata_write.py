"""Metadata store under concurrent writers: 10,000 step records from 2 processes at once.

A step record is what the runner writes for one step: ``start_step`` (the step row, in
status ``running``) and then ``finish_step`` with one attempt and one metric (status
``succeeded``), two transactions. Two processes write half the records each, released
together by a file barrier, into a SQLite file (WAL) and into a fresh PostgreSQL schema.
Each process opens its connection and creates its run before the barrier, so the wall
time (first process released to last one done) covers only the step records.

The peers write the same rows into the same tables (a fresh database or schema each)
through the raw driver, without SQLAlchemy: sqlite3 with loopline's settings (WAL,
``synchronous = NORMAL``, ``BEGIN IMMEDIATE``, a busy timeout) and psycopg 3, once with
loopline's two transactions per record and once with one.

Environment: ``LOOPLINE_BENCH_RECORDS`` (default 10000) scales the run down for a quick
check; ``LOOPLINE_BENCH_POSTGRES_URL`` (default ``postgresql://root@127.0.0.1:5432/test``)
names the PostgreSQL server. Run alone: ``python -m bench.metadata_write``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RECORDS = 10_000
WORKERS = 2
RECORDS_ENV = "LOOPLINE_BENCH_RECORDS"
POSTGRES_ENV = "LOOPLINE_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 2
BARRIER_TIMEOUT_S = 120
WORKER_TIMEOUT_S = 1800

WRITERS = ("loopline", "raw-2tx", "raw-1tx")
"""loopline's store; the raw driver with loopline's statements; the raw driver, one INSERT
transaction per record."""

LOCK_MARKERS = (
    "database is locked",
    "database table is locked",
    "deadlock",
    "lock timeout",
    "could not obtain lock",
    "could not serialize",
)
"""Lower-case fragments of SQLite and PostgreSQL messages that mean lock contention."""

# The raw peers' statements, in psycopg's placeholder style (sqlite3 gets ``?``). They
# write the same columns that MetadataStore.start_step and finish_step write.
INSERT_RUNNING_STEP = (
    "INSERT INTO steps (id, run_id, name, status, cache_key, cache_hit, started_at) "
    "VALUES (%s, %s, %s, 'running', NULL, %s, %s)"
)
UPDATE_FINISHED_STEP = (
    "UPDATE steps SET status = 'succeeded', ended_at = %s, error = NULL, "
    "output_artifact_id = NULL WHERE id = %s"
)
INSERT_FINISHED_STEP = (
    "INSERT INTO steps (id, run_id, name, status, cache_key, cache_hit, started_at, ended_at) "
    "VALUES (%s, %s, %s, 'succeeded', NULL, %s, %s, %s)"
)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (step_id, number, status, started_at, ended_at, error, traceback) "
    "VALUES (%s, 1, 'succeeded', %s, %s, NULL, NULL)"
)
INSERT_METRIC = (
    'INSERT INTO metrics (run_id, step_id, key, value, step, "timestamp") '
    "VALUES (%s, %s, 'rows', %s, 0, %s)"
)
INSERT_RUN = (
    "INSERT INTO runs (id, pipeline, source, status, created_at, options) "
    "VALUES (%s, %s, 'bench', 'running', %s, '{}')"
)


@dataclass(frozen=True)
class Target:
    """One database a measurement writes into."""

    backend: str
    """``sqlite`` or ``postgresql``."""
    url: str
    """SQLAlchemy URL (what MetadataStore takes)."""
    raw: str
    """What the raw driver connects to: the SQLite file, or a libpq connection string."""


@dataclass(frozen=True)
class Result:
    backend: str
    writer: str
    written: int
    wall_s: float
    lock_errors: int
    other_errors: int
    first_error: str | None
    check: str

    @property
    def per_second(self) -> float:
        return self.written / self.wall_s if self.wall_s > 0 else 0.0


# -- inside a writer process ----------------------------------------------------------------


def _wait_for_go(folder: Path, worker: int) -> None:
    (folder / f"ready-{worker}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            sys.exit(f"writer {worker} was never told to start")
        time.sleep(0.001)


def _timed_records(
    write_one: Callable[[int], None], *, count: int, folder: Path, worker: int
) -> dict[str, Any]:
    """Wait at the barrier, write ``count`` records, count (never retry) the failures."""
    _wait_for_go(folder, worker)
    lock_errors = other_errors = 0
    first_error: str | None = None
    start = time.time()
    for i in range(count):
        try:
            write_one(i)
        except Exception as exc:  # a benchmark counts failures; it does not stop on them
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if any(marker in message.lower() for marker in LOCK_MARKERS):
                lock_errors += 1
            else:
                other_errors += 1
            first_error = first_error or f"{type(exc).__name__}: {message}"
    end = time.time()
    return {
        "written": count - lock_errors - other_errors,
        "start": start,
        "end": end,
        "lock_errors": lock_errors,
        "other_errors": other_errors,
        "first_error": first_error,
    }


def _loopline_writer(target: Target, *, count: int, folder: Path, worker: int) -> dict[str, Any]:
    from loopline.store.metadata import AttemptRecord, MetadataStore, StepOutcome

    with MetadataStore(target.url, migrate=False) as store:
        run_id = store.create_run(pipeline=f"bench-writer-{worker}", source="bench")

        def write_one(i: int) -> None:
            started = time.time()
            step_id = store.start_step(run_id, f"step-{i}", cache_key=None)
            now = time.time()
            outcome = StepOutcome(
                status="succeeded",
                ended_at=now,
                attempts=[AttemptRecord(1, "succeeded", started, now)],
                metrics=[("rows", float(i), 0)],
            )
            store.finish_step(run_id, step_id, outcome)

        result = _timed_records(write_one, count=count, folder=folder, worker=worker)
        store.finish_run(run_id, "succeeded")
    return result


class _Sqlite3:
    """A raw sqlite3 connection set up the way MetadataStore sets up its write engine."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 60000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        self.conn.execute(sql.replace("%s", "?"), params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class _Psycopg:
    """A raw psycopg 3 connection; each ``transaction()`` is one BEGIN ... COMMIT."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        self.conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def close(self) -> None:
        self.conn.close()


def _raw_writer(
    target: Target, *, one_transaction: bool, count: int, folder: Path, worker: int
) -> dict[str, Any]:
    db = _Sqlite3(target.raw) if target.backend == "sqlite" else _Psycopg(target.raw)
    try:
        run_id = uuid.uuid4().hex[:16]
        with db.transaction():
            db.execute(INSERT_RUN, (run_id, f"bench-writer-{worker}", time.time()))

        def write_two(i: int) -> None:
            step_id = uuid.uuid4().hex[:16]
            started = time.time()
            with db.transaction():
                db.execute(INSERT_RUNNING_STEP, (step_id, run_id, f"step-{i}", False, started))
            now = time.time()
            with db.transaction():
                db.execute(UPDATE_FINISHED_STEP, (now, step_id))
                db.execute(INSERT_ATTEMPT, (step_id, started, now))
                db.execute(INSERT_METRIC, (run_id, step_id, float(i), now))

        def write_one(i: int) -> None:
            step_id = uuid.uuid4().hex[:16]
            now = time.time()
            with db.transaction():
                db.execute(INSERT_FINISHED_STEP, (step_id, run_id, f"step-{i}", False, now, now))
                db.execute(INSERT_ATTEMPT, (step_id, now, now))
                db.execute(INSERT_METRIC, (run_id, step_id, float(i), now))

        write = write_one if one_transaction else write_two
        return _timed_records(write, count=count, folder=folder, worker=worker)
    finally:
        db.close()


def _worker(writer: str, target: Target, *, count: int, folder: Path, worker: int) -> None:
    if writer == "loopline":
        result = _loopline_writer(target, count=count, folder=folder, worker=worker)
    else:
        one = writer == "raw-1tx"
        result = _raw_writer(target, one_transaction=one, count=count, folder=folder, worker=worker)
    print(json.dumps(result))


# -- in the parent ---------------------------------------------------------------------------


def _records() -> int:
    value = os.environ.get(RECORDS_ENV, str(RECORDS))
    try:
        records = int(value)
    except ValueError:
        records = 0
    if records <= 0 or records % WORKERS:
        raise ValueError(
            f"The {RECORDS_ENV} environment variable of bench.metadata_write must be a positive "
            f"multiple of {WORKERS} such as 10000. Got {value!r}."
        )
    return records


def _postgres_server() -> tuple[str, str]:
    """The PostgreSQL server as (SQLAlchemy URL with psycopg, libpq connection string)."""
    from sqlalchemy.engine import make_url

    url = make_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL)
    url = url.set(drivername="postgresql+psycopg")
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return url.render_as_string(hide_password=False), dsn


def _postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be measured, or None when it answers."""
    from sqlalchemy.engine import make_url

    url, dsn = _postgres_server()
    where = make_url(url).render_as_string(hide_password=True)
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'loopline[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {where} is not reachable ({first_line}); set {POSTGRES_ENV}"
    return None


@contextmanager
def _target(backend: str) -> Iterator[Target]:
    """A fresh, migrated metadata database: a SQLite file, or a PostgreSQL schema dropped after."""
    from loopline.store.metadata import MetadataStore

    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-metadata-") as folder:
            path = str(Path(folder) / "metadata.db")
            target = Target(backend, f"sqlite:///{path}", path)
            MetadataStore(target.url).close()
            yield target
        return

    import psycopg
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.engine import make_url

    url, dsn = _postgres_server()
    schema = f"bench_{uuid.uuid4().hex[:16]}"
    options = f"-csearch_path={schema}"
    schema_url = make_url(url).update_query_dict({"options": options})
    schema_dsn = make_conninfo(dsn, options=options)
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        target = Target(backend, schema_url.render_as_string(hide_password=False), schema_dsn)
        MetadataStore(target.url).close()
        yield target
    finally:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _check(target: Target, records: int) -> str:
    """``verified`` when the database holds exactly the records, all finished; else the counts."""
    import sqlalchemy as sa

    engine = sa.create_engine(target.url)
    try:
        with engine.connect() as conn:
            statuses = {
                str(status): int(n)
                for status, n in conn.execute(
                    sa.text("SELECT status, count(*) FROM steps GROUP BY status")
                )
            }
            attempts = int(conn.execute(sa.text("SELECT count(*) FROM attempts")).scalar_one())
            metrics = int(conn.execute(sa.text("SELECT count(*) FROM metrics")).scalar_one())
    finally:
        engine.dispose()
    if statuses == {"succeeded": records} and attempts == records and metrics == records:
        return "verified"
    steps = ", ".join(f"{n:,} {status}" for status, n in sorted(statuses.items())) or "none"
    return (
        f"expected {records:,} succeeded steps, attempts and metrics; found steps: {steps}; "
        f"{attempts:,} attempts; {metrics:,} metrics"
    )


def _measure(backend: str, writer: str, records: int) -> Result:
    count = records // WORKERS
    with _target(backend) as target, tempfile.TemporaryDirectory(prefix="bench-go-") as barrier:
        folder = Path(barrier)
        spec = json.dumps({"backend": target.backend, "url": target.url, "raw": target.raw})
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.metadata_write",
                    *("--writer", writer, "--target", spec, "--count", str(count)),
                    *("--folder", barrier, "--worker", str(n)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            for n in range(WORKERS)
        ]
        try:
            deadline = time.monotonic() + BARRIER_TIMEOUT_S
            while not all((folder / f"ready-{n}").exists() for n in range(WORKERS)):
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    break
                time.sleep(0.01)
            (folder / "go").touch()
            outputs = [w.communicate(timeout=WORKER_TIMEOUT_S) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        reports: list[dict[str, Any]] = []
        for w, (stdout, stderr) in zip(workers, outputs, strict=True):
            if w.returncode != 0:
                raise RuntimeError(
                    f"A {writer} writer on {backend} failed (exit {w.returncode}):\n"
                    f"{stdout}\n{stderr}"
                )
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
        check = _check(target, records)
    errors = [r["first_error"] for r in reports if r["first_error"]]
    return Result(
        backend=backend,
        writer=writer,
        written=sum(int(r["written"]) for r in reports),
        wall_s=max(r["end"] for r in reports) - min(r["start"] for r in reports),
        lock_errors=sum(int(r["lock_errors"]) for r in reports),
        other_errors=sum(int(r["other_errors"]) for r in reports),
        first_error=errors[0] if errors else None,
        check=check,
    )


def _label(result: Result, psycopg_version: str) -> str:
    if result.writer == "loopline":
        return "loopline MetadataStore"
    driver = "sqlite3" if result.backend == "sqlite" else f"psycopg {psycopg_version}"
    shape = "1 transaction" if result.writer == "raw-1tx" else "2 transactions"
    return f"raw {driver}, {shape}"


def run() -> str:
    import loopline

    records = _records()
    backends = ["sqlite"]
    postgres_note = _postgres_unavailable()
    if postgres_note is None:
        backends.append("postgresql")
    try:
        psycopg_version = metadata.version("psycopg")
    except metadata.PackageNotFoundError:
        psycopg_version = "(not installed)"

    results = [_measure(backend, writer, records) for backend in backends for writer in WRITERS]
    ours = {r.backend: r for r in results if r.writer == "loopline"}
    rows = []
    for r in results:
        backend = "SQLite (WAL)" if r.backend == "sqlite" else "PostgreSQL"
        ratio = (
            "-"
            if r.writer == "loopline"
            else f"{ours[r.backend].wall_s / max(r.wall_s, 1e-9):.1f}x"
        )
        rows.append(
            f"| {backend} | {_label(r, psycopg_version)} | {r.written:,} | {r.wall_s:.2f} s "
            f"| {r.per_second:,.0f} | {r.lock_errors:,} | {r.other_errors:,} | {r.check} "
            f"| {ratio} |"
        )
    table = "\n".join(
        [
            f"| database | writer | records written | wall time | records/s | lock errors "
            f"| other errors | rows afterwards | loopline {loopline.__version__} time / this |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|",
            *rows,
        ]
    )
    notes = [
        f"First error ({r.backend}, {_label(r, psycopg_version)}): `{r.first_error}`"
        for r in results
        if r.first_error
    ]
    if postgres_note is not None:
        notes.append(f"PostgreSQL was not measured: {postgres_note}.")
    if records != RECORDS:
        notes.insert(
            0,
            f"Scaled down to {records:,} records by {RECORDS_ENV}; the published figure "
            f"uses {RECORDS:,}.",
        )
    intro = textwrap.dedent(
        f"""\
        ## Metadata store: concurrent step writes

        {records:,} step records, written by {WORKERS} processes at once
        ({records // WORKERS:,} each, released together by a file barrier) into a SQLite
        file in WAL mode and into a fresh PostgreSQL schema. A step record is what the
        runner writes for one step: ``start_step`` (the step row, ``running``), then
        ``finish_step`` with one attempt and one metric (``succeeded``), two transactions.
        Each process opens its connection and creates its run before the barrier; wall
        time runs from the first process released to the last one done. A writer counts
        every exception and moves on (no retries); "rows afterwards" counts the rows left
        in the database: every step ``succeeded``, one attempt and one metric each.

        Peers, measured in the same run, write the same rows into the same tables (a fresh
        database or schema each) through the raw driver with no SQLAlchemy: sqlite3 with
        loopline's settings (WAL, ``synchronous = NORMAL``, ``BEGIN IMMEDIATE``, busy
        timeout) and psycopg. "2 transactions" runs loopline's statements (insert the
        running step; then update it and insert the attempt and the metric); "1
        transaction" inserts the finished step, its attempt and its metric in one
        transaction, the least a durable write of this record can cost. The last column
        is how many times longer loopline took than that peer.

        Where the difference goes: SQLAlchemy Core spends about 50-100 µs of Python per
        statement, and on SQLite it is spent while the write lock is held, so the other
        process waits for it too. On PostgreSQL, loopline also pings a pooled connection
        before each transaction (one round trip), so that a connection dropped during a
        long step cannot lose the step's record. The runner writes two or three
        transactions per step, so this costs well under a millisecond a step (see the
        engine benchmark above); it would take a far larger, parallel pipeline than this
        one for the store to limit throughput, and replacing SQLAlchemy there is not
        worth its portability yet.
        """
    )
    return intro + "\n" + table + "\n" + "".join(f"\n{note}\n" for note in notes)


def main() -> None:
    if "--writer" in sys.argv:
        args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
        spec = json.loads(args["--target"])
        _worker(
            args["--writer"],
            Target(spec["backend"], spec["url"], spec["raw"]),
            count=int(args["--count"]),
            folder=Path(args["--folder"]),
            worker=int(args["--worker"]),
        )
        return
    print(run())


if __name__ == "__main__":
    main()
