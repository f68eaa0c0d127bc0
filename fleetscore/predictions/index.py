"""Index prediction files: anomalies, alerts and run completion, once per (blob name, ETag).

:func:`index_prediction_file` is what the blob trigger (Event Grid source), `fleetscore run` and the local host
call for each `predictions/<run_id>/part-NNNNN.parquet`. For one file, in one transaction:

1. `prediction_files` row keyed by blob name: the same ETag already indexed → "unchanged", nothing written; a
   newer ETag replaces the file's rows (its anomalies are deleted first).
2. A file that is not readable Parquet with the prediction columns is recorded with status "error", its error
   text and attempts + 1; after POISON_BLOB_THRESHOLD attempts of one ETag its status is "poison" and that ETag
   is not processed again (as the Functions host's poisonBlobThreshold). Such a file never raises.
3. Anomalous scored windows are upserted into `anomalies` (key device, sensor, window_end; the latest file
   wins); per-file counts (rows, anomalies, failures = rows with status error, windows_no_model) are kept.
4. Alerts by episode (:mod:`fleetscore.alerts.store`).
5. Run completion: when every partition of the run manifest (`data/<run_id>/manifest.json`) has a final
   `prediction_files` row (indexed, error or poison), the run — if not terminal yet — becomes succeeded, or
   partial when a partition had failed windows or was unreadable; counts are aggregated onto the run and the
   scoring watermark advances to the run's `window_until`. A conditional update makes it happen once however
   many indexers race. A file of an unknown run (no run row or no manifest) is indexed and logged as such.

After the commit: the JSON of each new or changed alert is written to `alerts/…`, and, with ALERT_WEBHOOK_URL
set, pending alert revisions are POSTed (:mod:`fleetscore.alerts.webhook`).

Only transient database errors are raised (so the Functions host retries); everything else is recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import clock, db
from fleetscore.alerts import store as alerts_mod
from fleetscore.alerts.webhook import deliver_pending
from fleetscore.runs.manifest import RunManifest, read_manifest
from fleetscore.settings import Settings
from fleetscore.storage.base import BlobNotFound
from fleetscore.storage.paths import is_prediction_file, prediction_key, predictions_prefix, run_id_of
from scoring_job.contract import PREDICTION_REQUIRED_COLUMNS, WINDOW_STATUSES

log = logging.getLogger("fleetscore.predictions.index")

FINAL_FILE_STATUSES = ("indexed", "error", "poison")
MAX_FAILURE_DETAIL = 50
"""Entries of {"device/sensor": reason} kept per file and per run."""
MAX_ERROR_CHARS = 2000
LENGTHS = {"device": 64, "sensor": 64, "model_version": 80, "run_id": 40}


class PredictionFileError(ValueError):
    """The bytes are not a prediction file (not Parquet, truncated, wrong columns or values)."""


@dataclass
class IndexResult:
    name: str
    status: str
    """indexed | unchanged | error | poison | ignored (not a prediction file name)"""
    rows: int = 0
    anomalies: int = 0
    alerts_changed: int = 0
    run_id: str | None = None
    run_completed: bool = False
    error: str | None = None
    run_status: str | None = None
    """The run's new status when this file completed it."""
    delivered: int = 0
    delivery_failed: int = 0


# ------------------------------------------------------------------------------------------ pure parts
def normalize_etag(etag: str) -> str:
    """ETags quoted as the blob store shows them (the trigger's blob properties may give them bare)."""
    etag = str(etag).strip()
    return etag if etag.startswith(('"', "W/")) else f'"{etag}"'


def content_etag(data: bytes) -> str:
    """A stand-in ETag from the content, for callers that hand over bytes without one."""
    return '"sha256-' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _strings(column: pd.Series, name: str, *, nullable: bool) -> pd.Series:
    if not nullable and column.isna().any():
        raise PredictionFileError(f"column {name!r} has nulls")
    out = column.astype(object).where(column.notna(), None)
    out = out.map(lambda v: v if v is None else str(v))
    limit = LENGTHS.get(name)
    if limit is not None and out.map(lambda v: v is not None and not 1 <= len(v) <= limit).any():
        raise PredictionFileError(f"column {name!r} has values that are empty or longer than {limit} characters")
    return out


