"""Ingest: store a batch of readings and recompute the windows it touches, in one transaction.

What an Azure Stream Analytics job would do in front of SQL, but idempotent: a batch delivered twice,
in any order or split differently leaves the same `readings` and `windows` rows, because windows are
recomputed from the stored readings rather than incremented. Bad events are `dead_letters` rows with an
identity (:func:`letter_keys`, unique in SQL), so a redelivered or replayed bad event is recorded once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from fleetscore import clock, db, telemetry
from fleetscore.ingest.readings import DeadLetter, Decoded, RawEvent, decode_events
from fleetscore.ingest.windows import WINDOW_COLUMNS, aggregate_arrays, window_end, window_end_of

log = logging.getLogger(__name__)


class TransientIngestError(RuntimeError):
    """A database error worth a redelivery (the host's retry policy replays the whole batch)."""


@dataclass
class IngestResult:
    """Counts for one batch (readings, not events)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    late: int = 0
    windows: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    """Dead letters by reason code (`bad_json`, `conflict`, …)."""

    def __iadd__(self, other: IngestResult) -> IngestResult:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


Key = tuple[str, str, int]
"""A reading's key: (device, sensor, ts epoch ms)."""


def first_occurrences(decoded: Decoded) -> tuple[dict[Key, int], int, list[int]]:
    """Within one batch: (key → index of its first occurrence, exact repeats, indexes of conflicting repeats).

    A repeat is exact when it carries the first occurrence's value; otherwise it conflicts.
    """
    firsts: dict[Key, int] = {}
    repeats = 0
    conflicts: list[int] = []
    values = decoded.value
    for i, key in enumerate(zip(decoded.device, decoded.sensor, decoded.ts, strict=True)):
        j = firsts.setdefault(key, i)
        if j != i:
            if values[j] == values[i]:
                repeats += 1
            else:
                conflicts.append(i)
    return firsts, repeats, conflicts


ENDS_PER_QUERY = 100
"""Window ends per `stored_windows` query (with its devices, under `db.in_chunk` parameters)."""


def _time_clusters(window_ends: np.ndarray, window_ms: int, max_gap_windows: int = 12) -> list[tuple[int, int]]:
    """Group sorted distinct window ends into (lo, hi) runs so one range query serves each run."""
    ends = np.unique(window_ends)
    breaks = np.flatnonzero(np.diff(ends) > max_gap_windows * window_ms)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [len(ends) - 1]])
    return [(int(ends[a]), int(ends[b])) for a, b in zip(starts, stops, strict=True)]


def lock_pairs(conn: Connection, pairs: set[tuple[str, str]]) -> None:
    """Serialise concurrent batches that touch the same device+sensor, each pair's lock held until the
    transaction ends and taken in sorted order so two batches cannot deadlock: PostgreSQL transaction-scoped
    advisory locks, SQL Server exclusive application locks (`sp_getapplock`, `LockNotGranted` if refused).
    Without it two batches could each recompute a shared window from stored readings that miss the other's
    uncommitted ones. SQLite serialises writers by itself."""
    if not pairs or conn.dialect.name not in ("postgresql", "mssql"):
        return
    keys = sorted(f"{d}/{s}" for d, s in pairs)  # "/" is in no id
    if conn.dialect.name == "mssql":
        for chunk in db.chunks(keys):
            code = conn.execute(mssql_pair_locks([f"{APPLOCK_PREFIX}{k}" for k in chunk])).scalar_one()
            if code < 0:
                raise db.LockNotGranted(code)
        return
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                         "FROM unnest(string_to_array(:keys, ',')) WITH ORDINALITY AS t(k, i) ORDER BY i")
                 .bindparams(keys=_pg_text(keys)))


APPLOCK_PREFIX = "fleetscore/ingest/"
"""`sp_getapplock` resource of a pair: this prefix + `device/sensor` (at most 147 of the 255 characters)."""
APPLOCK_TIMEOUT_MS = 60_000
"""How long a batch waits for a pair another batch holds before giving up (a transient error: redelivered)."""


