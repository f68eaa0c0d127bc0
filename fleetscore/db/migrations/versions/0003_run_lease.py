"""Runs own a lease (heartbeat) and record why each attempt was retried (issue 14, part 1).

`lease_owner`/`lease_until`: the process running a run locally renews `lease_until` (epoch ms); a run whose
lease lapsed is failed and retryable at once (`fleetscore.runs.recovery`). `retry_reason`: why the current
attempt started; `attempt_history`: JSON list of the earlier attempts and how each ended.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("lease_owner", "lease_until", "retry_reason", "attempt_history")


def upgrade() -> None:
    op.add_column("runs", sa.Column("lease_owner", sa.String(120),
                                    comment="host:pid:token of the process running it locally"))
    op.add_column("runs", sa.Column("lease_until", sa.BigInteger(),
                                    comment="epoch ms UTC; renewed by its owner; NULL once a remote job owns it"))
    op.add_column("runs", sa.Column("retry_reason", sa.UnicodeText(),
                                    comment="why this attempt was started (NULL: first attempt)"))
    op.add_column("runs", sa.Column("attempt_history", sa.UnicodeText(),
                                    comment="JSON: earlier attempts, how each ended"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
