"""The per-pair ingest lock on real SQLite and PostgreSQL: which statements a batch sends, recorded by a
`before_cursor_execute` listener (SQL Server's lock is tested at the SQL level in tests/unit/ingest)."""

from __future__ import annotations

import json

import sqlalchemy as sa

from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import ingest_events

W_MS = 300_000
T0 = 1_795_428_000_000  # 2026-11-23T10:00:00Z


def batch() -> list[RawEvent]:
    rows = [{"device": d, "sensor": s, "ts": T0 + 5_000 * i, "value": float(i)}
            for i, (d, s) in enumerate([("d-2", "temp"), ("d-1", "rh"), ("d-10", "temp"), ("d-1", "temp")])]
    return [RawEvent(body=json.dumps(r).encode(), partition="0") for r in rows]


def statements_of_a_batch(engine: sa.Engine) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert ingest_events(engine, batch(), source="t", window_ms=W_MS).stored == 4
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


def test_no_application_lock_outside_sql_server(engine):
    seen = statements_of_a_batch(engine)
    assert not any("sp_getapplock" in s for s, _ in seen)
    locks = [(s, p) for s, p in seen if "pg_advisory_xact_lock" in s]
    if engine.dialect.name == "sqlite":
        assert not locks  # SQLite serialises writers itself
        return
    assert locks == seen[:1]  # one statement, the transaction's first: before any stored reading is read
    assert list(locks[0][1].values()) == ["d-1/rh,d-1/temp,d-10/temp,d-2/temp"]  # the pairs, sorted