def mssql_pair_locks(resources: Sequence[str]) -> sa.TextClause:
    """One T-SQL batch that takes an exclusive, transaction-owned application lock on each resource in order,
    stops at the first refusal, and selects the last `sp_getapplock` return code (>= 0: all granted).

    In manual-commit mode the ODBC driver runs with IMPLICIT_TRANSACTIONS ON, where EXEC opens no
    transaction, so a zero-row SELECT from a table opens it first (a Transaction-owned lock needs one).
    NOCOUNT is on inside the batch (the return code is its first result) and restored after it.
    """
    takes = "".join(f"IF @rc >= 0 EXEC @rc = sp_getapplock @Resource = :r{i}, @LockMode = 'Exclusive', "
                    f"@LockOwner = 'Transaction', @LockTimeout = {APPLOCK_TIMEOUT_MS};\n"
                    for i in range(len(resources)))
    sql = (f"DECLARE @nocount int = @@OPTIONS & 512, @rc int = 0;\nSET NOCOUNT ON;\n"
           f"SELECT TOP (0) @rc = 0 FROM {db.readings.name};\n{takes}"
           f"IF @nocount = 0 SET NOCOUNT OFF;\nSELECT @rc AS rc")
    return sa.text(sql).bindparams(*(sa.bindparam(f"r{i}", r, type_=sa.Unicode(255))
                                     for i, r in enumerate(resources)))


