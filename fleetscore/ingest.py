"""Ingest: store a batch of readings and recompute the windows it touches, in one transaction.

What an Azure Stream Analytics job would do in front of SQL, but idempotent: a batch delivered twice,
in any order or split differently leaves the same `readings` and `windows` rows, because windows are
recomputed from the stored readings rather than incremented.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import db
from fleetscore.readings import DeadLetter, Decoded, RawEvent, decode_events
from fleetscore.windows import WINDOW_COLUMNS, aggregate, window_end

log = logging.getLogger(__name__)
KEY = ["device", "sensor", "ts"]
WINDOW_KEY = ["device", "sensor", "window_end"]
IN_CHUNK = 900
"""Ids per `IN (...)` list: below SQL Server's 2,100 parameters per statement with room to spare."""


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

    def __iadd__(self, other: IngestResult) -> IngestResult:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)
        return self


def split_batch(batch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Within one batch: (first occurrence of each key, exact repeats, conflicting repeats).

    A repeat is exact when it carries the first occurrence's value; otherwise it conflicts.
    """
    repeated = batch.duplicated(subset=KEY, keep="first")
    firsts = batch[~repeated]
    repeats = batch[repeated]
    if repeats.empty:
        return firsts, repeats, repeats
    first_value = repeats.merge(firsts[KEY + ["value"]], on=KEY, how="left", suffixes=("", "_first"))
    same = (first_value["value"].to_numpy() == first_value["value_first"].to_numpy())
    return firsts, repeats[same], repeats[~same]


def _chunks(items: Sequence, size: int = IN_CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _time_clusters(window_ends: np.ndarray, window_ms: int, max_gap_windows: int = 12) -> list[tuple[int, int]]:
    """Group sorted distinct window ends into (lo, hi) runs so one range query serves each run."""
    ends = np.unique(window_ends)
    breaks = np.flatnonzero(np.diff(ends) > max_gap_windows * window_ms)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [len(ends) - 1]])
    return [(int(ends[a]), int(ends[b])) for a, b in zip(starts, stops, strict=True)]


def fetch_window_readings(conn: Connection, touched: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Stored readings (device, sensor, ts, value) of every touched (device, sensor, window_end)."""
    t = db.readings
    parts = []
    for lo, hi in _time_clusters(touched["window_end"].to_numpy(), window_ms):
        in_run = touched[(touched["window_end"] >= lo) & (touched["window_end"] <= hi)]
        devices = sorted(in_run["device"].unique())
        sensors = sorted(in_run["sensor"].unique())
        for dev_chunk in _chunks(devices):
            query = (sa.select(t.c.device, t.c.sensor, t.c.ts, t.c.value)
                     .where(t.c.device.in_(dev_chunk))
                     .where(t.c.ts > lo - window_ms, t.c.ts <= hi))
            if len(sensors) <= IN_CHUNK:
                query = query.where(t.c.sensor.in_(sensors))
            rows = conn.execute(query).all()
            if rows:
                parts.append(pd.DataFrame(rows, columns=["device", "sensor", "ts", "value"]))
    if not parts:
        return pd.DataFrame({"device": pd.Series(dtype=object), "sensor": pd.Series(dtype=object),
                             "ts": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
    stored = pd.concat(parts, ignore_index=True)
    stored["ts"] = stored["ts"].astype(np.int64)
    stored["window_end"] = window_end(stored["ts"].to_numpy(), window_ms)
    keep = stored.merge(touched[WINDOW_KEY], on=WINDOW_KEY, how="inner")
    return keep[["device", "sensor", "ts", "value"]]


def read_watermark(conn: Connection, name: str = db.SCORING_WATERMARK) -> int | None:
    """The newest scored window end (epoch ms), or None before the first run."""
    return conn.execute(sa.select(db.watermarks.c.value).where(db.watermarks.c.name == name)).scalar()


def dead_letter_rows(dead: Sequence[DeadLetter], source: str, received_at: int) -> list[dict]:
    return [dict(received_at=received_at, source=source, partition=d.partition,
                 sequence_number=d.sequence_number, offset=d.offset, enqueued_time=d.enqueued_time_ms,
                 payload=d.payload, reason=d.reason, detail=d.detail) for d in dead]


def _conflict_letters(rows: pd.DataFrame, events: Sequence[RawEvent] | None, why: str) -> list[DeadLetter]:
    letters = []
    for row in rows.itertuples(index=False):
        event = events[row.event_index] if events is not None else None
        letters.append(DeadLetter(
            payload=row.payload or f'{{"device":"{row.device}","sensor":"{row.sensor}","ts":{row.ts},'
                                   f'"value":{row.value!r}}}',
            reason="conflict", detail=why,
            partition=event.partition if event else None,
            sequence_number=event.sequence_number if event else None,
            offset=event.offset if event else None,
            enqueued_time_ms=event.enqueued_time_ms if event else None))
    return letters


def store_batch(conn: Connection, decoded: Decoded, *, source: str, window_ms: int,
                events: Sequence[RawEvent] | None = None) -> IngestResult:
    """Store one decoded batch inside the caller's transaction; returns its counts."""
    now = db.now_ms()
    batch = decoded.frame()
    result = IngestResult(received=len(batch) + len(decoded.dead))
    dead = list(decoded.dead)

    firsts, repeats, conflicts = split_batch(batch)
    result.duplicates += len(repeats)
    dead += _conflict_letters(conflicts, events, "the same key appears in this batch with another value")

    if not firsts.empty:
        firsts = firsts.assign(window_end=window_end(firsts["ts"].to_numpy(), window_ms))
        touched = firsts[WINDOW_KEY].drop_duplicates()
        stored = fetch_window_readings(conn, touched, window_ms)
        matched = firsts.merge(stored, on=KEY, how="left", suffixes=("", "_stored"), indicator=True)
        known = (matched["_merge"] == "both").to_numpy()
        same = known & (matched["value"].to_numpy() == matched["value_stored"].to_numpy())
        result.duplicates += int(same.sum())
        dead += _conflict_letters(matched[known & ~same], events, "this key is stored with another value")
        new = matched[~known].drop(columns=["value_stored", "_merge"])

        if not new.empty:
            watermark = read_watermark(conn)
            late = (new["window_end"].to_numpy() <= watermark) if watermark is not None \
                else np.zeros(len(new), dtype=bool)
            result.late = int(late.sum())
            conn.execute(db.readings.insert(), [
                {"device": d, "sensor": s, "ts": int(t), "value": float(v), "ingested_at": now, "late": bool(x)}
                for d, s, t, v, x in zip(new["device"], new["sensor"], new["ts"], new["value"], late,
                                         strict=True)])
            result.stored = len(new)
            fresh = new[WINDOW_KEY].drop_duplicates()
            in_fresh = stored.assign(window_end=window_end(stored["ts"].to_numpy(), window_ms)).merge(
                fresh, on=WINDOW_KEY, how="inner")
            windows = aggregate(pd.concat([in_fresh[["device", "sensor", "ts", "value"]],
                                           new[["device", "sensor", "ts", "value"]]], ignore_index=True),
                                window_ms)
            replace_windows(conn, windows, now)
            result.windows = len(windows)

    if dead:
        conn.execute(db.dead_letters.insert(), dead_letter_rows(dead, source, now))
    result.dead_lettered = len(dead)
    return result


def replace_windows(conn: Connection, windows: pd.DataFrame, updated_at: int) -> None:
    """Write window rows (device, sensor, window_end, n, sum, sumsq, min, max), replacing any stored."""
    t = db.windows
    keys = [{"d": d, "s": s, "w": int(w)} for d, s, w in
            zip(windows["device"], windows["sensor"], windows["window_end"], strict=True)]
    conn.execute(t.delete().where(t.c.device == sa.bindparam("d"), t.c.sensor == sa.bindparam("s"),
                                  t.c.window_end == sa.bindparam("w")), keys)
    conn.execute(t.insert(), [
        {"device": d, "sensor": s, "window_end": int(w), "n": int(n), "sum": float(a), "sumsq": float(q),
         "min": float(lo), "max": float(hi), "updated_at": updated_at}
        for d, s, w, n, a, q, lo, hi in zip(*(windows[c] for c in WINDOW_COLUMNS), strict=True)])


def ingest_events(engine: Engine, events: Sequence[RawEvent], *, source: str, window_ms: int) -> IngestResult:
    """The ingest function's core: decode, store and window one delivered batch, all or nothing.

    Transient database errors raise `TransientIngestError` (the host retries the batch). Any other
    error dead-letters the whole batch with reason `ingest_error` so nothing is lost silently.
    """
    decoded = decode_events(events)
    try:
        with engine.begin() as conn:
            return store_batch(conn, decoded, source=source, window_ms=window_ms, events=events)
    except Exception as exc:
        if db.is_transient(exc):
            raise TransientIngestError(f"transient database error, batch will be redelivered: "
                                       f"{type(exc).__name__}") from exc
        log.exception("ingest failed for a batch of %d events; dead-lettering it", len(events))
        letters = [DeadLetter(payload=e.body.decode("utf-8", errors="backslashreplace"), reason="ingest_error",
                              detail=f"{type(exc).__name__}: {exc}"[:1000], partition=e.partition,
                              sequence_number=e.sequence_number, offset=e.offset,
                              enqueued_time_ms=e.enqueued_time_ms) for e in events]
        try:
            with engine.begin() as conn:
                conn.execute(db.dead_letters.insert(), dead_letter_rows(letters, source, db.now_ms()))
        except Exception as exc2:
            if db.is_transient(exc2):
                raise TransientIngestError("transient database error while dead-lettering") from exc2
            raise
        return IngestResult(received=len(decoded.ts) + len(decoded.dead), dead_lettered=len(letters))