def read_predictions(data: bytes) -> pd.DataFrame:
    """Parse a prediction file into a DataFrame with window_end as int64 epoch ms; raises PredictionFileError."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # ArrowInvalid, OSError, ... for truncated or non-Parquet bytes
        raise PredictionFileError(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from None
    missing = [c for c in PREDICTION_REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PredictionFileError(f"missing column(s) {missing} (has {table.column_names[:20]})")
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns[name] = col
    we = columns["window_end"]
    try:
        if pa.types.is_timestamp(we.type):
            if we.type.tz is None:
                raise PredictionFileError("column 'window_end' is a timestamp without a time zone (want UTC)")
            ms = we.cast(pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64())
        elif pa.types.is_integer(we.type):
            ms = we.cast(pa.int64())
        else:
            raise PredictionFileError(f"column 'window_end' has type {we.type}, want timestamp[ms, UTC]")
        if ms.null_count:
            raise PredictionFileError("column 'window_end' has nulls")
        window_end = np.asarray(ms.to_numpy(), dtype=np.int64)
        score = np.asarray(columns["score"].cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        is_anomaly = columns["is_anomaly"]
        if not pa.types.is_boolean(is_anomaly.type):
            raise PredictionFileError(f"column 'is_anomaly' has type {is_anomaly.type}, want bool")
        is_anomaly = np.asarray(is_anomaly.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    except PredictionFileError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise PredictionFileError(f"bad column values: {type(exc).__name__}: {exc}") from None
    frame = pd.DataFrame({"window_end": window_end, "score": score, "is_anomaly": is_anomaly})
    for name in ("device", "sensor", "model_version", "run_id", "status", "error"):
        values = columns[name].to_pandas() if name in columns else pd.Series([None] * len(frame), dtype=object)
        frame[name] = _strings(values.reset_index(drop=True), name,
                               nullable=name in ("model_version", "run_id", "error")).to_numpy()
    bad = sorted(set(frame["status"]) - set(WINDOW_STATUSES))
    if bad:
        raise PredictionFileError(f"column 'status' has unknown values {bad[:5]} (want {list(WINDOW_STATUSES)})")
    return frame


def file_counts(frame: pd.DataFrame) -> dict[str, int]:
    """rows, anomalies (anomalous scored windows), failures (status error), windows_no_model."""
    status = frame["status"]
    return {
        "rows": len(frame),
        "anomalies": int(anomalous(frame).sum()),
        "failures": int((status == "error").sum()),
        "windows_no_model": int((status == "no_model").sum()),
    }


def anomalous(frame: pd.DataFrame) -> pd.Series:
    return (frame["status"] == "ok") & frame["is_anomaly"] & np.isfinite(frame["score"])


def failure_detail(frame: pd.DataFrame, limit: int = MAX_FAILURE_DETAIL) -> dict[str, str]:
    """{"device/sensor": reason} of the file's failed windows (first reason per pair, at most `limit` pairs)."""
    failed = frame.loc[frame["status"] == "error", ["device", "sensor", "error"]]
    failed = failed.drop_duplicates(["device", "sensor"]).head(limit)
    return {f"{d}/{s}": (e or "error")[:200] for d, s, e in zip(failed["device"], failed["sensor"], failed["error"],
                                                                  strict=True)}


def merge_details(details: list[dict[str, str]], limit: int = MAX_FAILURE_DETAIL) -> dict[str, str]:
    merged: dict[str, str] = {}
    more = 0
    for detail in details:
        for k, v in detail.items():
            if len(merged) < limit:
                merged[k] = v
            else:
                more += 1
    if more:
        merged["…"] = f"{more} more"
    return merged


# ------------------------------------------------------------------------------------------------ SQL
def _file_row(conn: Connection, key: str, *, lock: bool = False) -> dict[str, Any] | None:
    pf = db.prediction_files
    q = sa.select(pf).where(pf.c.name == key)
    if lock:
        q = q.with_for_update()
    row = conn.execute(q).mappings().first()
    return dict(row) if row is not None else None


