"""Alerts by episode (pure functions, then through the index on SQLite and PostgreSQL) and the webhook."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.svm import OneClassSVM

from fleetscore import db
from fleetscore.alerts import webhook
from fleetscore.alerts.documents import alert_document
from fleetscore.alerts.episodes import alert_id_for, close_stale, update_alerts
from fleetscore.alerts.severity import quantiles_from_manifest, severity
from fleetscore.predictions.index import index_prediction_file
from fleetscore.settings import load_settings
from fleetscore.storage.folder import FolderStore
from scoring_job.pack import write_pack
from tests.helpers import RUN_A, RUN_B, T0, W, prediction_file, put_pack, put_run, rows_of, series

RUN_C, RUN_D = "run-20261123T1400Z", "run-20261123T1500Z"
Q = {"q50": -1.0, "q90": -0.5, "q95": -0.3, "q99": 0.0, "max": 0.2}


@pytest.fixture
def folder(tmp_path):
    return FolderStore(tmp_path / "blobs")


def frame(rows: list[dict], model_version: str = "v1", run_id: str = RUN_A) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["is_anomaly"] = df["score"] > 0
    df["model_version"], df["run_id"] = model_version, run_id
    return df[df["status"] == "ok"][["device", "sensor", "window_end", "score", "is_anomaly", "model_version",
                                     "run_id"]]


EMPTY = pd.DataFrame(columns=["device", "sensor", "window_end", "score"])


def run_pure(rows, latest=None, history=EMPTY, *, min_windows=1, close_after=3, now=1):
    """One file's alert changes, then the stored state as the SQL layer would keep it."""
    latest = pd.DataFrame(latest or [])
    update = update_alerts(frame(rows), latest, history, window_ms=W, min_windows=min_windows,
                           close_after=close_after, severity_of=lambda mv, d, s, score: "low", now=now)
    return update


def test_severity_rule(tmp_path):
    assert severity(3.0, Q) == "critical"          # >= max + 2 * (q99 - q50) = 2.2
    assert severity(2.2, Q) == "critical"
    assert severity(1.0, Q) == "high"              # > max
    assert severity(0.1, Q) == "medium"            # > q99
    assert severity(0.0, {**Q, "q99": 0.05}) == "low"
    assert severity(5.0, None) == "medium" and severity(5.0, {**Q, "max": None}) == "medium"
    fitted = OneClassSVM(nu=0.5).fit(np.random.default_rng(0).normal(size=(8, 4)))
    quantiles = {"q50": -1.0, "q90": -0.5, "q95": -0.25, "q99": 0.0, "max": 0.2}
    manifest = write_pack({("a", "t"): fitted, ("b", "t"): fitted}, tmp_path / "p",
                          training={("a", "t"): {"score_quantiles": quantiles}})
    table = quantiles_from_manifest(json.loads(json.dumps(manifest)))
    assert table[("a", "t")] == quantiles and severity(9.0, table[("b", "t")]) == "medium"
    assert table[("b", "t")] == dict.fromkeys(quantiles)


def test_alert_id_is_deterministic_and_per_episode():
    assert alert_id_for("d-1", "temp", T0) == alert_id_for("d-1", "temp", T0)
    assert len(alert_id_for("d-1", "temp", T0)) == 19 and alert_id_for("d-1", "temp", T0).startswith("al-")
    assert len({alert_id_for("d-1", "temp", T0), alert_id_for("d-1", "temp", T0 + W),
                alert_id_for("d-1", "rh", T0), alert_id_for("d-2", "temp", T0)}) == 4


def test_an_episode_across_files_is_one_alert_and_closes_after_the_normal_windows():
    first = run_pure(series("d-1", "temp", T0, 4, {2, 3}))
    (alert,) = first.new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 2 * W, T0 + 3 * W, 2)
    assert alert["status"] == "open" and alert["revision"] == 1
    # the next file continues the episode, then 2 normal windows: still open
    second = run_pure(series("d-1", "temp", T0 + 4 * W, 3, {0}), latest=[alert], now=2)
    assert not second.new
    (same,) = second.changed
    assert same["alert_id"] == alert["alert_id"] and same["windows"] == 3 and same["revision"] == 2
    assert same["status"] == "open" and same["normal_after"] == 2 and same["last_seen_window_end"] == T0 + 6 * W
    # the third normal window closes it; a later anomaly opens a new alert
    third = run_pure(series("d-1", "temp", T0 + 7 * W, 4, {3}), latest=[same], now=3)
    (closed,) = third.changed
    assert closed["status"] == "closed" and closed["revision"] == 3 and closed["last_window_end"] == T0 + 4 * W
    (new,) = third.new
    assert new["alert_id"] != alert["alert_id"] and new["first_window_end"] == T0 + 10 * W
    # the same file again changes nothing
    assert not run_pure(series("d-1", "temp", T0 + 7 * W, 4, {3}), latest=[new]).visible


