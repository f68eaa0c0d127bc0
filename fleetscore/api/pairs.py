"""`/api/pairs/{device}/{sensor}/windows?from&to`: what a chart of one pair needs, window by window.

Sources, newest wins where they overlap:

- the `windows` table: every window's readings (n, mean, min, max, std), whatever was scored;
- the prediction files of the runs whose range overlaps [from, to] (their `prediction_files` rows, read with a
  row filter on the pair): score, threshold, threshold_strong, is_anomaly, status, run_id — at most
  :data:`MAX_FILES` files, newest runs first; each window also gets its ``threshold_high``, the high bound the alert
  rules hold two windows in a row against (``episodes.high_bound``);
- the `anomalies` table: the score of every anomalous window, also where a file was not read;
- the `alerts` table: the pair's alert spans overlapping the range.

The range is at most :data:`MAX_SPAN_MS` long; without `from`/`to` it is the :data:`DEFAULT_SPAN_MS` before now.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from fleetscore import db
from fleetscore.alerts.documents import alert_state
from fleetscore.alerts.episodes import high_bound
from fleetscore.api import params
from fleetscore.api.core import ApiContext, ApiRequest, bad_request
from fleetscore.clock import iso_exact, now_ms

log = logging.getLogger("fleetscore.api")
DAY_MS = 86_400_000
DEFAULT_SPAN_MS = DAY_MS
MAX_SPAN_MS = 7 * DAY_MS
MAX_FILES = 400
"""Prediction files one request reads at most (whole devices per file: a pair's windows of a run are in one)."""
SCORE_COLUMNS = ("window_end", "score", "threshold", "threshold_strong", "is_anomaly", "status", "run_id")


def _range(request: ApiRequest) -> tuple[int, int]:
    to = params.time_ms("to", request.params.get("to"))
    frm = params.time_ms("from", request.params.get("from"))
    to = now_ms() if to is None else to
    frm = to - DEFAULT_SPAN_MS if frm is None else frm
    if frm > to:
        raise bad_request("from is after to")
    if to - frm > MAX_SPAN_MS:
        raise bad_request(f"from..to spans more than {MAX_SPAN_MS // DAY_MS} days: ask for a shorter range")
    return frm, to


def pair_windows(ctx: ApiContext, request: ApiRequest) -> dict[str, Any]:
    """The pair's windows in [from, to] with their scores and thresholds, and its alert spans."""
    device = params.pair_id("device", request.route.get("device"))
    sensor = params.pair_id("sensor", request.route.get("sensor"))
    frm, to = _range(request)
    notes: list[str] = []
    with ctx.engine.connect() as conn:
        rows = _window_rows(conn, device, sensor, frm, to)
        _merge_anomalies(rows, conn, device, sensor, frm, to)
        files = _files(conn, frm, to, notes)
        spans = _alert_spans(conn, device, sensor, frm, to)
    read = _merge_files(rows, ctx, files, device, sensor, frm, to, notes)
    return {"device": device, "sensor": sensor, "from": iso_exact(frm), "to": iso_exact(to),
            "window_minutes": ctx.settings.window_minutes,
            "windows": [_window_doc(end, rows[end]) for end in sorted(rows)],
            "alerts": spans, "prediction_files_read": read, "notes": notes}


def _blank() -> dict[str, Any]:
    return {"n": None, "mean": None, "min": None, "max": None, "std": None, "score": None, "threshold": None,
            "threshold_strong": None, "is_anomaly": None, "status": None, "run_id": None}


def _window_rows(conn: sa.Connection, device: str, sensor: str, frm: int, to: int) -> dict[int, dict[str, Any]]:
    w = db.windows.c
    q = sa.select(w.window_end, w.n, w.sum, w.sumsq, w.min, w.max).where(
        w.device == device, w.sensor == sensor, w.window_end >= frm, w.window_end <= to)
    rows: dict[int, dict[str, Any]] = {}
    for end, n, total, sumsq, lo, hi in conn.execute(q).all():
        mean = total / n if n else None
        var = (sumsq - n * mean * mean) / (n - 1) if n and n > 1 else 0.0
        rows[int(end)] = {**_blank(), "n": int(n), "mean": mean, "min": lo, "max": hi,
                          "std": math.sqrt(max(var, 0.0)) if n else None}
    return rows


def _merge_anomalies(rows: dict[int, dict[str, Any]], conn: sa.Connection, device: str, sensor: str, frm: int,
                     to: int) -> None:
    an = db.anomalies.c
    q = sa.select(an.window_end, an.score, an.run_id).where(
        an.device == device, an.sensor == sensor, an.window_end >= frm, an.window_end <= to)
    for end, score, run_id in conn.execute(q).all():
        row = rows.setdefault(int(end), _blank())
        row.update(score=score, is_anomaly=True, status="ok", run_id=run_id)


def _files(conn: sa.Connection, frm: int, to: int, notes: list[str]) -> list[str]:
    """Indexed prediction files of the runs whose (window_from, window_until] overlaps [frm, to], newest run
    first, at most MAX_FILES (a note says when more were left)."""
    r, f = db.runs.c, db.prediction_files.c
    q = (sa.select(f.name).join_from(db.prediction_files, db.runs, f.run_id == r.run_id)
         .where(f.status == "indexed", r.window_until >= frm, r.window_from < to)
         .order_by(r.slot.desc(), f.name).limit(MAX_FILES + 1))
    names = [n for (n,) in conn.execute(q).all()]
    if len(names) > MAX_FILES:
        notes.append(f"more than {MAX_FILES} prediction files in the range: older runs' scores come from the "
                     f"anomalies table only")
    return names[:MAX_FILES][::-1]  # oldest first: a re-run's file, read later, wins


def _merge_files(rows: dict[int, dict[str, Any]], ctx: ApiContext, files: list[str], device: str, sensor: str,
                 frm: int, to: int, notes: list[str]) -> int:
    read = 0
    for name in files:
        try:
            table = pq.read_table(io.BytesIO(ctx.store.get(name)), filters=[("device", "=", device),
                                                                          ("sensor", "=", sensor)])
        except Exception as exc:  # a missing or unreadable file: the anomalies table still has its anomalies
            notes.append(f"could not read {name}: {type(exc).__name__}")
            log.warning("api: could not read %s: %s", name, exc)
            continue
        read += 1
        if table.num_rows:
            _merge_table(rows, table, frm, to)
    return read


def _merge_table(rows: dict[int, dict[str, Any]], table: Any, frm: int, to: int) -> None:
    names = [c for c in SCORE_COLUMNS if c in table.column_names]
    ends = table["window_end"]
    if pa.types.is_timestamp(ends.type):
        ends = ends.cast(pa.timestamp("ms", tz=ends.type.tz))
    columns = {name: table[name].to_pylist() for name in names if name != "window_end"}
    for i, end in enumerate(ends.cast(pa.int64()).to_pylist()):
        if end is None or not frm <= end <= to:
            continue
        row = rows.setdefault(int(end), _blank())
        row.update({name: values[i] for name, values in columns.items()})


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _high(threshold: float | None, strong: float | None) -> float | None:
    """The window's high bound (``episodes.high_bound``); None without both thresholds (never high)."""
    if threshold is None or strong is None:
        return None
    return _number(high_bound(np.array([threshold]), np.array([strong]))[0])


def _window_doc(end: int, row: dict[str, Any]) -> dict[str, Any]:
    doc = {"window_end": iso_exact(end)}
    for name in ("mean", "min", "max", "std", "score", "threshold", "threshold_strong"):
        doc[name] = _number(row[name])
    doc["threshold_high"] = _high(doc["threshold"], doc["threshold_strong"])
    doc.update(n=row["n"], is_anomaly=None if row["is_anomaly"] is None else bool(row["is_anomaly"]),
               status=row["status"], run_id=row["run_id"])
    return doc


def _alert_spans(conn: sa.Connection, device: str, sensor: str, frm: int, to: int) -> list[dict[str, Any]]:
    a = db.alerts.c
    q = sa.select(db.alerts).where(a.device == device, a.sensor == sensor, a.last_window_end >= frm,
                                   a.first_window_end <= to).order_by(a.first_window_end, a.alert_id)
    return [{"alert_id": r["alert_id"], "state": alert_state(r), "severity": r["severity"],
             "first_window_end": iso_exact(r["first_window_end"]), "last_window_end": iso_exact(r["last_window_end"]),
             "max_score": _number(r["max_score"])} for r in conn.execute(q).mappings().all()]
