"""A change-z run's export sends only the context its features read (every pair's baseline, the announce sensors'
longer lookback), and the scoring job's features from those partitions are the features over every stored window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleetscore import db
from fleetscore.runs.claims import claim_run
from fleetscore.runs.export import export_run
from fleetscore.storage.folder import FolderStore
from fleetscore.storage.paths import partition_key
from scoring_job import change
from scoring_job.change import model_features
from scoring_job.features import window_features
from scoring_job.pack import Lookback, load_pack, lookback, write_pack
from scoring_job.score import partition_features, read_partition
from scoring_job.train import fit_fleet

W = 300_000
SLOT = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000 + 300_000
UNTIL = SLOT - SLOT % W
RANGE = 12
LO = UNTIL - RANGE * W
STEP = LO - 10 * W  # d-1's setpoint steps in the window ending here: 10 windows before the run's range


def _stored_windows() -> pd.DataFrame:
    """100 windows of d-1 (temp, setpoint) and d-2 (temp) up to UNTIL; d-1's setpoint 70 then 80 from STEP."""
    rng = np.random.default_rng(4)
    rows = []
    for device, sensor in (("d-1", "setpoint"), ("d-1", "temp"), ("d-2", "temp")):
        for end in UNTIL - W * np.arange(100)[::-1]:
            if sensor == "setpoint":
                value = 70.0 if end < STEP else 80.0
                values = [70.0, 80.0] if end == STEP else [value, value]
            else:
                values = list(20.0 + rng.normal(0, 1, 5))
            rows.append({"device": device, "sensor": sensor, "window_end": int(end), "n": len(values),
                         "sum": float(sum(values)), "sumsq": float(sum(v * v for v in values)),
                         "min": min(values), "max": max(values), "updated_at": 0})
    return pd.DataFrame(rows)


def test_the_export_sends_each_pairs_baseline_and_the_announce_sensors_lookback(engine, tmp_path):
    stored = _stored_windows()
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), stored.to_dict("records"))
    as_features = stored.assign(window_end=pd.to_datetime(stored["window_end"], unit="ms", utc=True).dt.as_unit("ms"))
    train = change.change_features(window_features(as_features[as_features["window_end"]
                                                                <= pd.Timestamp(LO, unit="ms", tz="UTC")]), W)
    fit = fit_fleet(train, algorithm="change-z", feature_names=change.FEATURES, min_windows=40, n_jobs=1, window_ms=W)
    manifest = write_pack(fit.models, tmp_path / "pack", version="cz", features=change.FEATURES, training=fit.training)
    pack = load_pack(tmp_path / "pack")
    context = lookback(manifest)
    assert context == Lookback(windows=change.CONTEXT_WINDOWS, announce=("setpoint",),
                               announce_windows=change.LOOKBACK_WINDOWS)

    store = FolderStore(tmp_path / "blobs")
    claim = claim_run(engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=RANGE * W, trigger="test",
                      backend="local")
    run = export_run(engine, store, claim, model_version="cz", window_ms=W, partition_models=10, lookback=context)
    assert (claim.window_from, claim.window_until) == (LO, UNTIL)
    parts = [read_partition(str(store.local_path(partition_key(claim.run_id, p.name)))) for p in run.partitions]
    rows = pd.concat(parts, ignore_index=True)
    context_rows = rows[rows["context"]].groupby(["device", "sensor"], observed=True).size().to_dict()
    assert context_rows == {("d-1", "setpoint"): change.LOOKBACK_WINDOWS, ("d-1", "temp"): change.CONTEXT_WINDOWS,
                            ("d-2", "temp"): change.CONTEXT_WINDOWS}
    assert run.windows == 3 * RANGE == int((~rows["context"]).sum())

    got = pd.concat([partition_features(part, pack) for part in parts], ignore_index=True)
    every = model_features(as_features, change.FEATURES, W)
    expected = every[every["window_end"] > pd.Timestamp(LO, unit="ms", tz="UTC")]
    key = ["device", "sensor", "window_end"]
    got = got.astype({"device": str, "sensor": str}).sort_values(key, ignore_index=True)
    expected = expected.astype({"device": str, "sensor": str}).sort_values(key, ignore_index=True)
    for column in ("window_end", "mean", "std", "mean_change", "settling"):
        pd.testing.assert_series_equal(got[column], expected[column], check_exact=True)
    settling = got[got["settling"]]
    assert set(settling["device"]) == {"d-1"}  # the change announced before the range still settles d-1
    # the step's window (readings of both levels) and the next (a new mean) announce: it settles until 18 after that
    assert settling["window_end"].max() == pd.Timestamp(STEP + change.SETTLE_WINDOWS * W, unit="ms", tz="UTC")
    assert got.loc[~got["settling"], "mean_change"].notna().all()  # every scored window has its baseline


@pytest.mark.parametrize("announce_windows", [0, 6])
def test_without_a_longer_announce_lookback_the_query_is_the_plain_one(engine, tmp_path, announce_windows):
    stored = _stored_windows()
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), stored.to_dict("records"))
    claim = claim_run(engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=RANGE * W, trigger="test",
                      backend="local")
    store = FolderStore(tmp_path / "blobs")
    run = export_run(engine, store, claim, model_version="v", window_ms=W, partition_models=10,
                     lookback=Lookback(6, ("setpoint",), announce_windows))
    rows = pd.concat([read_partition(str(store.local_path(partition_key(claim.run_id, p.name))))
                      for p in run.partitions], ignore_index=True)
    assert rows[rows["context"]].groupby(["device", "sensor"], observed=True).size().eq(6).all()
