"""Runs that recover by themselves: lapsed leases, the refusal message, Azure ML jobs reconciled over REST, and
automatic retries by the timer (real SQLite and PostgreSQL; a local HTTP server stands in for Azure ML)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fleetscore import clock, db
from fleetscore.backends import aml
from fleetscore.runs.claims import claim_run, refusal
from fleetscore.runs.lease import Lease, LeaseLost
from fleetscore.runs.recovery import expire_lapsed, reconcile_remote
from fleetscore.runs.slots import run_id_for_slot
from fleetscore.settings import load_settings
from tests.integration.backends.test_aml import FakeCredential, FakeEndpoint

SLOT = 1_795_428_300_000  # 2026-11-23T10:05:00Z
W = 300_000


def _run(run_id: str, **values) -> dict:
    base = dict(run_id=run_id, slot=SLOT, attempt=1, status="submitted", trigger="timer",
                backend="aml-batch-endpoint", window_from=SLOT - 3_600_000, window_until=SLOT - W, claimed_at=1)
    return {**base, **values}


def _row(engine, run_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().one())


def test_a_lapsed_lease_fails_the_run_with_that_reason_and_the_refusal_says_when(engine):
    kw = dict(window_ms=W, late_ms=0, max_lookback_ms=3_600_000, trigger="cli", backend="local", lease_ms=60_000)
    claim = claim_run(engine, SLOT, **kw)
    run_id = claim.run_id
    held = refusal(engine, run_id, retry=True)
    lease_until = _row(engine, run_id)["lease_until"]
    assert f"whose lease runs until {clock.iso_seconds(lease_until)}" in held
    assert "--retry works from then" in held and claim.owner in held
    assert expire_lapsed(engine) == []
    with engine.begin() as conn:  # the owner was killed: its last renewal was a minute ago
        conn.execute(db.runs.update().values(lease_until=clock.now_ms() - 1))
    assert "its lease lapsed at" in refusal(engine, run_id, retry=False)
    assert expire_lapsed(engine) == [run_id]
    row = _row(engine, run_id)
    assert row["status"] == "failed" and row["error"].startswith("lease lapsed at ")
    assert claim.owner in row["error"] and "while claimed" in row["error"]
    assert "use --retry" in refusal(engine, run_id, retry=False)
    with pytest.raises(LeaseLost):  # the killed owner, were it alive, may not write any more
        Lease(engine, run_id, claim.owner, 60).renew()


def test_submitted_runs_are_failed_when_their_azure_ml_job_failed_or_was_cancelled(engine):
    studio = "https://ml.azure.com/runs/job-1"
    replies = {"job-1": {"properties": {"status": "Failed", "services": {"Studio": {"endpoint": studio}}}},
               "job-2": {"properties": {"status": "Running"}}, "job-3": {"properties": {"status": "Canceled"}},
               "job-4": {"properties": {"status": "Completed"}}}
    with engine.begin() as conn:
        conn.execute(db.runs.insert(), [
            _run("r1", slot=SLOT, backend_run_id="job-1"), _run("r2", slot=SLOT + 1, backend_run_id="job-2"),
            _run("r3", slot=SLOT + 2, backend_run_id="job-3"), _run("r4", slot=SLOT + 3, backend_run_id="job-4"),
            _run("r5", slot=SLOT + 4, backend_run_id=None, lease_owner="h:1:x", lease_until=clock.now_ms() + 60_000),
            _run("r6", slot=SLOT + 5, backend_run_id="job-6", status="succeeded"),
            _run("r7", slot=SLOT + 6, backend_run_id="local:r7", backend="local")])
    server = FakeEndpoint([(200, {}, replies[f"job-{i}"], 0) for i in (1, 2, 3, 4)])
    try:
        settings = load_settings(aml_subscription_id="sub", aml_resource_group="rg", aml_workspace="ws",
                                 scoring_backend="aml-batch-endpoint")
        backend = aml.aml_backend(settings, FakeCredential(), arm_url=server.url)
        assert reconcile_remote(engine, backend, "aml-batch-endpoint") == ["r1", "r3"]
    finally:
        server.close()
    paths = [r["path"] for r in server.requests]
    workspace = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
    assert paths == [f"{workspace}/jobs/job-{i}?api-version=2024-04-01" for i in (1, 2, 3, 4)]
    statuses = {r: _row(engine, r)["status"] for r in ("r1", "r2", "r3", "r4", "r5", "r6", "r7")}
    assert statuses == {"r1": "failed", "r2": "submitted", "r3": "failed", "r4": "submitted", "r5": "submitted",
                        "r6": "succeeded", "r7": "submitted"}
    assert _row(engine, "r1")["error"] == f"Azure ML job job-1 Failed: see {studio}"
    assert _row(engine, "r3")["error"] == "Azure ML job job-3 Canceled"
    assert "that job owns it" in refusal(engine, "r2", retry=True)


def test_an_unanswered_job_state_leaves_the_run_and_a_missing_job_fails_it(engine):
    with engine.begin() as conn:
        conn.execute(db.runs.insert(), [_run("r1", backend_run_id="job-1", backend="aml-pipeline"),
                                        _run("r2", slot=SLOT + 1, backend_run_id="job-2", backend="aml-pipeline")])
    server = FakeEndpoint([(400, {}, "bad request", 0), (404, {}, {"error": {"message": "no such run"}}, 0)])
    try:
        path = ("/pipelines/v1.0/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
                "/workspaces/ws/PipelineRuns/PipelineEndpointSubmit/Id/0b5e6c7a")
        settings = load_settings(aml_pipeline_endpoint=server.url + path, scoring_backend="aml-pipeline")
        assert reconcile_remote(engine, aml.aml_backend(settings, FakeCredential()), "aml-pipeline") == ["r2"]
    finally:
        server.close()
    assert _row(engine, "r1")["status"] == "submitted"
    assert _row(engine, "r2")["error"].startswith("Azure ML job job-2 not found")


def test_the_timer_retries_failed_runs_below_the_attempt_limit_whose_windows_no_later_run_covered(tmp_path):
    from fleetscore.cli.runs import run_note
    from fleetscore.context import Services
    from fleetscore.runs.recovery import recover_runs

    services = Services(load_settings(sql_url=f"sqlite:///{tmp_path / 'fleet.db'}", storage=str(tmp_path / "blobs"),
                                      run_max_attempts=3))
    engine = services.engine
    r1, r2, r3 = (run_id_for_slot(SLOT + k * 3_600_000) for k in range(3))
    with engine.begin() as conn:
        conn.execute(db.runs.insert(), [
            _run(r1, status="failed", backend="local", error="boom"),
            _run(r2, slot=SLOT + 3_600_000, status="failed", backend="local", attempt=3, error="boom"),
            _run(r3, slot=SLOT + 7_200_000, status="failed", backend="local", error="x",
                 window_until=SLOT - 2 * 3_600_000)])
        db.advance_watermark(conn, SLOT - 2 * 3_600_000, 1)
    done = recover_runs(services)
    assert [(o.run_id, o.attempt, o.status) for o in done.retried] == [(r1, 2, "failed")]  # no model pack here
    row = _row(engine, r1)
    assert row["retry_reason"] == "automatic retry by the timer after attempt 1 failed: boom"
    assert row["trigger"] == "timer (retry)" and "no active model pack" in row["error"]
    assert run_note(row, clock.now_ms()) == row["retry_reason"]
    assert (_row(engine, r2)["attempt"], _row(engine, r3)["attempt"]) == (3, 1)
    services.close()