def test_a_gap_counts_as_normal_windows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    update = run_pure(series("d-1", "temp", T0 + 2 * W, 1, {0}), latest=[alert])  # one missing window
    assert not update.new and update.changed[0]["windows"] == 2
    alert = update.changed[0]
    later = run_pure(series("d-1", "temp", T0 + 6 * W, 1, {0}), latest=[alert])  # 3 missing windows
    (closed,) = later.changed
    assert closed["status"] == "closed" and closed["normal_after"] == 3 and closed["last_seen_window_end"] == T0 + 5 * W
    assert [a["first_window_end"] for a in later.new] == [T0 + 6 * W]


def test_min_windows_two_needs_consecutive_anomalies_even_across_files():
    assert not run_pure(series("d-1", "temp", T0, 4, {0, 2}), min_windows=2).visible
    (alert,) = run_pure(series("d-1", "temp", T0, 4, {1, 2}), min_windows=2).new
    assert (alert["first_window_end"], alert["windows"]) == (T0 + W, 2)
    history = pd.DataFrame({"device": ["d-1"], "sensor": ["temp"], "window_end": [T0 + 3 * W], "score": [0.9]})
    (alert,) = run_pure(series("d-1", "temp", T0 + 4 * W, 2, {0}), history=history, min_windows=2).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["max_score"]) == (T0 + 3 * W, T0 + 4 * W, 0.9)


def test_close_stale_closes_open_alerts_of_pairs_without_windows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    assert close_stale([alert], until=T0 + 2 * W, window_ms=W, close_after=3, now=5) == []
    (closed,) = close_stale([alert], until=T0 + 3 * W, window_ms=W, close_after=3, now=5)
    assert closed["status"] == "closed" and closed["revision"] == 2 and closed["last_seen_window_end"] == T0 + 3 * W


def test_alert_document_is_the_design_schema():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0}), now=T0 + 10 * W + 123).new
    doc = alert_document(alert)
    assert list(doc) == ["alert_id", "device", "sensor", "status", "first_window_end", "last_window_end", "windows",
                         "max_score", "severity", "model_version", "run_id", "raised_at", "updated_at", "revision"]
    assert doc["first_window_end"] == "2026-11-23T10:00:00Z" and doc["raised_at"] == "2026-11-23T10:50:00.123Z"


# ----------------------------------------------------------------------------- through the index
def fire(engine, store, settings, run_id: str, rows: list[dict], name: str = "part-00000.parquet",
         model_version: str = "v1", **kw):
    key = f"predictions/{run_id}/{name}"
    store.put(key, prediction_file(rows, run_id, model_version))
    result = index_prediction_file(engine, store, settings, key, **kw)
    assert result.status == "indexed", result.error
    return result


def alerts_by_first(engine) -> list[dict]:
    return sorted(rows_of(engine, db.alerts), key=lambda a: a["first_window_end"])


def blob_doc(store, alert) -> dict:
    day = pd.Timestamp(alert["first_window_end"], unit="ms", tz="UTC")
    return json.loads(store.get(f"alerts/{day:%Y/%m/%d}/{alert['alert_id']}.json"))


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


def test_min_windows_two_through_the_index(engine, folder, monkeypatch):
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


