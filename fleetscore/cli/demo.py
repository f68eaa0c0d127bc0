"""`fleetscore demo`: the whole flow on one machine, through the Functions app's own functions.

simulate a fleet → ingest it through the Event Hub function (generated and ingested in chunks of about
CHUNK_READINGS readings, so memory does not grow with the fleet) → train on the clean first days → replay
the remaining schedule slots through the timer function (compressed time: each slot fires as soon as
the previous run is indexed) → summary with precision/recall against the injected faults → HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import azure.functions as func
import numpy as np
import pandas as pd
import sqlalchemy as sa
import typer
from azure.functions.timer import TimerRequest

from fleetscore import clock, db
from fleetscore.cli.console import StageTick, console, progress_bar, stage_ticker
from fleetscore.cli.evaluate import episode_rules
from fleetscore.context import Services, set_services
from fleetscore.evaluation.stored import evaluate_deployed
from fleetscore.host.functions import app_functions
from fleetscore.host.invocation import invocation_context
from fleetscore.ingest.windows import window_end
from fleetscore.report.write import write_report
from fleetscore.runs.slots import occurrences
from fleetscore.settings import Settings, load_settings
from fleetscore.sim.simulate import FleetStream, Simulation, stream_fleet, to_event_bodies
from fleetscore.training import TrainResult, train

EVENTS_PER_BATCH = 500
"""Events per ingest invocation, as the host delivers them (maxEventBatchSize)."""
CHUNK_READINGS = 2_000_000
"""About this many readings are simulated, encoded and ingested at a time (whole ticks of the fleet)."""


@dataclass
class DemoSummary:
    """What the demo did and how well its alerts match the injected faults (precision, recall in 0..1)."""

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
    false_per_1000_pair_days: float
    median_ttd_minutes: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def demo(
    folder: Annotated[Path, typer.Option(help="working folder (wiped first)")] = Path(".fleetscore/demo"),
    devices: int = 100, sensors: int = 5,
    days: Annotated[float, typer.Option(help="simulated days; the first --train-days train the models")] = 3.0,
    train_days: float = 2.0,
    interval_seconds: Annotated[float, typer.Option(help="seconds between a sensor's readings")] = 60.0,
    seed: int = 7,
    fault_rate: Annotated[float, typer.Option(help="injected faults per device+sensor per faulty day")] = 0.075,
    scenario: Annotated[str, typer.Option(
        help="classic (the default) or varied (cycles, trends, setpoint changes, intermittent sensors, six fault kinds)"
    )] = "classic",
    algorithm: Annotated[str | None, typer.Option(
        help="override MODEL_ALGORITHM, e.g. ocsvm-rbf (default: the library's, change-z)")] = None,
    alert_persistence: Annotated[str | None, typer.Option(
        help='override ALERT_PERSISTENCE, "k/n" (default: the library\'s)')] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """The main job: simulate a fleet, ingest, train, replay the schedule, alert, report."""
    if train_days >= days:
        raise typer.BadParameter("--train-days must be less than --days")
    with progress_bar() as bar:
        summary = run_demo(folder, devices=devices, sensors=sensors, days=days, train_days=train_days,
                           interval_seconds=interval_seconds, seed=seed, fault_rate=fault_rate, scenario=scenario,
                           algorithm=algorithm,
                           alert_persistence=alert_persistence, progress=stage_ticker(bar))
    if as_json:
        console.print_json(json.dumps(asdict(summary), default=str))
        return
    for line in summary_lines(summary):
        typer.echo(line)


def summary_lines(s: DemoSummary) -> list[str]:
    """The summary a person reads, one line per topic."""
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(s.runs_by_status.items()))
    return [
        f"fleetscore demo: {s.devices} devices × {s.sensors} sensors × {s.days:g} days in {s.folder}",
        "time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.stage_seconds.items()),
        f"readings {s.readings:,} (dead letters {s.dead_letters:,}) · models {s.models:,} "
        f"(skipped {s.skipped_models:,})",
        f"runs {s.runs} ({statuses}) · windows scored {s.windows_scored:,} (without a model {s.windows_no_model:,})",
        f"anomalous windows {s.anomalies:,} · alerts {s.alerts:,} ({s.open_alerts} open)",
        f"injected faults in the scored span {s.faults} · precision {s.precision:.2f} "
        f"({s.true_alerts}/{s.alerts} alerts match a fault) · recall {s.recall:.2f} "
        f"({s.detected_faults}/{s.faults} faults alerted)",
        f"false alerts {s.false_per_1000_pair_days:,.1f} per 1,000 pair-days · median time to detect "
        f"{s.median_ttd_minutes:.0f} min",
        f"report: {s.report}",
    ]


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time, seconds, to `stages[name]`."""
    t0 = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - t0


