"""The alert outbox: every alert revision in SQL eventually has its JSON document in blob storage and its
delivery to each configured sink (ALERT_WEBHOOK_URL, EVENTGRID_TOPIC_ENDPOINT), whatever crashed or hung between
the commit and the write.

An alert's document is pending while ``document_revision < revision`` (the column names the revision whose
document is written), its delivery to a sink while that sink's mark is below it (``delivered_revision`` for the
webhook, ``eventgrid_revision`` for the topic: :mod:`fleetscore.alerts.webhook`).
The index commits an alert change first and writes afterwards, so a crash in between loses nothing: the SQL
row is the outbox entry. Who drains it:

- every indexed file (:mod:`fleetscore.predictions.index`): the documents of the alerts it changed, then up
  to :data:`CATCHUP_DOCUMENTS` other pending documents. Blob writes only: a blob trigger never waits on a
  webhook consumer's endpoint;
- the timer function ``alert_outbox`` (``functions/alerts.py``, :data:`SCHEDULE`): :func:`drain`, pending
  documents then webhook deliveries, within :data:`DRAIN_SECONDS`, so a hanging webhook holds one timer
  invocation for that long and nothing else;
- ``fleetscore alerts redeliver``: everything pending, without a deadline.

A document is written while its alert's row is locked (the alert's row lock on PostgreSQL and SQL Server, the
database's write lock on SQLite), and the revision recorded is the one written: writers of one alert take turns,
so a slow writer of an older revision can never overwrite a newer document after it was recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import db
from fleetscore.alerts.documents import document_json
from fleetscore.alerts.webhook import deliver_pending, seconds_left, sinks
from fleetscore.settings import Settings
from fleetscore.storage.base import BlobStore
from fleetscore.storage.paths import alert_document_key

log = logging.getLogger(__name__)

SCHEDULE = "0 * * * * *"
"""NCRONTAB of the timer function that drains the outbox: every minute, at second 0 (UTC)."""
DRAIN_SECONDS = 45.0
"""A timer invocation's deadline (s): documents, then deliveries, end within it, before the next occurrence."""
CATCHUP_DOCUMENTS = 200
"""Pending documents of other alerts an indexed file writes after its own (bounded: indexing stays fast)."""
CATCHUP_SECONDS = 5.0
"""...and the time it may spend on them (s)."""
PAGE = 50
"""Alerts whose documents are written under one lock (one transaction)."""
MAX_FAILURES = 3
"""Failed blob writes after which a round stops (the store looks down; the next round tries again)."""


@dataclass
class OutboxResult:
    """What one round of the outbox did."""

    documents: int = 0
    """Documents written (and their revisions recorded)."""
    document_failures: int = 0
    delivered: int = 0
    delivery_failed: int = 0
    out_of_time: bool = False
    """The deadline ended the round with work left."""

    def __iadd__(self, other: OutboxResult) -> OutboxResult:
        self.documents += other.documents
        self.document_failures += other.document_failures
        self.delivered += other.delivered
        self.delivery_failed += other.delivery_failed
        self.out_of_time |= other.out_of_time
        return self


def deadline_after(seconds: float | None) -> float | None:
    """The `time.monotonic()` value `seconds` from now (None: no deadline)."""
    return None if seconds is None else time.monotonic() + seconds


def _passed(deadline: float | None) -> bool:
    left = seconds_left(deadline)
    return left is not None and left <= 0


# ------------------------------------------------------------------------------------------ documents
def write_documents(engine: Engine, store: BlobStore, *, ids: Sequence[str] | None = None, limit: int | None = None,
                    deadline: float | None = None) -> OutboxResult:
    """Write pending alert documents (those of `ids` only, when given; else oldest change first), at most
    `limit` (None: all) until `deadline` (monotonic s; None: none). A failed write is logged and stays pending;
    :data:`MAX_FAILURES` of them end the round."""
    result = OutboxResult()
    for page in _pending_pages(engine, ids, limit):
        if _passed(deadline):
            result.out_of_time = True
            break
        _write_page(engine, store, page, deadline, result)
        if result.document_failures >= MAX_FAILURES or result.out_of_time:
            break
    return result


def _pending_pages(engine: Engine, ids: Sequence[str] | None, limit: int | None) -> Iterator[list[str]]:
    """Ids of alerts with a pending document, a page at a time: `ids` in chunks, or every alert by
    (updated_at, alert_id), at most `limit` in all."""
    a = db.alerts
    pending = a.c.document_revision < a.c.revision
    given = db.chunks(list(ids), PAGE) if ids is not None else None
    after: tuple[int, str] | None = None
    left = limit
    while left is None or left > 0:
        size = PAGE if left is None else min(PAGE, left)
        q = sa.select(a.c.alert_id, a.c.updated_at).where(pending)
        if given is not None:
            chunk = next(given, None)
            if chunk is None:
                return
            q = q.where(a.c.alert_id.in_(list(chunk)))
        elif after is not None:
            q = q.where(sa.or_(a.c.updated_at > after[0], sa.and_(a.c.updated_at == after[0], a.c.alert_id > after[1])))
        with engine.connect() as conn:
            rows = conn.execute(q.order_by(a.c.updated_at, a.c.alert_id).limit(size)).all()
        if not rows and given is None:
            return
        if rows:
            after = (int(rows[-1].updated_at), rows[-1].alert_id)
            left = None if left is None else left - len(rows)
            yield [r.alert_id for r in rows]


