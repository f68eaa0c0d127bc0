"""Runs record the model pack's manifest SHA-256 they scored with (issue 14, part 3).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """(filled in by the change that needs it)"""


def downgrade() -> None:
    """(filled in by the change that needs it)"""
