"""The OpenAPI 3 document of the HTTP API (`GET /api/openapi.json`), built from the same constants the handlers
validate with (id rules, states, severities, limits)."""

from __future__ import annotations

from typing import Any

from fleetscore import db
from fleetscore.alerts.episodes import OPENING_RULES
from fleetscore.alerts.severity import SEVERITIES
from fleetscore.api import alerts, pairs, params, runs

VERSION = "1.0.0"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


def _schemas() -> dict[str, Any]:
    alert = _object({
        "alert_id": STR, "device": STR, "sensor": STR, "status": {"type": "string", "enum": list(db.ALERT_STATUSES)},
        "state": {"type": "string", "enum": list(db.ALERT_STATES)},
        "first_window_end": TIME, "last_window_end": TIME, "windows": INT, "max_score": NUM,
        "severity": STR, "opened_by": _nullable({"type": "string", "enum": [*OPENING_RULES, None]}),
        "model_version": _nullable(STR), "run_id": _nullable(STR), "raised_at": TIME,
        "updated_at": TIME, "revision": INT, "acknowledged_at": _nullable(TIME), "acknowledged_by": _nullable(STR),
        "resolved_at": _nullable(TIME), "resolved_by": _nullable(STR), "note": _nullable(STR)})
    revision = _object({"revision": INT, "kind": {"type": "string", "enum": list(db.REVISION_KINDS)}, "at": TIME,
                        "by": _nullable(STR), "note": _nullable(STR), "document": _ref("Alert")})
    detail = {"allOf": [_ref("Alert"), _object({"revisions": {"type": "array", "items": _ref("Revision")},
                                                "revisions_total": INT})]}
    window = _object({"window_end": TIME, "n": _nullable(INT), "mean": _nullable(NUM), "min": _nullable(NUM),
                      "max": _nullable(NUM), "std": _nullable(NUM), "score": _nullable(NUM),
                      "threshold": _nullable(NUM), "threshold_strong": _nullable(NUM),
                      "threshold_high": _nullable(NUM), "is_anomaly": _nullable(BOOL),
                      "status": _nullable(STR), "run_id": _nullable(STR)})
    span = _object({"alert_id": STR, "state": {"type": "string", "enum": list(db.ALERT_STATES)}, "severity": STR,
                    "first_window_end": TIME, "last_window_end": TIME, "max_score": _nullable(NUM)})
    run = _object({name: _nullable(TIME) if name in runs.RUN_TIMES else _nullable(INT if name in (
        "attempt", "partitions", "models", "windows", "windows_no_model", "failures") else STR)
        for name in runs.RUN_FIELDS} | {"timings": {"type": "object", "additionalProperties": NUM}})
    brief = _nullable(_object({"run_id": STR, "status": STR, "slot": _nullable(TIME), "finished_at": _nullable(TIME),
                               "error": _nullable(STR)}))
    health = _object({
        "status": {"type": "string", "enum": ["ok", "degraded"]}, "now": TIME, "last_run": brief,
        "last_completed_run": brief, "watermark": _nullable(TIME), "watermark_lag_seconds": _nullable(NUM),
        "undelivered_alerts": _object({"documents": INT, "webhook": INT, "eventgrid": INT}, ["documents"]),
        "dead_letters_last_hour": INT,
        "dead_letters_last_hour_by_reason": {"type": "object", "additionalProperties": INT}})
    return {
        "Alert": alert, "Revision": revision, "AlertDetail": detail,
        "AlertList": _object({"alerts": {"type": "array", "items": _ref("Alert")}, "next_page": _nullable(STR)}),
        "Action": {**_object({"by": {"type": "string", "minLength": 1, "maxLength": params.MAX_ACTOR,
                                     "pattern": r"\S"},
                              "note": _nullable({"type": "string", "maxLength": params.MAX_NOTE})}, ["by"]),
                   "additionalProperties": False},
        "PairWindows": _object({"device": STR, "sensor": STR, "from": TIME, "to": TIME, "window_minutes": INT,
                                "windows": {"type": "array", "items": window},
                                "alerts": {"type": "array", "items": span}, "prediction_files_read": INT,
                                "notes": {"type": "array", "items": STR}}),
        "Run": run,
        "RunList": _object({"runs": {"type": "array", "items": _ref("Run")}, "next_page": _nullable(STR)}),
        "Health": health,
        "Error": _object({"error": STR}),
    }


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _path(name: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}


