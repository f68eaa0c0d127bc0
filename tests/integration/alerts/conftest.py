"""The alert store's and webhook's tests are about plumbing: every anomalous window opens an alert there
(ALERT_PERSISTENCE = 1/1, the rule before evidence-weighing); the persistence tests set their own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def every_anomaly_alerts(monkeypatch):
    monkeypatch.setenv("ALERT_PERSISTENCE", "1/1")
