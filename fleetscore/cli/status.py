"""What `fleetscore status` shows: ingest figures, runs, alerts and the model pack in force."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import db
from fleetscore.storage.paths import model_manifest_key


def ingest_status(engine: Engine) -> dict[str, Any]:
    """Counts of readings, windows, late readings and dead letters by reason."""
    with engine.connect() as conn:
        readings = conn.execute(sa.select(sa.func.count(), sa.func.min(db.readings.c.ts),
                                          sa.func.max(db.readings.c.ts))).one()
        late = conn.execute(sa.select(sa.func.count()).where(db.readings.c.late == sa.true())).scalar_one()
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


def runs_status(engine: Engine, limit: int = 10) -> dict[str, Any]:
    """The last runs (newest first) with status and counts, and the runs by status overall."""
    r = db.runs
    with engine.connect() as conn:
        last = conn.execute(sa.select(r.c.run_id, r.c.status, r.c.backend, r.c.model_version, r.c.models,
                                      r.c.windows, r.c.windows_no_model, r.c.failures, r.c.failure_detail,
                                      r.c.error, r.c.claimed_at, r.c.finished_at)
                            .order_by(r.c.slot.desc()).limit(limit)).mappings().all()
        by_status = dict(conn.execute(sa.select(r.c.status, sa.func.count()).group_by(r.c.status)).all())
    return {"last": [dict(row) for row in last], "by_status": by_status}


def alerts_status(engine: Engine, limit: int = 10) -> dict[str, Any]:
    """Open alerts (most severe score first) and alert counts by status and by delivery state."""
    a = db.alerts
    with engine.connect() as conn:
        open_alerts = conn.execute(sa.select(a.c.alert_id, a.c.device, a.c.sensor, a.c.severity, a.c.windows,
                                             a.c.max_score, a.c.first_window_end, a.c.last_window_end)
                                   .where(a.c.status == "open").order_by(a.c.max_score.desc())
                                   .limit(limit)).mappings().all()
        by_status = dict(conn.execute(sa.select(a.c.status, sa.func.count()).group_by(a.c.status)).all())
        undelivered = conn.execute(sa.select(sa.func.count()).where(
            a.c.delivered_revision < a.c.revision)).scalar_one()
    return {"open": [dict(row) for row in open_alerts], "by_status": by_status, "undelivered": undelivered}


def model_status(store) -> dict[str, Any]:
    """The model pack in force: version, model count, algorithms (from its manifest JSON only)."""
    import json

    from fleetscore.storage.base import BlobNotFound
    from fleetscore.training import current_model_version
    from scoring_job.pack import manifest_training_table

    version = current_model_version(store)
    if version is None:
        return {"version": None}
    try:
        manifest = json.loads(store.get(model_manifest_key(version)))
        table = manifest_training_table(manifest)
    except (BlobNotFound, ValueError) as exc:  # PackError is a ValueError
        return {"version": version, "error": f"manifest unreadable: {exc}"}
    algorithms = {str(k): int(v) for k, v in table["algorithm"].value_counts(sort=False).items()}
    return {"version": version, "created": manifest["created"], "models": len(table),
            "features": manifest["features"], "algorithms": algorithms}
