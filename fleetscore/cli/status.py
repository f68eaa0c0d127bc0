"""`fleetscore status`: ingest figures, runs, alerts and the model pack in force.

The `*_status` functions read one section each as a JSON-able dict (times in epoch ms); the `*_table`
functions render a section for a person."""

from __future__ import annotations

import json
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.table import Table
from sqlalchemy.engine import Engine

from fleetscore import db
from fleetscore.cli.console import console, fmt_count, fmt_ms, services
from fleetscore.cli.runs import run_note
from fleetscore.clock import now_ms
from fleetscore.storage.base import BlobNotFound, BlobStore
from fleetscore.training import current_model_version, read_pack_manifest
from scoring_job.pack import manifest_training_table


def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Last runs, failures, open alerts, ingest figures and the model pack in force."""
    svc = services()
    doc = {"ingest": ingest_status(svc.engine), "runs": runs_status(svc.engine), "alerts": alerts_status(svc.engine),
           "model_pack": model_status(svc.store)}
    if as_json:
        console.print_json(json.dumps(doc, default=str))
        return
    console.print(ingest_table(doc["ingest"], doc["model_pack"]))
    console.print(runs_table(doc["runs"]))
    console.print(alerts_table(doc["alerts"], show_undelivered=bool(svc.settings.alert_webhook_url)))


def ingest_status(engine: Engine) -> dict[str, Any]:
    """Counts of readings, windows, late readings and dead letters by reason."""
    with engine.connect() as conn:
        readings = conn.execute(sa.select(sa.func.count(), sa.func.min(db.readings.c.ts),
                                          sa.func.max(db.readings.c.ts))).one()
        late = conn.execute(sa.select(sa.func.count()).where(db.readings.c.late == sa.true())).scalar_one()
        windows = conn.execute(sa.select(sa.func.count(), sa.func.max(db.windows.c.window_end))).one()
        pairs = conn.execute(sa.select(sa.func.count()).select_from(
            sa.select(db.windows.c.device, db.windows.c.sensor).distinct().subquery())).scalar_one()
        dead = dict(conn.execute(sa.select(db.dead_letters.c.reason, sa.func.count())
                                 .group_by(db.dead_letters.c.reason)
                                 .order_by(db.dead_letters.c.reason)).all())
        watermark = conn.execute(sa.select(db.watermarks.c.value)
                                 .where(db.watermarks.c.name == db.SCORING_WATERMARK)).scalar()
    return {
        "readings": readings[0], "first_reading_ms": readings[1], "last_reading_ms": readings[2],
        "late_readings": late, "windows": windows[0], "newest_window_end_ms": windows[1],
        "pairs": pairs, "dead_letters": sum(dead.values()), "dead_letters_by_reason": dead,
        "watermark_ms": watermark,
    }


def runs_status(engine: Engine, limit: int = 10) -> dict[str, Any]:
    """The last runs (newest first) with status, attempt, lease, why the attempt was retried and the earlier
    attempts (`attempt_history`, JSON), and the runs by status overall."""
    r = db.runs
    with engine.connect() as conn:
        last = conn.execute(sa.select(r.c.run_id, r.c.status, r.c.attempt, r.c.backend, r.c.backend_run_id,
                                      r.c.model_version, r.c.models, r.c.windows, r.c.windows_no_model,
                                      r.c.failures, r.c.failure_detail, r.c.error, r.c.claimed_at, r.c.finished_at,
                                      r.c.lease_until, r.c.retry_reason, r.c.attempt_history)
                            .order_by(r.c.slot.desc()).limit(limit)).mappings().all()
        by_status = dict(conn.execute(sa.select(r.c.status, sa.func.count()).group_by(r.c.status)).all())
    return {"last": [dict(row) for row in last], "by_status": by_status}


def alerts_status(engine: Engine, limit: int = 10) -> dict[str, Any]:
    """Open alerts (most severe score first) and alert counts by status and by delivery state."""
    a = db.alerts
    with engine.connect() as conn:
        open_alerts = conn.execute(sa.select(a.c.alert_id, a.c.device, a.c.sensor, a.c.severity, a.c.windows,
                                             a.c.max_score, a.c.first_window_end, a.c.last_window_end)
                                   .where(a.c.status == "open").order_by(a.c.max_score.desc())
                                   .limit(limit)).mappings().all()
        by_status = dict(conn.execute(sa.select(a.c.status, sa.func.count()).group_by(a.c.status)).all())
        undelivered = conn.execute(sa.select(sa.func.count()).where(
            a.c.delivered_revision < a.c.revision)).scalar_one()
    return {"open": [dict(row) for row in open_alerts], "by_status": by_status, "undelivered": undelivered}


def model_status(store: BlobStore) -> dict[str, Any]:
    """The model pack in force: version, model count, algorithms (from its manifest JSON only)."""
    version = current_model_version(store)
    if version is None:
        return {"version": None}
    try:
        manifest = read_pack_manifest(store, version)
        table = manifest_training_table(manifest)
    except (BlobNotFound, ValueError) as exc:  # PackError is a ValueError
        return {"version": version, "error": f"manifest unreadable: {exc}"}
    algorithms = {str(k): int(v) for k, v in table["algorithm"].value_counts(sort=False).items()}
    return {"version": version, "created": manifest["created"], "models": len(table),
            "features": manifest["features"], "algorithms": algorithms}


def _counts(by_status: dict[str, int]) -> str:
    """`{"open": 2, "closed": 5}` → `closed 5, open 2` (empty: '')."""
    return ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))


def ingest_table(ing: dict[str, Any], pack: dict[str, Any]) -> Table:
    """The ingest section (from `ingest_status`) and the model pack in force (from `model_status`)."""
    table = Table(title="ingest", show_header=False)
    table.add_row("readings", f"{ing['readings']:,}", f"{fmt_ms(ing['first_reading_ms'])} … "
                  f"{fmt_ms(ing['last_reading_ms'])}")
    table.add_row("windows", f"{ing['windows']:,}", f"{ing['pairs']:,} device+sensor pairs, newest "
                  f"{fmt_ms(ing['newest_window_end_ms'])}")
    table.add_row("late readings", f"{ing['late_readings']:,}", f"watermark {fmt_ms(ing['watermark_ms'])}")
    reasons = ", ".join(f"{k}={v:,}" for k, v in ing["dead_letters_by_reason"].items()) or "-"
    table.add_row("dead letters", f"{ing['dead_letters']:,}", reasons)
    algorithms = ", ".join(f"{k}={v}" for k, v in (pack.get("algorithms") or {}).items())
    table.add_row("model pack", pack.get("version") or "none (fleetscore train --activate)",
                  f"{pack.get('models', 0):,} models " + algorithms)
    return table


def runs_table(runs_doc: dict[str, Any]) -> Table:
    """The last runs (from `runs_status`); took = finished - claimed, seconds; errors cut to 60 characters; `why`
    is why the attempt was retried (or an active run's lease), cut to 80."""
    table = Table(title=f"last runs  ({_counts(runs_doc['by_status']) or 'none yet'})")
    for col in ("run", "status", "try", "backend", "models", "windows", "no model", "failures", "took s", "error",
                "why"):
        table.add_column(col)
    now = now_ms()
    for r in runs_doc["last"]:
        took = (r["finished_at"] - r["claimed_at"]) / 1000 if r["finished_at"] else None
        table.add_row(r["run_id"], r["status"], str(r["attempt"]), r["backend"] or "-", fmt_count(r["models"]),
                      fmt_count(r["windows"]), fmt_count(r["windows_no_model"]), fmt_count(r["failures"]),
                      f"{took:.1f}" if took is not None else "-", (r["error"] or "")[:60], run_note(r, now)[:80])
    return table


def alerts_table(al: dict[str, Any], show_undelivered: bool) -> Table:
    """The open alerts (from `alerts_status`); the undelivered count only when a webhook is configured."""
    undelivered = f"; undelivered to the webhook {al['undelivered']}" if show_undelivered else ""
    table = Table(title=f"open alerts  ({_counts(al['by_status']) or 'none'}{undelivered})")
    for col in ("alert", "device", "sensor", "severity", "windows", "max score", "first", "last"):
        table.add_column(col)
    for a in al["open"]:
        table.add_row(a["alert_id"], a["device"], a["sensor"], a["severity"], str(a["windows"]),
                      f"{a['max_score']:.3f}", fmt_ms(a["first_window_end"]), fmt_ms(a["last_window_end"]))
    return table
