"""The run service: claim a slot's run once, export its closed windows, submit them, index what an in-process
backend wrote.

The run scores the windows that are closed (end ≤ slot − LATE_ARRIVAL_SECONDS) and newer than the scoring
watermark; the export writes them to `data/<run_id>/part-NNNNN.parquet` (whole devices per partition, at most
PARTITION_MODELS pairs) plus `data/<run_id>/manifest.json`, then hands them to the backend. Completion —
status succeeded/partial and the watermark advance — happens when the index has seen every partition's
prediction file: the blob trigger's job in Azure, done here for a backend that scored in this process.

The claimer holds the run's lease (`fleetscore.runs.lease`) and renews it at every partition exported, scored and
indexed; a remote backend's job takes the run over when it is accepted (lease cleared, `backend_run_id` set).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from fleetscore import clock, db, telemetry
from fleetscore.backends import backend_for
from fleetscore.backends.base import Backend, Feed, Submission, SubmitRequest
from fleetscore.predictions.index import index_prediction_file
from fleetscore.runs.claims import (
    Claim,
    RunError,
    claim_run,
    complete_empty_run,
    fail_run,
    mark_unscored_partitions,
    refusal,
    update_run,
)
from fleetscore.runs.export import export_run
from fleetscore.runs.lease import Lease, LeaseLost
from fleetscore.runs.manifest import RunManifest
from fleetscore.runs.slots import run_id_for_slot
from fleetscore.training import verified_active_pack
from scoring_job.pack import lookback

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""`progress(stage, done, total)`: the CLI's per-stage progress bars."""


@dataclass
class RunOutcome:
    """What `start_run` did: `claimed` False means another invocation owns the slot (`refused` says why and when
    a retry becomes possible); status `lost` means another process took the run over after this one's lease
    lapsed."""

    run_id: str
    claimed: bool
    status: str = ""
    refused: str = ""
    attempt: int = 0
    manifest: RunManifest | None = None
    backend_run_id: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def start_run(services: Any, slot_ms: int, *, trigger: str, retry: bool = False, reason: str | None = None,
              backend: Backend | None = None, progress: Progress | None = None) -> RunOutcome:
    """Claim, export and submit the run of one slot. Never raises for the run's own failures: they are
    recorded on its row (status failed, error) and returned. `retry` takes a failed or partial run, or one whose
    lease lapsed, as its next attempt; `reason` says why (recorded in `retry_reason`)."""
    settings, engine = services.settings, services.engine
    claim = claim_run(engine, slot_ms, window_ms=settings.window_ms, late_ms=settings.late_arrival_seconds * 1000,
                      max_lookback_ms=int(settings.max_lookback_hours * 3_600_000), trigger=trigger,
                      backend=settings.scoring_backend, retry=retry, lease_ms=settings.run_lease_seconds * 1000,
                      reason=reason)
    run_id = run_id_for_slot(slot_ms)
    if claim is None:
        outcome = RunOutcome(run_id, claimed=False, refused=refusal(engine, run_id, retry=retry))
        log.info("%s", outcome.refused)
        return outcome
    with telemetry.run_span(run_id, trigger):  # one trace per run: export, scoring, indexing are its spans
        return _claimed(services, claim, RunOutcome(run_id, claimed=True, attempt=claim.attempt), backend, progress)


def _claimed(services: Any, claim: Claim, outcome: RunOutcome, backend: Backend | None,
             progress: Progress | None) -> RunOutcome:
    """Export and submit a claimed run; its failures are recorded on its row and returned, never raised."""
    settings, engine, run_id = services.settings, services.engine, claim.run_id
    lease = Lease(engine, run_id, claim.owner, settings.run_lease_seconds)
    try:
        backend = backend or backend_for(settings, services.store, progress=_renewing(lease, progress))
        _export_and_submit(services, claim, backend, outcome, progress, lease)
    except LeaseLost as exc:  # another process owns the run now: leave its row alone
        _cancel(backend)
        log.error("run %s: %s; stopped", run_id, exc)
        outcome.status, outcome.error = "lost", str(exc)
    except Exception as exc:  # recorded, never lost: the run row says what happened
        _cancel(backend)
        log.exception("run %s failed", run_id)
        telemetry.failed(exc)
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        try:
            fail_run(engine, run_id, outcome.error, owner=claim.owner)
        except Exception:  # the database itself is down: the log line above is the record
            log.exception("could not record the failure of run %s", run_id)
    return outcome


