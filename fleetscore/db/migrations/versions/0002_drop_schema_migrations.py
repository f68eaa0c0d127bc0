"""Drop `schema_migrations`, the version table of fleetscore's hand-written migrations (Alembic's
`alembic_version` replaces it). A database created fresh never had it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleetscore.clock import now_ms

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("schema_migrations", if_exists=True)


def downgrade() -> None:
    """Give the database back to fleetscore before Alembic: its version table, at version 1."""
    schema_migrations = op.create_table(
        "schema_migrations",
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("applied_at", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
    )
    op.bulk_insert(schema_migrations, [{"version": 1, "applied_at": now_ms(), "description": "create the schema"}])
