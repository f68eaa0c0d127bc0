"""The alert store: the SQL side of alerts (tables `alerts` and `anomalies`), inside the index's transaction.

:func:`apply_file` loads what the episode rules (:mod:`fleetscore.alerts.episodes`) need for one file's scored
windows — each pair's latest alert and its earlier anomalous windows — and saves what they changed;
:func:`apply_stale` closes the open alerts a completed run saw no window of. Times are epoch ms.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import db
from fleetscore.alerts.episodes import HISTORY_COLUMNS, AlertUpdate, Persistence, close_stale, update_alerts
from fleetscore.alerts.severity import SeverityOf

log = logging.getLogger(__name__)

ALERT_COLUMNS = tuple(c.name for c in db.alerts.columns)
CHANGED_COLUMNS = ("status", "last_window_end", "last_seen_window_end", "normal_after", "windows", "max_score",
                   "severity", "model_version", "run_id", "updated_at", "revision")
"""What a visible change of an alert rewrites."""
NEW_ALERT_DEFAULTS = {"document_revision": 0}
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


def save(conn: Connection, update: AlertUpdate) -> None:
    """Insert the new alerts and write the changed ones (one executemany each)."""
    a = db.alerts
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
    if update.changed:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            {c: sa.bindparam(f"b_{c}") for c in CHANGED_COLUMNS})
        conn.execute(stmt, [{f"b_{c}": r[c] for c in ("alert_id", *CHANGED_COLUMNS)} for r in update.changed])
    if update.bookkeeping:
        stmt = a.update().where(a.c.alert_id == sa.bindparam("b_alert_id")).values(
            last_seen_window_end=sa.bindparam("b_last_seen"), normal_after=sa.bindparam("b_normal_after"))
        conn.execute(stmt, [{"b_alert_id": r["alert_id"], "b_last_seen": r["last_seen_window_end"],
                             "b_normal_after": r["normal_after"]} for r in update.bookkeeping])


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
