"""The alert store: the SQL side of alerts (tables `alerts`, `alert_revisions` and `anomalies`).

:func:`apply_file` loads what the episode rules (:mod:`fleetscore.alerts.episodes`) need for one file's scored
windows — each pair's latest alert and its earlier anomalous windows — and saves what they changed, inside the
index's transaction; :func:`apply_stale` closes the open alerts a completed run saw no window of. Times are epoch ms.

The lifecycle (:func:`acknowledge`, :func:`resolve`; the HTTP API calls them): every visible change is a new
revision, recorded in `alert_revisions` (kind, when, who, note, the document then) and pending in the outbox like
any other (:mod:`fleetscore.alerts.outbox`: its document, then its webhook delivery).

- acknowledge: an open alert, once; it keeps following its episode (new windows, closing), but those updates are
  not delivered again (`delivered_revision` moves with them when everything before was delivered); its closing is.
- resolve: any alert not resolved yet; it is closed at once, so the episode rules never extend it again and the
  pair's next anomalies open a new alert (a new episode, a new id).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import db
from fleetscore.alerts.documents import LIFECYCLE_FIELDS, alert_document, alert_state
from fleetscore.alerts.episodes import HISTORY_COLUMNS, AlertUpdate, Persistence, close_stale, update_alerts
from fleetscore.alerts.severity import SeverityOf

log = logging.getLogger(__name__)

ALERT_COLUMNS = tuple(c.name for c in db.alerts.columns)
CHANGED_COLUMNS = ("status", "last_window_end", "last_seen_window_end", "normal_after", "windows", "max_score",
                   "severity", "model_version", "run_id", "updated_at", "revision")
"""What a visible change of an alert rewrites."""
NEW_ALERT_DEFAULTS = {"document_revision": 0, db.EVENTGRID_MARK.delivered: 0, db.EVENTGRID_MARK.attempts: 0}
"""Columns a new alert from the episode rules does not carry: its document is pending (the outbox writes it)."""
LOOKAHEAD_WINDOWS = 288
"""How far past a file the episode rules look for newer files' anomalies (a file indexed out of order), windows."""