def _list(words: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {"type": "string", "description": "comma list of: " + ", ".join(words)}


def _answers(ok: str, *codes: int) -> dict[str, Any]:
    words = {400: "bad request (the message says what)", 401: "missing or wrong key", 404: "no such alert",
             409: "the alert's state does not allow it"}
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(ok)}}}}
    for code in (*codes, 401):
        out[str(code)] = {"description": words[code], "content": {"application/json": {"schema": _ref("Error")}}}
    return out


def _paths() -> dict[str, Any]:
    page = _query("page", STR, "the next_page token of the previous page (same filters)")
    time_ = {"type": "string", "format": "date-time"}
    alert_id = _path("alert_id", params.ALERT_ID_PATTERN)
    action = {"required": True, "content": {"application/json": {"schema": _ref("Action")}}}
    return {
        "/alerts": {"get": {
            "operationId": "listAlerts", "summary": "Alerts, newest episode first, paged",
            "parameters": [
                _query("state", _list(db.ALERT_STATES), "lifecycle state(s)"),
                _query("status", _list(db.ALERT_STATUSES), "episode status(es)"),
                _query("severity", _list(SEVERITIES), "severity(ies)"),
                _query("device", {"type": "string", "pattern": params.ID_RULE}, "one device"),
                _query("sensor", {"type": "string", "pattern": params.ID_RULE}, "one sensor"),
                _query("from", time_, "episodes that end at or after this time"),
                _query("to", time_, "episodes that start at or before this time"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": alerts.MAX_LIMIT}, "page size"), page],
            "responses": _answers("AlertList", 400)}},
        "/alerts/{alert_id}": {"get": {
            "operationId": "getAlert", "summary": "One alert with its revisions", "parameters": [alert_id],
            "responses": _answers("AlertDetail", 400, 404)}},
        "/alerts/{alert_id}/acknowledge": {"post": {
            "operationId": "acknowledgeAlert", "summary": "Acknowledge an open alert (a new revision)",
            "parameters": [alert_id], "requestBody": action, "responses": _answers("Alert", 400, 404, 409)}},
        "/alerts/{alert_id}/resolve": {"post": {
            "operationId": "resolveAlert", "summary": "Resolve an alert: closed; a recurrence opens a new one",
            "parameters": [alert_id], "requestBody": action, "responses": _answers("Alert", 400, 404, 409)}},
        "/pairs/{device}/{sensor}/windows": {"get": {
            "operationId": "pairWindows", "summary": "A pair's windows, scores, thresholds and alert spans",
            "parameters": [_path("device", params.ID_RULE), _path("sensor", params.ID_RULE),
                           _query("from", time_, f"default: `to` minus {pairs.DEFAULT_SPAN_MS // 3_600_000} h"),
                           _query("to", time_, "default: now; at most "
                                               f"{pairs.MAX_SPAN_MS // pairs.DAY_MS} days after `from`")],
            "responses": _answers("PairWindows", 400)}},
        "/runs": {"get": {
            "operationId": "listRuns", "summary": "Scoring runs, newest slot first, paged",
            "parameters": [_query("status", _list(runs.RUN_STATUSES), "run status(es)"),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": runs.MAX_LIMIT}, "page size"),
                           page],
            "responses": _answers("RunList", 400)}},
        "/health": {"get": {"operationId": "health", "summary": "The pipeline's health",
                            "responses": _answers("Health")}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3 document",
                                                        "content": {"application/json": {"schema": {
                                                            "type": "object"}}}}}}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document; paths are relative to the server URL `/api` (host.json's routePrefix)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "fleetscore alerts API", "version": VERSION,
                 "description": "Alerts, their lifecycle, the data behind them and the pipeline's health. "
                                "Keys: a function key on Azure, FLEETSCORE_API_KEY under `fleetscore up`."},
        "servers": [{"url": "/api"}],
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
        "paths": _paths(),
        "components": {"schemas": _schemas(), "securitySchemes": {
            "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
            "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"}}},
    }


def openapi(ctx: Any, request: Any) -> dict[str, Any]:
    """`GET /api/openapi.json`."""
    return openapi_document()
