"""The metadata store: runs, steps, attempts, artifacts, lineage, params, metrics, tags.

SQLAlchemy Core over SQLite (the embedded default, in WAL mode with a busy timeout and
``BEGIN IMMEDIATE`` writes, so several processes can write at once) or PostgreSQL.
The schema is migrated to the newest Alembic revision when the store opens.

Examples
--------
>>> store = MetadataStore("sqlite://")
>>> run_id = store.create_run(pipeline="demo", source="demo.py")
>>> store.finish_run(run_id, "succeeded")
>>> store.get_run(run_id).status
'succeeded'
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from loopline.errors import DatasetNotFoundError, MetadataStoreError, RunNotFoundError
from loopline.store import schema as t

__all__ = [
    "ArtifactRecord",
    "AttemptRecord",
    "DatasetPartRecord",
    "DatasetRecord",
    "FeatureViewRecord",
    "MaterializationRecord",
    "MetadataStore",
    "MetricRecord",
    "ModelAuditRecord",
    "ModelVersionRecord",
    "RegisteredModelRecord",
    "RunRecord",
    "StepRecord",
    "new_id",
]

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
STEP_STATUSES = ("running", "succeeded", "cached", "failed", "skipped")
DATASET_STATUSES = ("ok", "warned", "failed")
MODEL_VERSION_STATUSES = ("registered", "blessed", "refused")


def new_id() -> str:
    """A random 16-hex-digit id; the CLI accepts any unique prefix of it."""
    return uuid.uuid4().hex[:16]


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    source: str
    status: str
    created_at: float
    ended_at: float | None
    error: str | None
    parent_run_id: str | None
    options: dict[str, Any]
    host: str | None
    pid: int | None

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.created_at


@dataclass(frozen=True)
class StepRecord:
    id: str
    run_id: str
    name: str
    status: str
    cache_key: str | None
    cache_hit: bool
    started_at: float | None
    ended_at: float | None
    error: str | None
    output_artifact_id: str | None
    source_step_id: str | None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    status: str
    started_at: float
    ended_at: float
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class ArtifactRecord:
    id: str
    content_hash: str
    uri: str
    size: int
    kind: str
    created_at: float
    producer_step_id: str | None = None


@dataclass(frozen=True)
class DatasetPartRecord:
    """One Parquet part of a dataset version: the rows of one source partition."""

    position: int
    partition_key: str
    partition_fingerprint: str
    content_hash: str
    size: int
    rows: int
    rows_read: int
    rows_quarantined: int
    quarantine_hash: str | None = None
    profile_hash: str | None = None


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset version: what one ingest of a source produced."""

    id: str
    name: str
    version: int
    status: str
    """``ok``, ``warned`` (the contract warned), or ``failed`` (kept for its quarantine)."""
    content_hash: str
    rows: int
    rows_read: int
    rows_quarantined: int
    columns: list[tuple[str, str]]
    source: str
    source_fingerprint: str
    contract: str | None
    contract_hash: str | None
    profile_hash: str | None
    cursor: Any
    warnings: list[str]
    run_id: str | None
    step_id: str | None
    created_at: float

    @property
    def ref(self) -> str:
        """How a person names this version: ``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class FeatureViewRecord:
    """A version of a feature definition: its name, sha256 and JSON description."""

    name: str
    version: str
    kind: str
    definition: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class MaterializationRecord:
    """One fill of the online store with a feature view's values."""

    id: str
    view: str
    version: str
    online_url: str
    start: float | None
    end: float
    rows: int
    newest_event: float | None
    """The newest event time written (UNIX seconds); the view's freshness is now minus it."""
    run_id: str | None
    created_at: float


@dataclass(frozen=True)
class RegisteredModelRecord:
    """A registered model: its name, how many versions it has, and its aliases."""

    name: str
    description: str | None
    created_at: float
    versions: int
    latest: int | None
    """The newest version number (what ``NAME@latest`` names), or None before the first."""
    aliases: dict[str, int]


@dataclass(frozen=True)
class ModelVersionRecord:
    """A version of a registered model: the bundle it stores and where it came from."""

    id: str
    model: str
    version: int
    artifact_id: str
    content_hash: str
    run_id: str | None
    step_id: str | None
    status: str
    """``registered``; ``blessed`` once it passed the gate; ``refused`` once it failed it."""
    created_at: float
    metrics: dict[str, float | None]
    tags: dict[str, str]
    datasets: list[str]
    """The dataset versions it was trained on (``name@version`` or ids)."""
    features: list[str]
    """The feature versions it was trained on (``view@sha256``)."""
    aliases: tuple[str, ...] = ()
    """The aliases that point at it now, sorted."""

    @property
    def ref(self) -> str:
        """How a person names this version: ``model@version``."""
        return f"{self.model}@{self.version}"


@dataclass(frozen=True)
class ModelAuditRecord:
    """One entry of a model's audit log: a register, promote, rollback or refusal."""

    id: int
    model: str
    alias: str | None
    action: str
    from_version: int | None
    to_version: int | None
    actor: str
    created_at: float
    why: str | None
    metrics: dict[str, float | None]
    verdict: dict[str, Any] | None
    """The gate's verdict (``Verdict.to_dict()``) behind a promote or a refusal, if any."""


@dataclass(frozen=True)
class MetricRecord:
    step_name: str | None
    key: str
    value: float | None
    step: int
    timestamp: float


@dataclass
class StepOutcome:
    """Everything the runner writes when a step ends, in one transaction."""

    status: str
    ended_at: float
    error: str | None = None
    artifact: ArtifactRecord | None = None
    attempts: Sequence[AttemptRecord] = ()
    metrics: Sequence[tuple[str, float, int]] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)
    """Argument name -> input artifact id, for lineage."""
    cache_key: str | None = None
    """When set (and the step succeeded), the output is published under this cache key."""


_SQLITE_BUSY_S = 60
"""How long a SQLite connection waits for another process's lock before it fails."""

