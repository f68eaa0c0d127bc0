"""CloudEvents and Event Grid publishing from the alert outbox (issue 15, part 2).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """(filled in by the change that needs it)"""


def downgrade() -> None:
    """(filled in by the change that needs it)"""
