"""Runs that recover by themselves: what the timer does before it claims its own slot.

1. :func:`expire_lapsed`: an active run whose lease lapsed (its process died) is failed with that reason.
2. :func:`reconcile_remote`: a run a remote job owns (Azure ML: `submitted`, no lease, `backend_run_id` set) is
   failed when the service says the job failed or was cancelled, with the service's message; a job that is
   still going, or completed (the blob trigger completes the run), is left alone.
3. :func:`retry_failed`: each failed run with fewer than `RUN_MAX_ATTEMPTS` attempts whose windows no later run
   covered (its range ends after the watermark) is run again, oldest slot first, as its next attempt, with
   the reason recorded (`runs.retry_reason`, `attempt_history`; shown by `fleetscore runs` and `status`).

:func:`recover_runs` does all three and never raises: a failure is logged and the next fire tries again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.backends import backend_for
from fleetscore.backends.base import Backend, JobTracker, SubmissionError
from fleetscore.runs.claims import fail_run, lease_lapsed_error
from fleetscore.runs.lease import lapsed_clause
from fleetscore.runs.service import RunOutcome, start_run

log = logging.getLogger(__name__)

AUTO_RETRY = "automatic retry by the timer"


@dataclass
class Recovery:
    """What :func:`recover_runs` did: runs failed for a lapsed lease, runs failed from their remote job's state,
    and the retries it started."""

    lapsed: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    retried: list[RunOutcome] = field(default_factory=list)


def expire_lapsed(engine: Engine, now: int | None = None) -> list[str]:
    """Fail every active run whose lease lapsed, with that reason; returns their run ids."""
    now = clock.now_ms() if now is None else now
    r = db.runs
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r).where(lapsed_clause(now))).mappings().all()
    done = []
    for row in rows:
        with engine.begin() as conn:  # conditional: a renewal or a retry that came first wins
            if conn.execute(r.update().where(r.c.run_id == row["run_id"], r.c.attempt == row["attempt"],
                                             lapsed_clause(now))
                            .values(status="failed", error=lease_lapsed_error(row), finished_at=now)).rowcount:
                done.append(row["run_id"])
                log.warning("run %s: %s", row["run_id"], lease_lapsed_error(row))
    return done


def reconcile_remote(engine: Engine, backend: Backend, backend_name: str) -> list[str]:
    """Fail the runs owned by a remote job of `backend_name` that the service reports failed or cancelled."""
    if not isinstance(backend, JobTracker):
        return []
    r = db.runs
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.run_id, r.c.backend_run_id).where(
            r.c.status == "submitted", r.c.lease_until.is_(None), r.c.backend_run_id.is_not(None),
            r.c.backend == backend_name).order_by(r.c.slot)).all()
    failed = []
    for run_id, job in rows:
        error = _job_failure(backend, job)
        if error and fail_run(engine, run_id, error):
            log.warning("run %s: %s", run_id, error)
            failed.append(run_id)
    return failed


def _job_failure(backend: JobTracker, job: str) -> str | None:
    """The run's error when its job ended without finishing (or is unknown to the service), else None."""
    try:
        state = backend.job_state(job)
    except SubmissionError as exc:
        if exc.status == 404:
            return f"Azure ML job {job} not found: {exc}"
        log.warning("job %s: state unavailable (%s); asked again at the next fire", job, exc)
        return None
    if not state.failed:
        return None
    return f"Azure ML job {job} {state.status}" + (f": {state.message}" if state.message else "")


def retry_failed(services: Any, *, backend: Backend | None = None) -> list[RunOutcome]:
    """Run again, oldest first, each failed run below RUN_MAX_ATTEMPTS whose range ends after the watermark."""
    engine, settings = services.engine, services.settings
    r = db.runs
    with engine.connect() as conn:
        watermark = db.read_watermark(conn)
        due = conn.execute(sa.select(r.c.slot).where(
            r.c.status == "failed", r.c.attempt < settings.run_max_attempts,
            r.c.window_until > (watermark if watermark is not None else -1)).order_by(r.c.slot)).scalars().all()
    outcomes = []
    for slot in due:
        outcome = start_run(services, slot, trigger="timer (retry)", retry=True, reason=AUTO_RETRY, backend=backend)
        log.info("run %s: %s, attempt %s: %s", outcome.run_id, AUTO_RETRY, outcome.attempt,
                 outcome.status or outcome.refused)
        outcomes.append(outcome)
    return outcomes


def recover_runs(services: Any, *, backend: Backend | None = None) -> Recovery:
    """Expire lapsed leases, reconcile remote jobs, retry failed runs; logs, never raises."""
    done = Recovery()
    try:
        done.lapsed = expire_lapsed(services.engine)
        remote = backend or (None if services.settings.scoring_backend == "local"
                             else backend_for(services.settings, services.store))
        if remote is not None:
            done.reconciled = reconcile_remote(services.engine, remote, services.settings.scoring_backend)
        done.retried = retry_failed(services, backend=backend)
    except Exception:  # the timer's own slot still runs; the next fire tries again
        log.exception("run recovery failed")
    return done
