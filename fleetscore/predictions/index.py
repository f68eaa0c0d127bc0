"""Index prediction files: anomalies, alerts and run completion, once per (blob name, ETag).

:func:`index_prediction_file` is what the blob trigger (Event Grid source), `fleetscore run` and the local host
call for each `predictions/<run_id>/part-NNNNN.parquet`. For one file, in one transaction:

1. `prediction_files` row keyed by blob name: the same ETag already indexed → "unchanged", nothing written; a
   newer ETag replaces the file's rows (its anomalies are deleted first).
2. A file that is not readable Parquet with the prediction columns (:mod:`fleetscore.predictions.files`) is
   recorded with status "error", its error text and attempts + 1; after POISON_BLOB_THRESHOLD attempts of one
   ETag its status is "poison" and that ETag is not processed again (as the Functions host's
   poisonBlobThreshold). Such a file never raises.
3. Anomalous scored windows are upserted into `anomalies` (key device, sensor, window_end; the latest file
   wins); per-file counts (rows, anomalies, failures = rows with status error, windows_no_model) are kept.
4. Alerts by episode (:mod:`fleetscore.alerts.store`, severity from :mod:`fleetscore.alerts.severity`).
5. Run completion (:mod:`fleetscore.predictions.completion`). A file of an unknown run (no run row or no
   manifest) is indexed and logged as such.

After the commit, from the alert outbox (:mod:`fleetscore.alerts.outbox`): the JSON documents of the alerts
this file changed are written to `alerts/…`, then a bounded number of documents still pending from earlier
(a crash between an earlier commit and its writes). Webhook deliveries are not made here, so a consumer's
endpoint never holds up indexing: the timer function `alert_outbox` sends them.

Only transient database errors are raised (so the Functions host retries); everything else is recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleetscore import clock, db, telemetry
from fleetscore.alerts import outbox
from fleetscore.alerts import store as alert_store
from fleetscore.alerts.episodes import Persistence
from fleetscore.alerts.severity import SeverityOf, severity_lookup
from fleetscore.predictions.completion import complete_if_done
from fleetscore.predictions.files import (
    PredictionFileError,
    anomalous,
    content_etag,
    failure_detail,
    file_counts,
    normalize_etag,
    read_predictions,
    scored,
)
from fleetscore.runs.manifest import RunManifest, read_manifest
from fleetscore.settings import Settings
from fleetscore.storage.base import BlobNotFound, BlobStore
from fleetscore.storage.paths import is_prediction_file, prediction_key, run_id_of

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
DONE_FILE_STATUSES = ("indexed", "poison")
"""A file row with one of these and the same ETag is not processed again."""
Alert = dict[str, Any]


@dataclass
class IndexResult:
    """What indexing one file did."""

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
    documents: int = 0
    """Alert documents written after the commit (this file's and earlier pending ones)."""


@dataclass(frozen=True)
class _Blob:
    key: str
    etag: str
    data: bytes


# ------------------------------------------------------------------------------------------ entry point
def index_prediction_file(engine: Engine, store: BlobStore, settings: Settings, name: str, *,
                          data: bytes | None = None, etag: str | None = None) -> IndexResult:
    """Index one prediction file (see the module doc). `data`/`etag` come from the trigger when it has them;
    otherwise the blob is read from the store. Traced as a span of its run's trace (:mod:`fleetscore.telemetry`)."""
    key = prediction_key(name)
    with telemetry.index_span(key, run_id_of(key), lambda: _traceparent(engine, run_id_of(key))):
        return _index_file(engine, store, settings, key, data, etag)


def _traceparent(engine: Engine, run_id: str | None) -> str | None:
    """The run's stored trace context (None: unknown run, or a run from before tracing)."""
    if run_id is None:
        return None
    with engine.connect() as conn:
        return conn.execute(sa.select(db.runs.c.traceparent).where(db.runs.c.run_id == run_id)).scalar()


def _index_file(engine: Engine, store: BlobStore, settings: Settings, key: str, data: bytes | None,
                etag: str | None) -> IndexResult:
    result = IndexResult(name=key, status="error", run_id=run_id_of(key))
    if not is_prediction_file(key):  # a writer's hidden temp file (score.py writes .part-*.tmp, then renames)
        result.status = "ignored"
        log.info("index %s: not a prediction file name (hidden or not .parquet); ignored", key)
        return result
    blob = _read_blob(store, key, data, etag, result)
    if blob is None:
        return result
    with engine.connect() as conn:
        existing = _file_row(conn, key)
    if _done(existing, blob.etag):
        changed = _unchanged(engine, store, settings, existing, result)
    else:
        result, changed = _index_content(engine, store, settings, blob, result)
    return _after_commit(engine, store, result, changed)


def _read_blob(store: BlobStore, key: str, data: bytes | None, etag: str | None, result: IndexResult) -> _Blob | None:
    """The file's bytes and quoted ETag (read from the store unless given), or None with `result.error` set."""
    if data is None:
        try:
            data, info = store.get_with_info(key)
        except (BlobNotFound, ValueError) as exc:  # gone since its event, or not a valid blob name
            result.error = "blob not found" if isinstance(exc, BlobNotFound) else str(exc)
            log.warning("index %s: %s", key, result.error)
            return None
        etag = etag or info.etag
    return _Blob(key, normalize_etag(etag) if etag else content_etag(data), data)


def _done(row: dict[str, Any] | None, etag: str) -> bool:
    """The file's row says this ETag was indexed or poisoned already."""
    return row is not None and row["etag"] == etag and row["status"] in DONE_FILE_STATUSES


def _unchanged(engine: Engine, store: BlobStore, settings: Settings, row: dict[str, Any],
               result: IndexResult) -> list[Alert]:
    """A file already done: its recorded counts; and if its run is still active the file was indexed before the
    run's manifest existed (a watcher faster than the export), so the run may complete now."""
    result.status = "unchanged" if row["status"] == "indexed" else "poison"
    result.rows, result.anomalies = row["rows"] or 0, row["anomalies"] or 0
    result.error = row["error"] if row["status"] == "poison" else None
    if result.run_id is None or not _run_active(engine, result.run_id):
        return []
    manifest = read_manifest(store, result.run_id)
    if manifest is None:
        return []
    with engine.begin() as conn:
        _lock(conn, result.name, result.run_id)
        return _complete(conn, manifest, settings, result, clock.now_ms())


def _index_content(engine: Engine, store: BlobStore, settings: Settings, blob: _Blob,
                   result: IndexResult) -> tuple[IndexResult, list[Alert]]:
    """Parse the file and index it in one transaction. When the database refuses good rows for a reason that
    is not transient, the file is recorded as an error in a second transaction instead."""
    frame = _parse(blob.data, result)
    manifest = read_manifest(store, result.run_id) if result.run_id is not None else None
    severity_of = severity_lookup(store, frame["model_version"].unique()) if frame is not None else None
    try:
        with engine.begin() as conn:
            return result, _index_in_transaction(conn, blob, frame, manifest, severity_of, settings, result)
    except Exception as exc:
        if db.is_transient(exc) or frame is None:
            raise
        log.exception("index %s: could not store its rows", blob.key)  # e.g. values the database refuses
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    result = IndexResult(name=blob.key, status="error", run_id=result.run_id, error=error)
    with engine.begin() as conn:
        return result, _index_in_transaction(conn, blob, None, manifest, None, settings, result)


def _parse(data: bytes, result: IndexResult) -> pd.DataFrame | None:
    """The file's rows, or None with `result.error` set. A file directly under the container takes its run id
    from its rows when they name exactly one."""
    try:
        frame = read_predictions(data)
    except PredictionFileError as exc:
        result.error = str(exc)[:MAX_ERROR_CHARS]
        return None
    if result.run_id is None:
        ids = frame["run_id"].dropna().unique()
        result.run_id = str(ids[0]) if len(ids) == 1 else None
    return frame


# ------------------------------------------------------------------------------------------ the transaction
def _index_in_transaction(conn: Connection, blob: _Blob, frame: pd.DataFrame | None, manifest: RunManifest | None,
                          severity_of: SeverityOf | None, settings: Settings, result: IndexResult) -> list[Alert]:
    """Record the file (its rows, or its error when `frame` is None) and complete its run if it was the last;
    returns the alerts that changed visibly."""
    now = clock.now_ms()
    _lock(conn, blob.key, result.run_id)
    existing = _file_row(conn, blob.key, lock=True)
    if _done(existing, blob.etag):  # another indexer got there first
        result.status = "unchanged" if existing["status"] == "indexed" else "poison"
        result.error = None if result.status == "unchanged" else existing["error"]
        return []
    attempts = (existing["attempts"] if existing is not None and existing["etag"] == blob.etag else 0) + 1
    changed: list[Alert] = []
    if frame is None:
        _record_bad_file(conn, blob, existing, attempts, settings, result, now)
    else:
        changed = _record_rows(conn, blob, existing, attempts, frame, severity_of, settings, result, now)
    if result.run_id is not None and manifest is not None:
        changed += _complete(conn, manifest, settings, result, now)
    elif result.status == "indexed":
        log.info("index %s: file of an unknown run %s (no %s); indexed without run bookkeeping", blob.key,
                 result.run_id, "run id" if result.run_id is None else "manifest")
    result.alerts_changed = len(changed)
    return changed


def _record_bad_file(conn: Connection, blob: _Blob, existing: dict[str, Any] | None, attempts: int,
                     settings: Settings, result: IndexResult, now: int) -> None:
    """An unreadable file: status error, or poison after POISON_BLOB_THRESHOLD attempts of this ETag."""
    status = "poison" if attempts >= settings.poison_blob_threshold else "error"
    _write_file_row(conn, blob.key, existing, {
        "etag": blob.etag, "run_id": result.run_id, "status": status, "attempts": attempts, "rows": None,
        "anomalies": None, "failures": None, "windows_no_model": None, "error": result.error, "indexed_at": now})
    result.status = status
    log.warning("index %s: %s (attempt %d of %d)%s", blob.key, result.error, attempts,
                settings.poison_blob_threshold, "; poisoned, not processed again" if status == "poison" else "")


def _record_rows(conn: Connection, blob: _Blob, existing: dict[str, Any] | None, attempts: int, frame: pd.DataFrame,
                 severity_of: SeverityOf | None, settings: Settings, result: IndexResult, now: int) -> list[Alert]:
    """A readable file: its row with counts and failure detail, its anomalies, its alerts."""
    counts = file_counts(frame)
    detail = failure_detail(frame)
    _write_file_row(conn, blob.key, existing, {
        "etag": blob.etag, "run_id": result.run_id, "status": "indexed", "attempts": attempts, **counts,
        "error": json.dumps(detail) if detail else None, "indexed_at": now})
    _store_anomalies(conn, blob.key, frame, replace_file=existing is not None)
    update = alert_store.apply_file(conn, frame.loc[scored(frame)], window_ms=settings.window_ms,
                                    persistence=Persistence(*settings.alert_k_of_n),
                                    close_after=settings.alert_close_after_windows, severity_of=severity_of, now=now)
    result.status, result.error = "indexed", None
    result.rows, result.anomalies = counts["rows"], counts["anomalies"]
    return update.visible


def _complete(conn: Connection, manifest: RunManifest, settings: Settings, result: IndexResult,
              now: int) -> list[Alert]:
    """Complete the file's run if this was its last partition (noted on `result`); the alerts that closed."""
    completion = complete_if_done(conn, result.run_id, manifest, settings, now=now)
    if completion.run_status is not None:
        result.run_completed, result.run_status = True, completion.run_status
    return completion.alerts_changed


# ------------------------------------------------------------------------------------------ SQL
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
    """Upsert the file's anomalous windows (the latest file wins a window); a rewritten file's old ones go first."""
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


# ------------------------------------------------------------------------------------------ after the commit
def _after_commit(engine: Engine, store: BlobStore, result: IndexResult, changed: list[Alert]) -> IndexResult:
    """Write the changed alerts' documents and catch up earlier pending ones (the outbox), log the outcome."""
    result.documents = outbox.after_index(engine, store, [a["alert_id"] for a in changed]).documents
    telemetry.indexed(result.rows if result.status == "indexed" else 0, result.anomalies, changed)
    if result.status == "indexed":
        log.info("indexed %s: %d rows, %d anomalies, %d alert(s) changed%s", result.name, result.rows,
                 result.anomalies, result.alerts_changed,
                 f"; run {result.run_id} {result.run_status}" if result.run_completed else "")
    return result
