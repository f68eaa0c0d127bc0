"""`fleetscore demo`: the whole flow on one machine, through the Functions app's own functions.

simulate a fleet → ingest it through the Event Hub function → train on the clean first days → replay
the remaining schedule slots through the timer function (compressed time: each slot fires as soon as
the previous run is indexed) → summary with precision/recall against the injected faults → HTML report.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from fleetscore import clock, db
from fleetscore.context import Services, set_services
from fleetscore.settings import load_settings

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass
class DemoSummary:
    folder: Path
    devices: int
    sensors: int
    days: float
    readings: int
    dead_letters: int
    models: int
    skipped_models: int
    runs: int
    runs_by_status: dict[str, int]
    windows_scored: int
    windows_no_model: int
    anomalies: int
    alerts: int
    open_alerts: int
    faults: int
    precision: float
    recall: float
    true_alerts: int
    detected_faults: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def _functions() -> dict:
    """function_app's functions by name (get_functions() may run once per app object)."""
    from fleetscore.host.functions import app_functions

    return app_functions()


def run_demo(folder: Path, *, devices: int = 100, sensors: int = 5, days: float = 3.0, train_days: float = 2.0,
             interval_seconds: float = 60.0, per_event: int = 50, seed: int = 7, fault_rate: float = 0.075,
             nu: float = 0.01,
             alert_min_windows: int = 3, progress: Progress | None = None) -> DemoSummary:
    """Run the demo in `folder` (wiped first) and return its summary.

    The demo tunes two settings as an operator would for this fleet: `nu` = 0.01 (the one-class SVM's
    expected outlier share; the library default 0.05 flags ~6 % of normal windows) and
    ALERT_MIN_WINDOWS = 3 (the simulator's faults last ≥ 15 minutes, i.e. ≥ 3 windows, while an
    isolated anomalous window is the models' noise).
    """
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from fleetscore.report.write import write_report
    from fleetscore.runs.slots import occurrences
    from fleetscore.sim.simulate import simulate_fleet, to_event_bodies
    from fleetscore.training import train

    tick = progress or (lambda stage, done, total: None)
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    settings = load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder / 'fleet.db'}",
                             FLEETSCORE_STORAGE=str(folder / "blobs"), MODEL_PARAMS={"nu": nu},
                             ALERT_MIN_WINDOWS=alert_min_windows)
    services = Services(settings)
    set_services(services)
    fns = _functions()
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    sim = simulate_fleet(devices=devices, sensors=sensors, days=days, interval_seconds=interval_seconds,
                         seed=seed, fault_rate=fault_rate, clean_days=train_days)
    stages["simulate"] = time.perf_counter() - t0

    # ingest: the Event Hub function, in batches of maxEventBatchSize events as the host delivers them
    t0 = time.perf_counter()
    bodies = to_event_bodies(sim.readings, per_event=per_event)
    ingest_fn = fns["ingest"].get_user_function()
    batch = 500
    enqueued = datetime.now(timezone.utc)
    for start in range(0, len(bodies), batch):
        events = [func.EventHubEvent(body=b, sequence_number=start + i, offset=str(start + i),
                                     enqueued_time=enqueued, partition_key=None)
                  for i, b in enumerate(bodies[start:start + batch])]
        ingest_fn(events)
        tick("ingest", min(start + batch, len(bodies)), len(bodies))
    stages["ingest"] = time.perf_counter() - t0

    # train on the clean days; the replay starts after them
    t0 = time.perf_counter()
    trained = train(services.engine, services.store, from_ms=None, until_ms=sim.clean_until_ms,
                    min_windows=settings.model_min_windows, algorithm=settings.model_algorithm,
                    features=settings.features, window_minutes=settings.window_minutes, activate=True,
                    params=settings.model_params, progress=lambda d, t: tick("train", d, t))
    with services.engine.begin() as conn:  # the training days count as scored
        db.advance_watermark(conn, sim.clean_until_ms, clock.now_ms())
    stages["train"] = time.perf_counter() - t0

    # replay the schedule slots through the timer function
    t0 = time.perf_counter()
    timer_fn = fns["schedule"].get_user_function()
    last_slot = sim.end_ms + settings.late_arrival_seconds * 1000
    slots = occurrences(settings.scoring_schedule, sim.clean_until_ms, last_slot)
    for i, slot in enumerate(slots, start=1):
        timer_fn(TimerRequest(past_due=False, schedule_status={"Last": None, "Next": clock.iso_offset(slot),
                                                                "LastUpdated": None}))
        tick("runs", i, len(slots))
    stages["score+index"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = summarize(services, sim, trained.models, len(trained.skipped), folder, devices, sensors, days)
    summary.report = write_report(services.engine, folder / "report.html", store=services.store)
    stages["report"] = time.perf_counter() - t0
    summary.stage_seconds = {k: round(v, 1) for k, v in stages.items()}
    return summary


def summarize(services: Services, sim, models: int, skipped: int, folder: Path, devices: int, sensors: int,
              days: float) -> DemoSummary:
    """Counts from SQL and alert precision/recall against the simulator's faults in the scored span."""
    from fleetscore.sim.evaluate import match_alerts

    engine = services.engine
    with engine.connect() as conn:
        runs = pd.DataFrame(conn.execute(sa.select(db.runs.c.status, db.runs.c.windows, db.runs.c.windows_no_model,
                                                   db.runs.c.window_until)).all(),
                            columns=["status", "windows", "windows_no_model", "window_until"])
        alerts = pd.DataFrame(conn.execute(sa.select(db.alerts.c.device, db.alerts.c.sensor, db.alerts.c.status,
                                                     db.alerts.c.first_window_end,
                                                     db.alerts.c.last_window_end)).all(),
                              columns=["device", "sensor", "status", "first_window_end", "last_window_end"])
        anomalies = conn.execute(sa.select(sa.func.count()).select_from(db.anomalies)).scalar()
        readings = conn.execute(sa.select(sa.func.count()).select_from(db.readings)).scalar()
        dead = conn.execute(sa.select(sa.func.count()).select_from(db.dead_letters)).scalar()
    scored_until = int(runs["window_until"].max()) if len(runs) else sim.clean_until_ms
    faults = sim.faults[sim.faults["start"] <= scored_until]
    match = match_alerts(alerts, faults, services.settings.window_ms)
    return DemoSummary(
        folder=folder, devices=devices, sensors=sensors, days=days, readings=int(readings), dead_letters=int(dead),
        models=models, skipped_models=skipped, runs=len(runs),
        runs_by_status=runs["status"].value_counts().to_dict(), windows_scored=int(runs["windows"].fillna(0).sum()),
        windows_no_model=int(runs["windows_no_model"].fillna(0).sum()), anomalies=int(anomalies),
        alerts=len(alerts), open_alerts=int((alerts["status"] == "open").sum()), faults=len(faults),
        precision=match.precision, recall=match.recall, true_alerts=match.true_alerts,
        detected_faults=match.detected_faults)