def _lock(conn: Connection, key: str, run_id: str | None) -> None:
    """Serialise indexers that touch the same file or run: the first statement is a (no-op) write, so SQLite
    takes its write lock before anything is read; PostgreSQL and SQL Server lock the file's and the run's rows."""
    pf, r = db.prediction_files, db.runs
    conn.execute(pf.update().where(pf.c.name == key).values(attempts=pf.c.attempts))
    if run_id is not None:  # a no-op UPDATE locks the run's row on every dialect (SQL Server ignores FOR UPDATE)
        conn.execute(r.update().where(r.c.run_id == run_id).values(attempt=r.c.attempt))


def _write_file_row(conn: Connection, key: str, existing: dict[str, Any] | None, values: dict[str, Any]) -> None:
    pf = db.prediction_files
    if existing is None:
        conn.execute(pf.insert().values(name=key, **values))
    else:
        conn.execute(pf.update().where(pf.c.name == key).values(**values))


def _store_anomalies(conn: Connection, key: str, frame: pd.DataFrame, *, replace_file: bool) -> None:
    an = db.anomalies
    if replace_file:
        conn.execute(an.delete().where(an.c.file_name == key))
    hot = frame.loc[anomalous(frame), ["device", "sensor", "window_end", "score", "model_version", "run_id"]]
    hot = hot.drop_duplicates(["device", "sensor", "window_end"], keep="last")
    if hot.empty:
        return
    rows = [{"device": d, "sensor": s, "window_end": int(w), "score": float(sc), "model_version": mv, "run_id": rid,
             "file_name": key}
            for d, s, w, sc, mv, rid in zip(hot["device"], hot["sensor"], hot["window_end"], hot["score"],
                                            hot["model_version"], hot["run_id"], strict=True)]
    conn.execute(an.delete().where(an.c.device == sa.bindparam("b_device"), an.c.sensor == sa.bindparam("b_sensor"),
                                   an.c.window_end == sa.bindparam("b_window_end")),
                 [{"b_device": r["device"], "b_sensor": r["sensor"], "b_window_end": r["window_end"]} for r in rows])
    conn.execute(an.insert(), rows)


def _run_active(engine: Engine, run_id: str) -> bool:
    with engine.connect() as conn:
        status = conn.execute(sa.select(db.runs.c.status).where(db.runs.c.run_id == run_id)).scalar()
    return status in db.RUN_ACTIVE


def complete_run(conn: Connection, run_id: str, manifest: RunManifest, *, now: int) -> str | None:
    """Complete the run if every partition of its manifest has a final prediction_files row and the run is not
    terminal; returns the new status (succeeded | partial) or None. Advances the watermark on completion."""
    r, pf = db.runs, db.prediction_files
    run = conn.execute(sa.select(r.c.status, r.c.window_until, r.c.claimed_at).where(r.c.run_id == run_id)).first()
    if run is None or run.status in db.RUN_TERMINAL:
        return None
    if not manifest.partitions:
        return None
    keys = {f"{predictions_prefix(run_id)}/{p.name}": p for p in manifest.partitions}
    rows: list[Any] = []
    names = sorted(keys)
    for chunk in db.chunks(names):
        rows.extend(conn.execute(sa.select(pf).where(pf.c.name.in_(chunk))).mappings())
    # a retried run (claimed again) counts only files indexed since its new claim
    if len(rows) < len(keys) or any(row["status"] not in FINAL_FILE_STATUSES or row["indexed_at"] < run.claimed_at
                                    for row in rows):
        return None
    windows = no_model = failures = 0
    details: list[dict[str, str]] = []
    bad_files = 0
    for row in sorted(rows, key=lambda x: x["name"]):
        if row["status"] == "indexed":
            windows += row["rows"] or 0
            no_model += row["windows_no_model"] or 0
            failures += row["failures"] or 0
            if row["failures"] and row["error"]:
                try:
                    details.append(json.loads(row["error"]))
                except ValueError:
                    details.append({row["name"]: row["error"][:200]})
        else:
            bad_files += 1
            failures += keys[row["name"]].windows or 1
            details.append({f"file/{row['name'].rsplit('/', 1)[-1]}": (row["error"] or row["status"])[:200]})
    status = "partial" if failures or bad_files else "succeeded"
    values: dict[str, Any] = {"status": status, "windows": windows, "windows_no_model": no_model,
                              "failures": failures, "finished_at": now,
                              "failure_detail": json.dumps(merge_details(details))[:4000] if details else None}
    if bad_files:
        values["error"] = f"{bad_files} prediction file(s) unreadable"
    done = conn.execute(r.update().where(r.c.run_id == run_id, r.c.status.in_(db.RUN_ACTIVE)).values(**values))
    if done.rowcount != 1:
        return None
    db.advance_watermark(conn, manifest.window_until, now)
    return status


