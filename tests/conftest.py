"""Shared fixtures: real services (PostgreSQL, Redis) and a metadata URL per backend.

Tests that need a running service say so with ``@pytest.mark.services``, optionally
naming the services to check before the test starts (``@pytest.mark.services("postgres")``);
the fixtures below (``postgres_url``, ``metadata_url``) check their own service anyway.
A service that cannot be reached skips the test with the reason, unless
``LOOPLINE_REQUIRE_SERVICES=1``, where it fails it instead (CI sets this, so a broken
service never turns into a green run of skips).

Where the services are:

- PostgreSQL: ``LOOPLINE_TEST_POSTGRES_URL``, default ``postgresql://root@127.0.0.1:5432/test``.
  Each test gets a fresh schema (``t_<hex>``), dropped with everything in it afterwards.
- Redis: ``LOOPLINE_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``. Each test gets a
  fresh key prefix (``?prefix=t-<hex>:``); its keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client  # noqa: F401  (before Feast: see tests/serve/conftest.py)
import pytest
from sqlalchemy.engine import URL, make_url

REQUIRE_ENV = "LOOPLINE_REQUIRE_SERVICES"
POSTGRES_ENV = "LOOPLINE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test"
REDIS_ENV = "LOOPLINE_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT_S = 2

METADATA_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.services("postgres")),
]
"""The metadata-store backends every shared store test runs over."""


def _postgres_base_url() -> URL:
    """The configured PostgreSQL server as a SQLAlchemy URL with the psycopg (v3) driver."""
    url = make_url(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL)
    return url.set(drivername="postgresql+psycopg")


def _libpq_dsn(url: URL) -> str:
    """A URL that psycopg's own ``connect`` accepts (no ``+driver`` in the scheme)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _check_postgres() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it answers."""
    url = _postgres_base_url()
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'loopline[postgres]')"
    try:
        with psycopg.connect(_libpq_dsn(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = url.render_as_string(hide_password=True)
        return f"PostgreSQL at {where} is not reachable ({first_line}); set {POSTGRES_ENV}"
    return None


def _redis_base_url() -> str:
    return os.environ.get(REDIS_ENV) or DEFAULT_REDIS_URL


def _check_redis() -> str | None:
    """Return why Redis cannot be used, or None when it answers."""
    try:
        import redis
    except ImportError:
        return "redis is not installed (pip install 'loopline[redis]')"
    client = redis.Redis.from_url(_redis_base_url(), socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {_redis_base_url()} is not reachable ({exc}); set {REDIS_ENV}"
    finally:
        client.close()
    return None


_CHECKS: dict[str, Callable[[], str | None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
}
_RESULTS: dict[str, str | None] = {}


def require_service(name: str) -> None:
    """Skip the calling test when service ``name`` is unreachable (fail it when required).

    The check runs once per session; its answer is reused by every later test.
    """
    if name not in _CHECKS:
        pytest.fail(f"Unknown service {name!r}; known services: {', '.join(sorted(_CHECKS))}.")
    if name not in _RESULTS:
        _RESULTS[name] = _CHECKS[name]()
    reason = _RESULTS[name]
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}. {REQUIRE_ENV}=1 makes a missing service an error.")
    pytest.skip(f"{reason}. (Set {REQUIRE_ENV}=1 to fail instead of skipping.)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="services"):
        for name in marker.args:
            require_service(str(name))


def postgres_schema_url(schema: str) -> str:
    """A SQLAlchemy URL whose connections use ``schema`` as their search_path."""
    url = _postgres_base_url().update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL isolated to this test: a fresh schema, dropped (CASCADE) afterwards."""
    require_service("postgres")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    dsn = _libpq_dsn(_postgres_base_url())
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_schema_url(schema)
    finally:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
            # A store the test forgot to close could hold a lock; fail loudly, never hang.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL isolated to this test by a fresh key prefix, whose keys go afterwards."""
    require_service("redis")
    import redis

    prefix = f"t-{uuid.uuid4().hex[:16]}:"
    base = _redis_base_url()
    yield f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
    client = redis.Redis.from_url(base, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


@pytest.fixture(params=METADATA_BACKENDS)
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A metadata-store URL for each backend: a SQLite file in tmp_path, or a fresh PG schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster (two CPUs) for every test that needs one: starting one
    takes seconds. It is shut down when the session ends.

    It is the cluster the ``ray`` engine starts (its Polars settings, idle processes and
    warm-up), and the session waits for the warm-up: its processes import loopline and
    LightGBM side by side before the first test, rather than one by one inside the tests
    that find none idle."""
    import ray

    from loopline.pipeline.ray_executor import _connect

    ray.get(_connect(ray, None, 2))
    yield
    ray.shutdown()
