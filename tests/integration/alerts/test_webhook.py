"""The alert webhook against a real HTTP server on 127.0.0.1: down, refused, up again; `fleetscore alerts`."""

from __future__ import annotations

import json

import sqlalchemy as sa
from typer.testing import CliRunner

from fleetscore import db
from fleetscore.alerts import outbox, webhook
from fleetscore.cli.alerts import alerts_app
from fleetscore.context import Services
from fleetscore.settings import load_settings
from tests.helpers.fleet import (
    RUN_A,
    RUN_B,
    RUN_C,
    RUN_D,
    T0,
    W,
    fire,
    rows_of,
    series,
)
from tests.helpers.webhook import Hook


def taken(hook: Hook) -> list[tuple[str, int]]:
    """(alert id, revision) of each alert document the hook accepted, in order."""
    return [(body["alert_id"], body["revision"]) for _, body in hook.accepted]


def test_webhook_down_then_up_delivers_every_revision_exactly_once(engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook = Hook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{hook.port}/hook?code=s3cr3t-key")
    settings = load_settings()
    try:
        hook.status = 503  # down: every try of the round fails, the round stops after one alert
        fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}) + series("d-2", "temp", T0, 4, {3}))
        assert hook.received == []  # indexing never POSTs: the outbox's timer does
        r1 = outbox.drain(engine, folder, settings)
        assert (r1.delivered, r1.delivery_failed) == (0, 1) and len(hook.received) == webhook.MAX_TRIES
        (err,) = [a["delivery_error"] for a in rows_of(engine, db.alerts) if a["delivery_error"]]
        assert err == f"HTTP 503 from http://127.0.0.1:{hook.port}"  # no path: Slack/Teams keep secrets there
        hook.close()  # closed: connection refused
        fire(engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, {0}) +
             series("d-3", "rh", T0 + 4 * W, 4, {1}))
        r2 = outbox.drain(engine, folder, settings)
        assert (r2.delivered, r2.delivery_failed) == (0, 1)
        pending = rows_of(engine, db.alerts)
        assert len(pending) == 3 and all(a["delivered_revision"] == 0 for a in pending)
        errors = [a["delivery_error"] for a in pending if a["delivery_error"]]
        assert any("ConnectionError" in e for e in errors) and not any("s3cr3t" in e for e in errors)
        assert sum(a["delivery_attempts"] for a in pending) == 2
        hook = Hook(port=hook.port)  # up again
        fire(engine, folder, settings, RUN_C, series("d-9", "temp", T0 + 8 * W, 2))
        r3 = outbox.drain(engine, folder, settings)
        assert (r3.delivered, r3.delivery_failed) == (3, 0)
        assert webhook.redeliver(engine, settings) == (0, 0)
        # a changed alert is a new revision, delivered once more
        fire(engine, folder, settings, RUN_D, series("d-3", "rh", T0 + 8 * W, 1, {0}))
        assert webhook.redeliver(engine, settings) == (1, 0)
    finally:
        hook.close()
    final = {(a["alert_id"], a["revision"]) for a in rows_of(engine, db.alerts)}
    assert all(a["delivered_revision"] == a["revision"] for a in rows_of(engine, db.alerts))
    assert len(taken(hook)) == len(set(taken(hook))) == 4
    assert final <= set(taken(hook))
    assert [headers["Idempotency-Key"] for headers, _ in hook.accepted] == [f"{i}:{r}" for i, r in taken(hook)]


def test_redeliver_sends_what_indexing_did_not(sqlite_engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook = Hook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://user:pw-secret@127.0.0.1:{hook.port}/hook?sig=abc123")
    settings = load_settings()
    try:
        hook.status = 500
        fire(sqlite_engine, folder, settings, RUN_A, series("d-1", "temp", T0, 2, {0}) + series("d-2", "t", T0, 2, {1}))
        assert webhook.redeliver(sqlite_engine, settings) == (0, 1)
        assert webhook.redeliver(sqlite_engine, settings) == (0, 1)
        (err,) = {a["delivery_error"] for a in rows_of(sqlite_engine, db.alerts) if a["delivery_error"]}
        assert "abc123" not in err and "pw-secret" not in err and "HTTP 500" in err
        hook.status = 400  # refused: recorded, kept pending, the round goes on with the next alert
        assert webhook.redeliver(sqlite_engine, settings) == (0, 2)
        hook.status = 200
        fire(sqlite_engine, folder, settings, RUN_B, series("d-3", "t", T0, 1, {0}))
        assert webhook.redeliver(sqlite_engine, settings) == (3, 0)
    finally:
        hook.close()
    assert sorted(taken(hook)) == sorted((a["alert_id"], 1) for a in rows_of(sqlite_engine, db.alerts))
    with sqlite_engine.connect() as conn:
        attempts = conn.execute(sa.select(sa.func.sum(db.alerts.c.delivery_attempts))).scalar()
    assert attempts == 4  # 500 on two rounds, then one 400 each


def test_alerts_command_lists_and_redelivers(tmp_path, monkeypatch):
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
