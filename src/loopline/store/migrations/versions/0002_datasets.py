"""Dataset versions and their parts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.String(32)
_HASH = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("content_hash", _HASH, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False),
        sa.Column("columns", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_fingerprint", _HASH, nullable=False),
        sa.Column("contract", sa.String(200)),
        sa.Column("contract_hash", _HASH),
        sa.Column("profile_hash", _HASH),
        sa.Column("cursor", sa.Text),
        sa.Column("warnings", sa.Text, nullable=False, server_default="[]"),
        sa.Column("run_id", _ID),
        sa.Column("step_id", _ID),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_datasets_name_version"),
    )
    op.create_table(
        "dataset_parts",
        sa.Column("dataset_id", _ID, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("partition_key", sa.Text, nullable=False),
        sa.Column("partition_fingerprint", _HASH, nullable=False),
        sa.Column("content_hash", _HASH, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False),
        sa.Column("quarantine_hash", _HASH),
        sa.Column("profile_hash", _HASH),
    )


def downgrade() -> None:
    op.drop_table("dataset_parts")
    op.drop_table("datasets")
