"""Ingest against real SQLite and PostgreSQL: validation, idempotence, atomicity, the function."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import azure.functions as func
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mssql, sqlite

from fleetscore import db
from fleetscore.db import reads
from fleetscore.host.invocation import invocation_context
from fleetscore.ingest import store
from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import TransientIngestError, ingest_events
from fleetscore.ingest.windows import aggregate
from tests.helpers.appfuncs import function as _function

W_MS = 300_000
T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)


def ev(body, **kw) -> RawEvent:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawEvent(body=data, partition="0", **kw)


def table(engine, t: sa.Table, order: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(*[t.c[c] for c in order])).mappings().all()
    return pd.DataFrame(rows)


def readings_df(engine) -> pd.DataFrame:
    df = table(engine, db.readings, ["device", "sensor", "ts"])
    return df[["device", "sensor", "ts", "value"]] if not df.empty else df


def windows_df(engine) -> pd.DataFrame:
    df = table(engine, db.windows, ["device", "sensor", "window_end"])
    return df.drop(columns=["updated_at"]) if not df.empty else df


GOOD = [
    {"device": "d-0001", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 21.4},
    {"device": 17, "sensor": "rh", "ts": "2026-11-23T11:00:05+01:00", "value": 40},       # int id, offset
    {"device": "d-0001", "sensor": "temp", "ts": T0 / 1000 + 65, "value": 21.9},          # epoch seconds
    {"device": "d-0001", "sensor": "temp", "ts": T0 + 300_000, "value": 22.0},            # epoch ms, on a boundary
]
BAD = [
    (b'{"device": "d-1", "sensor": ', "bad_json"),
    (b"", "empty_body"),
    (b"   ", "empty_body"),
    (b"[]", "empty_body"),
    (b"\xff\xfe", "bad_json"),
    (b'"just a string"', "not_object"),
    ({"sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1}, "missing_field"),
    ({"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": None}, "missing_field"),
    (b'{"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": NaN}', "bad_value"),
    (b'{"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": Infinity}', "bad_value"),
    (b'{"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": -Infinity}', "bad_value"),
    ({"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": "21.4"}, "bad_value"),
    ({"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": True}, "bad_value"),
    ({"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": [1]}, "bad_value"),
    ({"device": "d'; DROP TABLE readings;--", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1},
     "bad_id"),
    ({"device": 'd"1', "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1}, "bad_id"),
    ({"device": "d" * 65, "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1}, "bad_id"),
    ({"device": "", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1}, "bad_id"),
    ({"device": 1.5, "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1}, "bad_id"),
    ({"device": "d-1", "sensor": {"a": 1}, "ts": "2026-11-23T10:00:05Z", "value": 1}, "bad_id"),
    ({"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05", "value": 1}, "naive_ts"),
    ({"device": "d-1", "sensor": "temp", "ts": "yesterday", "value": 1}, "bad_ts"),
    ({"device": "d-1", "sensor": "temp", "ts": True, "value": 1}, "bad_ts"),
    ({"device": "d-1", "sensor": "temp", "ts": -5, "value": 1}, "bad_ts"),
    # numbers too large for a float, nesting deeper than the JSON parser's recursion limit, a NUL byte
    (b'{"device": "d-1", "sensor": "temp", "ts": 1' + b"0" * 400 + b', "value": 1}', "bad_ts"),
    (b'{"device": "d-1", "sensor": "temp", "ts": 1795000000000, "value": 1' + b"0" * 400 + b"}", "bad_value"),
    (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    (b'{"device": "d\\u0000", "sensor": "temp", "ts": 1795000000000, "value": 1}\x00', "bad_json"),
]


def test_mixed_batch_stores_good_and_dead_letters_each_bad(engine):
    events = [ev(g, sequence_number=i, offset=str(i * 10)) for i, g in enumerate(GOOD)]
    events += [ev(b, sequence_number=100 + i, offset=f"o{i}") for i, (b, _) in enumerate(BAD)]
    # an array mixing good and bad readings: the good ones are kept
    events.append(ev([{"device": "d-2", "sensor": "temp", "ts": "2026-11-23T10:01:00Z", "value": 1.0},
                      {"device": "d-2", "sensor": "temp", "ts": "2026-11-23T10:02:00Z", "value": "x"}],
                     sequence_number=999, offset="o999"))
    random.Random(1).shuffle(events)
    result = ingest_events(engine, events, source="eventhub:test", window_ms=W_MS)

    stored = readings_df(engine)
    assert len(stored) == len(GOOD) + 1 == result.stored
    assert set(stored["device"]) == {"d-0001", "17", "d-2"}
    rh = stored[stored["sensor"] == "rh"].iloc[0]
    assert rh["ts"] == T0 + 5000  # 11:00:05+01:00 is 10:00:05Z
    assert set(stored[stored["device"] == "d-0001"]["ts"]) == {T0 + 5000, T0 + 65_000, T0 + 300_000}

    dead = table(engine, db.dead_letters, ["id"])
    assert len(dead) == len(BAD) + 1 == result.dead_lettered
    by_seq = {int(r.sequence_number): r for r in dead.itertuples()}
    for i, (body, reason) in enumerate(BAD):
        row = by_seq[100 + i]
        assert row.reason == reason, (body, row.detail)
        assert row.detail
        assert row.partition == "0" and row.offset == f"o{i}"
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert row.payload == raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\u0000")
    assert by_seq[999].reason == "bad_value" and '"x"' in by_seq[999].payload
    # the injection attempt was stored as data, and the tables are intact
    assert "DROP TABLE" in by_seq[100 + 14].payload
    assert sa.inspect(engine).has_table("readings")

    win = windows_df(engine)
    w1 = win[(win["device"] == "d-0001") & (win["window_end"] == T0 + 300_000)].iloc[0]
    assert w1["n"] == 3 and w1["min"] == 21.4 and w1["max"] == 22.0  # 10:05:00 is inclusive


def test_repeats_and_conflicts(engine):
    r = {"device": "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 1.5}
    first = ingest_events(engine, [ev(r)], source="t", window_ms=W_MS)
    assert first.stored == 1
    again = ingest_events(engine, [ev(r), ev(r)], source="t", window_ms=W_MS)
    assert again.stored == 0 and again.duplicates == 2 and again.dead_lettered == 0
    other = dict(r, value=2.5)
    conflict = ingest_events(engine, [ev(other)], source="t", window_ms=W_MS)
    assert conflict.stored == 0 and conflict.dead_lettered == 1
    in_batch = ingest_events(engine, [ev(dict(r, ts="2026-11-23T10:00:06Z")),
                                      ev(dict(r, ts="2026-11-23T10:00:06Z", value=9.0))], source="t", window_ms=W_MS)
    assert in_batch.stored == 1 and in_batch.dead_lettered == 1
    dead = table(engine, db.dead_letters, ["id"])
    assert list(dead["reason"]) == ["conflict", "conflict"]
    assert readings_df(engine)["value"].tolist() == [1.5, 1.5]
    win = windows_df(engine)
    assert len(win) == 1 and win.iloc[0]["n"] == 2 and win.iloc[0]["sum"] == 3.0


def test_only_windows_with_a_row_have_their_stored_readings_read(engine, monkeypatch):
    """A reading's window row is written with it, so a batch of new windows reads no stored readings (the readings'
    key leads with ts: reading them scans every device's readings of that time); a window with a row is read whole,
    and its repeats and conflicts are still found."""
    read: list[list[tuple[str, str]]] = []  # the pairs of each read of stored readings
    readings_of_pairs = store._readings_of_pairs

    def recorded(conn, pairs, after, until):
        read.append(pairs)
        return readings_of_pairs(conn, pairs, after, until)

    monkeypatch.setattr(store, "_readings_of_pairs", recorded)
    monkeypatch.setattr(store, "ENDS_PER_QUERY", 1)  # the windows' lookup in several queries of ends and devices
    monkeypatch.setattr(reads, "IN_CHUNK", 8)
    monkeypatch.setattr(reads, "SQLITE_IN_CHUNK", 8)
    first = [{"device": f"d-{k:03d}", "sensor": s, "ts": T0 + 1000 * k, "value": float(k)}
             for k in range(30) for s in ("temp", "rh")]
    assert ingest_events(engine, [ev(first)], source="t", window_ms=W_MS).stored == 60
    later = [dict(r, ts=T0 + W_MS + 1000) for r in first]  # every pair's next window: new rows
    assert ingest_events(engine, [ev(later)], source="t", window_ms=W_MS).stored == 60
    assert read == []
    mixed = [dict(first[3], ts=T0 + 100_000), first[5], dict(first[7], value=-1.0),
             {"device": "d-999", "sensor": "temp", "ts": T0 + 2000, "value": 3.0}]
    result = ingest_events(engine, [ev(mixed)], source="t", window_ms=W_MS)
    assert read == [sorted({(r["device"], r["sensor"]) for r in mixed[:3]})]  # not the new pair's
    assert (result.stored, result.duplicates, result.dead_lettered) == (2, 1, 1)
    win = windows_df(engine).set_index(["device", "sensor", "window_end"])
    first_end = T0 + W_MS
    assert win.loc[(first[3]["device"], first[3]["sensor"], first_end), "n"] == 2  # recomputed with the stored one
    assert win.loc[("d-999", "temp", first_end), "n"] == 1
    assert len(win) == 121


def test_an_in_list_as_long_as_the_database_binds_reads_the_stored_readings(engine):
    """SQLite 3.32+ binds 32,766 parameters: a batch's devices go in one list there (one scan of the time range),
    in lists of 900 on SQL Server (2,100 parameters)."""
    pairs = [(f"d-{k:05d}", "temp") for k in range(reads.SQLITE_IN_CHUNK + 5)]
    rows = [{"device": d, "sensor": s, "ts": T0 + 1000, "value": 1.0, "ingested_at": 0, "late": False}
            for d, s in pairs[::1000]]
    with engine.begin() as conn:
        conn.execute(db.readings.insert(), rows)
        queries = list(store._readings_of_pairs(conn, pairs, T0, T0 + W_MS))
        found = [row for query in queries for row in db.iter_tuples(conn, query, server_side=False)]
    assert sorted(found) == sorted((r["device"], r["sensor"], r["ts"], r["value"]) for r in rows)
    if engine.dialect.name == "sqlite":
        assert len(queries) == 2  # 30,005 devices
    assert db.in_chunk(sqlite.dialect()) == reads.SQLITE_IN_CHUNK
    assert db.in_chunk(mssql.pyodbc.dialect()) == db.IN_CHUNK


def test_late_readings_are_stored_and_counted(engine):
    with engine.begin() as conn:
        conn.execute(db.watermarks.insert().values(name=db.SCORING_WATERMARK, value=T0 + 600_000, updated_at=0))
    res = ingest_events(engine, [ev({"device": "d", "sensor": "s", "ts": T0 + 1000, "value": 1}),
                                 ev({"device": "d", "sensor": "s", "ts": T0 + 700_000, "value": 1})],
                        source="t", window_ms=W_MS)
    assert res.stored == 2 and res.late == 1
    assert table(engine, db.readings, ["ts"])["late"].tolist() == [True, False]


readings_strategy = st.lists(
    st.tuples(st.sampled_from(["d-1", "d-2", "d-3"]), st.sampled_from(["temp", "rh"]),
              st.integers(0, 40) .map(lambda k: T0 + k * 30_000),  # many on window boundaries
              st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3))),
    min_size=1, max_size=60, unique_by=lambda r: r[:3])


def _deliver(engine, items, plan: random.Random, as_arrays: bool) -> None:
    items = list(items)
    plan.shuffle(items)
    items += plan.sample(items, k=plan.randint(0, len(items)))  # at-least-once: some come twice
    plan.shuffle(items)
    while items:
        size = plan.randint(1, 20)
        chunk, items = items[:size], items[size:]
        bodies = [{"device": d, "sensor": s, "ts": t, "value": v} for d, s, t, v in chunk]
        events = [ev(bodies[i:i + 3]) for i in range(0, len(bodies), 3)] if as_arrays else [ev(b) for b in bodies]
        ingest_events(engine, events, source="t", window_ms=W_MS)


def _fresh(engine) -> None:
    with engine.begin() as conn:
        for t in (db.readings, db.windows, db.dead_letters):
            conn.execute(t.delete())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=readings_strategy, seed_a=st.integers(0, 2**32), seed_b=st.integers(0, 2**32))
def test_any_order_duplication_or_split_gives_identical_rows(engine, items, seed_a, seed_b):
    _fresh(engine)
    _deliver(engine, items, random.Random(seed_a), as_arrays=False)
    r1, w1 = readings_df(engine), windows_df(engine)
    _fresh(engine)
    _deliver(engine, items, random.Random(seed_b), as_arrays=True)
    r2, w2 = readings_df(engine), windows_df(engine)
    pd.testing.assert_frame_equal(r1, r2)
    pd.testing.assert_frame_equal(w1, w2)
    # and the windows equal a one-shot aggregation of the distinct readings
    expected = aggregate(pd.DataFrame(items, columns=["device", "sensor", "ts", "value"]), W_MS)
    assert w1["n"].tolist() == expected["n"].tolist()
    np.testing.assert_allclose(w1["sum"], expected["sum"], rtol=1e-12, atol=1e-9)
    assert (w1["min"].to_numpy() == expected["min"].to_numpy()).all()
    assert not table(engine, db.dead_letters, ["id"]).shape[0]


def test_database_failure_mid_batch_leaves_nothing_and_redelivery_completes(engine):
    batch = [ev({"device": f"d-{i % 7}", "sensor": "temp", "ts": T0 + i * 20_000, "value": float(i)})
             for i in range(200)]
    batch.append(ev(b"not json"))
    failures = {"left": 1}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail_window_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO WINDOWS") and failures["left"]:
            failures["left"] -= 1
            raise sa.exc.OperationalError(statement, parameters, Exception("server closed the connection"))

    with pytest.raises(TransientIngestError):
        ingest_events(engine, batch, source="t", window_ms=W_MS)
    assert readings_df(engine).empty and windows_df(engine).empty
    assert table(engine, db.dead_letters, ["id"]).empty

    result = ingest_events(engine, batch, source="t", window_ms=W_MS)
    assert result.stored == 200 and result.dead_lettered == 1
    assert len(readings_df(engine)) == 200
    assert windows_df(engine)["n"].sum() == 200


def test_non_transient_failure_propagates_and_stores_nothing(sqlite_engine, monkeypatch):
    """The caller keeps the raw batch (fleetscore.ingest.deadletter); nothing is half-stored in SQL."""
    import fleetscore.ingest.store as ingest_mod

    def broken(*a, **k):
        raise RuntimeError("bug in window maths")

    monkeypatch.setattr(ingest_mod, "aggregate_arrays", broken)
    batch = [ev({"device": "d", "sensor": "s", "ts": T0, "value": 1.0})]
    with pytest.raises(RuntimeError, match="bug in window maths"):
        ingest_events(sqlite_engine, batch, source="t", window_ms=W_MS)
    assert readings_df(sqlite_engine).empty
    assert table(sqlite_engine, db.dead_letters, ["id"]).empty


def test_a_redelivered_bad_event_is_one_dead_letter_however_the_batch_is_split(engine):
    """Issue 14, failure 6: a kill between the commit and the checkpoint redelivers the batch; each bad event
    (and each conflicting reading) is recorded once, two identical bad items of one event stay two, and the
    same bad body in another event (another sequence number) is another dead letter."""
    stored = {"device": "d-1", "sensor": "temp", "ts": T0 + 1000, "value": 1.0}
    clash = {**stored, "value": 2.0}
    batch = [ev(stored, sequence_number=1),
             ev([{"device": "d-1"}, {"device": "d-1"}, clash], sequence_number=2),  # two identical bad items
             ev(b"{oops", sequence_number=3), ev(b"{oops", sequence_number=4)]
    first = ingest_events(engine, batch, source="eventhub:readings", window_ms=W_MS)
    assert first.dead_lettered == 5
    ingest_events(engine, batch, source="eventhub:readings", window_ms=W_MS)  # redelivered whole
    for one in batch[1:]:  # and again one event at a time
        ingest_events(engine, [one], source="eventhub:readings", window_ms=W_MS)
    dead = table(engine, db.dead_letters, ["id"])
    assert sorted(zip(dead["sequence_number"], dead["reason"], strict=True)) == [
        (2, "conflict"), (2, "missing_field"), (2, "missing_field"), (3, "bad_json"), (4, "bad_json")]
    assert dead["letter_key"].is_unique
    assert len(readings_df(engine)) == 1
    # another source is another identity; bulk rows without a sequence number are identified by payload
    ingest_events(engine, [ev(b"{oops", sequence_number=3)], source="eventhub:other", window_ms=W_MS)
    no_seq = [RawEvent(body=b"{oops"), RawEvent(body=b"{oops")]
    ingest_events(engine, no_seq, source="file:x.csv", window_ms=W_MS)
    ingest_events(engine, no_seq, source="file:x.csv", window_ms=W_MS)
    assert len(table(engine, db.dead_letters, ["id"])) == 5 + 1 + 1


def test_dead_letter_identity_on_sql_server_compiles():
    """SQL Server (no ON CONFLICT): the stored keys are read first; the unique index skips legacy NULL keys."""
    from sqlalchemy.dialects import mssql

    from fleetscore.ingest.store import stored_letter_keys

    sql = str(stored_letter_keys(["a" * 64, "b" * 64]).compile(dialect=mssql.dialect()))
    assert "SELECT dead_letters.letter_key" in sql and "letter_key IN (__[POSTCOMPILE_letter_key_1])" in sql
    text = db.ddl("mssql")
    assert "CREATE UNIQUE INDEX ux_dead_letters_key ON dead_letters (letter_key) WHERE letter_key IS NOT NULL" \
        in text


# --- the Azure Functions trigger, through the SDK's own types ----------------------------------



def test_ingest_function_bindings():
    f = _function("ingest")
    binding = json.loads(f.get_function_json())["bindings"][0]
    assert binding["type"] == "eventHubTrigger"
    assert binding["direction"] == "IN"
    assert binding["cardinality"].lower() == "many"
    assert binding["connection"] == "EVENTHUB_CONNECTION"
    assert binding["eventHubName"] == "%EVENTHUB_NAME%"
    retry = f.get_settings_dict("retry_policy")
    assert retry["strategy"] == "exponential_backoff"
    assert int(retry["max_retry_count"]) >= 3
    assert retry["minimum_interval"] and retry["maximum_interval"]


def test_ingest_function_with_real_event_hub_events(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    monkeypatch.setenv("FLEETSCORE_SQL_URL", url)
    fn = _function("ingest").get_user_function()
    enq = datetime(2026, 11, 23, 10, 0, 9, tzinfo=timezone.utc)
    events = [func.EventHubEvent(body=json.dumps(GOOD[:2]).encode(), sequence_number=5, offset="500",
                                 enqueued_time=enq, partition_key="d-0001"),
              func.EventHubEvent(body=b"{oops", sequence_number=6, offset="600", enqueued_time=enq)]
    assert fn(events, context=invocation_context("ingest")) is None
    fn(events, context=invocation_context("ingest"))  # redelivered: no change, the bad event is recorded once
    engine = db.create_db_engine(url)
    assert len(readings_df(engine)) == 2
    dead = table(engine, db.dead_letters, ["id"])
    assert dead["reason"].tolist() == ["bad_json"]
    assert dead["sequence_number"].tolist() == [6]
    assert dead["enqueued_time"].tolist() == [int(enq.timestamp() * 1000)]
    assert dead["letter_key"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_ingest_function_raises_only_transient_errors(monkeypatch, tmp_path):
    db_path = tmp_path / "ro" / "f.db"
    db_path.parent.mkdir()
    url = f"sqlite:///{db_path}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("FLEETSCORE_SQL_URL", url)
    fn = _function("ingest").get_user_function()
    # a second connection holds the write lock: "database is locked" is transient
    import sqlite3
    locker = sqlite3.connect(db_path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    from fleetscore.context import get_services

    get_services().__dict__["engine"] = sa.create_engine(url, connect_args={"timeout": 0.1})
    with pytest.raises(TransientIngestError):  # not the last try: the host retries the batch
        fn([func.EventHubEvent(body=json.dumps(GOOD[0]).encode())],
           context=invocation_context("ingest", retry_count=0, max_retry_count=8))
    locker.rollback()
    locker.close()
    fn([func.EventHubEvent(body=json.dumps(GOOD[0]).encode())],
       context=invocation_context("ingest", retry_count=1, max_retry_count=8))
    assert len(readings_df(get_services().engine)) == 1


def test_mssql_ddl_compiles():
    from fleetscore.db import ddl

    text = ddl("mssql")
    assert "CREATE TABLE readings" in text and "BIGINT" in text and "GO" in text
    for t in ("readings", "windows", "dead_letters", "runs", "prediction_files", "anomalies", "alerts",
              "watermarks"):
        assert f"CREATE TABLE {t}" in text
    # the windows statements compile for mssql too (delete by key, insert)
    from sqlalchemy.dialects import mssql

    stmt = db.windows.delete().where(db.windows.c.device == sa.bindparam("d"))
    assert "DELETE FROM windows" in str(stmt.compile(dialect=mssql.dialect()))


