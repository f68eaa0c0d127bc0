"""Training in chunks of whole devices gives the same pack as training the fleet at once, on a fleet whose devices
announce setpoint changes (the change-z default) and with pairs too thin to fit."""

from __future__ import annotations

import json
from datetime import timezone

import pytest

from fleetscore import training
from fleetscore.ingest.files import ingest_file
from fleetscore.sim.simulate import simulate_fleet, write_simulation
from fleetscore.storage.folder import FolderStore
from scoring_job import change
from tests.helpers.fleet import W


@pytest.fixture
def fleet(sqlite_engine, tmp_path):
    sim = simulate_fleet(devices=7, sensors=3, days=2.5, interval_seconds=60, seed=11, clean_days=2,
                         scenario="varied")
    readings, _ = write_simulation(sim, tmp_path / "fleet.parquet")
    ingest_file(sqlite_engine, readings, window_ms=W, naive_tz=timezone.utc)
    return sqlite_engine, sim


def _train(engine, sim, folder, **kw) -> tuple[training.TrainResult, dict]:
    store = FolderStore(folder)
    result = training.train(engine, store, from_ms=None, until_ms=sim.clean_until_ms, min_windows=400,
                            algorithm="change-z", features=change.FEATURES, window_minutes=5, activate=True,
                            n_jobs=1, **kw)
    return result, json.loads(store.get(f"models/{result.version}/manifest.json"))


def test_training_in_device_chunks_writes_the_same_pack(fleet, tmp_path, monkeypatch):
    engine, sim = fleet
    whole, whole_manifest = _train(engine, sim, tmp_path / "whole")
    monkeypatch.setattr(training, "TRAIN_CHUNK_PAIRS", 7)  # two devices (4 pairs each: 3 sensors + setpoint) at most
    chunks = training.device_chunks(engine, None, sim.clean_until_ms, max_pairs=7)
    assert [pairs for *_, pairs in chunks] == [4] * 7 and chunks[0][0] == chunks[0][1]
    calls = []
    chunked, chunked_manifest = _train(engine, sim, tmp_path / "chunked",
                                       progress=lambda done, total: calls.append((done, total)))
    assert chunked_manifest["models"] == whole_manifest["models"]
    assert chunked_manifest["change"] == whole_manifest["change"]
    assert (chunked.models, chunked.skipped, chunked.windows) == (whole.models, whole.skipped, whole.windows)
    assert whole.skipped  # some pairs are too thin at min_windows=400: they are skipped the same way
    assert calls[-1] == (28, 28) and [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("window_minutes, sparse", [(5, True), (15, False)])
def test_a_sensor_reporting_less_often_than_once_per_window_is_reported_sparse(sqlite_engine, tmp_path,
                                                                               window_minutes, sparse):
    """Readings every 15 minutes fill a third of the 5-minute windows: every model is sparse, with that coverage;
    in 15-minute windows none is."""
    sim = simulate_fleet(devices=2, sensors=2, days=2, interval_seconds=900, seed=5, clean_days=2, missing_rate=0.0)
    readings, _ = write_simulation(sim, tmp_path / "fleet.parquet")
    ingest_file(sqlite_engine, readings, window_ms=window_minutes * 60_000, naive_tz=timezone.utc)
    result = training.train(sqlite_engine, FolderStore(tmp_path / "store"), from_ms=None, until_ms=None,
                            min_windows=20, algorithm="ocsvm-rbf", features=("mean", "min", "max", "std"),
                            window_minutes=window_minutes, activate=False, n_jobs=1)
    assert result.models == 4
    if sparse:
        assert sorted(result.sparse) == sorted(set(zip(sim.readings["device"], sim.readings["sensor"], strict=True)))
        assert all(c == pytest.approx(1 / 3, abs=0.01) for c in result.sparse.values())
    else:
        assert result.sparse == {}
