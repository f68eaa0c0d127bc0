"""Alert lifecycle: acknowledge and resolve, who and a note, as revisions (issue 15, part 1).

`alerts.acknowledged_at/_by`, `resolved_at/_by`, `note`: set by the HTTP API (`fleetscore.api`); a resolved alert
is closed, so the episode rules open a new alert when its pair becomes anomalous again. `alert_revisions`: one row
per alert revision written from this migration on (kind, when, who, note, the alert's JSON document then); the
revisions of alerts changed before it are not reconstructed. `ix_alerts_first`: the API lists alerts newest episode
first, paged on (first_window_end, alert_id).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LIFECYCLE_COLUMNS = ("acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "note")


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("acknowledged_at", sa.BigInteger(),
                                   comment="epoch ms UTC; set once by POST /api/alerts/{id}/acknowledge"))
        batch.add_column(sa.Column("acknowledged_by", sa.Unicode(200)))
        batch.add_column(sa.Column("resolved_at", sa.BigInteger(),
                                   comment="epoch ms UTC; a person resolved it (status closed, no longer extended)"))
        batch.add_column(sa.Column("resolved_by", sa.Unicode(200)))
        batch.add_column(sa.Column("note", sa.Unicode(1000), comment="the note of the last acknowledge or resolve"))
    op.create_index("ix_alerts_first", "alerts", ["first_window_end", "alert_id"])
    op.create_table(
        "alert_revisions",
        sa.Column("alert_id", sa.String(80), primary_key=True),
        sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(20), nullable=False, comment="opened | updated | closed | acknowledged | resolved"),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.Unicode(200), comment="who acknowledged or resolved (NULL: the episode rules)"),
        sa.Column("note", sa.Unicode(1000)),
        sa.Column("document", sa.UnicodeText(), nullable=False,
                  comment="the alert's JSON document at this revision"),
    )


def downgrade() -> None:
    op.drop_table("alert_revisions")
    op.drop_index("ix_alerts_first", table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        for name in LIFECYCLE_COLUMNS:
            batch.drop_column(name)
