"""`/api/alerts`: list (filtered, newest episode first, paged), one alert with its revisions, acknowledge, resolve.

Lists are ordered by (first_window_end, alert_id) descending: both are fixed when an alert is raised, so a page
token (:mod:`fleetscore.api.pages`) continues exactly after the last alert served whatever was raised or updated
meanwhile. Lifecycle rules: :mod:`fleetscore.alerts.store`.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from fleetscore import db
from fleetscore.alerts import store
from fleetscore.alerts.documents import alert_document
from fleetscore.alerts.severity import SEVERITIES
from fleetscore.api import params
from fleetscore.api.core import ApiContext, ApiError, ApiRequest, bad_request
from fleetscore.api.pages import newest_first
from fleetscore.clock import iso_exact, now_ms

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
MAX_REVISIONS = 100
"""Revisions shown with an alert (the newest; `revisions_total` says how many it has)."""


def _state_condition(state: str) -> sa.ColumnElement[bool]:
    a = db.alerts.c
    return {
        "open": sa.and_(a.status == "open", a.acknowledged_at.is_(None), a.resolved_at.is_(None)),
        "acknowledged": sa.and_(a.status == "open", a.acknowledged_at.is_not(None), a.resolved_at.is_(None)),
        "closed": sa.and_(a.status != "open", a.resolved_at.is_(None)),
        "resolved": a.resolved_at.is_not(None),
    }[state]


def alert_filters(request: ApiRequest) -> dict[str, Any]:
    """The list's filters, validated (400 on a bad one)."""
    p = request.params
    filters = {
        "state": params.choices(p, "state", db.ALERT_STATES),
        "status": params.choices(p, "status", db.ALERT_STATUSES),
        "severity": params.choices(p, "severity", SEVERITIES),
        "device": params.optional_pair_id(p, "device"),
        "sensor": params.optional_pair_id(p, "sensor"),
        "from": params.time_ms("from", p.get("from")),
        "to": params.time_ms("to", p.get("to")),
    }
    if filters["from"] is not None and filters["to"] is not None and filters["from"] > filters["to"]:
        raise bad_request("from is after to")
    return filters


def _where(filters: dict[str, Any]) -> list[sa.ColumnElement[bool]]:
    a = db.alerts.c
    out: list[sa.ColumnElement[bool]] = []
    if filters["state"]:
        out.append(sa.or_(*(_state_condition(s) for s in filters["state"])))
    if filters["status"]:
        out.append(a.status.in_(filters["status"]))
    if filters["severity"]:
        out.append(a.severity.in_(filters["severity"]))
    if filters["device"] is not None:
        out.append(a.device == filters["device"])
    if filters["sensor"] is not None:
        out.append(a.sensor == filters["sensor"])
    if filters["from"] is not None:  # the episode overlaps [from, to]
        out.append(a.last_window_end >= filters["from"])
    if filters["to"] is not None:
        out.append(a.first_window_end <= filters["to"])
    return out


def list_alerts(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`GET /api/alerts`: `{"alerts": [document…], "next_page": token | null}`."""
    filters = alert_filters(request)
    size = params.limit(request.params, DEFAULT_LIMIT, MAX_LIMIT)
    a = db.alerts.c
    rows, token = newest_first(ctx, sa.select(db.alerts).where(*_where(filters)), (a.first_window_end, a.alert_id),
                               filters, size, request.params.get("page"))
    return {"alerts": [alert_document(r) for r in rows], "next_page": token}


def get_alert(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`GET /api/alerts/{alert_id}`: the document, its newest revisions (oldest first) and how many it has."""
    alert_id = params.alert_id(request.route.get("alert_id"))
    with ctx.engine.connect() as conn:
        row = conn.execute(sa.select(db.alerts).where(db.alerts.c.alert_id == alert_id)).mappings().first()
        if row is None:
            raise ApiError(404, f"no alert {alert_id}")
        revisions, total = store.revisions_of(conn, alert_id, MAX_REVISIONS)
    return {**alert_document(dict(row)), "revisions": [_revision(r) for r in revisions], "revisions_total": total}


def _revision(row: dict[str, Any]) -> dict[str, Any]:
    return {"revision": int(row["revision"]), "kind": row["kind"], "at": iso_exact(row["changed_at"]),
            "by": row["actor"], "note": row["note"], "document": json.loads(row["document"])}


def _act(ctx: ApiContext, request: ApiRequest, action: Any) -> dict[str, Any]:
    alert_id = params.alert_id(request.route.get("alert_id"))
    by, note = params.action_body(request.body)
    try:
        with ctx.engine.begin() as conn:
            rec = action(conn, alert_id, by=by, note=note, now=now_ms())
    except store.AlertNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except store.LifecycleConflict as exc:
        raise ApiError(409, str(exc)) from None
    return alert_document(rec)


def acknowledge(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`POST /api/alerts/{alert_id}/acknowledge` with `{"by", "note"}`: the alert's new revision."""
    return _act(ctx, request, store.acknowledge)


def resolve(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """`POST /api/alerts/{alert_id}/resolve` with `{"by", "note"}`: the alert's new revision (closed)."""
    return _act(ctx, request, store.resolve)
