"""The alert document (blob and webhook body)."""

from __future__ import annotations

from fleetscore.alerts.documents import alert_document
from tests.helpers.fleet import (
    T0,
    W,
    run_pure,
    series,
)


def test_alert_document_is_the_design_schema():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0}), now=T0 + 10 * W + 123).new
    doc = alert_document(alert)
    assert list(doc) == ["alert_id", "device", "sensor", "status", "first_window_end", "last_window_end", "windows",
                         "max_score", "severity", "model_version", "run_id", "raised_at", "updated_at", "revision"]
    assert doc["first_window_end"] == "2026-11-23T10:00:00Z" and doc["raised_at"] == "2026-11-23T10:50:00.123Z"