# --------------------------------------------------------------------------------------- webhook
class Hook:
    """A webhook on 127.0.0.1: answers `status` (503 = down), records what it accepted."""

    def __init__(self, port: int = 0):
        self.status = 200
        self.accepted: list[tuple[str, int]] = []
        self.keys: list[str] = []
        self.requests = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests += 1
                self.send_response(hook.status)
                self.end_headers()
                if hook.status == 200:
                    hook.accepted.append((body["alert_id"], body["revision"]))
                    hook.keys.append(self.headers["Idempotency-Key"])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_webhook_down_then_up_delivers_every_revision_exactly_once(engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook = Hook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{hook.port}/hook?code=s3cr3t-key")
    settings = load_settings()
    try:
        hook.status = 503  # down: every try of the round fails, the round stops after one alert
        r1 = fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}) +
                  series("d-2", "temp", T0, 4, {3}))
        assert (r1.delivered, r1.delivery_failed) == (0, 1) and hook.requests == webhook.MAX_TRIES
        (err,) = [a["delivery_error"] for a in rows_of(engine, db.alerts) if a["delivery_error"]]
        assert err == f"HTTP 503 from http://127.0.0.1:{hook.port}"  # no path: Slack/Teams keep secrets there
        hook.close()  # closed: connection refused
        r2 = fire(engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, {0}) +
                  series("d-3", "rh", T0 + 4 * W, 4, {1}))
        assert (r2.delivered, r2.delivery_failed) == (0, 1)
        pending = rows_of(engine, db.alerts)
        assert len(pending) == 3 and all(a["delivered_revision"] == 0 for a in pending)
        errors = [a["delivery_error"] for a in pending if a["delivery_error"]]
        assert any("ConnectionError" in e for e in errors) and not any("s3cr3t" in e for e in errors)
        assert sum(a["delivery_attempts"] for a in pending) == 2
        hook = Hook(port=hook.port)  # up again
        r3 = fire(engine, folder, settings, RUN_C, series("d-9", "temp", T0 + 8 * W, 2))
        assert (r3.delivered, r3.delivery_failed) == (3, 0)
        assert webhook.redeliver(engine, settings) == (0, 0)
        # a changed alert is a new revision, delivered once more
        fire(engine, folder, settings, RUN_D, series("d-3", "rh", T0 + 8 * W, 1, {0}))
        assert webhook.redeliver(engine, settings) == (0, 0)
    finally:
        hook.close()
    final = {(a["alert_id"], a["revision"]) for a in rows_of(engine, db.alerts)}
    assert all(a["delivered_revision"] == a["revision"] for a in rows_of(engine, db.alerts))
    assert len(hook.accepted) == len(set(hook.accepted)) == 4
    assert final <= set(hook.accepted)
    assert hook.keys == [f"{i}:{r}" for i, r in hook.accepted]


def test_redeliver_sends_what_indexing_did_not(sqlite_engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook = Hook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://user:pw-secret@127.0.0.1:{hook.port}/hook?sig=abc123")
    settings = load_settings()
    try:
        hook.status = 500
        fire(sqlite_engine, folder, settings, RUN_A, series("d-1", "temp", T0, 2, {0}) + series("d-2", "t", T0, 2, {1}))
        assert webhook.redeliver(sqlite_engine, settings) == (0, 1)
        (err,) = {a["delivery_error"] for a in rows_of(sqlite_engine, db.alerts) if a["delivery_error"]}
        assert "abc123" not in err and "pw-secret" not in err and "HTTP 500" in err
        hook.status = 400  # refused: recorded, kept pending, the round goes on with the next alert
        assert webhook.redeliver(sqlite_engine, settings) == (0, 2)
        hook.status = 200
        fire(sqlite_engine, folder, settings, RUN_B, series("d-3", "t", T0, 1, {0}), deliver=False)
        assert webhook.redeliver(sqlite_engine, settings) == (3, 0)
    finally:
        hook.close()
    assert sorted(hook.accepted) == sorted((a["alert_id"], 1) for a in rows_of(sqlite_engine, db.alerts))
    with sqlite_engine.connect() as conn:
        attempts = conn.execute(sa.select(sa.func.sum(db.alerts.c.delivery_attempts))).scalar()
    assert attempts == 4  # 500 on indexing, 500 on redeliver, then one 400 each


def test_alerts_command_lists_and_redelivers(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fleetscore.cli.alerts import alerts_app
    from fleetscore.context import Services

    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook = Hook()
    hook.status = 503
    for key, value in {"FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
                       "FLEETSCORE_STORAGE": str(tmp_path / "blobs"),
                       "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.port}/hook"}.items():
        monkeypatch.setenv(key, value)
    svc = Services(load_settings())
    try:
        fire(svc.engine, svc.store, svc.settings, RUN_A, series("d-1", "temp", T0, 6, {0}) +
             series("d-2", "temp", T0, 2, {1}))
        runner = CliRunner()
        listed = runner.invoke(alerts_app, ["--open", "--json"])
        assert listed.exit_code == 0, listed.output
        docs = json.loads(listed.output)
        assert [(d["device"], d["status"], d["delivered_revision"]) for d in docs] == [("d-2", "open", 0)]
        assert runner.invoke(alerts_app, ["redeliver"]).exit_code == 1  # still down
        hook.status = 200
        again = runner.invoke(alerts_app, ["redeliver"])
        assert again.exit_code == 0 and "delivered 2 alert revision(s), 0 failed" in again.output
        table = runner.invoke(alerts_app, [])
        assert table.exit_code == 0 and "alerts (2)" in table.output
    finally:
        hook.close()
        svc.close()
    assert len(hook.accepted) == 2
