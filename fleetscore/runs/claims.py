"""Claiming a schedule slot's run exactly once, and the run row's updates.

A run is keyed by its schedule slot (`run_id` = the slot's UTC time). Claiming inserts the `runs` row, so a
double fire, a past-due catch-up or two instances give one run. The claimer holds the run's lease
(`fleetscore.runs.lease`); a retry takes a failed or partial run, or an active one whose lease lapsed, as
attempt + 1, recording why (`retry_reason`) and how the earlier attempt ended (`attempt_history`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.ingest.windows import closed_range
from fleetscore.runs.lease import lapsed, new_owner
from fleetscore.runs.slots import run_id_for_slot

RETRYABLE = ("failed", "partial")
DEFAULT_LEASE_MS = 120_000
MAX_HISTORY = 20
"""Earlier attempts kept in `attempt_history` (newest last)."""


class RunError(RuntimeError):
    """A run could not be prepared or submitted; recorded on the run row."""


@dataclass(frozen=True)
class Claim:
    """A claimed run: its slot, attempt and window range (from exclusive, until inclusive; epoch ms)."""

    run_id: str
    slot_ms: int
    attempt: int
    window_from: int
    window_until: int
    owner: str = ""
    """The lease owner (`fleetscore.runs.lease.new_owner`)."""


def claim_run(engine: Engine, slot_ms: int, *, window_ms: int, late_ms: int, max_lookback_ms: int,
              trigger: str, backend: str, retry: bool = False, lease_ms: int = DEFAULT_LEASE_MS,
              owner: str | None = None, reason: str | None = None) -> Claim | None:
    """Claim the run of `slot_ms` with a lease of `lease_ms`, or None when it is taken (see :func:`refusal`).

    The claim is the INSERT of the run's row (its primary key is the run id), so of any number of
    concurrent claimers exactly one wins. With `retry`, a failed or partial run of the slot — or an active one
    whose lease lapsed (its process died) — is claimed again (attempt + 1) over the window range it had, so its
    outputs are rewritten identically; `reason` (e.g. "automatic retry by the timer") heads its `retry_reason`.
    """
    run_id, owner, now = run_id_for_slot(slot_ms), owner or new_owner(), clock.now_ms()
    with engine.begin() as conn:
        watermark = db.read_watermark(conn)
    window_from, window_until = closed_range(slot_ms, late_ms, watermark, window_ms, max_lookback_ms)
    window_from = min(window_from, window_until)
    try:
        with engine.begin() as conn:
            conn.execute(db.runs.insert().values(
                run_id=run_id, slot=slot_ms, attempt=1, status="claimed", trigger=trigger, backend=backend,
                window_from=window_from, window_until=window_until, claimed_at=now, lease_owner=owner,
                lease_until=now + lease_ms))
        return Claim(run_id, slot_ms, 1, window_from, window_until, owner)
    except sa.exc.IntegrityError:
        pass
    return _retake(engine, run_id, now, trigger=trigger, backend=backend, lease_ms=lease_ms, owner=owner,
                   reason=reason or "retried by hand (--retry)") if retry else None


def _retake(engine: Engine, run_id: str, now: int, *, trigger: str, backend: str, lease_ms: int, owner: str,
            reason: str) -> Claim | None:
    """Claim an existing run again when it is retryable; a conditional UPDATE, so one retrier wins."""
    r = db.runs
    with engine.begin() as conn:
        row = conn.execute(sa.select(r).where(r.c.run_id == run_id)).mappings().first()
        if row is None or not retryable(row, now):
            return None
        status, error = attempt_end(row, now)
        history = [*read_history(row["attempt_history"]), {
            "attempt": row["attempt"], "status": status, "error": (error or "")[:500], "trigger": row["trigger"],
            "backend_run_id": row["backend_run_id"], "claimed_at": row["claimed_at"],
            "finished_at": row["finished_at"] or now, "retry_reason": row["retry_reason"]}][-MAX_HISTORY:]
        why = f"{reason} after attempt {row['attempt']} {status}" + (f": {error}" if error else "")
        won = conn.execute(r.update().where(r.c.run_id == run_id, r.c.status == row["status"],
                                            r.c.attempt == row["attempt"])
                           .values(status="claimed", attempt=row["attempt"] + 1, trigger=trigger, backend=backend,
                                   claimed_at=now, submitted_at=None, finished_at=None, error=None,
                                   failures=None, failure_detail=None, windows_no_model=None, backend_run_id=None,
                                   lease_owner=owner, lease_until=now + lease_ms, retry_reason=why[:4000],
                                   attempt_history=json.dumps(history))).rowcount
    if won != 1:
        return None
    return Claim(run_id, row["slot"], row["attempt"] + 1, row["window_from"], row["window_until"], owner)


def retryable(row: Mapping[str, Any], now: int) -> bool:
    """A run that may be claimed again: it ended failed or partial, or its lease lapsed."""
    return row["status"] in RETRYABLE or lapsed(row["lease_until"], row["status"], now)


def attempt_end(row: Mapping[str, Any], now: int) -> tuple[str, str | None]:
    """How the row's current attempt ended: (status, error); a lapsed lease counts as failed, with that reason."""
    if lapsed(row["lease_until"], row["status"], now):
        return "failed", lease_lapsed_error(row)
    return row["status"], row["error"]


