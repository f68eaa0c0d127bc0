"""Alert delivery: every alert revision that a sink has not taken yet is sent to it — the webhook
(ALERT_WEBHOOK_URL) and the Event Grid topic (EVENTGRID_TOPIC_ENDPOINT, :mod:`fleetscore.alerts.eventgrid`).

Each sink keeps its own mark per alert (columns of ``alerts``, owned by :mod:`fleetscore.db.schema`:
``db.WEBHOOK_MARK``, ``db.EVENTGRID_MARK``); an alert whose mark is below its ``revision`` is pending for that
sink. The webhook gets one POST per alert: the
alert document (ALERT_WEBHOOK_FORMAT=plain) or its CloudEvent in structured mode (cloudevents,
:mod:`fleetscore.alerts.events`), with the header ``Idempotency-Key: <alert_id>:<revision>`` (the event's id), so
a receiver can drop the rare duplicate (two drains at once, or a crash between the POST and the bookkeeping). The
topic gets batches of CloudEvents. Within one call a POST is tried up to :data:`MAX_TRIES` times with exponential
backoff on connection errors, timeouts, 429 and 5xx.

- 2xx: the sink's mark = the revision that was sent.
- anything else: the sink's attempts + 1 and its error (never the URL's query string or user info, where webhook
  secrets live). The alert stays pending and is sent again by the next drain of the outbox (the timer function
  ``alert_outbox``, :mod:`fleetscore.alerts.outbox`) or by ``fleetscore alerts redeliver``: an alert is never
  dropped.
- When an endpoint looks down (connection error, timeout, 429/5xx after all tries, no Entra token) its round
  stops, so a dead sink costs one POST's tries per round, not one per pending alert, and never holds the other
  sink back: each sink has an equal share of the round's time.
- A round may have a deadline (a ``time.monotonic()`` value): no POST starts after it, each POST's timeouts and
  backoff end by it, so a hanging endpoint holds a round for its deadline at most. Indexing never delivers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import db, telemetry
from fleetscore.alerts import eventgrid, events
from fleetscore.alerts.documents import alert_document
from fleetscore.alerts.eventgrid import CredentialError
from fleetscore.settings import Settings

log = logging.getLogger(__name__)

MAX_TRIES = 3
BACKOFF_SECONDS = 0.5
"""Sleep before the 2nd try; doubles for each further try (0.5 s, 1 s: a dead endpoint costs ~1.5 s a round)."""
MAX_RETRY_AFTER_SECONDS = 5.0
TIMEOUT = (3.05, 10.0)
"""(connect, read) seconds per POST."""
MIN_POST_SECONDS = 0.5
"""A POST is not started with less time than this left before the round's deadline (s)."""
BATCH = 200
"""Pending alerts read per page."""
USER_AGENT = "fleetscore-alerts"


@dataclass
class PostOutcome:
    ok: bool
    error: str | None = None
    endpoint_down: bool = False
    sent: bool = True
    """False when the deadline came before the first try: nothing to record."""


Alert = dict[str, Any]


@dataclass(frozen=True)
class Sink:
    """Where alert revisions go, and the columns of its per-alert mark."""

    name: str
    url: str
    delivered: str
    """The column holding the revision the sink took."""
    attempts: str
    error: str
    batch: int
    """Alerts per POST."""
    body: Callable[[list[Alert]], bytes]
    headers: Callable[[list[Alert]], dict[str, str]]


def _sink(mark: db.SinkMark, url: str, **how: Any) -> Sink:
    """The sink whose per-alert columns are `mark`, posting to `url`."""
    return Sink(mark.sink, url, mark.delivered, mark.attempts, mark.error, **how)


