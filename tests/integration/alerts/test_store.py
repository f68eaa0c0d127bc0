"""Alerts by episode through the index on real SQLite and PostgreSQL: across runs, closing, the min-windows
look-back in the anomalies table, a completed run closing stale alerts."""

from __future__ import annotations

from fleetscore import db
from fleetscore.alerts.episodes import alert_id_for
from fleetscore.settings import load_settings
from tests.helpers.fleet import (
    RUN_A,
    RUN_B,
    RUN_C,
    T0,
    Q,
    W,
    alerts_by_first,
    blob_doc,
    fire,
    put_pack,
    put_run,
    rows_of,
    series,
)


def test_episode_across_two_runs_then_closed_then_reopened(engine, store):
    settings = load_settings()
    put_pack(store, "v1", {("d-1", "temp"): Q})
    fire(engine, store, settings, RUN_A, series("d-1", "temp", T0, 12, {10, 11}, score=0.1))
    (alert,) = rows_of(engine, db.alerts)
    assert alert["severity"] == "medium" and alert["windows"] == 2
    fire(engine, store, settings, RUN_B, series("d-1", "temp", T0 + 12 * W, 12, {0, 1}, score=1.0), model_version="v2")
    (alert,) = rows_of(engine, db.alerts)
    assert (alert["windows"], alert["last_window_end"], alert["revision"]) == (4, T0 + 13 * W, 2)
    assert alert["run_id"] == RUN_B
    assert alert["status"] == "closed"  # run B's windows 2..11 were normal: closed after 3 of them
    assert alert["max_score"] == 1.0 and alert["model_version"] == "v2"
    assert alert["severity"] == "medium"  # v2 has no manifest: unknown quantiles rate "medium", never lower
    doc = blob_doc(store, alert)
    assert doc["revision"] == 2 and doc["status"] == "closed" and doc["windows"] == 4
    # re-firing both files (new ETags, same rows) changes nothing
    before = rows_of(engine, db.alerts)
    fire(engine, store, settings, RUN_A, series("d-1", "temp", T0, 12, {10, 11}, score=0.1))
    fire(engine, store, settings, RUN_B, series("d-1", "temp", T0 + 12 * W, 12, {0, 1}, score=1.0), model_version="v2")
    assert rows_of(engine, db.alerts) == before
    # a later anomaly opens a new alert, rated against v1's quantiles
    fire(engine, store, settings, RUN_C, series("d-1", "temp", T0 + 24 * W, 12, {11}, score=3.0))
    first, second = alerts_by_first(engine)
    assert first == before[0]
    assert (second["first_window_end"], second["status"], second["severity"]) == (T0 + 35 * W, "open", "critical")
    assert second["alert_id"] == alert_id_for("d-1", "temp", T0 + 35 * W)
    assert len(store.list("alerts/")) == 2


def test_closing_after_the_configured_normal_windows(engine, folder, monkeypatch):
    monkeypatch.setenv("ALERT_CLOSE_AFTER_WINDOWS", "5")
    settings = load_settings()
    fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 6, {0}))  # then 5 normal windows
    (alert,) = rows_of(engine, db.alerts)
    assert alert["status"] == "closed" and alert["normal_after"] == 5 and alert["revision"] == 1
    fire(engine, folder, settings, RUN_B, series("d-2", "temp", T0, 5, {0}))  # only 4 normal windows
    alert = next(a for a in rows_of(engine, db.alerts) if a["device"] == "d-2")
    assert alert["status"] == "open" and alert["normal_after"] == 4 and alert["last_seen_window_end"] == T0 + 4 * W


def test_the_older_min_windows_setting_is_persistence_k_of_k(engine, folder, monkeypatch):
    monkeypatch.delenv("ALERT_PERSISTENCE")
    monkeypatch.setenv("ALERT_MIN_WINDOWS", "2")
    settings = load_settings()
    fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 6, {2, 5}))  # isolated anomalies
    assert rows_of(engine, db.alerts) == []
    fire(engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 6 * W, 6, {0, 1}))  # continues window 5
    (alert,) = rows_of(engine, db.alerts)
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 5 * W, T0 + 7 * W, 3)
    assert alert["alert_id"] == alert_id_for("d-1", "temp", T0 + 5 * W)


def test_a_completed_run_closes_alerts_of_pairs_that_stopped_reporting(engine, folder):
    settings = load_settings()
    fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 2, {1}))
    put_run(engine, folder, RUN_B, T0 + W, T0 + 12 * W, {"part-00000.parquet": 11})
    result = fire(engine, folder, settings, RUN_B, series("d-2", "temp", T0 + 2 * W, 11))  # no d-1 windows
    assert result.run_completed and result.run_status == "succeeded" and result.alerts_changed == 1
    (alert,) = rows_of(engine, db.alerts)
    assert alert["status"] == "closed" and alert["revision"] == 2 and alert["last_seen_window_end"] == T0 + 12 * W
    assert blob_doc(folder, alert)["status"] == "closed"