def _of_pairs(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose (device, sensor) is one of `pairs` (queries select by device only)."""
    if frame.empty:
        return frame
    wanted = set(zip(pairs["device"].astype(str), pairs["sensor"].astype(str), strict=True))
    keep = [(d, s) in wanted for d, s in zip(frame["device"], frame["sensor"], strict=True)]
    return frame[keep].reset_index(drop=True)


def load_latest(conn: Connection, pairs: pd.DataFrame, since: int) -> pd.DataFrame:
    """Per pair of `pairs` (device, sensor) its open alert, or its closed alerts last seen at or after `since`
    (locked for update where the dialect supports it)."""
    a = db.alerts
    devices = sorted(set(pairs["device"].astype(str)))
    rows = []
    for chunk in db.chunks(devices):
        q = (sa.select(a).where(a.c.device.in_(chunk), sa.or_(a.c.status == "open", a.c.last_seen_window_end >= since))
             .order_by(a.c.alert_id).with_for_update())
        rows.extend(conn.execute(q).mappings().all())
    frame = pd.DataFrame([dict(r) for r in rows], columns=list(ALERT_COLUMNS))
    return _of_pairs(frame, pairs)


def load_history(conn: Connection, pairs: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """Anomalous windows (:data:`HISTORY_COLUMNS`) of `pairs` with lo <= window_end < hi (epoch ms)."""
    an = db.anomalies
    devices = sorted(set(pairs["device"].astype(str)))
    rows = []
    for chunk in db.chunks(devices):
        q = sa.select(*(an.c[name] for name in HISTORY_COLUMNS)).where(
            an.c.device.in_(chunk), an.c.window_end >= lo, an.c.window_end < hi)
        rows.extend(conn.execute(q).all())
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return _of_pairs(frame, pairs)


class AlertNotFound(LookupError):
    """No alert has this id."""


class LifecycleConflict(ValueError):
    """The alert's state does not allow the action (the message says why)."""


def _revision_row(rec: dict[str, Any], kind: str, *, at: int, actor: str | None = None,
                  note: str | None = None) -> dict[str, Any]:
    """An `alert_revisions` row for the alert row `rec` at its current revision."""
    return {"alert_id": rec["alert_id"], "revision": int(rec["revision"]), "kind": kind, "changed_at": int(at),
            "actor": actor, "note": note, "document": json.dumps(alert_document(rec), separators=(",", ":"))}


def _kind(rec: dict[str, Any], new: bool) -> str:
    if new:
        return "opened"
    return "closed" if rec["status"] != "open" else "updated"


def record_revisions(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert `alert_revisions` rows (one executemany)."""
    if rows:
        conn.execute(db.alert_revisions.insert(), rows)


def _quiet_acknowledged(conn: Connection, changed: list[dict[str, Any]]) -> None:
    """An acknowledged alert's update is not delivered again: each sink's delivered revision moves with it when
    every earlier revision was delivered there (else the pending delivery carries the newest state, as always).
    Its documents are written as always."""
    ids = [r["alert_id"] for r in changed if r["status"] == "open" and alert_state(r) == "acknowledged"]
    a = db.alerts
    for chunk in db.chunks(ids):
        for name in (mark.delivered for mark in db.SINK_MARKS):
            conn.execute(a.update().where(a.c.alert_id.in_(list(chunk)), a.c[name] == a.c.revision - 1)
                         .values({name: a.c.revision}))


def save(conn: Connection, update: AlertUpdate) -> None:
    """Insert the new alerts and write the changed ones (one executemany each), with a revision row for each."""
    a = db.alerts
    revisions: list[dict[str, Any]] = []
    if update.new:
        ids = [r["alert_id"] for r in update.new]
        taken: set[str] = set()
        for chunk in db.chunks(ids):
            taken |= set(conn.execute(sa.select(a.c.alert_id).where(a.c.alert_id.in_(chunk))).scalars())
        fresh = [{c: r.get(c, NEW_ALERT_DEFAULTS.get(c)) for c in ALERT_COLUMNS} for r in update.new
                 if r["alert_id"] not in taken]
        if taken:
            log.info("alerts %s exist already (replayed episode start); left as they are", sorted(taken))
        if fresh:
            conn.execute(a.insert(), fresh)
            revisions += [_revision_row(r, "opened", at=r["updated_at"]) for r in fresh]
    if update.changed:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            {c: sa.bindparam(f"b_{c}") for c in CHANGED_COLUMNS})
        conn.execute(stmt, [{f"b_{c}": r[c] for c in ("alert_id", *CHANGED_COLUMNS)} for r in update.changed])
        changed = [_lifecycle_cleaned(r) for r in update.changed]
        revisions += [_revision_row(r, _kind(r, False), at=r["updated_at"]) for r in changed]
        _quiet_acknowledged(conn, changed)
    record_revisions(conn, revisions)
    if update.bookkeeping:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            last_seen_window_end=sa.bindparam("b_last_seen"), normal_after=sa.bindparam("b_normal_after"))
        conn.execute(stmt, [{"b_alert_id": r["alert_id"], "b_last_seen": r["last_seen_window_end"],
                             "b_normal_after": r["normal_after"]} for r in update.bookkeeping])


def _lifecycle_cleaned(rec: dict[str, Any]) -> dict[str, Any]:
    """`rec` with its lifecycle fields as plain values (a row that went through a DataFrame has NaN for NULL)."""
    out = dict(rec)
    for name in LIFECYCLE_FIELDS:
        value = out.get(name)
        if value is not None and pd.isna(value):
            out[name] = None
        elif name.endswith("_at") and value is not None:
            out[name] = int(value)
    return out


def apply_file(conn: Connection, scored: pd.DataFrame, *, window_ms: int, persistence: Persistence,
               close_after: int, severity_of: SeverityOf, now: int) -> AlertUpdate:
    """Alerts for one file's scored windows, inside the caller's transaction (after its anomalies are stored):
    the pairs' latest alerts, their anomalous windows of the n − 1 windows before the file (persistence) and of
    the :data:`LOOKAHEAD_WINDOWS` after it (newer files indexed first)."""
    if scored.empty:
        return AlertUpdate()
    pairs = scored[["device", "sensor"]].drop_duplicates()
    lo, hi = int(scored["window_end"].min()), int(scored["window_end"].max())
    latest = load_latest(conn, pairs, since=lo - persistence.n * window_ms)
    history = load_history(conn, pairs, lo - (persistence.n - 1) * window_ms, hi + LOOKAHEAD_WINDOWS * window_ms + 1)
    update = update_alerts(scored, latest, history, window_ms=window_ms, persistence=persistence,
                           close_after=close_after, severity_of=severity_of, now=now)
    save(conn, update)
    return update


def apply_stale(conn: Connection, *, until: int, window_ms: int, close_after: int, now: int) -> AlertUpdate:
    """Close the open alerts a completed run (range end `until`) saw no window of (see `close_stale`)."""
    a = db.alerts
    rows = conn.execute(sa.select(a).where(a.c.status == "open", a.c.last_seen_window_end < until,
                                           a.c.last_window_end <= until - close_after * window_ms)
                        .order_by(a.c.alert_id).with_for_update()).mappings().all()
    update = AlertUpdate(changed=close_stale(rows, until=until, window_ms=window_ms, close_after=close_after, now=now))
    save(conn, update)
    return update


def list_alerts(engine: Engine, *, open_only: bool = False, limit: int | None = 200) -> list[dict[str, Any]]:
    """Alerts, newest change first, as rows of the alerts table."""
    a = db.alerts
    q = sa.select(a).order_by(a.c.updated_at.desc(), a.c.alert_id)
    if open_only:
        q = q.where(a.c.status == "open")
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]


# ------------------------------------------------------------------------------------------ lifecycle
def _load(conn: Connection, alert_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(db.alerts).where(db.alerts.c.alert_id == alert_id)).mappings().first()
    if row is None:
        raise AlertNotFound(f"no alert {alert_id}")
    return dict(row)


def _act(conn: Connection, alert_id: str, kind: str, allowed: sa.ColumnElement[bool], values: dict[str, Any], *,
         by: str, note: str | None, now: int) -> dict[str, Any]:
    """One lifecycle action as a conditional UPDATE (atomic on every dialect: the row is written only in a state
    that allows it), then its revision row; AlertNotFound / LifecycleConflict otherwise."""
    a = db.alerts
    done = conn.execute(a.update().where(a.c.alert_id == alert_id, allowed).values(
        **values, note=note, revision=a.c.revision + 1, updated_at=now)).rowcount
    rec = _load(conn, alert_id)
    if not done:
        raise LifecycleConflict(_refusal(rec, kind))
    record_revisions(conn, [_revision_row(rec, kind, at=now, actor=by, note=note)])
    return rec


def _refusal(rec: dict[str, Any], kind: str) -> str:
    state = alert_state(rec)
    if state == "resolved":
        return f"alert {rec['alert_id']} was resolved by {rec['resolved_by']}; a recurrence opens a new alert"
    if kind == "acknowledged" and state == "acknowledged":
        return f"alert {rec['alert_id']} is acknowledged already (by {rec['acknowledged_by']})"
    return f"alert {rec['alert_id']} is {state}: only an open alert can be acknowledged (resolve it instead)"


def acknowledge(conn: Connection, alert_id: str, *, by: str, note: str | None, now: int) -> dict[str, Any]:
    """Acknowledge an open alert (once): a new revision; returns the alert row."""
    a = db.alerts
    allowed = sa.and_(a.c.status == "open", a.c.acknowledged_at.is_(None), a.c.resolved_at.is_(None))
    return _act(conn, alert_id, "acknowledged", allowed, {"acknowledged_at": now, "acknowledged_by": by},
                by=by, note=note, now=now)


def resolve(conn: Connection, alert_id: str, *, by: str, note: str | None, now: int) -> dict[str, Any]:
    """Resolve an alert that is not resolved yet: it is closed; a new revision; returns the alert row."""
    a = db.alerts
    return _act(conn, alert_id, "resolved", a.c.resolved_at.is_(None),
                {"status": "closed", "resolved_at": now, "resolved_by": by}, by=by, note=note, now=now)


def revisions_of(conn: Connection, alert_id: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """(the alert's newest `limit` revision rows, oldest first; how many it has)."""
    r = db.alert_revisions
    total = conn.execute(sa.select(sa.func.count()).select_from(r).where(r.c.alert_id == alert_id)).scalar_one()
    rows = conn.execute(sa.select(r).where(r.c.alert_id == alert_id).order_by(r.c.revision.desc())
                        .limit(limit)).mappings().all()
    return [dict(x) for x in reversed(rows)], int(total)
