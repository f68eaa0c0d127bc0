"""`/api/runs` (newest slot first, paged) and `/api/health` (what an on-call person checks first)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from fleetscore import db
from fleetscore.api import params
from fleetscore.api.core import ApiContext, ApiRequest
from fleetscore.api.pages import newest_first
from fleetscore.clock import iso_exact, now_ms

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
RUN_STATUSES = (*db.RUN_ACTIVE, *db.RUN_TERMINAL)
RUN_TIMES = ("slot", "window_from", "window_until", "claimed_at", "submitted_at", "finished_at", "lease_until")
RUN_FIELDS = ("run_id", "slot", "status", "attempt", "trigger", "backend", "backend_run_id", "model_version",
              "window_from", "window_until", "partitions", "models", "windows", "windows_no_model", "failures",
              "error", "claimed_at", "submitted_at", "finished_at", "lease_until", "retry_reason")
HOUR_MS = 3_600_000


def run_document(row: dict[str, Any]) -> dict[str, Any]:
    """A runs row as JSON: times ISO-8601, timings parsed (seconds per stage)."""
    doc = {name: row.get(name) for name in RUN_FIELDS}
    for name in RUN_TIMES:
        doc[name] = iso_exact(doc[name])
    try:
        doc["timings"] = json.loads(row["timings"]) if row.get("timings") else {}
    except ValueError:
        doc["timings"] = {}
    return doc


def list_runs(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`GET /api/runs?status&limit&page`: `{"runs": [run…], "next_page": token | null}`, newest slot first."""
    filters = {"status": params.choices(request.params, "status", RUN_STATUSES)}
    size = params.limit(request.params, DEFAULT_LIMIT, MAX_LIMIT)
    r = db.runs.c
    q = sa.select(db.runs).where(r.status.in_(filters["status"])) if filters["status"] else sa.select(db.runs)
    rows, token = newest_first(ctx, q, (r.slot, r.run_id), filters, size, request.params.get("page"))
    return {"runs": [run_document(x) for x in rows], "next_page": token}


def _count(conn: sa.Connection, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def _brief(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"run_id": row.run_id, "status": row.status, "slot": iso_exact(row.slot),
            "finished_at": iso_exact(row.finished_at), "error": row.error}


def health(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`GET /api/health`: the last run and the last completed one, the watermark and its lag behind now (s),
    alert revisions not yet delivered (per configured sink) or without their document, dead letters of the last
    hour by reason; `status` is `degraded` when the last run failed, else `ok`."""
    now = now_ms()
    a, r, d = db.alerts.c, db.runs.c, db.dead_letters.c
    with ctx.engine.connect() as conn:
        last = conn.execute(sa.select(db.runs).order_by(r.slot.desc(), r.run_id.desc()).limit(1)).first()
        done = conn.execute(sa.select(db.runs).where(r.status.in_(("succeeded", "partial")))
                            .order_by(r.slot.desc(), r.run_id.desc()).limit(1)).first()
        mark = db.read_watermark(conn)
        undelivered = {"documents": _count(conn, db.alerts, a.document_revision < a.revision)}
        if ctx.settings.alert_webhook_url is not None:
            undelivered["webhook"] = _count(conn, db.alerts, a.delivered_revision < a.revision)
        if ctx.settings.eventgrid_topic_endpoint is not None:
            undelivered["eventgrid"] = _count(conn, db.alerts, a.eventgrid_revision < a.revision)
        reasons = dict(conn.execute(sa.select(d.reason, sa.func.count()).where(d.received_at >= now - HOUR_MS)
                                    .group_by(d.reason)).all())
    return {
        "status": "degraded" if last is not None and last.status == "failed" else "ok",
        "now": iso_exact(now),
        "last_run": _brief(last),
        "last_completed_run": _brief(done),
        "watermark": iso_exact(mark),
        "watermark_lag_seconds": None if mark is None else round((now - int(mark)) / 1000, 3),
        "undelivered_alerts": undelivered,
        "dead_letters_last_hour": sum(int(v) for v in reasons.values()),
        "dead_letters_last_hour_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
    }