def stored_windows(conn: Connection, touched: set[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """The touched (device, sensor, window_end) that have a window row: the only ones with stored readings, since a
    batch writes its readings and their windows in one transaction. One index seek per window end and device (the
    windows' key leads with window_end, then device): no scan of the fleet's windows."""
    ends = sorted({w for _, _, w in touched})
    devices = sorted({d for d, _, _ in touched})
    w = db.windows
    found: set[tuple[str, str, int]] = set()
    for end_chunk in db.chunks(ends, ENDS_PER_QUERY):
        for dev_chunk in db.chunks(devices, db.in_chunk(conn.dialect) - ENDS_PER_QUERY):
            query = sa.select(w.c.device, w.c.sensor, w.c.window_end).where(w.c.window_end.in_(end_chunk),
                                                                            w.c.device.in_(dev_chunk))
            found.update(row for row in db.iter_tuples(conn, query, server_side=False) if row in touched)
    return found


def fetch_window_readings(conn: Connection, touched: set[tuple[str, str, int]], window_ms: int) -> dict[Key, float]:
    """Stored readings of every touched (device, sensor, window_end): {(device, sensor, ts): value}. Only windows
    with a row are read (`stored_windows`): the readings' key leads with ts, so reading a window's readings scans
    every device's readings of its time, and a batch of new windows (one device's hour, say) reads none."""
    stored: dict[Key, float] = {}
    touched = stored_windows(conn, touched)
    if not touched:
        return stored
    ends = np.fromiter((w for _, _, w in touched), dtype=np.int64, count=len(touched))
    for lo, hi in _time_clusters(ends, window_ms):
        in_run = sorted({(d, s) for d, s, w in touched if lo <= w <= hi})
        for query in _readings_of_pairs(conn, in_run, lo - window_ms, hi):
            for device, sensor, ts, value in db.iter_tuples(conn, query, server_side=False):
                if (device, sensor, window_end_of(ts, window_ms)) in touched:
                    stored[(device, sensor, ts)] = value
    return stored


def _readings_of_pairs(conn: Connection, pairs: list[tuple[str, str]], after: int, until: int) -> Iterator[sa.Select]:
    """Queries for the readings of `pairs` with after < ts ≤ until. The key leads with ts, so each query
    scans the time range once: PostgreSQL hash-joins it with the pairs (one parameter per column);
    elsewhere device and sensor `IN` lists, in chunks below SQL Server's parameter limit."""
    t = db.readings
    base = sa.select(t.c.device, t.c.sensor, t.c.ts, t.c.value).where(t.c.ts > after, t.c.ts <= until)
    if conn.dialect.name == "postgresql":
        wanted = sa.func.unnest(_pg_array("a_device", t.c.device.type), _pg_array("a_sensor", t.c.sensor.type)) \
            .table_valued(sa.column("device", t.c.device.type), sa.column("sensor", t.c.sensor.type)).render_derived()
        query = base.join_from(t, wanted, (t.c.device == wanted.c.device) & (t.c.sensor == wanted.c.sensor))
        yield query.params(a_device=_pg_text([d for d, _ in pairs]), a_sensor=_pg_text([s for _, s in pairs]))
        return
    devices = sorted({d for d, _ in pairs})
    sensors = sorted({s for _, s in pairs})
    for dev_chunk in db.chunks(devices, db.in_chunk(conn.dialect)):  # with at most IN_CHUNK sensors: under either limit
        query = base.where(t.c.device.in_(dev_chunk))
        yield query.where(t.c.sensor.in_(sensors)) if len(sensors) <= db.IN_CHUNK else query


def letter_keys(dead: Sequence[DeadLetter], source: str) -> list[str]:
    """Each dead letter's identity (`dead_letters.letter_key`, 64 hex digits): SHA-256 over its source, partition,
    sequence number, reason, payload and the ordinal of that (reason, payload) within its event, so a redelivered
    or replayed event maps to the keys it had, however the batch is split, and two identical bad items of one
    event stay two. A letter without a sequence number (bulk files) is identified by its payload alone: the same
    bad payload from the same source is one dead letter."""
    seen: dict[tuple, int] = {}
    keys = []
    for d in dead:
        ordinal = 0
        if d.sequence_number is not None:
            what = (d.partition, d.sequence_number, d.reason, d.payload)
            ordinal = seen.get(what, 0)
            seen[what] = ordinal + 1
        parts = (source, d.partition or "", "" if d.sequence_number is None else str(d.sequence_number), d.reason,
                 d.payload, str(ordinal))
        keys.append(hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest())
    return keys


def dead_letter_rows(dead: Sequence[DeadLetter], source: str, received_at: int) -> list[dict]:
    """The `dead_letters` rows of `dead`, each with its identity, one per key (the first)."""
    rows: dict[str, dict] = {}
    for d, key in zip(dead, letter_keys(dead, source), strict=True):
        rows.setdefault(key, dict(received_at=received_at, source=source, partition=d.partition,
                                  sequence_number=d.sequence_number, offset=d.offset,
                                  enqueued_time=d.enqueued_time_ms, payload=d.payload, reason=d.reason,
                                  detail=d.detail, letter_key=key))
    return list(rows.values())


def insert_dead_letters(conn: Connection, rows: Sequence[dict]) -> None:
    """INSERT dead-letter rows whose key is not stored yet: `ON CONFLICT DO NOTHING` on PostgreSQL and SQLite;
    elsewhere (SQL Server) the stored keys are read first (a concurrent writer's insert of the same key is an
    IntegrityError, which is transient: the batch is retried and then finds it)."""
    if not rows:
        return
    t = db.dead_letters
    if conn.dialect.name in ("postgresql", "sqlite"):
        insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
        conn.execute(insert.on_conflict_do_nothing(index_elements=[t.c.letter_key]), list(rows))
        return
    stored: set[str] = set()
    for chunk in db.chunks([r["letter_key"] for r in rows]):
        stored |= set(conn.execute(stored_letter_keys(chunk)).scalars())
    fresh = [r for r in rows if r["letter_key"] not in stored]
    if fresh:
        conn.execute(t.insert(), fresh)


def stored_letter_keys(keys: Sequence[str]) -> sa.Select:
    """The query for which of `keys` are stored already."""
    t = db.dead_letters
    return sa.select(t.c.letter_key).where(t.c.letter_key.in_(list(keys)))


def _conflict_letters(decoded: Decoded, rows: Sequence[int], events: Sequence[RawEvent] | None,
                      why: str) -> list[DeadLetter]:
    letters = []
    for i in rows:
        event = events[decoded.event_index[i]] if events is not None else None
        letters.append(DeadLetter(
            payload=decoded.payload_of(i, events), reason="conflict", detail=why,
            partition=event.partition if event else None,
            sequence_number=event.sequence_number if event else None,
            offset=event.offset if event else None,
            enqueued_time_ms=event.enqueued_time_ms if event else None))
    return letters


def store_batch(conn: Connection, decoded: Decoded, *, source: str, window_ms: int,
                events: Sequence[RawEvent] | None = None) -> IngestResult:
    """Store one decoded batch inside the caller's transaction; returns its counts.

    New readings are inserted, exact repeats of stored readings ignored, readings whose key is stored
    with another value dead-lettered (`conflict`); every window that gains a reading is recomputed from
    all its stored readings. Dead letters whose identity is stored already are not inserted again;
    `dead_lettered` counts the batch's bad items all the same.
    """
    now = clock.now_ms()
    result = IngestResult(received=len(decoded.ts) + len(decoded.dead))
    firsts, result.duplicates, conflicts = first_occurrences(decoded)
    dead = list(decoded.dead)
    dead += _conflict_letters(decoded, conflicts, events, "the same key appears in this batch with another value")
    if firsts:
        touched = touched_windows(firsts, window_ms)
        lock_pairs(conn, {(d, s) for d, s, _ in touched})
        stored = fetch_window_readings(conn, touched, window_ms)
        new, known, clashes = compare_with_stored(firsts, stored, decoded.value)
        result.duplicates += known
        dead += _conflict_letters(decoded, clashes, events, "this key is stored with another value")
        if new:
            readings = NewReadings.pick(decoded, new, window_ms)
            result.stored, result.late = len(new), insert_readings(conn, readings, now)
            result.windows = recompute_windows(conn, readings, stored, window_ms, now)
    insert_dead_letters(conn, dead_letter_rows(dead, source, now))
    result.dead_lettered = len(dead)
    result.dead_reasons = Counter(d.reason for d in dead)
    return result


def touched_windows(firsts: Mapping[Key, int], window_ms: int) -> set[tuple[str, str, int]]:
    """(device, sensor, window_end epoch ms) of every distinct reading key of the batch."""
    ts = np.fromiter((t for _, _, t in firsts), dtype=np.int64, count=len(firsts))
    ends = window_end(ts, window_ms).tolist()
    return {(d, s, e) for (d, s, _), e in zip(firsts, ends, strict=True)}


def compare_with_stored(firsts: Mapping[Key, int], stored: Mapping[Key, float],
                        values: Sequence[float]) -> tuple[list[int], int, list[int]]:
    """Each distinct reading against the stored ones: (indexes of new readings, how many repeat a stored
    reading exactly, indexes whose key is stored with another value)."""
    new: list[int] = []
    clashes: list[int] = []
    known = 0
    for key, i in firsts.items():
        value = stored.get(key)
        if value is None:
            new.append(i)
        elif value == values[i]:
            known += 1
        else:
            clashes.append(i)
    return new, known, clashes


@dataclass(frozen=True)
class NewReadings:
    """Readings to insert, column-wise, each of shape (n,): device and sensor (object), ts (int64 epoch ms),
    value (float64), and the end of each one's window (int64 epoch ms)."""

    device: np.ndarray
    sensor: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    window_end: np.ndarray

    @classmethod
    def pick(cls, decoded: Decoded, rows: Sequence[int], window_ms: int) -> NewReadings:
        """The readings at `rows` of a decoded batch."""
        ts = np.array([decoded.ts[i] for i in rows], dtype=np.int64)
        return cls(device=np.array([decoded.device[i] for i in rows], dtype=object),
                   sensor=np.array([decoded.sensor[i] for i in rows], dtype=object),
                   ts=ts, value=np.array([decoded.value[i] for i in rows], dtype=np.float64),
                   window_end=window_end(ts, window_ms))


def insert_readings(conn: Connection, readings: NewReadings, now: int) -> int:
    """INSERT the readings, each flagged late when its window ends at or before the scoring watermark
    (it was already scored); returns how many are late."""
    watermark = db.read_watermark(conn)
    n = len(readings.ts)
    late = readings.window_end <= watermark if watermark is not None else np.zeros(n, dtype=bool)
    insert_rows(conn, db.readings, {
        "device": readings.device.tolist(), "sensor": readings.sensor.tolist(), "ts": readings.ts.tolist(),
        "value": readings.value.tolist(), "ingested_at": [now] * n, "late": late.tolist()})
    return int(late.sum())


def recompute_windows(conn: Connection, readings: NewReadings, stored: Mapping[Key, float], window_ms: int,
                      now: int) -> int:
    """Recompute every window the new readings fall in, from them and the stored readings of those windows
    (`stored` holds at least those); returns how many windows were written."""
    fresh = set(zip(readings.device.tolist(), readings.sensor.tolist(), readings.window_end.tolist(), strict=True))
    old = [(d, s, t, v) for (d, s, t), v in stored.items() if (d, s, window_end_of(t, window_ms)) in fresh]
    device, sensor, ts, value = readings.device, readings.sensor, readings.ts, readings.value
    if old:
        old_device, old_sensor, old_ts, old_value = zip(*old, strict=True)
        device = np.concatenate([device, np.array(old_device, dtype=object)])
        sensor = np.concatenate([sensor, np.array(old_sensor, dtype=object)])
        ts = np.concatenate([ts, np.array(old_ts, dtype=np.int64)])
        value = np.concatenate([value, np.array(old_value, dtype=np.float64)])
    windows = aggregate_arrays(device, sensor, ts, value, window_ms)
    replace_windows(conn, windows, now)
    return len(windows)


def _pg_array(param: str, column_type: sa.types.TypeEngine) -> sa.ColumnElement:
    """`string_to_array(:param, ',')::<type>[]`: a whole column in one comma-joined text parameter.

    psycopg's own list adaptation escapes every element through a regex, which cost more than the
    INSERT itself. Ids never hold a comma ([A-Za-z0-9._:-]); numbers are written with `repr`, which
    PostgreSQL reads back exactly.
    """
    return sa.cast(sa.func.string_to_array(sa.bindparam(param, type_=sa.Text()), ","), postgresql.ARRAY(column_type))


def _pg_text(values: Sequence) -> str:
    return ",".join("t" if v is True else "f" if v is False else repr(v) if isinstance(v, float) else str(v)
                    for v in values)


def _pg_unnest(table: sa.Table, names: Sequence[str]) -> sa.Select:
    """`SELECT * FROM unnest(<col1 array>, <col2 array>, ...)`: one fixed statement whatever the row count
    (PostgreSQL), each column one text parameter (`_pg_array`)."""
    arrays = [_pg_array(f"a_{n}", table.c[n].type) for n in names]
    rows = sa.func.unnest(*arrays).table_valued(*(sa.column(n, table.c[n].type) for n in names)).render_derived()
    return sa.select(*(rows.c[n] for n in names))


def _pg_params(columns: dict[str, list]) -> dict[str, str]:
    return {f"a_{name}": _pg_text(values) for name, values in columns.items()}


Columns = dict[str, list]
"""Rows to write, column-wise: {column name: values}, all lists of one length."""


def insert_rows(conn: Connection, table: sa.Table, columns: Columns) -> None:
    """INSERT many rows in as few round trips as the dialect allows.

    PostgreSQL: one `INSERT ... SELECT FROM unnest(arrays)` (a per-row executemany costs a statement
    per row). SQLite and SQL Server (`fast_executemany`) batch natively.
    """
    names = list(columns)
    if not names or not columns[names[0]]:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(table.insert().from_select(names, _pg_unnest(table, names)), _pg_params(columns))
    else:
        executemany(conn, table.insert(), columns)


def executemany(conn: Connection, stmt: sa.Executable, columns: Columns) -> None:
    """The driver's own executemany of a compiled Core statement (SQLite, SQL Server).

    Skips SQLAlchemy's per-row parameter processing, which costs more than SQLite's insert itself;
    only for statements whose bound values need no type conversion (strings, ints, floats, bools).
    """
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns))
    order = compiled.positiontup
    if order is None:  # a named paramstyle: one dict per row
        names = list(columns)
        conn.exec_driver_sql(str(compiled), [dict(zip(names, row, strict=True))
                                             for row in zip(*columns.values(), strict=True)])
        return
    conn.exec_driver_sql(str(compiled), list(zip(*(columns[k] for k in order), strict=True)))


