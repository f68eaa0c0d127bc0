"""Runs record the model pack's manifest SHA-256 they scored with (issue 14, part 3).

`runs.model_sha256`: the SHA-256 (64 hex digits) of `models/<model_version>/manifest.json` that `models/CURRENT`
pinned when the run started; every worker refuses a manifest with any other digest.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("model_sha256", sa.String(64), comment="SHA-256 of the pack's manifest.json"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("model_sha256")
