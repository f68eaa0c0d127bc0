"""Alert documents and deliveries as an outbox per alert revision; dead letters get an identity (issue 14, part 2).

`alerts.document_revision`: the revision whose JSON document is in blob storage; an alert with
`document_revision < revision` is pending (existing alerts start at 0, so the outbox rewrites every document
once, which also restores documents a crash lost). `dead_letters.letter_key`: the dead letter's identity, unique,
so a redelivered bad event is recorded once; rows written before this revision keep NULL (SQL Server's unique
index is filtered to non-NULL keys, since it would admit one NULL only).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alerts", sa.Column(
        "document_revision", sa.Integer(), nullable=False, server_default=sa.text("0"),
        comment="the revision whose JSON document is in blob storage (outbox: < revision is pending)"))
    op.add_column("dead_letters", sa.Column(
        "letter_key", sa.String(64),
        comment="identity: SHA-256 (hex) of source, partition, sequence number, reason, payload and its ordinal "
                "in the event; NULL for rows from before migration 0004"))
    op.create_index("ux_dead_letters_key", "dead_letters", ["letter_key"], unique=True,
                    mssql_where=sa.text("letter_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ux_dead_letters_key", table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("letter_key")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("document_revision")
