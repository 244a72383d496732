"""The model registry: registered models, versions, aliases and the audit log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.String(32)
_HASH = sa.String(64)
_NAME = sa.String(200)
_ALIAS = sa.String(100)


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("name", _NAME, primary_key=True),
        sa.Column("description", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("model", _NAME, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("artifact_id", _HASH, nullable=False),
        sa.Column("content_hash", _HASH, nullable=False),
        sa.Column("run_id", _ID),
        sa.Column("step_id", _ID),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
        sa.Column("tags", sa.Text, nullable=False, server_default="{}"),
        sa.Column("datasets", sa.Text, nullable=False, server_default="[]"),
        sa.Column("features", sa.Text, nullable=False, server_default="[]"),
        sa.UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
        sa.UniqueConstraint("model", "content_hash", name="uq_model_versions_model_hash"),
    )
    op.create_table(
        "model_aliases",
        sa.Column("model", _NAME, primary_key=True),
        sa.Column("alias", _ALIAS, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "model_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", _NAME, nullable=False),
        sa.Column("alias", _ALIAS),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer),
        sa.Column("actor", _NAME, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("why", sa.Text),
        sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
        sa.Column("verdict", sa.Text),
    )
    op.create_index("ix_model_audit_model", "model_audit", ["model", "id"])


def downgrade() -> None:
    op.drop_index("ix_model_audit_model", "model_audit")
    op.drop_table("model_audit")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
    op.drop_table("registered_models")
