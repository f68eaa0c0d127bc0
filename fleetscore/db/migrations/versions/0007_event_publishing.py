"""CloudEvents and Event Grid publishing from the alert outbox (issue 15, part 2).

`alerts.eventgrid_revision` / `eventgrid_attempts` / `eventgrid_error`: the Event Grid topic's delivery state per
alert, like the webhook's `delivered_revision` / `delivery_attempts` / `delivery_error` (one outbox, one pending
mark per sink, so a webhook that is down never holds the topic back, nor the other way round). Existing alerts
start at 0: a topic configured later receives each alert's current revision once.
`runs.traceparent`: the W3C trace context of the run's trace, so that indexing in another invocation (the blob
trigger) continues the run's trace.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

EVENTGRID_REVISION_COMMENT = "the revision published to the Event Grid topic (outbox: < revision is pending)"
TRACEPARENT_COMMENT = "W3C traceparent of the run's trace (OpenTelemetry); the index continues it"


def upgrade() -> None:
    op.add_column("alerts", sa.Column("eventgrid_revision", sa.Integer(), nullable=False,
                                      server_default=sa.text("0"), comment=EVENTGRID_REVISION_COMMENT))
    op.add_column("alerts", sa.Column("eventgrid_attempts", sa.Integer(), nullable=False,
                                      server_default=sa.text("0")))
    op.add_column("alerts", sa.Column("eventgrid_error", sa.UnicodeText()))
    op.add_column("runs", sa.Column("traceparent", sa.String(55), comment=TRACEPARENT_COMMENT))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("eventgrid_error")
        batch.drop_column("eventgrid_attempts")
        batch.drop_column("eventgrid_revision")
