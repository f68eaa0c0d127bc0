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
                         "max_score", "severity", "opened_by", "model_version", "run_id", "raised_at", "updated_at",
                         "revision", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "note",
                         "state"]
    assert doc["first_window_end"] == "2026-11-23T10:00:00Z" and doc["raised_at"] == "2026-11-23T10:50:00.123Z"
    assert doc["state"] == "open" and doc["acknowledged_at"] is None and doc["note"] is None
    assert doc["opened_by"] == "persistence"  # one anomalous window under the helpers' 1/1


def test_an_alert_opened_before_the_rule_was_recorded_has_a_null_opened_by():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    for unknown in (None, float("nan")):  # a SQL row, a DataFrame row
        assert alert_document({**alert, "opened_by": unknown})["opened_by"] is None
    assert alert_document({k: v for k, v in alert.items() if k != "opened_by"})["opened_by"] is None


def test_the_lifecycle_state_and_times_from_sql_rows_and_dataframe_rows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    nan = float("nan")
    assert alert_document({**alert, "acknowledged_at": nan, "resolved_at": nan, "note": nan})["state"] == "open"
    acked = alert_document({**alert, "acknowledged_at": float(T0), "acknowledged_by": "ana"})
    assert acked["state"] == "acknowledged" and acked["acknowledged_at"] == "2026-11-23T10:00:00Z"
    assert alert_document({**alert, "status": "closed"})["state"] == "closed"
    resolved = {**alert, "status": "closed", "resolved_at": T0, "acknowledged_at": T0}
    assert alert_document(resolved)["state"] == "resolved"
