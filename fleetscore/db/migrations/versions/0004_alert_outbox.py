"""Alert documents and deliveries as an outbox per alert revision; dead letters get an identity (issue 14, part 2).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """(filled in by the change that needs it)"""


def downgrade() -> None:
    """(filled in by the change that needs it)"""
