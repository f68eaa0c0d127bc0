"""Events for subscribers: the Event Grid topic and the CloudEvents webhook, against real HTTP servers on
127.0.0.1 that check what Event Grid checks (path, api-version, content type, aeg-sas-key or an Entra bearer
token, a JSON array of CloudEvents 1.0), fed from the same outbox as the plain webhook."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jsonschema
from azure.core.credentials import AccessToken

from fleetscore import db
from fleetscore.alerts import eventgrid, outbox, webhook
from fleetscore.settings import load_settings
from tests.helpers import REPO
from tests.helpers.fleet import RUN_A, RUN_B, T0, W, fire, rows_of, series
from tests.helpers.webhook import Hook

SCHEMA = json.loads((REPO / "tests" / "data" / "cloudevents-1.0.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
KEY = "c2VjcmV0LXRvcGljLWtleS1mb3ItdGVzdHM="
TOKEN = "eyJ0eXAiOiJKV1QifQ.test-token"


class Topic:
    """An Event Grid topic on 127.0.0.1 (`/api/events`): answers 401 to a wrong key or token, 400 to a body that is
    not a batch of CloudEvents 1.0 of the right content type, `status` otherwise; keeps what it accepted."""

    def __init__(self, *, key: str | None = None, token: str | None = None):
        self.status, self.key, self.token = 200, key, token
        self.events: list[dict] = []
        self.requests: list[dict] = []
        self.refusals: list[str] = []
        topic = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                url = urlsplit(self.path)
                topic.requests.append({"path": url.path, "query": parse_qs(url.query), "headers": dict(self.headers)})
                status, why = topic.judge(url, self.headers, body)
                if why:
                    topic.refusals.append(why)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/api/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def judge(self, url, headers, body: bytes) -> tuple[int, str | None]:
        if url.path != "/api/events" or parse_qs(url.query).get("api-version") != ["2018-01-01"]:
            return 404, f"wrong URL {url.path}?{url.query}"
        if self.key is not None and headers.get("aeg-sas-key") != self.key:
            return 401, "wrong aeg-sas-key"
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "wrong bearer token"
        if headers.get("Content-Type") != "application/cloudevents-batch+json; charset=utf-8":
            return 400, f"content type {headers.get('Content-Type')}"
        batch = json.loads(body)
        errors = [e.message for event in batch for e in VALIDATOR.iter_errors(event)] if isinstance(batch, list) \
            else ["not an array"]
        if errors or len(body) > 1_048_576:
            return 400, f"bad events: {errors[:3]}"
        if self.status == 200:
            self.events += batch
        return self.status, None

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _fire_two_runs(engine, folder, settings):
    """Run A opens alerts on d-1 and d-2; run B extends d-1's and closes d-2's."""
    fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}) + series("d-2", "temp", T0, 4, {3}))
    fire(engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, {0, 1, 2, 3}) +
         series("d-2", "temp", T0 + 4 * W, 4, set()))


def test_topic_with_a_key_gets_every_revision_as_cloudevents_and_is_retried_until_up(engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    topic = Topic(key=KEY)
    monkeypatch.setenv("EVENTGRID_TOPIC_ENDPOINT", topic.endpoint)
    monkeypatch.setenv("EVENTGRID_TOPIC_KEY", KEY)
    monkeypatch.setenv("ALERT_EVENT_SOURCE", "/fleetscore/test-fleet")
    settings = load_settings()
    try:
        topic.status = 503  # down: one batch's tries, then the round stops; nothing is marked
        fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}) + series("d-2", "temp", T0, 4, {3}))
        r1 = outbox.drain(engine, folder, settings)
        assert (r1.delivered, r1.delivery_failed) == (0, 2) and len(topic.requests) == webhook.MAX_TRIES
        alerts = rows_of(engine, db.alerts)
        assert all(a["eventgrid_revision"] == 0 and a["eventgrid_attempts"] == 1 for a in alerts)
        assert {a["eventgrid_error"] for a in alerts} == {"HTTP 503 from " + topic.endpoint.removesuffix("/api/events")}
        assert all(a["delivered_revision"] == 0 for a in alerts)  # no webhook configured: its mark is untouched
        topic.status = 200
        fire(engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, {0, 1, 2, 3}) +
             series("d-2", "temp", T0 + 4 * W, 4, set()))
        r2 = outbox.drain(engine, folder, settings)
        assert (r2.delivered, r2.delivery_failed) == (2, 0) and not topic.refusals
        assert len(topic.requests) == webhook.MAX_TRIES + 1  # both alerts in one batch
        alerts = {a["alert_id"]: a for a in rows_of(engine, db.alerts)}
        assert {e["id"] for e in topic.events} == {f"{i}:{a['revision']}" for i, a in alerts.items()}
        by_device = {e["data"]["device"]: e for e in topic.events}
        assert by_device["d-2"]["type"] == "com.fleetscore.alert.closed"  # the newest revision's kind
        assert by_device["d-1"]["type"] == "com.fleetscore.alert.updated"
        assert by_device["d-1"]["subject"] == "devices/d-1/sensors/temp"
        assert {e["source"] for e in topic.events} == {"/fleetscore/test-fleet"}
        assert all(a["eventgrid_revision"] == a["revision"] and a["eventgrid_error"] is None for a in alerts.values())
        assert outbox.drain(engine, folder, settings).delivered == 0  # nothing pending: nothing sent again
        assert len(topic.requests) == webhook.MAX_TRIES + 1
        assert KEY in settings.secrets()
    finally:
        topic.close()


def test_topic_with_an_entra_token_for_the_event_grid_scope(sqlite_engine, folder, monkeypatch):
    asked: list[tuple] = []

    class Credential:  # what DefaultAzureCredential gives the app's managed identity
        def get_token(self, *scopes, **kwargs):
            asked.append(scopes)
            return AccessToken(TOKEN, 4_102_444_800)  # 2100-01-01

    topic = Topic(token=TOKEN)
    eventgrid.tokens.clear()
    monkeypatch.setattr(eventgrid, "default_credential", lambda: Credential())
    monkeypatch.setenv("EVENTGRID_TOPIC_ENDPOINT", topic.endpoint)
    settings = load_settings()
    try:
        _fire_two_runs(sqlite_engine, folder, settings)
        assert outbox.drain(sqlite_engine, folder, settings).delivered == 2 and not topic.refusals
        assert asked == [(eventgrid.SCOPE,)] and eventgrid.SCOPE == "https://eventgrid.azure.net/.default"
        (request,) = topic.requests
        assert "aeg-sas-key" not in {k.lower() for k in request["headers"]}
        _fire_more(sqlite_engine, folder, settings)
        assert outbox.drain(sqlite_engine, folder, settings).delivered == 1
        assert len(asked) == 1  # the token is cached until shortly before it expires
    finally:
        eventgrid.tokens.clear()
        topic.close()


def _fire_more(engine, folder, settings):
    fire(engine, folder, settings, "run-20261123T1600Z", series("d-1", "temp", T0 + 8 * W, 2, {0, 1}))


def test_no_token_leaves_the_topic_pending_with_the_reason(sqlite_engine, folder, monkeypatch):
    class Broken:
        def get_token(self, *scopes, **kwargs):
            raise RuntimeError("ManagedIdentityCredential: no managed identity endpoint found")

    eventgrid.tokens.clear()
    monkeypatch.setattr(eventgrid, "default_credential", lambda: Broken())
    topic = Topic(token=TOKEN)
    monkeypatch.setenv("EVENTGRID_TOPIC_ENDPOINT", topic.endpoint)
    settings = load_settings()
    try:
        _fire_two_runs(sqlite_engine, folder, settings)
        result = outbox.drain(sqlite_engine, folder, settings)
        assert (result.delivered, result.delivery_failed) == (0, 2) and topic.requests == []
        (error,) = {a["eventgrid_error"] for a in rows_of(sqlite_engine, db.alerts)}
        assert "no Microsoft Entra token for Event Grid" in error and "no managed identity" in error
    finally:
        eventgrid.tokens.clear()
        topic.close()


def test_cloudevents_webhook_and_a_down_webhook_never_hold_the_topic_back(sqlite_engine, folder, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    hook, topic = Hook(), Topic(key=KEY)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{hook.url}?code=s3cr3t")
    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "cloudevents")
    monkeypatch.setenv("EVENTGRID_TOPIC_ENDPOINT", topic.endpoint)
    monkeypatch.setenv("EVENTGRID_TOPIC_KEY", KEY)
    settings = load_settings()
    try:
        hook.status = 500
        _fire_two_runs(sqlite_engine, folder, settings)
        r1 = outbox.drain(sqlite_engine, folder, settings)
        assert (r1.delivered, r1.delivery_failed) == (2, 1)  # the topic took both; the webhook failed its first
        alerts = rows_of(sqlite_engine, db.alerts)
        assert all(a["eventgrid_revision"] == a["revision"] for a in alerts)
        assert all(a["delivered_revision"] == 0 for a in alerts)
        hook.status = 200
        r2 = outbox.drain(sqlite_engine, folder, settings)
        assert (r2.delivered, r2.delivery_failed) == (2, 0)
        accepted = hook.accepted
        assert len(accepted) == 2
        for headers, body in accepted:
            assert not list(VALIDATOR.iter_errors(body)), body
            assert headers["Content-Type"] == "application/cloudevents+json; charset=utf-8"
            assert headers["Idempotency-Key"] == body["id"]
        assert {b["id"] for _, b in accepted} == {e["id"] for e in topic.events}  # the same events, both sinks
    finally:
        hook.close()
        topic.close()