def _write_page(engine: Engine, store: BlobStore, ids: list[str], deadline: float | None,
                result: OutboxResult) -> None:
    """Lock the page's alerts that are still pending, write their documents, record the revisions written."""
    a = db.alerts
    with engine.begin() as conn:
        written = []
        for rec in _lock_pending(conn, ids):
            if _passed(deadline):
                result.out_of_time = True
                break
            if not _put_document(store, rec):
                result.document_failures += 1
                if result.document_failures >= MAX_FAILURES:
                    break
                continue
            written.append({"b_alert_id": rec["alert_id"], "b_revision": rec["revision"]})
        if written:
            conn.execute(a.update().where(a.c.alert_id == sa.bindparam("b_alert_id"))
                         .values(document_revision=sa.bindparam("b_revision")), written)
        result.documents += len(written)


def _lock_pending(conn: Connection, ids: list[str]) -> list[dict[str, Any]]:
    """The alerts of `ids` whose document is pending, locked until the transaction ends."""
    lock, select = lock_statements(conn.dialect.name, ids)
    if lock is not None:
        conn.execute(lock)
    return [dict(r) for r in conn.execute(select).mappings().all()]


def lock_statements(dialect: str, ids: Sequence[str]) -> tuple[sa.Update | None, sa.Select]:
    """(lock, select) of the pending alerts among `ids`: PostgreSQL locks the rows in alert_id order with
    `SELECT ... FOR UPDATE`; elsewhere a no-op UPDATE locks them first (SQLite: the database's write lock;
    SQL Server, which ignores FOR UPDATE: exclusive row locks)."""
    a = db.alerts
    pending = sa.and_(a.c.alert_id.in_(list(ids)), a.c.document_revision < a.c.revision)
    select = sa.select(a).where(pending).order_by(a.c.alert_id)
    if dialect == "postgresql":
        return None, select.with_for_update()
    return a.update().where(pending).values(document_revision=a.c.document_revision), select


def _put_document(store: BlobStore, rec: dict[str, Any]) -> bool:
    """Write one alert's document; False (logged) when the store refused it."""
    try:
        store.put(alert_document_key(rec["alert_id"], rec["first_window_end"]), document_json(rec))
    except Exception:
        log.exception("could not write the JSON of alert %s revision %s (stays pending)", rec["alert_id"],
                      rec["revision"])
        return False
    return True


def mark_all_pending(engine: Engine) -> int:
    """Make every alert's document pending again (`fleetscore alerts redeliver --blobs`); returns how many."""
    a = db.alerts
    with engine.begin() as conn:
        return conn.execute(a.update().values(document_revision=0)).rowcount


# ------------------------------------------------------------------------------------------ rounds
def after_index(engine: Engine, store: BlobStore, changed_ids: Sequence[str]) -> OutboxResult:
    """What an indexed file does after its commit: the documents of the alerts it changed, then a bounded
    catch-up of other pending ones. Never raises (the file is indexed; the outbox keeps what is left)."""
    result = OutboxResult()
    try:
        if changed_ids:
            result += write_documents(engine, store, ids=changed_ids)
        result += write_documents(engine, store, limit=CATCHUP_DOCUMENTS, deadline=deadline_after(CATCHUP_SECONDS))
    except Exception as exc:
        if db.is_transient(exc):
            log.warning("alert documents left pending: database busy (%s)", type(exc).__name__)
        else:
            log.exception("alert documents left pending")
    return result


def drain(engine: Engine, store: BlobStore, settings: Settings, *, seconds: float | None = DRAIN_SECONDS,
          session: requests.Session | None = None) -> OutboxResult:
    """One round of the outbox within `seconds` (None: until empty): pending documents first, then pending
    deliveries to the configured sinks (webhook, Event Grid topic) in the time left."""
    deadline = deadline_after(seconds)
    result = write_documents(engine, store, deadline=deadline)
    if sinks(settings) and not _passed(deadline):
        result.delivered, result.delivery_failed = deliver_pending(engine, settings, session=session, limit=None,
                                                                   deadline=deadline)
    if result.documents or result.document_failures or result.delivered or result.delivery_failed:
        log.info("alert outbox: %d document(s) written, %d failed; %d delivered, %d failed%s", result.documents,
                 result.document_failures, result.delivered, result.delivery_failed,
                 "; out of time, the rest next round" if result.out_of_time else "")
    return result
