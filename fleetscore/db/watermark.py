"""The scoring watermark: the newest window end (epoch ms UTC) that completed runs have scored."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from fleetscore.db.schema import watermarks

SCORING_WATERMARK = "scoring"
"""The `watermarks.name` of the scoring watermark."""


def read_watermark(conn: Connection, name: str = SCORING_WATERMARK) -> int | None:
    """The newest window end (epoch ms) of completed runs, or None before the first."""
    return conn.execute(sa.select(watermarks.c.value).where(watermarks.c.name == name)).scalar()


def advance_watermark(conn: Connection, value: int, now: int, name: str = SCORING_WATERMARK) -> None:
    """Move the watermark forward to `value` (epoch ms), never back; safe against a concurrent first insert."""
    if _move_forward(conn, value, now, name) or read_watermark(conn, name) is not None:
        return
    try:
        with conn.begin_nested():
            conn.execute(watermarks.insert().values(name=name, value=int(value), updated_at=now))
    except sa_exc.IntegrityError:  # another writer inserted it first
        _move_forward(conn, value, now, name)


def _move_forward(conn: Connection, value: int, now: int, name: str) -> int:
    """Rows updated (0 or 1): the watermark `name` set to `value` where it was older."""
    return conn.execute(watermarks.update().where(watermarks.c.name == name, watermarks.c.value < value)
                        .values(value=int(value), updated_at=now)).rowcount
