"""Alert lifecycle: acknowledge and resolve, who and a note, as revisions (issue 15, part 1).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """(filled in by the change that needs it)"""


def downgrade() -> None:
    """(filled in by the change that needs it)"""
