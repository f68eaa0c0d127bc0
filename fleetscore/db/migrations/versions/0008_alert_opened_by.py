"""Which episode rule opened each alert (issue 12): `alerts.opened_by`.

`strong` (one window above its strong threshold), `two_high` (two windows in a row above the high bound) or
`persistence` (k anomalous windows of the pair's last n), as `fleetscore.alerts.episodes.OPENING_RULES` says. Alerts
opened before this migration keep NULL: the rule that opened them is not reconstructed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OPENED_BY_COMMENT = "strong | two_high | persistence: the episode rule that opened it (NULL: opened before 0008)"


def upgrade() -> None:
    op.add_column("alerts", sa.Column("opened_by", sa.String(12), comment=OPENED_BY_COMMENT))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("opened_by")
