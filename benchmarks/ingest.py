"""Ingest throughput: the ingest path vs a naive per-reading loop, on SQLite and PostgreSQL, in one run.

    python benchmarks/ingest.py [--readings 200000] [--batch-events 500] [--per-event 1]

Batches of `--batch-events` Event Hubs events (as the host delivers them with cardinality many),
each event one reading (or a JSON array of `--per-event` readings), in time order as a fleet sends
them. Both paths store the readings and keep the windows current inside one transaction per batch;
the naive loop does one INSERT per reading and one read-modify-write upsert of its window.
Last line: `RESULT ingest_sqlite_rps=... ingest_postgres_rps=... speedup_vs_naive=...` (readings/s,
windows included; the speedup is on SQLite).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from fleetscore import db
from fleetscore.ingest.readings import RawEvent, decode_events
from fleetscore.ingest.store import ingest_events
from fleetscore.ingest.windows import window_end

W_MS = 300_000
T0 = 1_795_000_000_000


def make_batches(n_readings: int, batch_events: int, per_event: int, interval_s: int = 60, devices: int = 200,
                 sensors: int = 5) -> list[list[RawEvent]]:
    """Event batches of a fleet whose every sensor reports every `interval_s` seconds, in time order."""
    rng = np.random.default_rng(0)
    pairs = [(f"d-{d:05d}", f"s{s}") for d in range(devices) for s in range(sensors)]
    rows = []
    for i in range(n_readings):
        device, sensor = pairs[i % len(pairs)]
        ts = T0 + (i // len(pairs)) * interval_s * 1000 + int(rng.integers(0, interval_s * 900))
        rows.append({"device": device, "sensor": sensor, "ts": ts, "value": round(float(rng.normal(20, 3)), 4)})
    bodies = [json.dumps(rows[i] if per_event == 1 else rows[i:i + per_event]).encode()
              for i in range(0, len(rows), per_event)]
    events = [RawEvent(body=b, partition="0", sequence_number=i, offset=str(i)) for i, b in enumerate(bodies)]
    return [events[i:i + batch_events] for i in range(0, len(events), batch_events)]


def naive_ingest(engine: sa.Engine, events: list[RawEvent]) -> None:
    """One INSERT per reading and one upsert of its window (read, then update or insert)."""
    decoded = decode_events(events)
    r, w = db.readings, db.windows
    with engine.begin() as conn:
        for device, sensor, ts, value in zip(decoded.device, decoded.sensor, decoded.ts, decoded.value,
                                             strict=True):
            conn.execute(r.insert().values(device=device, sensor=sensor, ts=ts, value=value, ingested_at=0,
                                           late=False))
            end = int(window_end(np.array([ts]), W_MS)[0])
            key = (w.c.device == device) & (w.c.sensor == sensor) & (w.c.window_end == end)
            row = conn.execute(sa.select(w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max).where(key)).first()
            if row is None:
                conn.execute(w.insert().values(device=device, sensor=sensor, window_end=end, n=1, sum=value,
                                               sumsq=value * value, min=value, max=value, updated_at=0))
            else:
                conn.execute(w.update().where(key).values(
                    n=row.n + 1, sum=row.sum + value, sumsq=row.sumsq + value * value,
                    min=min(row.min, value), max=max(row.max, value), updated_at=0))


def timed(engine: sa.Engine, batches, fn) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(engine, batch)
    return time.perf_counter() - start


def fleet_path(engine, batch):
    ingest_events(engine, batch, source="bench", window_ms=W_MS)


def fresh_sqlite(folder: Path, name: str) -> sa.Engine:
    engine = db.create_db_engine(f"sqlite:///{folder / name}")
    db.upgrade(engine)
    return engine


def fresh_postgres(admin_url: str):
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"fleetscore_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name)
    engine = db.create_db_engine(url.render_as_string(hide_password=False))
    db.upgrade(engine)

    def drop() -> None:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return engine, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--naive-readings", type=int, default=40_000,
                        help="the naive loop runs on the first N readings (same batches)")
    parser.add_argument("--batch-events", type=int, default=500)
    parser.add_argument("--per-event", type=int, default=1)
    parser.add_argument("--interval", type=int, default=60,
                        help="seconds between two readings of one sensor (a 5-minute window holds 300/N)")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    batches = make_batches(args.readings, args.batch_events, args.per_event, args.interval)
    per_batch = args.batch_events * args.per_event
    naive_batches = batches[: max(1, args.naive_readings // per_batch)]
    n_naive = sum(len(decode_events(b).ts) for b in naive_batches)
    n_all = args.readings
    print(f"{n_all:,} readings in {len(batches)} batches of {args.batch_events} events "
          f"({args.per_event} reading(s) per event), 1,000 sensors every {args.interval} s; "
          f"naive loop on the first {n_naive:,}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = fresh_sqlite(folder, "fleet.db")
        t_fleet = timed(engine, batches, fleet_path)
        engine.dispose()
        engine = fresh_sqlite(folder, "fleet-same.db")
        t_fleet_same = timed(engine, naive_batches, fleet_path)
        engine.dispose()
        engine = fresh_sqlite(folder, "naive.db")
        t_naive = timed(engine, naive_batches, naive_ingest)
        engine.dispose()
    results["sqlite"] = n_all / t_fleet
    speedup = (n_naive / t_naive) and (t_naive / t_fleet_same)
    print(f"sqlite     ingest path {n_all / t_fleet:>10,.0f} readings/s   "
          f"(same first {n_naive:,}: {n_naive / t_fleet_same:,.0f}/s)   naive loop {n_naive / t_naive:>10,.0f}/s")

    engine, drop = fresh_postgres(args.postgres)
    try:
        t_pg = timed(engine, batches, fleet_path)
    finally:
        drop()
    engine, drop = fresh_postgres(args.postgres)
    try:
        t_pg_naive = timed(engine, naive_batches, naive_ingest)
    finally:
        drop()
    results["postgres"] = n_all / t_pg
    print(f"postgres   ingest path {n_all / t_pg:>10,.0f} readings/s   naive loop {n_naive / t_pg_naive:>10,.0f}/s")
    print(f"RESULT ingest_sqlite_rps={results['sqlite']:.0f} ingest_postgres_rps={results['postgres']:.0f} "
          f"speedup_vs_naive={speedup:.1f}")


if __name__ == "__main__":
    main()
