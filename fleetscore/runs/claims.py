"""Claiming a schedule slot's run exactly once, and the run row's updates.

A run is keyed by its schedule slot (`run_id` = the slot's UTC time). Claiming inserts the `runs` row, so a
double fire, a past-due catch-up or two instances give one run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.ingest.windows import closed_range
from fleetscore.runs.slots import run_id_for_slot

RETRYABLE = ("failed", "partial")
STALE_RUN_MS = 6 * 3_600_000
"""A run still claimed/submitted/running this long after its claim is presumed dead (its worker was
killed): `--retry` may take it over."""


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


def claim_run(engine: Engine, slot_ms: int, *, window_ms: int, late_ms: int, max_lookback_ms: int,
              trigger: str, backend: str, retry: bool = False) -> Claim | None:
    """Claim the run of `slot_ms`, or None when it is already claimed.

    The claim is the INSERT of the run's row (its primary key is the run id), so of any number of
    concurrent claimers exactly one wins. With `retry`, a failed or partial run of the slot — or one left
    unfinished for STALE_RUN_MS by a killed worker — is claimed again (attempt + 1) over the window range
    it had, so its outputs are rewritten identically.
    """
    run_id = run_id_for_slot(slot_ms)
    r = db.runs
    now = clock.now_ms()
    with engine.begin() as conn:
        watermark = db.read_watermark(conn)
    window_from, window_until = closed_range(slot_ms, late_ms, watermark, window_ms, max_lookback_ms)
    window_from = min(window_from, window_until)
    try:
        with engine.begin() as conn:
            conn.execute(r.insert().values(
                run_id=run_id, slot=slot_ms, attempt=1, status="claimed", trigger=trigger, backend=backend,
                window_from=window_from, window_until=window_until, claimed_at=now))
        return Claim(run_id, slot_ms, 1, window_from, window_until)
    except sa.exc.IntegrityError:
        pass
    if not retry:
        return None
    with engine.begin() as conn:
        row = conn.execute(sa.select(r.c.status, r.c.attempt, r.c.window_from, r.c.window_until, r.c.claimed_at)
                           .where(r.c.run_id == run_id)).first()
        stale = row is not None and row.status not in db.RUN_TERMINAL and row.claimed_at < now - STALE_RUN_MS
        if row is None or (row.status not in RETRYABLE and not stale):
            return None
        won = conn.execute(r.update().where(r.c.run_id == run_id, r.c.status == row.status,
                                            r.c.attempt == row.attempt)
                           .values(status="claimed", attempt=row.attempt + 1, trigger=trigger, backend=backend,
                                   claimed_at=now, submitted_at=None, finished_at=None, error=None,
                                   failures=None, failure_detail=None, windows_no_model=None)).rowcount
    if won != 1:
        return None
    return Claim(run_id, slot_ms, row.attempt + 1, row.window_from, row.window_until)


def update_run(engine: Engine, run_id: str, **values) -> None:
    with engine.begin() as conn:
        conn.execute(db.runs.update().where(db.runs.c.run_id == run_id).values(**values))


def fail_run(engine: Engine, run_id: str, error: str) -> None:
    update_run(engine, run_id, status="failed", error=error[:4000], finished_at=clock.now_ms())


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