# ------------------------------------------------------------------------------------------ entry point
def index_prediction_file(engine: Engine, store: Any, settings: Settings, name: str, *, data: bytes | None = None,
                          etag: str | None = None, deliver: bool = True, session: Any = None) -> IndexResult:
    """Index one prediction file (see the module doc). `data`/`etag` come from the trigger when it has them;
    otherwise the blob is read from the store. `session`: a requests.Session for the webhook."""
    key = prediction_key(name)
    run_id = run_id_of(key)
    result = IndexResult(name=key, status="error", run_id=run_id)
    if not is_prediction_file(key):  # a writer's hidden temp file (score.py writes .part-*.tmp, then renames)
        result.status = "ignored"
        log.info("index %s: not a prediction file name (hidden or not .parquet); ignored", key)
        return result
    if data is None:
        try:
            data, info = store.get_with_info(key)
        except (BlobNotFound, ValueError) as exc:  # gone since its event, or not a valid blob name
            result.error = "blob not found" if isinstance(exc, BlobNotFound) else str(exc)
            log.warning("index %s: %s", key, result.error)
            return result
        etag = etag or info.etag
    etag = normalize_etag(etag) if etag else content_etag(data)

    with engine.connect() as conn:
        existing = _file_row(conn, key)
    if existing is not None and existing["etag"] == etag and existing["status"] in ("indexed", "poison"):
        result.status = "unchanged" if existing["status"] == "indexed" else "poison"
        result.rows, result.anomalies = existing["rows"] or 0, existing["anomalies"] or 0
        result.error = existing["error"] if existing["status"] == "poison" else None
        changed: list[dict[str, Any]] = []
        if run_id is not None and _run_active(engine, run_id):
            # indexed before its run's manifest existed (a watcher faster than the export): complete now
            manifest = read_manifest(store, run_id)
            if manifest is not None:
                with engine.begin() as conn:
                    _lock(conn, key, run_id)
                    changed = _complete_if_done(conn, run_id, manifest, settings, result, clock.now_ms())
        return _after_commit(engine, store, settings, result, changed, deliver=deliver, session=session)

    frame: pd.DataFrame | None = None
    try:
        frame = read_predictions(data)
        if run_id is None:
            ids = frame["run_id"].dropna().unique()
            run_id = result.run_id = str(ids[0]) if len(ids) == 1 else None
    except PredictionFileError as exc:
        result.error = str(exc)[:MAX_ERROR_CHARS]
    manifest = read_manifest(store, run_id) if run_id is not None else None
    severity_of = alerts_mod.severity_lookup(store, frame["model_version"].unique()) if frame is not None else None

    try:
        with engine.begin() as conn:
            changed = _index_in_transaction(conn, key, etag, run_id, frame, manifest, severity_of, settings, result)
    except Exception as exc:
        if db.is_transient(exc) or frame is None:
            raise
        log.exception("index %s: could not store its rows", key)  # e.g. values the database refuses
        result = IndexResult(name=key, status="error", run_id=run_id,
                             error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        with engine.begin() as conn:
            changed = _index_in_transaction(conn, key, etag, run_id, None, manifest, None, settings, result)
    return _after_commit(engine, store, settings, result, changed, deliver=deliver, session=session)


def _index_in_transaction(conn: Connection, key: str, etag: str, run_id: str | None, frame: pd.DataFrame | None,
                          manifest: RunManifest | None, severity_of: Any, settings: Settings,
                          result: IndexResult) -> list[dict[str, Any]]:
    now = clock.now_ms()
    _lock(conn, key, run_id)
    existing = _file_row(conn, key, lock=True)
    same = existing is not None and existing["etag"] == etag
    if same and existing["status"] in ("indexed", "poison"):  # another indexer got there first
        result.status = "unchanged" if existing["status"] == "indexed" else "poison"
        result.error = None if result.status == "unchanged" else existing["error"]
        return []
    attempts = (existing["attempts"] if same else 0) + 1
    changed: list[dict[str, Any]] = []
    if frame is None:
        status = "poison" if attempts >= settings.poison_blob_threshold else "error"
        _write_file_row(conn, key, existing, {"etag": etag, "run_id": run_id, "status": status, "attempts": attempts,
                                              "rows": None, "anomalies": None, "failures": None,
                                              "windows_no_model": None, "error": result.error, "indexed_at": now})
        result.status = status
        log.warning("index %s: %s (attempt %d of %d)%s", key, result.error, attempts, settings.poison_blob_threshold,
                    "; poisoned, not processed again" if status == "poison" else "")
    else:
        counts = file_counts(frame)
        detail = failure_detail(frame)
        _write_file_row(conn, key, existing, {
            "etag": etag, "run_id": run_id, "status": "indexed", "attempts": attempts, **counts,
            "error": json.dumps(detail) if detail else None, "indexed_at": now})
        _store_anomalies(conn, key, frame, replace_file=existing is not None)
        scored = frame.loc[(frame["status"] == "ok") & np.isfinite(frame["score"]),
                           ["device", "sensor", "window_end", "score", "is_anomaly", "model_version", "run_id"]]
        update = alerts_mod.apply_file(conn, scored, window_ms=settings.window_ms,
                                       min_windows=settings.alert_min_windows,
                                       close_after=settings.alert_close_after_windows, severity_of=severity_of,
                                       now=now)
        changed = update.visible
        result.status, result.error = "indexed", None
        result.rows, result.anomalies = counts["rows"], counts["anomalies"]
    if run_id is not None and manifest is not None:
        changed += _complete_if_done(conn, run_id, manifest, settings, result, now)
    elif result.status == "indexed":
        log.info("index %s: file of an unknown run %s (no %s); indexed without run bookkeeping", key, run_id,
                 "run id" if run_id is None else "manifest")
    result.alerts_changed = len(changed)
    return changed


def _complete_if_done(conn: Connection, run_id: str, manifest: RunManifest, settings: Settings,
                      result: IndexResult, now: int) -> list[dict[str, Any]]:
    """Complete the run when this was its last partition; on success close alerts its windows ended."""
    run_status = complete_run(conn, run_id, manifest, now=now)
    if run_status is None:
        return []
    result.run_completed, result.run_status = True, run_status
    log.info("run %s %s: every partition is indexed", run_id, run_status)
    if run_status != "succeeded":
        return []
    return alerts_mod.apply_stale(conn, until=manifest.window_until, window_ms=settings.window_ms,
                                  close_after=settings.alert_close_after_windows, now=now).visible


def _after_commit(engine: Engine, store: Any, settings: Settings, result: IndexResult,
                  changed: list[dict[str, Any]], *, deliver: bool, session: Any) -> IndexResult:
    if changed:
        alerts_mod.write_blobs(store, changed)
    if deliver and settings.alert_webhook_url is not None:
        try:
            result.delivered, result.delivery_failed = _deliver(engine, settings, session)
        except Exception as exc:  # delivery state stays pending in SQL; the next file or `redeliver` retries
            if db.is_transient(exc):
                log.warning("webhook delivery skipped: database busy (%s)", type(exc).__name__)
            else:
                log.exception("webhook delivery failed")
    if result.status == "indexed":
        log.info("indexed %s: %d rows, %d anomalies, %d alert(s) changed%s", result.name, result.rows,
                 result.anomalies, result.alerts_changed,
                 f"; run {result.run_id} {result.run_status}" if result.run_completed else "")
    return result


def _deliver(engine: Engine, settings: Settings, session: Any) -> tuple[int, int]:
    return deliver_pending(engine, settings, session=session)