def sinks(settings: Settings) -> list[Sink]:
    """The configured sinks: the webhook (ALERT_WEBHOOK_URL), the Event Grid topic (EVENTGRID_TOPIC_ENDPOINT)."""
    out = []
    source = settings.alert_event_source
    if settings.alert_webhook_url is not None:
        cloudevents = settings.alert_webhook_format == "cloudevents"

        def webhook_body(alerts: list[Alert]) -> bytes:
            (alert,) = alerts
            return events.event_json(alert, source) if cloudevents else json.dumps(alert_document(alert)).encode()

        def webhook_headers(alerts: list[Alert]) -> dict[str, str]:
            return {"Content-Type": events.STRUCTURED if cloudevents else "application/json",
                    "Idempotency-Key": events.event_id(alerts[0]), "User-Agent": USER_AGENT}

        out.append(_sink(db.WEBHOOK_MARK, settings.alert_webhook_url.get_secret_value(), batch=1,
                         body=webhook_body, headers=webhook_headers))
    if settings.eventgrid_topic_endpoint:
        out.append(_sink(db.EVENTGRID_MARK, eventgrid.publish_url(settings.eventgrid_topic_endpoint),
                         batch=eventgrid.BATCH, body=lambda alerts: events.batch_json(alerts, source),
                         headers=lambda alerts: {"Content-Type": events.BATCH, "User-Agent": USER_AGENT,
                                                 **eventgrid.auth_headers(settings)}))
    return out


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until `deadline` (a `time.monotonic()` value; None: no deadline → None)."""
    return None if deadline is None else deadline - time.monotonic()


def _timeout(deadline: float | None) -> tuple[float, float] | None:
    """(connect, read) timeouts for a POST that must end by `deadline`; None when too little time is left."""
    left = seconds_left(deadline)
    if left is None:
        return TIMEOUT
    if left < MIN_POST_SECONDS:
        return None
    return min(TIMEOUT[0], left), min(TIMEOUT[1], left)


def safe_url(url: str) -> str:
    """Scheme and host only (what may appear in errors and logs): Slack, Teams and Discord webhooks keep
    their secret in the path, others in the query string or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, "", "", ""))


def scrub(text: str, url: str) -> str:
    """`text` with the URL's secret parts (query string, user info) masked."""
    parts = urlsplit(url)
    secrets = [url, parts.query, parts.netloc if "@" in parts.netloc else "", parts.password or "",
               parts.fragment]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***" if secret != url else safe_url(url))
    return text


def post(session: requests.Session, url: str, body: bytes, headers: Callable[[], dict[str, str]], *,
         deadline: float | None = None) -> PostOutcome:
    """POST `body` with retries, all ending by `deadline` (monotonic s, None: no deadline); never raises for HTTP,
    network or credential failures. `headers()` is called per try (a bearer token is fetched, cached, there)."""
    error, down = "not sent", True
    for attempt in range(1, MAX_TRIES + 1):
        wait = BACKOFF_SECONDS * 2 ** (attempt - 1)
        timeout = _timeout(deadline)
        if timeout is None:
            return PostOutcome(ok=False, error=error, endpoint_down=down, sent=attempt > 1)
        try:
            resp = session.post(url, data=body, headers=headers(), timeout=timeout)
        except requests.RequestException as exc:
            error, down = scrub(f"{type(exc).__name__}: {exc}", url)[:500], True
        except CredentialError as exc:  # no token: nothing can be sent this round
            return PostOutcome(ok=False, error=str(exc)[:500], endpoint_down=True)
        else:
            status = resp.status_code
            if 200 <= status < 300:
                return PostOutcome(ok=True)
            error = f"HTTP {status} from {safe_url(url)}"
            if status != 429 and status < 500:  # the endpoint answered and refused this alert: no point retrying now
                return PostOutcome(ok=False, error=error, endpoint_down=False)
            down = True
            retry_after = resp.headers.get("Retry-After", "")
            if retry_after.strip().isdigit():
                wait = min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
        if attempt < MAX_TRIES:
            left = seconds_left(deadline)
            time.sleep(wait if left is None else max(0.0, min(wait, left)))
    return PostOutcome(ok=False, error=error, endpoint_down=down)


def _pending(engine: Engine, sink: Sink, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
    """A page of the alerts pending for `sink`, each with the kind of its latest revision (`revision_kind`)."""
    a, r = db.alerts, db.alert_revisions
    mark = a.c[sink.delivered]
    latest = sa.and_(r.c.alert_id == a.c.alert_id, r.c.revision == a.c.revision)
    q = (sa.select(a, r.c.kind.label(events.KIND_COLUMN)).select_from(a.outerjoin(r, latest))
         .where(mark < a.c.revision))
    if after is not None:
        q = q.where(sa.or_(a.c.updated_at > after[0], sa.and_(a.c.updated_at == after[0], a.c.alert_id > after[1])))
    q = q.order_by(a.c.updated_at, a.c.alert_id).limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]


