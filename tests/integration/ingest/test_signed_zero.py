"""Signed zero: -0.0 and 0.0 are the same reading, so the stored rows must not depend on which came first."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from fleetscore import db
from fleetscore.ingest.readings import RawEvent, decode_records
from fleetscore.ingest.store import ingest_events

W_MS = 300_000
T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)


def _signs(engine) -> tuple[list[tuple], list[tuple]]:
    """(readings, windows) with every float as (value, its sign bit), so -0.0 and 0.0 differ."""
    def signed(v: float) -> tuple[float, float]:
        return v, math.copysign(1.0, v)

    with engine.connect() as conn:
        readings = [(r.device, r.ts, signed(r.value)) for r in conn.execute(
            sa.select(db.readings).order_by(db.readings.c.device, db.readings.c.ts))]
        windows = [(w.device, w.window_end, w.n, signed(w.sum), signed(w.sumsq), signed(w.min), signed(w.max))
                   for w in conn.execute(sa.select(db.windows).order_by(db.windows.c.device))]
    return readings, windows


def _fresh(engine) -> None:
    with engine.begin() as conn:
        for t in (db.readings, db.windows, db.dead_letters):
            conn.execute(t.delete())


def _events(values: list[float], *, iso: bool) -> list[RawEvent]:
    """One event per value, 1 s apart in one window; ``iso`` sends ISO timestamps (the general validation path),
    otherwise epoch-ms integers (the fast path for known ids)."""
    out = []
    for i, v in enumerate(values):
        ts = T0 + 1000 * (i + 1)
        body = {"device": "d-z", "sensor": "temp", "value": v,
                "ts": pd.Timestamp(ts, unit="ms", tz="UTC").isoformat() if iso else ts}
        out.append(RawEvent(body=json.dumps(body).encode(), partition="0"))
    return out


def test_negative_zero_is_stored_as_zero_whatever_the_order(engine):
    results = []
    for iso in (True, False):  # the second round takes the fast path: the ids are known by then
        for values in ([0.0, -0.0], [-0.0, 0.0], [-0.0, -0.0]):
            _fresh(engine)
            ingest_events(engine, _events(values, iso=iso), source="t", window_ms=W_MS)
            results.append(_signs(engine))
    assert all(r == results[0] for r in results), results
    readings, windows = results[0]
    assert [v for *_, v in readings] == [(0.0, 1.0), (0.0, 1.0)]
    assert windows == [("d-z", T0 + W_MS, 2, (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0))]


def test_files_normalise_negative_zero():
    decoded = decode_records([{"device": "d", "sensor": "s", "ts": T0, "value": -0.0},
                              {"device": "d", "sensor": "s", "ts": T0 + 1, "value": -0}])
    assert [math.copysign(1.0, v) for v in decoded.value] == [1.0, 1.0]
