"""Run completion: a run is done when every partition of its manifest has a final prediction file row.

When every partition of the run manifest (`data/<run_id>/manifest.json`, :class:`RunManifest`) has a final
`prediction_files` row (indexed, error or poison) written since the run's claim, the run — if not terminal
yet — becomes succeeded, or partial when a partition had failed windows or was unreadable; the files' counts
are summed onto the run and the scoring watermark advances to the run's `window_until`. A conditional update
makes it happen once however many indexers race. A succeeded run then closes the open alerts of pairs it saw
no window of (:func:`fleetscore.alerts.store.apply_stale`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fleetscore import db
from fleetscore.alerts import store as alert_store
from fleetscore.predictions.files import merge_details
from fleetscore.runs.manifest import RunManifest
from fleetscore.settings import Settings
from fleetscore.storage.paths import predictions_prefix

log = logging.getLogger(__name__)

FINAL_FILE_STATUSES = ("indexed", "error", "poison")
"""A `prediction_files` status that will not change for its ETag."""
MAX_RUN_DETAIL_CHARS = 4000


@dataclass
class RunTotals:
    """A run's prediction files summed up."""

    windows: int = 0
    windows_no_model: int = 0
    failures: int = 0
    """Failed windows; an unreadable file counts all its partition's windows (at least 1)."""
    bad_files: int = 0
    """Files recorded as error or poison."""
    details: list[dict[str, str]] = field(default_factory=list)
    """Each file's {"device/sensor" or "file/<name>": reason}."""

    @property
    def status(self) -> str:
        return "partial" if self.failures or self.bad_files else "succeeded"


@dataclass
class Completion:
    run_status: str | None = None
    """succeeded | partial when this call completed the run, else None."""
    alerts_changed: list[dict[str, Any]] = field(default_factory=list)
    """Alerts the completion closed (rows of the alerts table, revision already increased)."""


def complete_if_done(conn: Connection, run_id: str, manifest: RunManifest, settings: Settings, *,
                     now: int) -> Completion:
    """Complete the run when this was its last partition; on success close the alerts its windows ended."""
    run_status = complete_run(conn, run_id, manifest, now=now)
    if run_status is None:
        return Completion()
    log.info("run %s %s: every partition is indexed", run_id, run_status)
    if run_status != "succeeded":
        return Completion(run_status)
    closed = alert_store.apply_stale(conn, until=manifest.window_until, window_ms=settings.window_ms,
                                     close_after=settings.alert_close_after_windows, now=now)
    return Completion(run_status, closed.visible)


def complete_run(conn: Connection, run_id: str, manifest: RunManifest, *, now: int) -> str | None:
    """Complete the run if every partition of its manifest has a final prediction_files row and the run is not
    terminal; returns the new status (succeeded | partial) or None. Advances the watermark on completion."""
    rows = _final_file_rows(conn, run_id, manifest)
    if rows is None:
        return None
    totals = run_totals(rows, {_file_key(run_id, p.name): p.windows for p in manifest.partitions})
    r = db.runs
    done = conn.execute(r.update().where(r.c.run_id == run_id, r.c.status.in_(db.RUN_ACTIVE))
                        .values(**_run_values(totals, now)))
    if done.rowcount != 1:
        return None
    db.advance_watermark(conn, manifest.window_until, now)
    return totals.status


def _file_key(run_id: str, partition: str) -> str:
    """A partition's prediction file (named as the partition)."""
    return f"{predictions_prefix(run_id)}/{partition}"


def _final_file_rows(conn: Connection, run_id: str, manifest: RunManifest) -> list[Mapping[str, Any]] | None:
    """The `prediction_files` rows of the manifest's partitions by name, or None while the run cannot complete:
    unknown or terminal, no partitions, or a partition without a final row since the run's (latest) claim.

    Linear in partitions over a run: each call first counts the run's final rows in the key range of its
    partitions' names (one aggregate on the primary key, nothing sent or read per partition) and reads the
    rows, once, only when that count reaches the manifest's partitions."""
    r, pf = db.runs, db.prediction_files
    run = conn.execute(sa.select(r.c.status, r.c.claimed_at).where(r.c.run_id == run_id)).first()
    if run is None or run.status in db.RUN_TERMINAL or not manifest.partitions:
        return None
    names = sorted({_file_key(run_id, p.name) for p in manifest.partitions})
    final = (pf.c.status.in_(FINAL_FILE_STATUSES), pf.c.indexed_at >= run.claimed_at)
    done = conn.execute(sa.select(sa.func.count()).select_from(pf).where(
        pf.c.name >= names[0], pf.c.name <= names[-1], pf.c.run_id == run_id, *final)).scalar()
    if done < len(names):
        return None
    rows: list[Mapping[str, Any]] = []
    for chunk in db.chunks(names):
        rows.extend(conn.execute(sa.select(pf).where(pf.c.name.in_(chunk))).mappings())
    # a retried run (claimed again) counts only files indexed since its new claim
    if len(rows) < len(names) or any(row["status"] not in FINAL_FILE_STATUSES or row["indexed_at"] < run.claimed_at
                                     for row in rows):
        return None
    return sorted(rows, key=lambda row: row["name"])


def run_totals(rows: Iterable[Mapping[str, Any]], partition_windows: Mapping[str, int]) -> RunTotals:
    """Sum final `prediction_files` rows; `partition_windows`: file name → its partition's window count."""
    totals = RunTotals()
    for row in rows:
        if row["status"] == "indexed":
            totals.windows += row["rows"] or 0
            totals.windows_no_model += row["windows_no_model"] or 0
            totals.failures += row["failures"] or 0
            if row["failures"] and row["error"]:
                totals.details.append(_indexed_detail(row["name"], row["error"]))
        else:
            totals.bad_files += 1
            totals.failures += partition_windows[row["name"]] or 1
            totals.details.append({f"file/{row['name'].rsplit('/', 1)[-1]}": (row["error"] or row["status"])[:200]})
    return totals


def _indexed_detail(name: str, error: str) -> dict[str, str]:
    """An indexed file's failure detail (JSON in its `error`; older text as it is)."""
    try:
        return json.loads(error)
    except ValueError:
        return {name: error[:200]}


def _run_values(totals: RunTotals, now: int) -> dict[str, Any]:
    """The `runs` columns a completion writes."""
    values: dict[str, Any] = {
        "status": totals.status, "windows": totals.windows, "windows_no_model": totals.windows_no_model,
        "failures": totals.failures, "finished_at": now,
        "failure_detail": json.dumps(merge_details(totals.details))[:MAX_RUN_DETAIL_CHARS] if totals.details else None,
    }
    if totals.bad_files:
        values["error"] = f"{totals.bad_files} prediction file(s) unreadable"
    return values