def replace_windows(conn: Connection, windows: pd.DataFrame, updated_at: int) -> None:
    """Write window rows (device, sensor, window_end, n, sum, sumsq, min, max), replacing any stored.

    An upsert on SQLite and PostgreSQL; delete-then-insert elsewhere (SQL Server), same result.
    """
    if windows.empty:
        return
    t = db.windows
    columns: Columns = {c: windows[c].tolist() for c in WINDOW_COLUMNS}
    columns["updated_at"] = [updated_at] * len(windows)
    if conn.dialect.name == "postgresql":
        rows = postgresql.insert(t).from_select(list(columns), _pg_unnest(t, list(columns)))
        conn.execute(_replacing_windows(rows), _pg_params(columns))
    elif conn.dialect.name == "sqlite":
        executemany(conn, _replacing_windows(sqlite.insert(t)), columns)
    else:
        executemany(conn, t.delete().where(t.c.device == sa.bindparam("device"), t.c.sensor == sa.bindparam("sensor"),
                                           t.c.window_end == sa.bindparam("window_end")),
                    {k: columns[k] for k in ("device", "sensor", "window_end")})
        executemany(conn, t.insert(), columns)


def _replacing_windows(insert: postgresql.Insert | sqlite.Insert) -> sa.Executable:
    """`insert` (PostgreSQL's or SQLite's) made an upsert: a window already stored takes the new aggregates."""
    t = db.windows
    return insert.on_conflict_do_update(
        index_elements=[t.c.device, t.c.sensor, t.c.window_end],
        set_={c: insert.excluded[c] for c in ("n", "sum", "sumsq", "min", "max", "updated_at")})


def ingest_events(engine: Engine, events: Sequence[RawEvent], *, source: str, window_ms: int) -> IngestResult:
    """The ingest function's core: decode, store and window one delivered batch, all or nothing.

    Bad events never raise (they become dead-letter rows in the same transaction). A transient database
    error raises `TransientIngestError` (worth a redelivery); any other failure propagates unchanged, and
    the caller keeps the raw batch (:mod:`fleetscore.ingest.deadletter`).
    """
    decoded = decode_events(events)
    try:
        with engine.begin() as conn:
            result = store_batch(conn, decoded, source=source, window_ms=window_ms, events=events)
    except Exception as exc:
        if db.is_transient(exc):
            raise TransientIngestError(f"transient database error, batch will be redelivered: "
                                       f"{type(exc).__name__}") from exc
        raise
    telemetry.ingested(result.stored, result.late, result.dead_reasons)
    return result
