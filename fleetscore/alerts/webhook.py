"""Alert webhook: POST every alert revision that is not delivered yet to ALERT_WEBHOOK_URL.

Each alert whose ``delivered_revision < revision`` is POSTed as its JSON document
(:func:`fleetscore.alerts.documents.alert_document`) with the header ``Idempotency-Key: <alert_id>:<revision>``,
so a receiver can drop the rare duplicate (two indexers delivering at once, or a crash between the POST and the
bookkeeping). Within one call a POST is tried up to :data:`MAX_TRIES` times with exponential backoff on
connection errors, timeouts, 429 and 5xx.

- 2xx: ``delivered_revision = revision`` (the revision that was sent).
- anything else: ``delivery_attempts + 1`` and ``delivery_error`` (never the URL's query string or user info,
  where webhook secrets live). The alert stays pending and is sent again by the next drain of the outbox (the
  timer function ``alert_outbox``, :mod:`fleetscore.alerts.outbox`) or by ``fleetscore alerts redeliver``: an
  alert is never dropped.
- When the endpoint looks down (connection error, timeout, 429/5xx after all tries) the round stops, so a dead
  webhook costs one alert's tries per round, not one per pending alert.
- A round may have a deadline (a ``time.monotonic()`` value): no POST starts after it, each POST's timeouts and
  backoff end by it, so a hanging endpoint holds a round for its deadline at most. Indexing never delivers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import db
from fleetscore.alerts.documents import alert_document
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


@dataclass
class PostOutcome:
    ok: bool
    error: str | None = None
    endpoint_down: bool = False
    sent: bool = True
    """False when the deadline came before the first try: nothing to record."""


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


def post_alert(session: requests.Session, url: str, doc: dict[str, Any], *,
               deadline: float | None = None) -> PostOutcome:
    """POST one alert document with retries, all ending by `deadline` (monotonic s, None: no deadline); never
    raises for HTTP or network failures."""
    body = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"{doc['alert_id']}:{doc['revision']}",
               "User-Agent": "fleetscore-alerts"}
    error, down = "not sent", True
    for attempt in range(1, MAX_TRIES + 1):
        wait = BACKOFF_SECONDS * 2 ** (attempt - 1)
        timeout = _timeout(deadline)
        if timeout is None:
            return PostOutcome(ok=False, error=error, endpoint_down=down, sent=attempt > 1)
        try:
            resp = session.post(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            error, down = scrub(f"{type(exc).__name__}: {exc}", url)[:500], True
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


def _pending(engine: Engine, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
    a = db.alerts
    q = sa.select(a).where(a.c.delivered_revision < a.c.revision)
    if after is not None:
        q = q.where(sa.or_(a.c.updated_at > after[0], sa.and_(a.c.updated_at == after[0], a.c.alert_id > after[1])))
    q = q.order_by(a.c.updated_at, a.c.alert_id).limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]


def _record(engine: Engine, alert: dict[str, Any], outcome: PostOutcome) -> None:
    a = db.alerts
    with engine.begin() as conn:
        if outcome.ok:
            conn.execute(a.update().where(a.c.alert_id == alert["alert_id"],
                                          a.c.delivered_revision < alert["revision"])
                         .values(delivered_revision=alert["revision"], delivery_error=None))
        else:
            conn.execute(a.update().where(a.c.alert_id == alert["alert_id"])
                         .values(delivery_attempts=a.c.delivery_attempts + 1, delivery_error=outcome.error))


def deliver_pending(engine: Engine, settings: Settings, *, session: requests.Session | None = None,
                    limit: int | None = BATCH, deadline: float | None = None) -> tuple[int, int]:
    """POST pending alerts (oldest change first, at most `limit`; None = all) until `deadline` (monotonic s;
    None: none); returns (delivered, failed). Stops at the first failure that says the endpoint is down.
    Nothing to do without ALERT_WEBHOOK_URL."""
    if settings.alert_webhook_url is None:
        return 0, 0
    url = settings.alert_webhook_url.get_secret_value()
    own_session = session is None
    if own_session:
        session = requests.Session()
    delivered = failed = 0
    after: tuple[int, str] | None = None
    try:
        while limit is None or delivered + failed < limit:
            page = _pending(engine, BATCH if limit is None else min(BATCH, limit - delivered - failed), after)
            if not page:
                break
            for alert in page:
                after = (int(alert["updated_at"]), alert["alert_id"])
                outcome = post_alert(session, url, alert_document(alert), deadline=deadline)
                if not outcome.sent:
                    return delivered, failed
                _record(engine, alert, outcome)
                if outcome.ok:
                    delivered += 1
                    continue
                failed += 1
                log.warning("webhook: alert %s revision %s not delivered: %s", alert["alert_id"], alert["revision"],
                            outcome.error)
                if outcome.endpoint_down:
                    return delivered, failed
    finally:
        if own_session:
            session.close()
    if delivered or failed:
        log.info("webhook: %d alert revision(s) delivered, %d failed", delivered, failed)
    return delivered, failed


def redeliver(engine: Engine, settings: Settings, session: requests.Session | None = None) -> tuple[int, int]:
    """Send every pending alert now, without a deadline; returns (delivered, failed)."""
    return deliver_pending(engine, settings, session=session, limit=None)
