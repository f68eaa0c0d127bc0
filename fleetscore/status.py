"""What `fleetscore status` shows: ingest figures, runs, alerts and the model pack in force."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import db


def ingest_status(engine: Engine) -> dict[str, Any]:
    """Counts of readings, windows, late readings and dead letters by reason."""
    with engine.connect() as conn:
        readings = conn.execute(sa.select(sa.func.count(), sa.func.min(db.readings.c.ts),
                                          sa.func.max(db.readings.c.ts))).one()
        late = conn.execute(sa.select(sa.func.count()).where(db.readings.c.late.is_(True))).scalar_one()
        windows = conn.execute(sa.select(sa.func.count(), sa.func.max(db.windows.c.window_end))).one()
        pairs = conn.execute(sa.select(sa.func.count()).select_from(
            sa.select(db.windows.c.device, db.windows.c.sensor).distinct().subquery())).scalar_one()
        dead = dict(conn.execute(sa.select(db.dead_letters.c.reason, sa.func.count())
                                 .group_by(db.dead_letters.c.reason)
                                 .order_by(db.dead_letters.c.reason)).all())
        watermark = conn.execute(sa.select(db.watermarks.c.value)
                                 .where(db.watermarks.c.name == db.SCORING_WATERMARK)).scalar()
    return {
        "readings": readings[0], "first_reading_ms": readings[1], "last_reading_ms": readings[2],
        "late_readings": late, "windows": windows[0], "newest_window_end_ms": windows[1],
        "pairs": pairs, "dead_letters": sum(dead.values()), "dead_letters_by_reason": dead,
        "watermark_ms": watermark,
    }
