"""The evidence-weighing episode rules through the index on real SQLite and PostgreSQL, with persistence 2/3 (the
index applies any k/n alike; the default, 3/4, is measured in benchmarks/detection.py): a strong window alerts at
once, a marginal one needs k of n, across runs (the earlier run's windows come from the anomalies table), gaps,
re-indexing, files out of order."""

from __future__ import annotations

import pytest

from fleetscore import db
from fleetscore.alerts.episodes import alert_id_for
from fleetscore.settings import DEFAULT_ALERT_PERSISTENCE, load_settings, parse_k_of_n
from tests.helpers.fleet import RUN_A, RUN_B, STRONG, T0, W, alerts_by_first, fire, graded, rows_of

EPISODE = ("alert_id", "first_window_end", "last_window_end", "windows", "max_score", "status")


@pytest.fixture
def defaults(monkeypatch):
    """The alert settings with ALERT_PERSISTENCE=2/3 (this folder's conftest sets 1/1), the rest the library's."""
    monkeypatch.setenv("ALERT_PERSISTENCE", "2/3")
    settings = load_settings()
    assert settings.alert_k_of_n == (2, 3) != parse_k_of_n(DEFAULT_ALERT_PERSISTENCE)  # what these cases are built on
    return settings


def episode(alert: dict) -> tuple:
    return tuple(alert[k] for k in EPISODE)


def test_a_strong_window_alerts_at_once_a_marginal_one_does_not(engine, folder, defaults):
    rows = graded(T0, 12, strong={3}) + graded(T0, 12, marginal={3}, device="d-2")
    fire(engine, folder, defaults, RUN_A, rows)
    (alert,) = rows_of(engine, db.alerts)
    assert (alert["device"], alert["first_window_end"], alert["windows"], alert["max_score"]) == ("d-1", T0 + 3 * W,
                                                                                                   1, STRONG)
    assert alert["opened_by"] == "strong"
    assert len(rows_of(engine, db.anomalies)) == 2  # the marginal window is stored, as evidence for later


def test_two_marginal_windows_of_three_across_two_runs_alert_once(engine, folder, defaults):
    fire(engine, folder, defaults, RUN_A, graded(T0, 12, marginal={11}))
    assert rows_of(engine, db.alerts) == []
    fire(engine, folder, defaults, RUN_B, graded(T0 + 12 * W, 12, marginal={1}))  # 2 of T0+11W..T0+13W
    (alert,) = rows_of(engine, db.alerts)
    assert episode(alert) == (alert_id_for("d-1", "temp", T0 + 11 * W), T0 + 11 * W, T0 + 13 * W, 2, 0.5, "closed")
    assert (alert["run_id"], alert["opened_by"]) == (RUN_B, "persistence")
    # indexing both files again (new ETags, same rows) changes nothing
    before = rows_of(engine, db.alerts)
    fire(engine, folder, defaults, RUN_A, graded(T0, 12, marginal={11}))
    fire(engine, folder, defaults, RUN_B, graded(T0 + 12 * W, 12, marginal={1}))
    assert rows_of(engine, db.alerts) == before


def test_a_gap_between_runs_is_not_evidence(engine, folder, defaults):
    fire(engine, folder, defaults, RUN_A, graded(T0, 12, marginal={11}))
    # run B's first windows are missing: its first marginal window is 3 windows after run A's
    fire(engine, folder, defaults, RUN_B, graded(T0 + 14 * W, 10, marginal={0}))
    assert rows_of(engine, db.alerts) == []


def test_files_out_of_order_give_the_alert_time_order_gives(engine, folder, defaults):
    fire(engine, folder, defaults, RUN_B, graded(T0 + 12 * W, 12, marginal={1}))  # the newer run first
    assert rows_of(engine, db.alerts) == []
    fire(engine, folder, defaults, RUN_A, graded(T0, 12, marginal={11}))
    (alert,) = alerts_by_first(engine)
    assert episode(alert)[:-1] == (alert_id_for("d-1", "temp", T0 + 11 * W), T0 + 11 * W, T0 + 13 * W, 2, 0.5)
    assert alert["opened_by"] == "persistence"
    # open until the next file or run completion (the newer run's normal windows are not stored); then the same
    assert alert["status"] == "open"
    fire(engine, folder, defaults, "run-20261123T1600Z", graded(T0 + 24 * W, 2))
    (alert,) = alerts_by_first(engine)
    assert episode(alert) == (alert_id_for("d-1", "temp", T0 + 11 * W), T0 + 11 * W, T0 + 13 * W, 2, 0.5, "closed")
    before = rows_of(engine, db.alerts)
    fire(engine, folder, defaults, RUN_A, graded(T0, 12, marginal={11}))  # and re-indexing changes nothing
    fire(engine, folder, defaults, RUN_B, graded(T0 + 12 * W, 12, marginal={1}))
    assert rows_of(engine, db.alerts) == before
