"""Helpers shared by test modules (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sklearn.svm import OneClassSVM

from fleetscore import clock, db
from fleetscore.alerts.episodes import AlertUpdate, Persistence, update_alerts
from fleetscore.context import Services, set_services
from fleetscore.ingest.files import ingest_file
from fleetscore.predictions.index import IndexResult, index_prediction_file
from fleetscore.settings import load_settings
from fleetscore.sim.fleet import Simulation
from fleetscore.sim.simulate import simulate_fleet, write_simulation
from fleetscore.training import TrainResult, train
from scoring_job.contract import PREDICTION_SCHEMA
from scoring_job.pack import MANIFEST, write_pack

# ------------------------------------------------------------------------------ prediction files and runs
W = 300_000
"""The default window (5 minutes), ms."""
T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)
RUN_A = "run-20261123T1200Z"
RUN_B = "run-20261123T1300Z"
RUN_C, RUN_D = "run-20261123T1400Z", "run-20261123T1500Z"


def series(device: str, sensor: str, first: int, count: int, hot: set[int] = frozenset(), *, score: float = 0.5,
           status: str = "ok") -> list[dict]:
    """`count` windows of a pair from window end `first` (ms); indexes in `hot` are anomalous."""
    rows = []
    for i in range(count):
        s = float("nan") if status != "ok" else (score if i in hot else -0.5)
        rows.append({"device": device, "sensor": sensor, "window_end": first + i * W, "score": s,
                     "status": status, "error": "model failed" if status == "error" else None})
    return rows


STRONG = 5.0
"""A `graded` window's score above its strong threshold (4.0); marginal ones score 0.5 (threshold 0.1), below their
high bound (0.1 + HIGH_SHARE x 3.9: two in a row are not enough on their own)."""


def graded(first: int, count: int, marginal: set[int] = frozenset(), strong: set[int] = frozenset(),
           device: str = "d-1") -> list[dict]:
    """`count` windows of (device, temp) from `first` with a calibrated threshold 0.1 and strong threshold 4.0:
    indexes in `marginal` score 0.5 (above the threshold only), in `strong` :data:`STRONG`, the others -0.5."""
    rows = series(device, "temp", first, count, set(marginal) | set(strong))
    for i, row in enumerate(rows):
        row.update(threshold=0.1, threshold_strong=4.0, score=STRONG if i in strong else row["score"])
    return rows


def prediction_file(rows: list[dict], run_id: str, model_version: str = "v1") -> bytes:
    """A prediction file as the scoring job writes it (pyarrow, the contract's schema)."""
    frame = pd.DataFrame(rows)
    n = len(frame)
    score = frame["score"].to_numpy(dtype=np.float64) if n else np.empty(0)
    threshold = _column(frame, "threshold", 0.0)
    table = pa.table({
        "device": pa.array(frame["device"].tolist() if n else [], pa.string()),
        "sensor": pa.array(frame["sensor"].tolist() if n else [], pa.string()),
        "window_end": pa.array(frame["window_end"].tolist() if n else [], pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "n": pa.array([60] * n, pa.int64()),
        "mean": pa.array([20.0] * n), "min": pa.array([19.0] * n), "max": pa.array([21.0] * n),
        "std": pa.array([0.5] * n),
        "score": pa.array(score, pa.float64()),
        "threshold": pa.array(threshold, pa.float64()),
        "threshold_strong": pa.array(_column(frame, "threshold_strong", np.nan), pa.float64()),
        "is_anomaly": pa.array(score > threshold, pa.bool_()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "status": pa.array(frame["status"].tolist() if n else [], pa.string()),
        "error": pa.array([r["error"] for r in rows], pa.string()),
    }, schema=PREDICTION_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _column(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    """A float column of `rows` (a row without the key: `default`)."""
    if name not in frame.columns:
        return np.full(len(frame), default, dtype=np.float64)
    return frame[name].fillna(default).to_numpy(dtype=np.float64)


def put_run(engine, store, run_id: str, window_from: int, window_until: int, partitions: dict[str, int],
            status: str = "submitted", model_version: str = "v1") -> None:
    """A runs row and its manifest, as `fleetscore run` leaves them before scoring."""
    slot = window_until + 10 * 60_000
    with engine.begin() as conn:
        conn.execute(db.runs.insert().values(
            run_id=run_id, slot=slot, attempt=1, status=status, trigger="test", backend="local",
            model_version=model_version, window_from=window_from, window_until=window_until,
            partitions=len(partitions), claimed_at=clock.now_ms()))
    manifest = {"run_id": run_id, "slot": slot, "window_from": window_from, "window_until": window_until,
                "model_version": model_version, "window_minutes": 5, "created_at": "2026-11-23T12:10:00Z",
                "partitions": [{"name": name, "pairs": 1, "windows": windows} for name, windows in partitions.items()]}
    store.put(f"data/{run_id}/manifest.json", json.dumps(manifest).encode())


def put_pack(store, version: str, quantiles: dict[tuple[str, str], dict | None]) -> None:
    """A real model pack (tiny one-class SVMs) whose manifest records these training-score quantiles."""
    rng = np.random.default_rng(0)
    models = {key: OneClassSVM(nu=0.5).fit(rng.normal(size=(8, 4))) for key in quantiles}
    training = {key: {"score_quantiles": q} for key, q in quantiles.items()}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_pack(models, tmp, version=version, training=training)
        for name in [MANIFEST, *manifest["files"]]:
            store.put(f"models/{version}/{name}", (Path(tmp) / name).read_bytes())


# ------------------------------------------------------------------------------ a trained simulated fleet
def trained_fleet(tmp_path: Path, monkeypatch, *, devices: int = 6) -> tuple[Services, Simulation, TrainResult]:
    """The process's services on a SQLite file and a blob folder in `tmp_path` (6 models a partition, 2 workers,
    300 s lateness), holding a simulated fleet of `devices` × 2 sensors × 3 days (1-minute readings in 5-minute
    windows) trained on its first 2 clean days, the pack activated. Call `set_services(None)` when done."""
    for key, value in {"FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
                       "FLEETSCORE_STORAGE": str(tmp_path / "blobs"), "PARTITION_MODELS": "6",
                       "SCORING_WORKERS": "2", "LATE_ARRIVAL_SECONDS": "300"}.items():
        monkeypatch.setenv(key, value)
    services = Services(load_settings())
    set_services(services)
    sim = simulate_fleet(devices=devices, sensors=2, days=3, interval_seconds=60, seed=3, clean_days=2)
    readings, _ = write_simulation(sim, tmp_path / "fleet.parquet")
    ingest_file(services.engine, readings, window_ms=W, naive_tz=timezone.utc)
    result = train(services.engine, services.store, from_ms=None, until_ms=sim.clean_until_ms, min_windows=48,
                   algorithm="ocsvm-rbf", features=("mean", "min", "max", "std"), window_minutes=5,
                   activate=True, n_jobs=1)
    return services, sim, result


# ------------------------------------------------------------------------------ reading the database
def rows_of(engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings().all()]


def run_row(engine, run_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().one())


def watermark(engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(db.watermarks.c.value)
                            .where(db.watermarks.c.name == db.SCORING_WATERMARK)).scalar()


# ------------------------------------------------------------------------------ alerts
Q = {"q50": -1.0, "q90": -0.5, "q95": -0.3, "q99": 0.0, "max": 0.2}
"""One model's training-score quantiles (critical from 2.2 = max + 2 · (q99 − q50))."""
NO_HISTORY = pd.DataFrame(columns=["device", "sensor", "window_end", "score", "model_version", "run_id"])


def scored_frame(rows: list[dict], model_version: str = "v1", run_id: str = RUN_A) -> pd.DataFrame:
    """`series` rows as the index hands them to the episode rules: scored windows only."""
    df = pd.DataFrame(rows)
    df["threshold"] = _column(df, "threshold", 0.0)
    df["threshold_strong"] = _column(df, "threshold_strong", np.nan)
    df["is_anomaly"] = df["score"] > df["threshold"]
    df["model_version"], df["run_id"] = model_version, run_id
    return df[df["status"] == "ok"][["device", "sensor", "window_end", "score", "threshold", "threshold_strong",
                                     "is_anomaly", "model_version", "run_id"]]


def run_pure(rows, latest=None, history=NO_HISTORY, *, persistence=(1, 1), close_after=3, now=1) -> AlertUpdate:
    """One file's alert changes from the pure episode rules (every severity "low"); `persistence` (k, n)."""
    latest = pd.DataFrame(latest or [])
    update = update_alerts(scored_frame(rows), latest, history, window_ms=W, persistence=Persistence(*persistence),
                           close_after=close_after, severity_of=lambda mv, d, s, score: "low", now=now)
    return update


def fire(engine, store, settings, run_id: str, rows: list[dict], name: str = "part-00000.parquet",
         model_version: str = "v1", **kw) -> IndexResult:
    """Write `rows` as a prediction file of `run_id` and index it, as the blob trigger would; it must index."""
    key = f"predictions/{run_id}/{name}"
    store.put(key, prediction_file(rows, run_id, model_version))
    result = index_prediction_file(engine, store, settings, key, **kw)
    assert result.status == "indexed", result.error
    return result


def alerts_by_first(engine) -> list[dict]:
    return sorted(rows_of(engine, db.alerts), key=lambda a: a["first_window_end"])


def blob_doc(store, alert) -> dict:
    """The alert's JSON document as written to the store."""
    day = pd.Timestamp(alert["first_window_end"], unit="ms", tz="UTC")
    return json.loads(store.get(f"alerts/{day:%Y/%m/%d}/{alert['alert_id']}.json"))