def lease_lapsed_error(row: Mapping[str, Any]) -> str:
    """The error of a run whose owner stopped renewing its lease while it was `status`."""
    return (f"lease lapsed at {clock.iso_seconds(row['lease_until'])} while {row['status']}: its process "
            f"{row['lease_owner']} stopped renewing it (killed, out of memory or hung)")


def read_history(text: str | None) -> list[dict[str, Any]]:
    """`attempt_history` JSON → its list (empty when unset or unreadable)."""
    try:
        history = json.loads(text) if text else []
    except ValueError:
        return []
    return history if isinstance(history, list) else []


def refusal(engine: Engine, run_id: str, *, retry: bool, now: int | None = None) -> str:
    """Why the run of a slot could not be claimed, and when (or how) a retry becomes possible."""
    now = clock.now_ms() if now is None else now
    with engine.connect() as conn:
        row = conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().first()
    if row is None:
        return f"run {run_id} could not be claimed"
    head = f"run {run_id} (attempt {row['attempt']})"
    if row["status"] in RETRYABLE:
        return (f"{head} was retried by another process first" if retry else
                f"{head} ended {row['status']}: {row['error'] or '-'}; use --retry to run it again")
    if row["status"] in db.RUN_TERMINAL:
        return f"{head} already {row['status']} at {clock.iso_seconds(row['finished_at'], '-')}: nothing to retry"
    if lapsed(row["lease_until"], row["status"], now):
        return (f"{head} was retried by another process first" if retry else
                f"{head} is {row['status']} but its {lease_lapsed_error(row)}; use --retry to run it again now")
    if row["lease_until"] is None:
        return (f"{head} is {row['status']} as {row['backend']} job {row['backend_run_id']}: that job owns it; "
                f"the timer reconciles the run with the job's state (a failed or cancelled job fails it)")
    return (f"{head} is {row['status']} by {row['lease_owner']}, whose lease runs until "
            f"{clock.iso_seconds(row['lease_until'])}: if that process is gone, --retry works from then")


def update_run(engine: Engine, run_id: str, **values) -> None:
    with engine.begin() as conn:
        conn.execute(db.runs.update().where(db.runs.c.run_id == run_id).values(**values))


def fail_run(engine: Engine, run_id: str, error: str, *, owner: str | None = None) -> bool:
    """End an active run as failed with `error`; with `owner`, only while that process holds its lease."""
    r = db.runs
    where = [r.c.run_id == run_id, r.c.status.in_(db.RUN_ACTIVE)]
    if owner is not None:
        where.append(r.c.lease_owner == owner)
    with engine.begin() as conn:
        return conn.execute(r.update().where(*where).values(
            status="failed", error=error[:4000], finished_at=clock.now_ms())).rowcount == 1


def complete_empty_run(engine: Engine, claim: Claim) -> None:
    """A run with nothing to score is done at once; the watermark still advances to its range end."""
    now = clock.now_ms()
    with engine.begin() as conn:
        conn.execute(db.runs.update().where(db.runs.c.run_id == claim.run_id).values(
            status="succeeded", partitions=0, models=0, windows=0, windows_no_model=0, failures=0,
            finished_at=now))
        db.advance_watermark(conn, claim.window_until, now)


def mark_unscored_partitions(engine: Engine, run_id: str, errors: dict[str, str], *, all_failed: bool,
                             skip_if: tuple[str, ...] = db.RUN_TERMINAL) -> None:
    """Partitions the backend could not score write no prediction file, so the index cannot complete the
    run: record them and end the run as partial (or failed when nothing was scored). The watermark is
    left alone, so the next run scores those windows again."""
    r = db.runs
    detail = json.dumps({f"partition/{name}": err for name, err in errors.items()})[:4000]
    with engine.begin() as conn:
        conn.execute(r.update().where(r.c.run_id == run_id, r.c.status.not_in(skip_if)).values(
            status="failed" if all_failed else "partial", error=f"{len(errors)} partition(s) not scored",
            failure_detail=detail, finished_at=clock.now_ms()))


def list_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    r = db.runs
    with engine.connect() as conn:
        return db.read_frame(conn, sa.select(r).order_by(r.c.slot.desc()).limit(limit))
