"""The metadata tables, as SQLAlchemy Core ``Table`` objects.

Times are UNIX seconds (float). JSON values are stored as text. The Alembic
migrations in ``migrations/versions`` create exactly these tables; a test checks that
the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "HEAD_REVISION",
    "METADATA",
    "artifacts",
    "attempts",
    "cache",
    "dataset_parts",
    "datasets",
    "feature_views",
    "lineage",
    "materializations",
    "metrics",
    "model_aliases",
    "model_audit",
    "model_versions",
    "params",
    "registered_models",
    "runs",
    "steps",
    "tags",
]

HEAD_REVISION = "0004"
"""The newest Alembic revision; the store migrates any older database up to it."""

METADATA = MetaData()

runs = Table(
    "runs",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("pipeline", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("error", Text),
    Column("parent_run_id", String(32)),
    Column("options", Text, nullable=False, server_default="{}"),
    Column("host", String(200)),
    Column("pid", Integer),
)
Index("ix_runs_created_at", runs.c.created_at)

steps = Table(
    "steps",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("run_id", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("cache_key", String(64)),
    Column("cache_hit", Boolean, nullable=False, server_default="0"),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("error", Text),
    Column("output_artifact_id", String(32)),
    Column("source_step_id", String(32)),
)
Index("ix_steps_run_id", steps.c.run_id)
Index("ix_steps_cache_key", steps.c.cache_key)

attempts = Table(
    "attempts",
    METADATA,
    Column("step_id", String(32), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Column("error", Text),
    Column("traceback", Text),
)

artifacts = Table(
    "artifacts",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("uri", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("kind", String(50), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("producer_step_id", String(32)),
)
Index("ix_artifacts_content_hash", artifacts.c.content_hash)

lineage = Table(
    "lineage",
    METADATA,
    Column("src_id", String(32), primary_key=True),
    Column("dst_id", String(32), primary_key=True),
    Column("relation", String(20), primary_key=True),
    Column("src_kind", String(20), nullable=False),
    Column("dst_kind", String(20), nullable=False),
    Column("name", String(200)),
)
Index("ix_lineage_dst", lineage.c.dst_id)

params = Table(
    "params",
    METADATA,
    Column("run_id", String(32), primary_key=True),
    Column("step", String(200), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

metrics = Table(
    "metrics",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("step_id", String(32)),
    Column("key", String(200), nullable=False),
    Column("value", Float),
    Column("step", Integer, nullable=False, server_default="0"),
    Column("timestamp", Float, nullable=False),
)
Index("ix_metrics_run_id", metrics.c.run_id)

tags = Table(
    "tags",
    METADATA,
    Column("entity_kind", String(20), primary_key=True),
    Column("entity_id", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

cache = Table(
    "cache",
    METADATA,
    Column("cache_key", String(64), primary_key=True),
    Column("artifact_id", String(32), nullable=False),
    Column("step_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

datasets = Table(
    "datasets",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("rows_quarantined", BigInteger, nullable=False),
    Column("columns", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("source_fingerprint", String(64), nullable=False),
    Column("contract", String(200)),
    Column("contract_hash", String(64)),
    Column("profile_hash", String(64)),
    Column("cursor", Text),
    Column("warnings", Text, nullable=False, server_default="[]"),
    Column("run_id", String(32)),
    Column("step_id", String(32)),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("name", "version", name="uq_datasets_name_version"),
)
"""Dataset versions: one per ingest of a source, numbered per name from 1."""

dataset_parts = Table(
    "dataset_parts",
    METADATA,
    Column("dataset_id", String(32), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("partition_key", Text, nullable=False),
    Column("partition_fingerprint", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("rows_quarantined", BigInteger, nullable=False),
    Column("quarantine_hash", String(64)),
    Column("profile_hash", String(64)),
)
"""The Parquet parts of a dataset version, one per source partition, in order."""

feature_views = Table(
    "feature_views",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
"""Feature definitions by name and version (the sha256 of the definition), as JSON."""

materializations = Table(
    "materializations",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("view", String(200), nullable=False),
    Column("version", String(64), nullable=False),
    Column("online_url", Text, nullable=False),
    Column("start", Float),
    Column("end", Float, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("newest_event", Float),
    Column("run_id", String(32)),
    Column("created_at", Float, nullable=False),
    Index("ix_materializations_view", "view", "created_at"),
)
"""Each fill of the online store from offline data: the view version, the interval, rows
written and the newest event time written (freshness is now minus that)."""

registered_models = Table(
    "registered_models",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("description", Text),
    Column("created_at", Float, nullable=False),
)
"""Registered models by name; each has versions, aliases and an audit log."""

model_versions = Table(
    "model_versions",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("artifact_id", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", String(32)),
    Column("step_id", String(32)),
    Column("status", String(20), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("metrics", Text, nullable=False, server_default="{}"),
    Column("tags", Text, nullable=False, server_default="{}"),
    Column("datasets", Text, nullable=False, server_default="[]"),
    Column("features", Text, nullable=False, server_default="[]"),
    UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
    UniqueConstraint("model", "content_hash", name="uq_model_versions_model_hash"),
)
"""Model versions, numbered per model from 1; one per bundle content hash. ``datasets``
and ``features`` are JSON lists of the dataset and feature versions it was trained on."""

model_aliases = Table(
    "model_aliases",
    METADATA,
    Column("model", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""Where each alias of a model points now (``latest`` is computed, never stored)."""

model_audit = Table(
    "model_audit",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("alias", String(100)),
    Column("action", String(20), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer),
    Column("actor", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("why", Text),
    Column("metrics", Text, nullable=False, server_default="{}"),
    Column("verdict", Text),
    Index("ix_model_audit_model", "model", "id"),
)
"""Every register, promote, rollback and refusal of a model, oldest first by ``id``."""