# Hot statements, built once so that each run reuses one compiled form (for the update,
# the parameters name the columns to set).
_FINISH_STEP = t.steps.update().where(t.steps.c.id == sa.bindparam("step"))
_LOOKUP_CACHE = (
    sa.select(t.artifacts, t.cache.c.step_id.label("cache_step_id"))
    .join(t.artifacts, t.artifacts.c.id == t.cache.c.artifact_id)
    .where(t.cache.c.cache_key == sa.bindparam("key"))
)
_COPY_METRICS = t.metrics.insert().from_select(
    ["run_id", "step_id", "key", "value", "step", "timestamp"],
    sa.select(
        sa.bindparam("new_run", type_=sa.String),
        sa.bindparam("new_step", type_=sa.String),
        t.metrics.c.key,
        t.metrics.c.value,
        t.metrics.c.step,
        sa.bindparam("now", type_=sa.Float),
    )
    .where(t.metrics.c.step_id == sa.bindparam("source"))
    .order_by(t.metrics.c.id),
)


class MetadataStore:
    """Runs, steps, artifacts and lineage in a SQL database (see the module docstring)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = _normalize_url(url)
        self._write_engine = _make_engine(self.url, write=True)
        database = self._write_engine.url.database
        file_backed = self._write_engine.dialect.name == "sqlite" and database not in (
            None,
            "",
            ":memory:",
        )
        # SQLite files get a second engine whose transactions are plain (shared) BEGINs.
        self._read_engine = (
            _make_engine(self.url, write=False) if file_backed else self._write_engine
        )
        self._lock = threading.Lock()
        if migrate:
            try:
                self._migrate()
            except BaseException:
                self.close()
                raise

    @property
    def dialect(self) -> str:
        return str(self._write_engine.dialect.name)

    def after_fork(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them
        (the parent still uses them); the child opens its own on first use."""
        self._write_engine.dispose(close=False)
        if self._read_engine is not self._write_engine:
            self._read_engine.dispose(close=False)

    def close(self) -> None:
        self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            self._read_engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._errors(), self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors(), self._read_engine.connect() as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate SQLAlchemy and driver errors into ``MetadataStoreError`` once, here."""
        try:
            yield
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise MetadataStoreError(
                f"The metadata database at {_safe_url(self.url)} failed: {detail}. Check that it "
                f"is reachable and that 'metadata_url' in loopline.toml (or "
                f"LOOPLINE_METADATA_URL) points to it.",
                url=_safe_url(self.url),
            ) from exc

    def _migrate(self) -> None:
        if self._revision() == t.HEAD_REVISION:
            return
        with self._migration_lock():
            revision = self._revision()
            if revision == t.HEAD_REVISION:
                return
            from alembic.command import upgrade
            from alembic.config import Config
            from alembic.util.exc import CommandError

            config = Config()
            config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
            try:
                with self._errors(), self._write_engine.begin() as conn:
                    config.attributes["connection"] = conn
                    upgrade(config, "head")
            except CommandError as exc:
                # The only revisions alembic cannot place are ones written by a newer loopline.
                raise MetadataStoreError(
                    f"The metadata database at {_safe_url(self.url)} has schema revision "
                    f"{revision!r}, which this version of loopline does not know (its newest is "
                    f"{t.HEAD_REVISION!r}). It was probably written by a newer loopline: upgrade "
                    f"loopline, or point 'metadata_url' in loopline.toml (or "
                    f"LOOPLINE_METADATA_URL) to another database.",
                    url=_safe_url(self.url),
                    revision=revision,
                ) from exc

    def _revision(self) -> str | None:
        with self._read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
            return None if row is None else str(row[0])

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Serialize first-time migrations across processes."""
        if self.dialect == "postgresql":
            with self._errors(), self._write_engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(774411)"))
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(774411)"))
                    conn.commit()
            return
        database = make_url(self.url).database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self,
        *,
        pipeline: str,
        source: str,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Record a new run in status ``running`` with its parameters; return its id."""
        run_id = new_id()
        with self._write() as conn:
            conn.execute(
                t.runs.insert(),
                {
                    "id": run_id,
                    "pipeline": pipeline,
                    "source": source,
                    "status": "running",
                    "created_at": time.time(),
                    "parent_run_id": parent_run_id,
                    "options": _dumps(dict(options or {})),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                },
            )
            rows = [
                {"run_id": run_id, "step": step, "key": key, "value": _dumps(value)}
                for step, values in (params or {}).items()
                for key, value in values.items()
            ]
            if rows:
                conn.execute(t.params.insert(), rows)
        return run_id

    def finish_run(self, run_id: str, status: str, *, error: str | None = None) -> None:
        _check_status(status, RUN_STATUSES)
        with self._write() as conn:
            conn.execute(
                t.runs.update()
                .where(t.runs.c.id == run_id)
                .values(status=status, ended_at=time.time(), error=error)
            )

    def interrupt_run(self, run_id: str, *, error: str) -> None:
        """Mark a run whose process died as interrupted, and its unfinished steps failed."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                t.steps.update()
                .where((t.steps.c.run_id == run_id) & (t.steps.c.status == "running"))
                .values(status="failed", ended_at=now, error="Interrupted: " + error)
            )
            conn.execute(
                t.runs.update()
                .where((t.runs.c.id == run_id) & (t.runs.c.status == "running"))
                .values(status="interrupted", ended_at=now, error=error)
            )

    def get_run(self, run_id: str) -> RunRecord:
        """Return the run with this id or unique id prefix."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.runs).where(t.runs.c.id.startswith(run_id, autoescape=True)).limit(2)
            ).all()
        if not rows:
            raise RunNotFoundError(
                f"No run has the id {run_id!r}. List runs with 'loopline runs'.", run_id=run_id
            )
        if len(rows) > 1:
            raise RunNotFoundError(
                f"More than one run starts with {run_id!r}; give more characters of the id.",
                run_id=run_id,
            )
        return _run(rows[0])

    def list_runs(self, *, limit: int = 20, pipeline: str | None = None) -> list[RunRecord]:
        query = sa.select(t.runs).order_by(t.runs.c.created_at.desc()).limit(limit)
        if pipeline is not None:
            query = query.where(t.runs.c.pipeline == pipeline)
        with self._read() as conn:
            return [_run(row) for row in conn.execute(query)]

    def run_params(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.params).where(t.params.c.run_id == run_id)).all()
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            out.setdefault(row.step, {})[row.key] = orjson.loads(row.value)
        return out

    # -- steps ---------------------------------------------------------------------------

    def start_step(self, run_id: str, name: str, *, cache_key: str | None) -> str:
        step_id = new_id()
        with self._write() as conn:
            conn.execute(
                t.steps.insert(),
                {
                    "id": step_id,
                    "run_id": run_id,
                    "name": name,
                    "status": "running",
                    "cache_key": cache_key,
                    "cache_hit": False,
                    "started_at": time.time(),
                },
            )
        return step_id

    def finish_step(self, run_id: str, step_id: str, outcome: StepOutcome) -> None:
        """Write a finished step: status, attempts, output artifact, lineage, metrics, cache."""
        _check_status(outcome.status, STEP_STATUSES)
        artifact = outcome.artifact
        with self._write() as conn:
            conn.execute(
                _FINISH_STEP,
                {
                    "step": step_id,
                    "status": outcome.status,
                    "ended_at": outcome.ended_at,
                    "error": outcome.error,
                    "output_artifact_id": artifact.id if artifact else None,
                },
            )
            if outcome.attempts:
                conn.execute(
                    t.attempts.insert(),
                    [
                        {
                            "step_id": step_id,
                            "number": a.number,
                            "status": a.status,
                            "started_at": a.started_at,
                            "ended_at": a.ended_at,
                            "error": a.error,
                            "traceback": a.traceback,
                        }
                        for a in outcome.attempts
                    ],
                )
            edges = [
                _edge(aid, step_id, "input", "artifact", "step", n)
                for n, aid in outcome.inputs.items()
            ]
            if artifact is not None:
                conn.execute(
                    t.artifacts.insert(),
                    {
                        "id": artifact.id,
                        "content_hash": artifact.content_hash,
                        "uri": artifact.uri,
                        "size": artifact.size,
                        "kind": artifact.kind,
                        "created_at": artifact.created_at,
                        "producer_step_id": step_id,
                    },
                )
                edges.append(_edge(step_id, artifact.id, "output", "step", "artifact", None))
                if outcome.cache_key is not None and outcome.status == "succeeded":
                    self._upsert_cache(conn, outcome.cache_key, artifact.id, step_id)
            if edges:
                conn.execute(t.lineage.insert(), edges)
            self._insert_metrics(conn, run_id, step_id, outcome.metrics, outcome.ended_at)

    def record_cached_step(
        self,
        run_id: str,
        name: str,
        *,
        cache_key: str,
        artifact_id: str,
        source_step_id: str,
        inputs: Mapping[str, str],
        status: str = "cached",
    ) -> str:
        """Record a step answered from the cache; copy the source step's metrics."""
        step_id = new_id()
        now = time.time()
        with self._write() as conn:
            conn.execute(
                t.steps.insert(),
                {
                    "id": step_id,
                    "run_id": run_id,
                    "name": name,
                    "status": status,
                    "cache_key": cache_key,
                    "cache_hit": True,
                    "started_at": now,
                    "ended_at": now,
                    "output_artifact_id": artifact_id,
                    "source_step_id": source_step_id,
                },
            )
            edges = [
                _edge(aid, step_id, "input", "artifact", "step", n) for n, aid in inputs.items()
            ]
            edges.append(_edge(step_id, artifact_id, "output", "step", "artifact", None))
            conn.execute(t.lineage.insert(), edges)
            conn.execute(
                _COPY_METRICS,
                {"new_run": run_id, "new_step": step_id, "now": now, "source": source_step_id},
            )
        return step_id

    def record_skipped_step(self, run_id: str, name: str, *, reason: str) -> str:
        step_id = new_id()
        with self._write() as conn:
            conn.execute(
                t.steps.insert(),
                {
                    "id": step_id,
                    "run_id": run_id,
                    "name": name,
                    "status": "skipped",
                    "cache_hit": False,
                    "error": reason,
                },
            )
        return step_id

    def get_steps(self, run_id: str) -> list[StepRecord]:
        query = (
            sa.select(t.steps)
            .where(t.steps.c.run_id == run_id)
            .order_by(t.steps.c.started_at.is_(None), t.steps.c.started_at, t.steps.c.name)
        )
        with self._read() as conn:
            return [_step(row) for row in conn.execute(query)]

    def get_step(self, step_id: str) -> StepRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(t.steps).where(t.steps.c.id == step_id)).first()
        if row is None:
            raise RunNotFoundError(f"No step has the id {step_id!r}.", step_id=step_id)
        return _step(row)

    def get_attempts(self, step_id: str) -> list[AttemptRecord]:
        query = (
            sa.select(t.attempts)
            .where(t.attempts.c.step_id == step_id)
            .order_by(t.attempts.c.number)
        )
        with self._read() as conn:
            return [
                AttemptRecord(r.number, r.status, r.started_at, r.ended_at, r.error, r.traceback)
                for r in conn.execute(query)
            ]

    # -- datasets ------------------------------------------------------------------------

    def add_dataset_version(
        self,
        *,
        name: str,
        content_hash: str,
        columns: Sequence[tuple[str, str]],
        source: str,
        source_fingerprint: str,
        parts: Sequence[DatasetPartRecord],
        contract: str | None = None,
        contract_hash: str | None = None,
        profile_hash: str | None = None,
        cursor: Any = None,
        warnings: Sequence[str] = (),
        status: str = "ok",
        run_id: str | None = None,
        step_id: str | None = None,
    ) -> DatasetRecord:
        """Record a new version of dataset ``name`` (numbered from 1) with its parts.

        A ``failed`` version is kept so that its quarantine can be looked at; the newest
        version of a name (``get_dataset(name)``) is the newest that did not fail.
        """
        _check_status(status, DATASET_STATUSES)
        dataset_id = new_id()
        row = {
            "id": dataset_id,
            "name": name,
            "status": status,
            "content_hash": content_hash,
            "rows": sum(p.rows for p in parts),
            "rows_read": sum(p.rows_read for p in parts),
            "rows_quarantined": sum(p.rows_quarantined for p in parts),
            "columns": _dumps([list(c) for c in columns]),
            "source": source,
            "source_fingerprint": source_fingerprint,
            "contract": contract,
            "contract_hash": contract_hash,
            "profile_hash": profile_hash,
            "cursor": None if cursor is None else _dumps(cursor),
            "warnings": _dumps(list(warnings)),
            "run_id": run_id,
            "step_id": step_id,
            "created_at": time.time(),
        }
        part_rows = [{"dataset_id": dataset_id, **vars(p)} for p in parts]
        for attempt in range(5):
            try:
                with self._write() as conn:
                    latest = conn.execute(
                        sa.select(sa.func.max(t.datasets.c.version)).where(
                            t.datasets.c.name == name
                        )
                    ).scalar()
                    row["version"] = int(latest or 0) + 1
                    conn.execute(t.datasets.insert(), row)
                    if part_rows:
                        conn.execute(t.dataset_parts.insert(), part_rows)
                break
            except MetadataStoreError as exc:
                # Two writers took the same number (PostgreSQL): the unique key refused one.
                if attempt == 4 or not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise
        return self.get_dataset(dataset_id)

    def get_dataset(self, ref: str, version: int | None = None) -> DatasetRecord:
        """A dataset version by id (or unique prefix), ``name@version``, or name (newest)."""
        name, _, pinned = ref.partition("@")
        if pinned:
            if not pinned.isdigit():
                raise DatasetNotFoundError(
                    f"{ref!r} is not a dataset version: write NAME@VERSION with a number, "
                    f"such as {name}@1.",
                    dataset=ref,
                )
            version = int(pinned)
        query = sa.select(t.datasets).where(t.datasets.c.name == name)
        if version is not None:
            query = query.where(t.datasets.c.version == version)
        else:
            query = query.where(t.datasets.c.status != "failed")
        with self._read() as conn:
            found = conn.execute(query.order_by(t.datasets.c.version.desc()).limit(1)).first()
            if found is None and version is None:
                by_id = conn.execute(
                    sa.select(t.datasets)
                    .where(t.datasets.c.id.startswith(ref, autoescape=True))
                    .limit(2)
                ).all()
                if len(by_id) > 1:
                    raise DatasetNotFoundError(
                        f"More than one dataset version id starts with {ref!r}; give more "
                        f"characters.",
                        dataset=ref,
                    )
                found = by_id[0] if by_id else None
        if found is None:
            what = f"version {version} of dataset {name!r}" if version else f"dataset {ref!r}"
            raise DatasetNotFoundError(
                f"There is no {what}. 'loopline datasets' lists the datasets and versions.",
                dataset=ref,
            )
        return _dataset(found)

    def latest_dataset(self, name: str) -> DatasetRecord | None:
        """The newest version of ``name`` that did not fail, if any."""
        query = (
            sa.select(t.datasets)
            .where((t.datasets.c.name == name) & (t.datasets.c.status != "failed"))
            .order_by(t.datasets.c.version.desc())
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _dataset(row)

    def list_datasets(self, *, name: str | None = None, limit: int = 50) -> list[DatasetRecord]:
        """Dataset versions, newest first (of every dataset, or of ``name``)."""
        query = sa.select(t.datasets).order_by(
            t.datasets.c.created_at.desc(), t.datasets.c.version.desc()
        )
        if name is not None:
            query = query.where(t.datasets.c.name == name)
        with self._read() as conn:
            return [_dataset(r) for r in conn.execute(query.limit(limit))]

    def datasets_of_run(self, run_id: str) -> list[DatasetRecord]:
        """The dataset versions a run created, oldest first."""
        query = (
            sa.select(t.datasets)
            .where(t.datasets.c.run_id == run_id)
            .order_by(t.datasets.c.created_at)
        )
        with self._read() as conn:
            return [_dataset(r) for r in conn.execute(query)]

    def upstream_datasets(self, step_id: str) -> list[DatasetRecord]:
        """The dataset versions a step's output depends on, by name then version.

        Walks back from the step through its input artifacts to the steps that produced
        them (in earlier runs too, for a cached step) and collects the dataset versions
        those steps, and the step itself, created.
        """
        seen: set[str] = set()
        frontier = [step_id]
        with self._read() as conn:
            while frontier:
                fresh = [s for s in frontier if s not in seen]
                seen.update(fresh)
                if not fresh:
                    break
                inputs = sa.select(t.lineage.c.src_id).where(
                    t.lineage.c.dst_id.in_(fresh) & (t.lineage.c.relation == "input")
                )
                producers = sa.select(t.artifacts.c.producer_step_id).where(
                    t.artifacts.c.id.in_(inputs) & t.artifacts.c.producer_step_id.is_not(None)
                )
                frontier = [str(row[0]) for row in conn.execute(producers)]
            query = (
                sa.select(t.datasets)
                .where(t.datasets.c.step_id.in_(seen))
                .order_by(t.datasets.c.name, t.datasets.c.version)
            )
            return [_dataset(r) for r in conn.execute(query)]

    def dataset_parts(self, dataset_id: str) -> list[DatasetPartRecord]:
        query = (
            sa.select(t.dataset_parts)
            .where(t.dataset_parts.c.dataset_id == dataset_id)
            .order_by(t.dataset_parts.c.position)
        )
        with self._read() as conn:
            return [
                DatasetPartRecord(**{k: v for k, v in r._mapping.items() if k != "dataset_id"})
                for r in conn.execute(query)
            ]

    # -- features ------------------------------------------------------------------------

    def register_feature_view(
        self, *, name: str, version: str, kind: str, definition: Mapping[str, Any]
    ) -> FeatureViewRecord:
        """Record a version of a feature definition (once: registering it again is a no-op)."""
        row = {
            "name": name,
            "version": version,
            "kind": kind,
            "definition": _dumps(dict(definition)),
            "created_at": time.time(),
        }
        key = (t.feature_views.c.name == name) & (t.feature_views.c.version == version)
        with self._write() as conn:
            found = conn.execute(sa.select(t.feature_views).where(key)).first()
            if found is None:
                conn.execute(t.feature_views.insert(), row)
                found = conn.execute(sa.select(t.feature_views).where(key)).one()
        return _feature_view(found)

    def feature_view_versions(self, name: str | None = None) -> list[FeatureViewRecord]:
        """Recorded feature definition versions, newest first (of every view, or ``name``)."""
        query = sa.select(t.feature_views).order_by(
            t.feature_views.c.created_at.desc(), t.feature_views.c.name
        )
        if name is not None:
            query = query.where(t.feature_views.c.name == name)
        with self._read() as conn:
            return [_feature_view(r) for r in conn.execute(query)]

    def add_materialization(
        self,
        *,
        view: str,
        version: str,
        online_url: str,
        start: float | None,
        end: float,
        rows: int,
        newest_event: float | None,
        run_id: str | None = None,
    ) -> MaterializationRecord:
        """Record that ``rows`` values of ``view`` were written to the online store."""
        row: dict[str, Any] = {
            "id": new_id(),
            "view": view,
            "version": version,
            "online_url": online_url,
            "start": start,
            "end": end,
            "rows": rows,
            "newest_event": newest_event,
            "run_id": run_id,
            "created_at": time.time(),
        }
        with self._write() as conn:
            conn.execute(t.materializations.insert(), row)
        return MaterializationRecord(**row)

    def materializations(
        self, view: str | None = None, *, limit: int = 50
    ) -> list[MaterializationRecord]:
        """Materializations, newest first (of every view, or of ``view``)."""
        query = sa.select(t.materializations).order_by(
            t.materializations.c.created_at.desc(), t.materializations.c.id
        )
        if view is not None:
            query = query.where(t.materializations.c.view == view)
        with self._read() as conn:
            return [
                MaterializationRecord(**dict(r._mapping)) for r in conn.execute(query.limit(limit))
            ]

    # -- registry ------------------------------------------------------------------------
    #
    # Every write locks the model's row first (FOR UPDATE on PostgreSQL; SQLite writes are
    # serialized by BEGIN IMMEDIATE), so version numbers, alias moves and the audit log
    # stay consistent when several processes register or promote at once.

    def register_model_version(
        self,
        *,
        model: str,
        artifact_id: str,
        content_hash: str,
        actor: str,
        metrics: Mapping[str, float | None] | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        datasets: Sequence[str] = (),
        features: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> tuple[ModelVersionRecord, bool]:
        """Record a new version of ``model`` (numbered from 1), creating the model if new.

        A bundle whose content hash the model already has is not registered again: the
        existing version comes back, with ``False`` (``True`` when a version was created).
        A new version writes a ``register`` entry to the audit log.
        """
        now = time.time()
        clean = {k: _metric_value(k, v) for k, v in (metrics or {}).items()}
        with self._write() as conn:
            self._lock_model(conn, model, description=description, now=now)
            found = conn.execute(
                sa.select(t.model_versions).where(
                    (t.model_versions.c.model == model)
                    & (t.model_versions.c.content_hash == content_hash)
                )
            ).first()
            if found is not None:
                record = _model_version(found, self._aliases_of(conn, model))
                return record, False
            latest = conn.execute(
                sa.select(sa.func.max(t.model_versions.c.version)).where(
                    t.model_versions.c.model == model
                )
            ).scalar()
            version = int(latest or 0) + 1
            row = {
                "id": new_id(),
                "model": model,
                "version": version,
                "artifact_id": artifact_id,
                "content_hash": content_hash,
                "run_id": run_id,
                "step_id": step_id,
                "status": "registered",
                "created_at": now,
                "metrics": _dumps(clean),
                "tags": _dumps(dict(tags or {})),
                "datasets": _dumps(list(datasets)),
                "features": _dumps(list(features)),
            }
            conn.execute(t.model_versions.insert(), row)
            edges = self._version_edges(conn, row)
            if edges:
                conn.execute(t.lineage.insert(), edges)
            self._audit(
                conn,
                model=model,
                alias=None,
                action="register",
                from_version=None,
                to_version=version,
                actor=actor,
                why=None,
                metrics=clean,
                verdict=None,
                now=now,
            )
            record = _model_version(
                conn.execute(
                    sa.select(t.model_versions).where(t.model_versions.c.id == row["id"])
                ).one(),
                self._aliases_of(conn, model),
            )
        return record, True

    def _version_edges(self, conn: Connection, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Lineage of a new model version: its run, its bundle, the datasets it learned from.

        Dataset references (``name@version``) that the store does not hold are kept on the
        version as given but get no edge.
        """
        vid = str(row["id"])
        edges = []
        if row["run_id"]:
            edges.append(_edge(str(row["run_id"]), vid, "trained", "run", "model_version", None))
        artifact = conn.execute(
            sa.select(t.artifacts.c.id).where(
                (t.artifacts.c.id == row["artifact_id"])
                | (t.artifacts.c.content_hash == row["content_hash"])
            )
        ).first()
        if artifact is not None:
            edges.append(_edge(str(artifact.id), vid, "bundle", "artifact", "model_version", None))
        for ref in dict.fromkeys(orjson.loads(row["datasets"])):
            name, _, number = str(ref).partition("@")
            if not number.isdigit():
                continue
            found = conn.execute(
                sa.select(t.datasets.c.id).where(
                    (t.datasets.c.name == name) & (t.datasets.c.version == int(number))
                )
            ).first()
            if found is not None:
                edges.append(
                    _edge(str(found.id), vid, "trained_on", "dataset", "model_version", str(ref))
                )
        return edges

    def version_lineage(self, model: str, version: int) -> list[tuple[str, str, str]]:
        """(relation, kind, id) of what a model version came from: run, bundle, datasets."""
        record = self.model_version(model, version)
        if record is None:
            return []
        query = (
            sa.select(t.lineage.c.relation, t.lineage.c.src_kind, t.lineage.c.src_id)
            .where(t.lineage.c.dst_id == record.id)
            .order_by(t.lineage.c.relation, t.lineage.c.src_id)
        )
        with self._read() as conn:
            return [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(query)]

    def registered_models(self) -> list[RegisteredModelRecord]:
        """Every registered model, by name."""
        with self._read() as conn:
            return self._registered_models(conn, None)

    def registered_model(self, name: str) -> RegisteredModelRecord | None:
        """The registered model ``name``, or None."""
        with self._read() as conn:
            found = self._registered_models(conn, name)
        return found[0] if found else None

    def model_versions(self, model: str) -> list[ModelVersionRecord]:
        """The versions of ``model``, oldest first (none for an unknown model)."""
        query = (
            sa.select(t.model_versions)
            .where(t.model_versions.c.model == model)
            .order_by(t.model_versions.c.version)
        )
        with self._read() as conn:
            aliases = self._aliases_of(conn, model)
            return [_model_version(r, aliases) for r in conn.execute(query)]

    def model_version(self, model: str, version: int) -> ModelVersionRecord | None:
        """Version ``version`` of ``model``, or None."""
        query = sa.select(t.model_versions).where(
            (t.model_versions.c.model == model) & (t.model_versions.c.version == version)
        )
        with self._read() as conn:
            found = conn.execute(query).first()
            return None if found is None else _model_version(found, self._aliases_of(conn, model))

    def model_aliases(self, model: str) -> dict[str, int]:
        """Alias -> version for ``model``, by alias name."""
        with self._read() as conn:
            return self._aliases_of(conn, model)

    def move_model_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        actor: str,
        why: str | None,
        action: str = "promote",
        metrics: Mapping[str, float | None] | None = None,
        verdict: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> ModelAuditRecord | None:
        """Point ``alias`` of ``model`` at ``version`` and write the move to the audit log.

        ``metrics`` default to the version's own. ``status``, when given, becomes the
        version's status in the same transaction. An alias that already points at
        ``version`` does not move: nothing is written to the log and None comes back.
        The caller checks that the version exists.
        """
        _check_status(action, ("promote", "rollback"))
        now = time.time()
        with self._write() as conn:
            self._lock_model(conn, model, now=now)
            if status is not None:
                self._set_version_status(conn, model, version, status)
            current = self._aliases_of(conn, model).get(alias)
            if current == version:
                return None
            return self._move(
                conn, model, alias, current, version, action, actor, why, metrics, verdict, now
            )

    def rollback_model_alias(
        self, model: str, alias: str, *, actor: str, why: str | None
    ) -> ModelAuditRecord | None:
        """Move ``alias`` back to the version it pointed at before its last promotion.

        The alias's moves in the audit log form a stack: each promote pushes the version
        it moved away from, each rollback pops one. So repeated rollbacks walk back through
        earlier versions, and a rollback is never undone by the next one. None comes back
        (and nothing is written) when there is no earlier version to return to.
        """
        now = time.time()
        with self._write() as conn:
            self._lock_model(conn, model, now=now)
            moves = conn.execute(
                sa.select(t.model_audit.c.action, t.model_audit.c.from_version)
                .where(
                    (t.model_audit.c.model == model)
                    & (t.model_audit.c.alias == alias)
                    & t.model_audit.c.action.in_(("promote", "rollback"))
                )
                .order_by(t.model_audit.c.id)
            ).all()
            history: list[int | None] = []
            for move in moves:
                if move.action == "promote":
                    history.append(move.from_version)
                elif history:
                    history.pop()
            if not history or history[-1] is None:
                return None
            current = self._aliases_of(conn, model).get(alias)
            return self._move(
                conn, model, alias, current, history[-1], "rollback", actor, why, None, None, now
            )

    def refuse_model_version(
        self,
        model: str,
        version: int,
        *,
        alias: str,
        actor: str,
        why: str | None,
        verdict: Mapping[str, Any],
        metrics: Mapping[str, float | None] | None = None,
    ) -> ModelAuditRecord:
        """Mark ``version`` refused by the gate for ``alias``, and log the verdict."""
        now = time.time()
        with self._write() as conn:
            self._lock_model(conn, model, now=now)
            self._set_version_status(conn, model, version, "refused")
            if metrics is None:
                metrics = self._version_metrics(conn, model, version)
            return self._audit(
                conn,
                model=model,
                alias=alias,
                action="refuse",
                from_version=self._aliases_of(conn, model).get(alias),
                to_version=version,
                actor=actor,
                why=why,
                metrics=metrics,
                verdict=verdict,
                now=now,
            )

    def set_model_version_tags(self, model: str, version: int, tags: Mapping[str, str]) -> None:
        """Add ``tags`` to a version (replacing the same keys)."""
        key = (t.model_versions.c.model == model) & (t.model_versions.c.version == version)
        with self._write() as conn:
            found = conn.execute(sa.select(t.model_versions.c.tags).where(key)).scalar()
            merged = {**orjson.loads(found or "{}"), **tags}
            conn.execute(t.model_versions.update().where(key).values(tags=_dumps(merged)))

    def model_audit(self, model: str, *, alias: str | None = None) -> list[ModelAuditRecord]:
        """The audit log of ``model`` (or of one alias of it), oldest first."""
        query = (
            sa.select(t.model_audit)
            .where(t.model_audit.c.model == model)
            .order_by(t.model_audit.c.id)
        )
        if alias is not None:
            query = query.where(t.model_audit.c.alias == alias)
        with self._read() as conn:
            return [_audit_entry(r) for r in conn.execute(query)]

    def _lock_model(
        self, conn: Connection, model: str, *, now: float, description: str | None = None
    ) -> None:
        """Create the model's row if it is new, and hold it until the transaction ends."""
        insert: Any
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(
            insert(t.registered_models)
            .values(name=model, description=description, created_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        key = t.registered_models.c.name == model
        conn.execute(sa.select(t.registered_models.c.name).where(key).with_for_update()).one()
        if description is not None:
            conn.execute(t.registered_models.update().where(key).values(description=description))

    def _move(
        self,
        conn: Connection,
        model: str,
        alias: str,
        current: int | None,
        version: int,
        action: str,
        actor: str,
        why: str | None,
        metrics: Mapping[str, float | None] | None,
        verdict: Mapping[str, Any] | None,
        now: float,
    ) -> ModelAuditRecord:
        key = (t.model_aliases.c.model == model) & (t.model_aliases.c.alias == alias)
        if current is None:
            conn.execute(
                t.model_aliases.insert(),
                {"model": model, "alias": alias, "version": version, "updated_at": now},
            )
        else:
            conn.execute(
                t.model_aliases.update().where(key).values(version=version, updated_at=now)
            )
        if metrics is None:
            metrics = self._version_metrics(conn, model, version)
        return self._audit(
            conn,
            model=model,
            alias=alias,
            action=action,
            from_version=current,
            to_version=version,
            actor=actor,
            why=why,
            metrics=metrics,
            verdict=verdict,
            now=now,
        )

    def _audit(
        self,
        conn: Connection,
        *,
        model: str,
        alias: str | None,
        action: str,
        from_version: int | None,
        to_version: int | None,
        actor: str,
        why: str | None,
        metrics: Mapping[str, float | None],
        verdict: Mapping[str, Any] | None,
        now: float,
    ) -> ModelAuditRecord:
        row = {
            "model": model,
            "alias": alias,
            "action": action,
            "from_version": from_version,
            "to_version": to_version,
            "actor": actor,
            "created_at": now,
            "why": why,
            "metrics": _dumps({k: _metric_value(k, v) for k, v in metrics.items()}),
            "verdict": None if verdict is None else _dumps(dict(verdict)),
        }
        inserted = conn.execute(t.model_audit.insert(), row).inserted_primary_key
        return _audit_entry({**row, "id": int(inserted[0]) if inserted else 0})

    def _set_version_status(self, conn: Connection, model: str, version: int, status: str) -> None:
        _check_status(status, MODEL_VERSION_STATUSES)
        conn.execute(
            t.model_versions.update()
            .where((t.model_versions.c.model == model) & (t.model_versions.c.version == version))
            .values(status=status)
        )

    def _version_metrics(self, conn: Connection, model: str, version: int) -> dict[str, Any]:
        found = conn.execute(
            sa.select(t.model_versions.c.metrics).where(
                (t.model_versions.c.model == model) & (t.model_versions.c.version == version)
            )
        ).scalar()
        return dict(orjson.loads(found or "{}"))

    def _aliases_of(self, conn: Connection, model: str) -> dict[str, int]:
        query = (
            sa.select(t.model_aliases.c.alias, t.model_aliases.c.version)
            .where(t.model_aliases.c.model == model)
            .order_by(t.model_aliases.c.alias)
        )
        return {str(r.alias): int(r.version) for r in conn.execute(query)}

    def _registered_models(self, conn: Connection, name: str | None) -> list[RegisteredModelRecord]:
        counts = (
            sa.select(
                t.model_versions.c.model,
                sa.func.count().label("versions"),
                sa.func.max(t.model_versions.c.version).label("latest"),
            )
            .group_by(t.model_versions.c.model)
            .subquery()
        )
        query = (
            sa.select(t.registered_models, counts.c.versions, counts.c.latest)
            .select_from(
                t.registered_models.outerjoin(counts, counts.c.model == t.registered_models.c.name)
            )
            .order_by(t.registered_models.c.name)
        )
        aliases = sa.select(t.model_aliases).order_by(t.model_aliases.c.alias)
        if name is not None:
            query = query.where(t.registered_models.c.name == name)
            aliases = aliases.where(t.model_aliases.c.model == name)
        by_model: dict[str, dict[str, int]] = {}
        for a in conn.execute(aliases):
            by_model.setdefault(str(a.model), {})[str(a.alias)] = int(a.version)
        return [
            RegisteredModelRecord(
                name=r.name,
                description=r.description,
                created_at=r.created_at,
                versions=int(r.versions or 0),
                latest=None if r.latest is None else int(r.latest),
                aliases=by_model.get(r.name, {}),
            )
            for r in conn.execute(query)
        ]

    # -- cache ---------------------------------------------------------------------------

    def lookup_cache(self, cache_key: str) -> tuple[ArtifactRecord, str] | None:
        """Return the artifact stored under ``cache_key`` and the step that produced it."""
        with self._read() as conn:
            row = conn.execute(_LOOKUP_CACHE, {"key": cache_key}).first()
        if row is None:
            return None
        return _artifact(row), str(row.cache_step_id)

    def forget_cache(self, cache_key: str) -> None:
        with self._write() as conn:
            conn.execute(t.cache.delete().where(t.cache.c.cache_key == cache_key))

    def _upsert_cache(self, conn: Connection, key: str, artifact_id: str, step_id: str) -> None:
        values = {
            "cache_key": key,
            "artifact_id": artifact_id,
            "step_id": step_id,
            "created_at": time.time(),
        }
        insert: Any
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(t.cache).values(**values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["cache_key"],
                set_={
                    "artifact_id": artifact_id,
                    "step_id": step_id,
                    "created_at": values["created_at"],
                },
            )
        )

    # -- artifacts and lineage -----------------------------------------------------------

    def get_artifact(self, artifact_id: str) -> ArtifactRecord:
        """Return the artifact with this id (or unique prefix), or content hash."""
        query = (
            sa.select(t.artifacts)
            .where(
                t.artifacts.c.id.startswith(artifact_id, autoescape=True)
                | (t.artifacts.c.content_hash == artifact_id)
            )
            .limit(2)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            raise RunNotFoundError(
                f"No artifact has the id {artifact_id!r}. 'loopline show RUN' lists a run's "
                f"artifacts.",
                artifact_id=artifact_id,
            )
        if len(rows) > 1 and rows[0].content_hash != artifact_id:
            raise RunNotFoundError(
                f"More than one artifact starts with {artifact_id!r}; give more characters.",
                artifact_id=artifact_id,
            )
        return _artifact(rows[0])

    def step_inputs(self, step_id: str) -> dict[str, str]:
        """Argument name -> artifact id for a step's inputs."""
        query = sa.select(t.lineage.c.name, t.lineage.c.src_id).where(
            (t.lineage.c.dst_id == step_id) & (t.lineage.c.relation == "input")
        )
        with self._read() as conn:
            return {str(r.name): str(r.src_id) for r in conn.execute(query)}

    def add_lineage(
        self, src_id: str, dst_id: str, *, relation: str, src_kind: str, dst_kind: str
    ) -> None:
        with self._write() as conn:
            conn.execute(
                t.lineage.insert().values(_edge(src_id, dst_id, relation, src_kind, dst_kind, None))
            )

    # -- metrics, params, tags -----------------------------------------------------------

    def log_metrics(
        self, run_id: str, metrics: Iterable[tuple[str, float, int]], *, step_id: str | None = None
    ) -> None:
        with self._write() as conn:
            self._insert_metrics(conn, run_id, step_id, list(metrics), time.time())

    def _insert_metrics(
        self,
        conn: Connection,
        run_id: str,
        step_id: str | None,
        metrics: Sequence[tuple[str, float | None, int]],
        timestamp: float,
    ) -> None:
        if metrics:
            conn.execute(
                t.metrics.insert(),
                [
                    {
                        "run_id": run_id,
                        "step_id": step_id,
                        "key": k,
                        "value": _metric_value(k, v),
                        "step": s,
                        "timestamp": timestamp,
                    }
                    for k, v, s in metrics
                ],
            )

    def get_metrics(self, run_id: str) -> list[MetricRecord]:
        query = (
            sa.select(t.metrics, t.steps.c.name)
            .select_from(t.metrics.outerjoin(t.steps, t.steps.c.id == t.metrics.c.step_id))
            .where(t.metrics.c.run_id == run_id)
            .order_by(t.metrics.c.id)
        )
        with self._read() as conn:
            return [
                MetricRecord(r.name, r.key, r.value, r.step, r.timestamp)
                for r in conn.execute(query)
            ]

    def set_tag(self, entity_kind: str, entity_id: str, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                t.tags.delete().where(
                    (t.tags.c.entity_kind == entity_kind)
                    & (t.tags.c.entity_id == entity_id)
                    & (t.tags.c.key == key)
                )
            )
            conn.execute(
                t.tags.insert().values(
                    entity_kind=entity_kind, entity_id=entity_id, key=key, value=value
                )
            )

    def set_tags(self, entity_kind: str, entity_id: str, tags: Mapping[str, str]) -> None:
        """Set several tags of one entity in one transaction (replacing the same keys)."""
        if not tags:
            return
        with self._write() as conn:
            conn.execute(
                t.tags.delete().where(
                    (t.tags.c.entity_kind == entity_kind)
                    & (t.tags.c.entity_id == entity_id)
                    & (t.tags.c.key.in_(list(tags)))
                )
            )
            conn.execute(
                t.tags.insert(),
                [
                    {"entity_kind": entity_kind, "entity_id": entity_id, "key": k, "value": v}
                    for k, v in tags.items()
                ],
            )

    def get_tags(self, entity_kind: str, entity_id: str) -> dict[str, str]:
        query = sa.select(t.tags.c.key, t.tags.c.value).where(
            (t.tags.c.entity_kind == entity_kind) & (t.tags.c.entity_id == entity_id)
        )
        with self._read() as conn:
            return {str(r.key): str(r.value) for r in conn.execute(query)}


# -- helpers --------------------------------------------------------------------------------


def _dataset(row: Any) -> DatasetRecord:
    values = dict(row._mapping)
    values["columns"] = [tuple(c) for c in orjson.loads(values["columns"])]
    values["cursor"] = None if values["cursor"] is None else orjson.loads(values["cursor"])
    values["warnings"] = orjson.loads(values["warnings"])
    return DatasetRecord(**values)


def _model_version(row: Any, aliases: Mapping[str, int]) -> ModelVersionRecord:
    values = dict(row._mapping)
    for key in ("metrics", "tags", "datasets", "features"):
        values[key] = orjson.loads(values[key])
    names = tuple(sorted(a for a, v in aliases.items() if v == values["version"]))
    return ModelVersionRecord(**values, aliases=names)


def _audit_entry(row: Any) -> ModelAuditRecord:
    values = dict(row if isinstance(row, Mapping) else row._mapping)
    values["metrics"] = orjson.loads(values["metrics"])
    values["verdict"] = None if values["verdict"] is None else orjson.loads(values["verdict"])
    return ModelAuditRecord(**values)


def _feature_view(row: Any) -> FeatureViewRecord:
    values = dict(row._mapping)
    values["definition"] = orjson.loads(values["definition"])
    return FeatureViewRecord(**values)


def _edge(
    src: str, dst: str, relation: str, src_kind: str, dst_kind: str, name: str | None
) -> dict[str, Any]:
    return {
        "src_id": src,
        "dst_id": dst,
        "relation": relation,
        "src_kind": src_kind,
        "dst_kind": dst_kind,
        "name": name,
    }


def _metric_value(key: str, value: float | None) -> float | None:
    """Coerce a metric to a float; NaN becomes NULL (None) on every backend.

    SQLite cannot store NaN (it reads back as NULL) while PostgreSQL can, and PostgreSQL
    rejects booleans that SQLite accepts; coercing here makes both backends agree.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Metric {key!r} must be a number. Got {value!r}.") from exc
    return None if math.isnan(number) else number


def _check_status(status: str, allowed: tuple[str, ...]) -> None:
    if status not in allowed:
        raise ValueError(f"status must be one of {allowed}, got {status!r}")


def _run(row: Any) -> RunRecord:
    return RunRecord(
        id=row.id,
        pipeline=row.pipeline,
        source=row.source,
        status=row.status,
        created_at=row.created_at,
        ended_at=row.ended_at,
        error=row.error,
        parent_run_id=row.parent_run_id,
        options=orjson.loads(row.options or "{}"),
        host=row.host,
        pid=row.pid,
    )


def _step(row: Any) -> StepRecord:
    return StepRecord(
        id=row.id,
        run_id=row.run_id,
        name=row.name,
        status=row.status,
        cache_key=row.cache_key,
        cache_hit=bool(row.cache_hit),
        started_at=row.started_at,
        ended_at=row.ended_at,
        error=row.error,
        output_artifact_id=row.output_artifact_id,
        source_step_id=row.source_step_id,
    )


def _artifact(row: Any) -> ArtifactRecord:
    return ArtifactRecord(
        id=row.id,
        content_hash=row.content_hash,
        uri=row.uri,
        size=row.size,
        kind=row.kind,
        created_at=row.created_at,
        producer_step_id=row.producer_step_id,
    )


def _normalize_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _make_engine(url: str, *, write: bool) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise MetadataStoreError(
            f"{url!r} is not a database URL. Use sqlite:///path/to/metadata.db or "
            f"postgresql+psycopg://user@host:5432/dbname.",
            url=url,
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise MetadataStoreError(
            f"{_safe_url(url)!r} names a {backend!r} database; loopline keeps its metadata in "
            f"SQLite or PostgreSQL. Use sqlite:///path/to/metadata.db or "
            f"postgresql+psycopg://user@host:5432/dbname.",
            url=_safe_url(url),
        )
    try:
        if backend == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                folder = Path(database).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise MetadataStoreError(
                        f"Cannot create the folder {str(folder)!r} for the SQLite metadata "
                        f"database: {exc.strerror or exc}. Point 'metadata_url' in loopline.toml "
                        f"(or LOOPLINE_METADATA_URL) to a writable location.",
                        url=_safe_url(url),
                    ) from exc
                engine = sa.create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_S})
            else:
                # One shared connection, so an in-memory database is one database.
                engine = sa.create_engine(
                    parsed,
                    connect_args={"check_same_thread": False},
                    poolclass=sa.pool.StaticPool,
                )
            _tune_sqlite(engine, write=write)
            return engine
        # Pre-ping costs a round trip per transaction, but a step can run for hours and a
        # connection dropped meanwhile must not lose the step's record.
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise MetadataStoreError(
            f"No database driver for {parsed.drivername!r}. Use postgresql+psycopg://... and "
            f"install the driver with pip install 'loopline[postgres]'.",
            url=_safe_url(url),
        ) from exc


def _tune_sqlite(engine: Engine, *, write: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_S * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a reader never has to upgrade to a
        # writer mid-transaction, which is what makes concurrent writers deadlock.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch a SQLite database to WAL mode (persistent, so once is enough).

    The switch needs the database to itself and does not wait on the busy timeout: when
    several processes open a new database at once, the others' connections and the first
    migration make it fail with "database is locked", so it is retried for a while.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + _SQLITE_BUSY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
