"""Scheduled runs: slot claims, window ranges, export, the local backend and the timer function."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore import clock, db
from fleetscore.context import set_services
from fleetscore.runs.claims import claim_run, list_runs
from fleetscore.runs.export import export_run
from fleetscore.runs.manifest import read_manifest
from fleetscore.runs.service import start_run
from fleetscore.runs.slots import latest_occurrence, run_id_for_slot, slot_of_run_id, timer_slot
from fleetscore.training import train
from tests.helpers.appfuncs import function
from tests.helpers.fleet import trained_fleet

W = 300_000
HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


# --- slots ------------------------------------------------------------------------------------------

def test_timer_slot_is_the_scheduled_occurrence_not_the_wall_clock():
    sched = "0 5 * * * *"
    # fired 40 s late: still the 10:05 slot
    assert timer_slot(sched, None, ms("2026-11-23T10:05:40")) == ms("2026-11-23T10:05:00")
    # past due after 3 hours of downtime: the host passes the missed occurrence as Next
    status = {"Last": "2026-11-23T06:05:00.0012345+00:00", "Next": "2026-11-23T07:05:00+00:00",
              "LastUpdated": "2026-11-23T06:05:00.0012345+00:00"}
    assert timer_slot(sched, status, ms("2026-11-23T10:01:00")) == ms("2026-11-23T07:05:00")
    # a Next that is not an occurrence (schedule changed) or in the future falls back to the schedule
    assert timer_slot(sched, {"Next": "2026-11-23T07:06:00Z"}, ms("2026-11-23T10:06:00")) == ms("2026-11-23T10:05:00")
    assert timer_slot(sched, {"Next": "2026-11-23T11:05:00Z"}, ms("2026-11-23T10:06:00")) == ms("2026-11-23T10:05:00")
    # fired a hair early
    assert timer_slot(sched, None, ms("2026-11-23T10:04:59.500")) == ms("2026-11-23T10:05:00")
    assert run_id_for_slot(ms("2026-11-23T10:05:00")) == "20261123T100500Z"
    assert slot_of_run_id("20261123T100500Z") == ms("2026-11-23T10:05:00")
    assert latest_occurrence("0 */15 * * * *", ms("2026-11-23T10:29:59")) == ms("2026-11-23T10:15:00")


# --- claims -----------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_fifty_concurrent_claims_of_one_slot_give_one_run(pg_url):
    engine = sa.create_engine(pg_url, pool_size=50, max_overflow=0)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(db.runs.delete())
    slot = ms("2026-11-23T10:05:00")
    start = threading.Barrier(50)

    def claim(i: int):
        start.wait()
        return claim_run(engine, slot, window_ms=W, late_ms=300_000, max_lookback_ms=48 * HOUR,
                         trigger=f"t{i}", backend="local")

    with ThreadPoolExecutor(50) as pool:
        claims = list(pool.map(claim, range(50)))
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.runs.c.run_id, db.runs.c.attempt, db.runs.c.status)).all()
    assert [tuple(r) for r in rows] == [("20261123T100500Z", 1, "claimed")]
    engine.dispose()


def test_a_failed_run_or_one_whose_lease_lapsed_can_be_retried_once(sqlite_engine):
    slot = ms("2026-11-23T10:05:00")
    kw = dict(window_ms=W, late_ms=0, max_lookback_ms=HOUR, trigger="t", backend="local", lease_ms=60_000)
    first = claim_run(sqlite_engine, slot, **kw)
    assert first is not None and claim_run(sqlite_engine, slot, **kw) is None
    assert claim_run(sqlite_engine, slot, retry=True, **kw) is None  # its lease is held: no retry
    with sqlite_engine.begin() as conn:  # claimed hours ago, but its owner renews the lease: still no retry
        conn.execute(db.runs.update().values(claimed_at=clock.now_ms() - 7 * HOUR))
    assert claim_run(sqlite_engine, slot, retry=True, **kw) is None
    with sqlite_engine.begin() as conn:  # the owner stopped renewing a second ago (a killed worker)
        conn.execute(db.runs.update().values(lease_until=clock.now_ms() - 1000))
    lapsed = claim_run(sqlite_engine, slot, retry=True, **kw)
    assert lapsed is not None and lapsed.attempt == 2 and lapsed.owner != first.owner
    with sqlite_engine.begin() as conn:
        conn.execute(db.runs.update().values(status="failed", error="boom"))
    again = claim_run(sqlite_engine, slot, retry=True, reason="automatic retry by the timer", **kw)
    assert again is not None and again.attempt == 3
    assert (again.window_from, again.window_until) == (first.window_from, first.window_until)
    assert claim_run(sqlite_engine, slot, retry=True, **kw) is None
    run = list_runs(sqlite_engine).iloc[0]
    assert run["retry_reason"] == "automatic retry by the timer after attempt 2 failed: boom"
    history = json.loads(run["attempt_history"])
    assert [(h["attempt"], h["status"]) for h in history] == [(1, "failed"), (2, "failed")]
    assert history[0]["error"].startswith("lease lapsed at ") and first.owner in history[0]["error"]
    assert history[1]["retry_reason"].startswith("retried by hand (--retry) after attempt 1 failed: lease lapsed")


# --- window range of a run --------------------------------------------------------------------------

def _windows(engine, ends: list[int], pairs: list[tuple[str, str]]) -> pd.DataFrame:
    rows = [dict(device=d, sensor=s, window_end=e, n=3, sum=3.0, sumsq=3.0, min=1.0, max=1.0, updated_at=0)
            for d, s in pairs for e in ends]
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), rows)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("late_s,watermark", [(300, None), (0, "2026-11-23T08:00:00"), (420, "2026-11-23T09:55:00"),
                                              (3600, "2026-11-23T07:35:00")])
def test_run_window_range_against_an_independent_computation(sqlite_engine, tmp_path, late_s, watermark):
    from fleetscore.storage.folder import FolderStore

    slot = ms("2026-11-23T10:05:00")
    ends = list(range(ms("2026-11-23T05:00:00"), ms("2026-11-23T11:00:00") + 1, W))
    _windows(sqlite_engine, ends, [("d-1", "temp"), ("d-2", "temp"), ("d-2", "rpm")])
    wm = ms(watermark) if watermark else None
    if wm is not None:
        with sqlite_engine.begin() as conn:
            conn.execute(db.watermarks.insert().values(name=db.SCORING_WATERMARK, value=wm, updated_at=0))
    claim = claim_run(sqlite_engine, slot, window_ms=W, late_ms=late_s * 1000, max_lookback_ms=2 * HOUR,
                      trigger="t", backend="local")
    store = FolderStore(tmp_path / "blobs")
    manifest = export_run(sqlite_engine, store, claim, model_version="v1", window_ms=W, partition_models=2)
    parts = [pq.read_table(store.local_path(f"data/{claim.run_id}/{p.name}")).to_pandas()
             for p in manifest.partitions]
    exported = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"window_end": []})
    got = sorted(set(pd.to_datetime(exported["window_end"], utc=True).dt.as_unit("ms").astype("int64").tolist()))
    # independent: closed ⇔ end ≤ slot − lateness; unscored ⇔ end > watermark (before any run: within
    # the lookback of the newest closed window)
    closed = [e for e in ends if e <= slot - late_s * 1000]
    lower = wm if wm is not None else max(closed) - 2 * HOUR
    expected = [e for e in closed if e > lower]
    assert got == expected
    assert len(exported) == 3 * len(expected)
    # partitions hold whole devices: d-1 alone, then d-2's two sensors
    assert [p.pairs for p in manifest.partitions] == ([1, 2] if expected else [])
    assert read_manifest(store, claim.run_id).window_until == claim.window_until


# --- whole runs on a trained simulated fleet ----------------------------------------------------------

@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """A small simulated fleet ingested into SQLite and trained on its first 2 days (models activated)."""
    services, sim, result = trained_fleet(tmp_path, monkeypatch)
    assert result.models == 12
    yield services, sim, result.version
    set_services(None)


def _prediction_bytes(store, run_id: str) -> dict[str, bytes]:
    return {b.name: store.get(b.name) for b in store.list(f"predictions/{run_id}/")}


def test_rerunning_a_slot_rewrites_byte_identical_prediction_files(fleet):
    services, sim, _ = fleet
    slot = sim.clean_until_ms + 6 * HOUR + 5 * 60_000
    first = start_run(services, slot, trigger="test")
    assert first.status == "succeeded", first.error
    before = _prediction_bytes(services.store, first.run_id)
    assert len(before) == 2  # 6 devices x 2 sensors in partitions of <= 6 pairs
    with services.engine.begin() as conn:
        conn.execute(db.runs.update().values(status="failed"))
    again = start_run(services, slot, trigger="test", retry=True)
    assert again.claimed and again.status == "succeeded"
    assert _prediction_bytes(services.store, first.run_id) == before
    runs = list_runs(services.engine)
    assert runs["attempt"].tolist() == [2] and runs["windows"].iloc[0] == first.manifest.windows


def test_one_broken_model_makes_a_partial_run_and_the_rest_is_scored(fleet, tmp_path):
    from scoring_job.pack import load_pack, pack_from_estimators

    services, sim, version = fleet
    store = services.store
    pack = load_pack(store.local_path(f"models/{version}"))
    keys = sorted(pack.keys())
    assert len(keys) == 12
    rng = np.random.default_rng(0)
    models = {}
    for key in keys:
        n_features = 3 if key == keys[0] else 4  # the first model expects the wrong number of features
        models[key] = make_pipeline(StandardScaler(), OneClassSVM(nu=0.05)).fit(rng.normal(size=(60, n_features)))
    pack_from_estimators(models, tmp_path / "broken", version="v-broken")
    store.upload_dir(tmp_path / "broken", "models/v-broken")
    store.put("models/CURRENT", b"v-broken")
    slot = sim.clean_until_ms + 3 * HOUR + 5 * 60_000
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "partial"
    run = list_runs(services.engine).iloc[0]
    assert run["failures"] > 0
    detail = json.loads(run["failure_detail"])
    assert any(f"{keys[0][0]}/{keys[0][1]}" in k for k in detail)
    preds = pd.concat([pd.read_parquet(store.local_path(b.name)) for b in store.list(f"predictions/{outcome.run_id}/")])
    broken = (preds["device"] == keys[0][0]) & (preds["sensor"] == keys[0][1])
    assert (preds.loc[broken, "status"] == "error").all()
    assert (preds.loc[~broken, "status"] == "ok").all() and preds.loc[~broken, "score"].notna().all()


# --- the timer function through the SDK's own types ------------------------------------------------

def test_timer_function_bindings():
    spec = json.loads(function("schedule").get_function_json())
    (binding,) = spec["bindings"]
    assert binding["type"] == "timerTrigger" and binding["direction"] == "IN"
    assert binding["schedule"] == "%SCORING_SCHEDULE%"
    assert binding["useMonitor"] is True and binding.get("runOnStartup", False) is False


def test_timer_past_due_claims_the_missed_slot_once(fleet):
    from azure.functions.timer import TimerRequest

    services, sim, _ = fleet
    user_fn = function("schedule").get_user_function()
    missed = sim.clean_until_ms + 10 * HOUR + 5 * 60_000
    status = {"Last": None, "Next": datetime.fromtimestamp(missed / 1000, tz=timezone.utc).isoformat(),
              "LastUpdated": None}
    user_fn(TimerRequest(past_due=True, schedule_status=status))
    user_fn(TimerRequest(past_due=True, schedule_status=status))  # a double fire of the same slot
    runs = list_runs(services.engine)
    assert runs["run_id"].tolist() == [run_id_for_slot(missed)]
    assert runs["status"].tolist() == ["succeeded"] and runs["trigger"].tolist() == ["timer (past due)"]
    with services.engine.connect() as conn:
        wm = conn.execute(sa.select(db.watermarks.c.value)).scalar()
    assert wm == runs["window_until"].iloc[0]


def test_a_change_z_run_exports_context_scores_only_its_range_and_scores_as_the_detector(fleet):
    from fleetscore.training import load_windows
    from scoring_job import change
    from scoring_job.change import model_features
    from scoring_job.pack import load_pack

    services, sim, _ = fleet
    trained = train(services.engine, services.store, from_ms=None, until_ms=sim.clean_until_ms, min_windows=48,
                    algorithm="change-z", features=change.FEATURES, window_minutes=5, activate=True, n_jobs=1)
    slot = sim.clean_until_ms + 3 * HOUR + 5 * 60_000
    outcome = start_run(services, slot, trigger="test")
    assert outcome.status == "succeeded", outcome.error
    store, manifest = services.store, outcome.manifest
    lo, hi = manifest.window_from, manifest.window_until
    parts = pd.concat([pd.read_parquet(store.local_path(f"data/{outcome.run_id}/{p.name}"))
                       for p in manifest.partitions], ignore_index=True)
    ends = parts["window_end"].dt.as_unit("ms").array.asi8
    context_from = lo - change.LOOKBACK_WINDOWS * W
    assert (parts["context"] == (ends <= lo)).all() and parts["context"].any()
    assert ends.min() > context_from and ends.max() <= hi
    assert manifest.windows == int((~parts["context"]).sum())
    preds = pd.concat([pd.read_parquet(store.local_path(b.name))
                       for b in store.list(f"predictions/{outcome.run_id}/")], ignore_index=True)
    pred_ends = preds["window_end"].dt.as_unit("ms").array.asi8
    assert len(preds) == manifest.windows and pred_ends.min() > lo and pred_ends.max() <= hi
    # independently: the features over every stored window, then the pack's own detector per pair
    windows = load_windows(services.engine, None, hi)
    windows["window_end"] = pd.to_datetime(windows["window_end"], unit="ms", utc=True)
    feats = model_features(windows, change.FEATURES, W)
    feats = feats[feats["window_end"] > pd.Timestamp(lo, unit="ms", tz="UTC")]
    pack = load_pack(store.local_path(f"models/{trained.version}"))
    for (device, sensor), mine in preds.groupby(["device", "sensor"]):
        rows = feats[(feats["device"] == device) & (feats["sensor"] == sensor)].sort_values("window_end")
        expected = -pack.model((device, sensor)).decision_function(rows[list(change.FEATURES)].to_numpy())
        np.testing.assert_allclose(mine.sort_values("window_end")["score"], expected, rtol=1e-12, atol=1e-12)
