"""Feature definition versions and materializations into the online store.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.String(32)
_HASH = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "feature_views",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("version", _HASH, primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "materializations",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("view", sa.String(200), nullable=False),
        sa.Column("version", _HASH, nullable=False),
        sa.Column("online_url", sa.Text, nullable=False),
        sa.Column("start", sa.Float),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("newest_event", sa.Float),
        sa.Column("run_id", _ID),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_materializations_view", "materializations", ["view", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_materializations_view", "materializations")
    op.drop_table("materializations")
    op.drop_table("feature_views")