def _cancel(backend: Backend | None) -> None:
    """Stop a pool still scoring partitions of a run this process gives up."""
    if backend is not None:
        backend.cancel()


def _renewing(lease: Lease, progress: Progress | None) -> Progress:
    """A progress callback that renews the lease at every tick of a stage, then reports it."""
    def tick(stage: str, done: int, total: int) -> None:
        lease.tick(stage)
        if progress:
            progress(stage, done, total)
    return tick


def _export_and_submit(services: Any, claim: Claim, backend: Backend, outcome: RunOutcome,
                       progress: Progress | None, lease: Lease) -> None:
    """Export the claim's windows (feeding the backend as partitions land), submit, index in-process output."""
    settings, engine, store = services.settings, services.engine, services.store
    try:  # the pack is checked where the run starts: pinned manifest, keys; its workers verify every file
        active, pack_manifest = verified_active_pack(store)
    except LookupError as exc:
        raise RunError(str(exc)) from None
    version = active.version
    update_run(engine, claim.run_id, model_version=version, model_sha256=active.manifest_sha256,
               traceparent=telemetry.traceparent())
    context = lookback(pack_manifest)
    request = SubmitRequest.for_run(claim.run_id, claim.slot_ms, version, active.manifest_sha256)
    feed: Feed | None = backend.open_feed(request)  # the local backend scores partitions while they export

    def exported(key: str) -> None:
        if feed is not None:
            feed.add(key)
        lease.tick("export")

    manifest = _timed(outcome, "export", lambda: export_run(
        engine, store, claim, model_version=version, window_ms=settings.window_ms,
        partition_models=settings.partition_models, progress=_stage(progress, "export"),
        on_partition=exported, lookback=context, streams=settings.export_streams))
    outcome.manifest = manifest
    update_run(engine, claim.run_id, model_version=version, partitions=len(manifest.partitions),
               models=manifest.pairs, windows=manifest.windows, timings=json.dumps(outcome.timings))
    if not manifest.partitions:
        backend.cancel()
        complete_empty_run(engine, claim)
        outcome.status = "succeeded"
        return
    request = dataclasses.replace(request, partitions=tuple(p.name for p in manifest.partitions))
    update_run(engine, claim.run_id, status="running" if backend.in_process else "submitted",
               submitted_at=clock.now_ms())
    lease.renew()
    submission = _timed(outcome, "submit", lambda: backend.submit(request))
    outcome.backend_run_id = submission.backend_run_id
    if submission.in_process:
        update_run(engine, claim.run_id, backend_run_id=submission.backend_run_id,
                   timings=json.dumps(outcome.timings))
        _timed(outcome, "index", lambda: index_submission(services, claim.run_id, submission, progress, lease))
        update_run(engine, claim.run_id, timings=json.dumps(outcome.timings))
    elif not lease.release(backend_run_id=submission.backend_run_id, timings=json.dumps(outcome.timings)):
        raise LeaseLost(f"run {claim.run_id}: submitted as {submission.backend_run_id}, but another process had "
                        f"taken the run over")
    with engine.connect() as conn:
        outcome.status = conn.execute(sa.select(db.runs.c.status).where(db.runs.c.run_id == claim.run_id)).scalar()


def index_submission(services: Any, run_id: str, submission: Submission, progress: Progress | None = None,
                     lease: Lease | None = None) -> None:
    """Index every prediction file an in-process backend wrote (the blob trigger's job in Azure), then record
    the partitions it could not score (they write no file, so the index alone cannot complete the run)."""
    tick = _stage(progress, "index")
    for i, key in enumerate(submission.written, start=1):
        index_prediction_file(services.engine, services.store, services.settings, key)
        if lease is not None:
            lease.tick("index")
        if tick:
            tick(i, len(submission.written))
    if submission.unscored:
        mark_unscored_partitions(services.engine, run_id, submission.unscored,
                                 all_failed=not submission.written)


def _timed(outcome: RunOutcome, stage: str, step: Callable[[], Any]) -> Any:
    """Run `step`, adding its wall time (seconds, 3 decimals) to `outcome.timings[stage]` (and a span and the
    stage-duration metric: :func:`fleetscore.telemetry.stage`)."""
    t0 = time.perf_counter()
    try:
        with telemetry.stage(stage, outcome.run_id):
            return step()
    finally:
        outcome.timings[stage] = round(time.perf_counter() - t0, 3)


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return (lambda done, total: progress(stage, done, total)) if progress else None
