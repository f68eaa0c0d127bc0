"""Alert documents: an alert as JSON (the blob `alerts/<yyyy>/<mm>/<dd>/<alert_id>.json` and the webhook body;
both are written from the outbox, :mod:`fleetscore.alerts.outbox`).

The document has ``alert_id, device, sensor, status ("open" | "closed"), first_window_end, last_window_end
(ISO-8601 UTC, "Z"), windows, max_score, severity, opened_by (the episode rule that opened it,
:data:`fleetscore.alerts.episodes.OPENING_RULES`; null for alerts opened before it was recorded), model_version,
run_id, raised_at, updated_at, revision``, and
the lifecycle: ``state`` (:data:`fleetscore.db.schema.ALERT_STATES`), ``acknowledged_at, acknowledged_by,
resolved_at, resolved_by, note`` (null until someone acts); the blob is dated by the UTC day of
``first_window_end`` (:func:`fleetscore.storage.paths.alert_document_key`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fleetscore.clock import iso_exact

DOCUMENT_FIELDS = ("alert_id", "device", "sensor", "status", "first_window_end", "last_window_end", "windows",
                   "max_score", "severity", "opened_by", "model_version", "run_id", "raised_at", "updated_at",
                   "revision", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "note")
TIME_FIELDS = ("first_window_end", "last_window_end", "raised_at", "updated_at", "acknowledged_at", "resolved_at")
"""Epoch ms in the alerts table, ISO-8601 in the document."""


LIFECYCLE_FIELDS = ("acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "note")
"""Set by people through the API, null until then (NaN where a row went through a DataFrame)."""
OPTIONAL_FIELDS = (*LIFECYCLE_FIELDS, "opened_by")
"""Fields that may be unset in a row (None or NaN): null in the document."""


def _set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def alert_state(record: Mapping[str, Any]) -> str:
    """The lifecycle state of an alert row: resolved, closed, acknowledged or open."""
    if _set(record.get("resolved_at")):
        return "resolved"
    if record.get("status") != "open":
        return "closed"
    return "acknowledged" if _set(record.get("acknowledged_at")) else "open"


def alert_document(record: Mapping[str, Any]) -> dict[str, Any]:
    """The alert (a row of the alerts table) as JSON: DESIGN.md's alert fields plus `revision` and the lifecycle."""
    doc = {name: record.get(name) for name in DOCUMENT_FIELDS}
    doc["state"] = alert_state(record)
    for name in OPTIONAL_FIELDS:
        doc[name] = doc[name] if _set(doc[name]) else None
    for name in TIME_FIELDS:
        doc[name] = iso_exact(doc[name])
    doc["windows"] = int(doc["windows"])
    doc["max_score"] = float(doc["max_score"])
    doc["revision"] = int(doc["revision"])
    return doc


def document_json(record: Mapping[str, Any]) -> bytes:
    """The bytes of the alert's blob document (UTF-8 JSON, indented); written by :mod:`fleetscore.alerts.outbox`."""
    return json.dumps(alert_document(record), indent=1).encode()
