"""Runs own a lease (heartbeat) and record why each attempt was retried (issue 14, part 1).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """(filled in by the change that needs it)"""


def downgrade() -> None:
    """(filled in by the change that needs it)"""
