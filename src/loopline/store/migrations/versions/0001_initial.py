"""Runs, steps, attempts, artifacts, lineage, params, metrics, tags and the step cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("parent_run_id", _ID),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("host", sa.String(200)),
        sa.Column("pid", sa.Integer),
    )
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "steps",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("cache_key", sa.String(64)),
        sa.Column("cache_hit", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("output_artifact_id", _ID),
        sa.Column("source_step_id", _ID),
    )
    op.create_index("ix_steps_run_id", "steps", ["run_id"])
    op.create_index("ix_steps_cache_key", "steps", ["cache_key"])
    op.create_table(
        "attempts",
        sa.Column("step_id", _ID, primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("producer_step_id", _ID),
    )
    op.create_index("ix_artifacts_content_hash", "artifacts", ["content_hash"])
    op.create_table(
        "lineage",
        sa.Column("src_id", _ID, primary_key=True),
        sa.Column("dst_id", _ID, primary_key=True),
        sa.Column("relation", sa.String(20), primary_key=True),
        sa.Column("src_kind", sa.String(20), nullable=False),
        sa.Column("dst_kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200)),
    )
    op.create_index("ix_lineage_dst", "lineage", ["dst_id"])
    op.create_table(
        "params",
        sa.Column("run_id", _ID, primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("step_id", _ID),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("timestamp", sa.Float, nullable=False),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    op.create_table(
        "tags",
        sa.Column("entity_kind", sa.String(20), primary_key=True),
        sa.Column("entity_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "cache",
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("artifact_id", _ID, nullable=False),
        sa.Column("step_id", _ID, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("cache", "tags", "metrics", "params", "lineage", "artifacts", "attempts"):
        op.drop_table(table)
    op.drop_table("steps")
    op.drop_table("runs")