def _record(engine: Engine, sink: Sink, alerts: list[dict[str, Any]], outcome: PostOutcome) -> None:
    """The sink's mark of each alert sent: the revision it took, or one more failed attempt and why."""
    a = db.alerts
    mark, attempts = a.c[sink.delivered], a.c[sink.attempts]
    with engine.begin() as conn:
        if outcome.ok:
            conn.execute(a.update().where(a.c.alert_id == sa.bindparam("b_id"), mark < sa.bindparam("b_rev"))
                         .values({sink.delivered: sa.bindparam("b_rev"), sink.error: None}),
                         [{"b_id": r["alert_id"], "b_rev": r["revision"]} for r in alerts])
        else:
            conn.execute(a.update().where(a.c.alert_id.in_([r["alert_id"] for r in alerts]))
                         .values({sink.attempts: attempts + 1, sink.error: outcome.error}))


def deliver_pending(engine: Engine, settings: Settings, *, session: requests.Session | None = None,
                    limit: int | None = BATCH, deadline: float | None = None) -> tuple[int, int]:
    """Send pending alert revisions to every configured sink (:func:`sinks`; the webhook, the Event Grid topic),
    oldest change first, at most `limit` per sink (None = all), until `deadline` (monotonic s; None: none), each
    sink in an equal share of the time left; returns (delivered, failed) summed over the sinks. A sink's round
    stops at the first failure that says its endpoint is down, so one dead sink never holds the other back."""
    configured = sinks(settings)
    own_session = session is None
    if own_session:
        session = requests.Session()
    delivered = failed = 0
    try:
        for i, sink in enumerate(configured):
            left = seconds_left(deadline)
            share = None if left is None else time.monotonic() + max(0.0, left) / (len(configured) - i)
            d, f = _deliver_to(engine, sink, session, limit, share)
            telemetry.delivery(sink.name, d, f)
            delivered, failed = delivered + d, failed + f
    finally:
        if own_session:
            session.close()
    return delivered, failed


def _deliver_to(engine: Engine, sink: Sink, session: requests.Session, limit: int | None,
                deadline: float | None) -> tuple[int, int]:
    """One sink's round (see :func:`deliver_pending`): pending alerts a page at a time, `sink.batch` per POST."""
    delivered = failed = 0
    after: tuple[int, str] | None = None
    while limit is None or delivered + failed < limit:
        page = _pending(engine, sink, BATCH if limit is None else min(BATCH, limit - delivered - failed), after)
        if not page:
            break
        after = (int(page[-1]["updated_at"]), page[-1]["alert_id"])
        for chunk in db.chunks(page, sink.batch):
            chunk = list(chunk)
            outcome = post(session, sink.url, sink.body(chunk), lambda c=chunk: sink.headers(c), deadline=deadline)
            if not outcome.sent:
                return _logged(sink, delivered, failed)
            _record(engine, sink, chunk, outcome)
            if outcome.ok:
                delivered += len(chunk)
                continue
            failed += len(chunk)
            log.warning("%s: %d alert revision(s) (first %s revision %s) not delivered: %s", sink.name, len(chunk),
                        chunk[0]["alert_id"], chunk[0]["revision"], outcome.error)
            if outcome.endpoint_down:
                return _logged(sink, delivered, failed)
    return _logged(sink, delivered, failed)


def _logged(sink: Sink, delivered: int, failed: int) -> tuple[int, int]:
    if delivered or failed:
        log.info("%s: %d alert revision(s) delivered, %d failed", sink.name, delivered, failed)
    return delivered, failed


def redeliver(engine: Engine, settings: Settings, session: requests.Session | None = None) -> tuple[int, int]:
    """Send every pending alert now, without a deadline; returns (delivered, failed)."""
    return deliver_pending(engine, settings, session=session, limit=None)