def run_demo(folder: Path, *, devices: int = 100, sensors: int = 5, days: float = 3.0, train_days: float = 2.0,
             interval_seconds: float = 60.0, per_event: int = 50, seed: int = 7, fault_rate: float = 0.075,
             scenario: str = "classic", algorithm: str | None = None, alert_persistence: str | None = None,
             progress: StageTick | None = None) -> DemoSummary:
    """Run the demo in `folder` (wiped first) with the library's defaults and return its summary. `algorithm` and
    `alert_persistence` override MODEL_ALGORITHM and ALERT_PERSISTENCE, as an operator comparing would."""
    tick = progress or (lambda stage, done, total: None)
    services = _fresh_services(Path(folder), algorithm=algorithm, alert_persistence=alert_persistence)
    functions = app_functions()
    stages: dict[str, float] = {}
    with _timed(stages, "simulate+ingest"):
        stream = stream_fleet(devices=devices, sensors=sensors, days=days, interval_seconds=interval_seconds,
                              seed=seed, fault_rate=fault_rate, clean_days=train_days, scenario=scenario,
                              chunk_steps=max(1, CHUNK_READINGS // (devices * sensors)))
        sim = ingest_stream(functions["ingest"].get_user_function(), stream, per_event, tick,
                            window_ms=services.settings.window_ms)
    with _timed(stages, "train"):
        trained = train_on_clean_days(services, sim, tick)
    with _timed(stages, "score+index"):
        replay_schedule(functions["schedule"].get_user_function(), services.settings, sim, tick,
                        functions["alert_outbox"].get_user_function())
    with _timed(stages, "report"):
        summary = summarize(services, sim, trained, Path(folder), devices, sensors, days)
        summary.report = write_report(services.engine, Path(folder) / "report.html", store=services.store)
    summary.stage_seconds = {k: round(v, 1) for k, v in stages.items()}
    return summary


def _fresh_services(folder: Path, *, algorithm: str | None, alert_persistence: str | None) -> Services:
    """Wipe `folder` and install services over a SQLite file and a blob folder in it, with the overrides given."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    overrides: dict = {"MODEL_ALGORITHM": algorithm} if algorithm is not None else {}
    if alert_persistence is not None:
        overrides["ALERT_PERSISTENCE"] = alert_persistence
    settings = load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder / 'fleet.db'}",
                             FLEETSCORE_STORAGE=str(folder / "blobs"), **overrides)
    services = Services(settings)
    set_services(services)
    return services


def ingest_stream(ingest_fn: Callable[..., None], stream: FleetStream, per_event: int,
                  tick: StageTick, *, window_ms: int = 300_000) -> Simulation:
    """Ingest a simulated fleet chunk by chunk through the Event Hub function `ingest_fn` (`per_event` readings per
    event body); returns the simulation's ground truth (its readings are not kept).

    Chunks go in time order, and so do the windows (of `window_ms`) within a chunk; within a window, device by device
    (`by_window_and_device`): each event carries one device's readings of a few minutes, as a device or gateway that
    uploads what it buffered sends them. A batch then fills each window it touches at once: in time order alone, a
    batch added one reading to each of many windows, and every window was recomputed from its stored readings once
    per reading interval (at 10,000 devices, a batch of 25,000 readings is half a minute of the fleet). Windows are
    the same bits whatever the order (README, Windows)."""
    sequence, done_steps = 0, 0
    for chunk in stream.chunks():
        bodies = to_event_bodies(by_window_and_device(chunk, window_ms), per_event=per_event)
        ingest_events(ingest_fn, bodies, lambda *_: None, first_sequence=sequence)
        sequence += len(bodies)
        done_steps = min(stream.steps, done_steps + (stream.chunk_steps or stream.steps))
        tick("ingest", done_steps, stream.steps)
    return stream.result()


def by_window_and_device(readings: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """`readings` (time-ordered, `ts` epoch ms) ordered by their window, then device, then time (stable: a device's
    readings of one time keep their order). The readings' key leads with ts, so the inserts of a window still go to
    a few places in its table (one per reading time), not all over it."""
    window = window_end(readings["ts"].to_numpy(np.int64), window_ms)
    order = np.lexsort((readings["ts"].to_numpy(np.int64), readings["device"].to_numpy(), window))
    return readings.iloc[order].reset_index(drop=True)


def ingest_events(ingest_fn: Callable[..., None], bodies: list[bytes], tick: StageTick, *,
                  first_sequence: int = 0) -> None:
    """Call the Event Hub function `ingest_fn` on the event bodies, EVENTS_PER_BATCH events per invocation."""
    enqueued = datetime.now(timezone.utc)
    for start in range(0, len(bodies), EVENTS_PER_BATCH):
        number = first_sequence + start
        events = [func.EventHubEvent(body=b, sequence_number=number + i, offset=str(number + i),
                                     enqueued_time=enqueued, partition_key=None)
                  for i, b in enumerate(bodies[start:start + EVENTS_PER_BATCH])]
        ingest_fn(events, context=invocation_context("ingest"))
        tick("ingest", min(start + EVENTS_PER_BATCH, len(bodies)), len(bodies))


def train_on_clean_days(services: Services, sim: Simulation, tick: StageTick) -> TrainResult:
    """Train and activate a pack on the fault-free days, and mark those days scored (the replay starts after)."""
    settings = services.settings
    trained = train(services.engine, services.store, from_ms=None, until_ms=sim.clean_until_ms,
                    min_windows=settings.model_min_windows, algorithm=settings.model_algorithm,
                    features=settings.features, window_minutes=settings.window_minutes, activate=True,
                    params=settings.model_params, progress=lambda d, t: tick("train", d, t),
                    announce=settings.announce, false_rate=settings.alert_false_rate)
    with services.engine.begin() as conn:
        db.advance_watermark(conn, sim.clean_until_ms, clock.now_ms())
    return trained


def replay_schedule(timer_fn: Callable[[TimerRequest], None], settings: Settings, sim: Simulation,
                    tick: StageTick, outbox_fn: Callable[[TimerRequest], None] | None = None) -> None:
    """Fire the timer function `timer_fn` for every schedule slot after the clean days, up to the last reading
    plus the late-arrival allowance; each run completes before the next slot fires. After each, the alert outbox's
    timer function `outbox_fn` fires too, as the host's every-minute timer would between two slots."""
    last_slot = sim.end_ms + settings.late_arrival_seconds * 1000
    slots = occurrences(settings.scoring_schedule, sim.clean_until_ms, last_slot)
    for i, slot in enumerate(slots, start=1):
        timer_fn(TimerRequest(past_due=False, schedule_status={"Last": None, "Next": clock.iso_offset(slot),
                                                                "LastUpdated": None}))
        if outbox_fn is not None:
            outbox_fn(TimerRequest(past_due=False))
        tick("runs", i, len(slots))


def summarize(services: Services, sim: Simulation, trained: TrainResult, folder: Path, devices: int, sensors: int,
              days: float) -> DemoSummary:
    """Counts from SQL, and the alerts against the simulator's faults in the scored span as `fleetscore evaluate`
    measures them (recall, precision, false alerts per 1,000 pair-days, median time to detect)."""
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
    found = evaluate_deployed(engine, services.store, sim.faults, episode_rules(services.settings))
    return DemoSummary(
        folder=folder, devices=devices, sensors=sensors, days=days, readings=int(readings), dead_letters=int(dead),
        models=trained.models, skipped_models=len(trained.skipped), runs=len(runs),
        runs_by_status=runs["status"].value_counts().to_dict(), windows_scored=int(runs["windows"].fillna(0).sum()),
        windows_no_model=int(runs["windows_no_model"].fillna(0).sum()), anomalies=int(anomalies),
        alerts=len(alerts), open_alerts=int((alerts["status"] == "open").sum()), faults=found.events,
        precision=found.precision, recall=found.recall, true_alerts=found.true_alerts,
        detected_faults=found.caught, false_per_1000_pair_days=found.false_per_1000_pair_days,
        median_ttd_minutes=found.median_ttd_minutes)
