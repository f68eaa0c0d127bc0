"""Dead-lettered batches on a real SQLite file and a folder store: the format, the replay and its crash safety."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.ingest.deadletter import (
    DeadLetterBatch,
    ingest_or_dead_letter,
    replay_deadletters,
    write_deadletter,
)
from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import TransientIngestError
from fleetscore.storage import paths

W_MS = 300_000
T0 = 1_795_428_000_000  # 2026-11-23T10:00:00Z


def event(i: int, body: bytes | None = None) -> RawEvent:
    data = body if body is not None else json.dumps(
        {"device": "d-1", "sensor": "temp", "ts": T0 + i * 1000, "value": float(i)}).encode()
    return RawEvent(body=data, partition="7", sequence_number=100 + i, offset=str(9000 + i), enqueued_time_ms=T0)


def count(engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_the_blob_round_trips_every_byte_and_field(folder):
    events = [event(0), event(1, b"\x00\xff\xfe raw"), RawEvent(body=b"")]
    key = write_deadletter(folder, events, source="eventhub:readings", reason="store_failed", error=ValueError("x"))
    assert key.startswith(paths.DEADLETTER_PENDING) and key.endswith(".json")
    batch = DeadLetterBatch.from_json(folder.get(key))
    assert batch.events == tuple(events) and batch.source == "eventhub:readings"
    assert batch.error == "ValueError: x"
    with pytest.raises(ValueError):
        DeadLetterBatch.from_json(b'{"format": "something else"}')


def test_transient_failures_raise_until_the_final_try(sqlite_engine, folder):
    def down():
        raise sa.exc.OperationalError("connect", {}, Exception("connection refused"))

    with pytest.raises(TransientIngestError):
        ingest_or_dead_letter(down, folder, [event(0)], source="s", window_ms=W_MS, final_try=False)
    assert folder.list(paths.DEADLETTER_PENDING) == []
    outcome = ingest_or_dead_letter(down, folder, [event(0)], source="s", window_ms=W_MS, final_try=True)
    assert outcome.deadletter_key and folder.exists(outcome.deadletter_key)
    ok = ingest_or_dead_letter(lambda: sqlite_engine, folder, [event(1)], source="s", window_ms=W_MS,
                               final_try=True)
    assert ok.deadletter_key is None and ok.result.stored == 1


def test_replay_is_idempotent_and_finishes_a_move_a_crash_interrupted(sqlite_engine, folder):
    first = write_deadletter(folder, [event(0), event(1)], source="s", reason="retries_exhausted",
                             error=RuntimeError("down"))
    second = write_deadletter(folder, [event(2), event(3, b"not json")], source="s", reason="retries_exhausted",
                              error=RuntimeError("down"))
    broken = paths.deadletter_key(T0, "broken")
    folder.put(broken, b"not a dead-letter document")
    summary = replay_deadletters(sqlite_engine, folder, window_ms=W_MS)
    assert sorted(summary.replayed) == sorted([first, second]) and list(summary.failed) == [broken]
    assert summary.result.stored == 3 and summary.result.dead_lettered == 1
    assert {b.name for b in folder.list(paths.DEADLETTER_PENDING)} == {broken}  # the bad one stays, reported
    assert {b.name for b in folder.list(paths.DEADLETTER_REPLAYED)} == \
        {paths.replayed_deadletter_key(first), paths.replayed_deadletter_key(second)}

    # a crash after the replayed copy was written but before the pending blob was deleted
    folder.put(first, folder.get(paths.replayed_deadletter_key(first)))
    again = replay_deadletters(sqlite_engine, folder, window_ms=W_MS)
    assert again.replayed == [first] and again.result.stored == 0 and again.result.duplicates == 2
    assert count(sqlite_engine, db.readings) == 3 and count(sqlite_engine, db.dead_letters) == 1
    assert {b.name for b in folder.list(paths.DEADLETTER_PENDING)} == {broken}


def test_replaying_a_batch_twice_records_its_conflicts_once(engine, folder):
    """The replay of a batch whose move to replayed/ was interrupted inserts no second conflict dead letter."""
    ingest_or_dead_letter(lambda: engine, folder, [event(0)], source="s", window_ms=W_MS, final_try=True)
    clash = RawEvent(body=json.dumps({"device": "d-1", "sensor": "temp", "ts": T0, "value": 99.0}).encode(),
                     partition="7", sequence_number=500)
    key = write_deadletter(folder, [clash, event(1, b"not json")], source="s", reason="retries_exhausted",
                           error=RuntimeError("down"))
    replay_deadletters(engine, folder, window_ms=W_MS)
    folder.put(key, folder.get(paths.replayed_deadletter_key(key)))  # the crash: the pending blob is back
    again = replay_deadletters(engine, folder, window_ms=W_MS)
    assert again.replayed == [key] and again.result.dead_lettered == 2
    with engine.connect() as conn:
        reasons = sorted(conn.execute(sa.select(db.dead_letters.c.reason)).scalars())
    assert reasons == ["bad_json", "conflict"]
