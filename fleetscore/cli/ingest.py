"""`fleetscore ingest` (readings from files) and `fleetscore simulate` (a fleet to a file or Event Hubs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from fleetscore.cli.console import console, err, progress_bar, services, settings_or_exit
from fleetscore.context import Services
from fleetscore.ingest.deadletter import replay_deadletters
from fleetscore.ingest.files import count_rows, ingest_file
from fleetscore.ingest.store import IngestResult
from fleetscore.sim.simulate import (
    SCENARIOS,
    Simulation,
    send_to_eventhub,
    simulate_fleet,
    to_event_bodies,
    write_simulation,
)


def ingest(
    files: Annotated[list[Path] | None, typer.Argument(exists=True, dir_okay=False,
                                                       help="CSV, JSON lines or Parquet")] = None,
    timezone_name: Annotated[str, typer.Option("--timezone", help="zone of naive timestamps in files")] = "UTC",
    chunk_rows: Annotated[int, typer.Option(help="readings per transaction")] = 50_000,
    replay_deadletter: Annotated[bool, typer.Option(
        "--replay-deadletter", help="ingest the Event Hub batches the ingest function kept in deadletter/pending/ "
                                    "(idempotent; each replayed batch moves to deadletter/replayed/)")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load readings from files through the same validation and windowing as the ingest function."""
    if not files and not replay_deadletter:
        raise typer.BadParameter("give files to load, or --replay-deadletter")
    try:
        zone = ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {timezone_name!r}") from None
    svc = services()
    if replay_deadletter:
        _replay(svc, as_json)
    if files:
        _load_files(svc, files, zone, chunk_rows, as_json)


def _replay(svc: Services, as_json: bool) -> None:
    """Replay the pending dead-lettered batches; exit 1 when some stay pending."""
    try:
        summary = replay_deadletters(svc.engine, svc.store, window_ms=svc.settings.window_ms)
    except Exception as exc:  # a transient database error stops the pass: nothing was moved that failed
        err.print(f"[red]replay stopped: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    doc = {"replayed": len(summary.replayed), "failed": summary.failed, "read": summary.result.received,
           "stored": summary.result.stored, "duplicates": summary.result.duplicates,
           "dead_lettered": summary.result.dead_lettered, "windows": summary.result.windows}
    if as_json:
        console.print_json(json.dumps(doc))
    else:
        console.print(" ".join(f"{k}={v:,}" for k, v in doc.items() if k != "failed"))
        for key, error in summary.failed.items():
            err.print(f"[red]{key}: {error}[/red]")
    if summary.failed:
        raise typer.Exit(1)


def _load_files(svc: Services, files: list[Path], zone: ZoneInfo, chunk_rows: int, as_json: bool) -> None:
    """Ingest readings files, one progress bar each, and print the totals."""
    total = IngestResult()
    with progress_bar() as bar:
        for path in files:
            task = bar.add_task(f"ingest {path.name}", total=count_rows(path))
            total += ingest_file(svc.engine, path, window_ms=svc.settings.window_ms, naive_tz=zone,
                                 chunk_rows=chunk_rows, progress=lambda n, t=task: bar.advance(t, n))
    summary = {"read": total.received, "stored": total.stored, "duplicates": total.duplicates,
               "dead_lettered": total.dead_lettered, "late": total.late, "windows": total.windows}
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        console.print(" ".join(f"{k}={v:,}" for k, v in summary.items()))


def simulate(
    out: Annotated[Path, typer.Option(help="readings file: .csv, .jsonl or .parquet")] = Path("fleet.parquet"),
    devices: int = 100,
    sensors: Annotated[int, typer.Option(help="measured sensors per device (varied adds a setpoint sensor)")] = 5,
    days: Annotated[float | None, typer.Option(help="days simulated (default: classic 4, varied 7)")] = None,
    interval_seconds: Annotated[float, typer.Option(help="seconds between a sensor's readings")] = 60.0,
    seed: int = 0,
    fault_rate: Annotated[float | None, typer.Option(
        help="faults per device+sensor per faulty day (default: classic 0.075, varied 0.1)")] = None,
    clean_days: Annotated[float | None, typer.Option(
        help="days at the start without faults (default: classic 2, varied 4)")] = None,
    scenario: Annotated[str, typer.Option(
        help="classic (one daily cycle, normal noise) or varied (weekly cycles, setpoint changes, heavy tails, "
             "irregular and intermittent sensors, gaps, subtle to gross faults)")] = "classic",
    to: Annotated[str, typer.Option(help="file or eventhub")] = "file",
) -> None:
    """Simulate a fleet (baselines, cycles, noise, injected faults) with a ground-truth file."""
    if to not in ("file", "eventhub"):
        raise typer.BadParameter("--to must be file or eventhub")
    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"--scenario must be one of {', '.join(SCENARIOS)}")
    sim = simulate_fleet(devices=devices, sensors=sensors, days=days, interval_seconds=interval_seconds,
                         seed=seed, fault_rate=fault_rate, clean_days=clean_days, scenario=scenario)
    if to == "eventhub":
        _send_to_eventhub(sim)
        return
    readings_path, faults_path = write_simulation(sim, out)
    console.print(f"{len(sim.readings):,} readings → {readings_path}\n{len(sim.faults):,} faults → {faults_path}")
    if len(sim.changes) or len(sim.outliers):
        console.print(f"{len(sim.changes):,} normal setpoint changes, {len(sim.outliers):,} unlabelled training "
                      f"outliers → beside them (.changes.csv, .outliers.csv)")


def _send_to_eventhub(sim: Simulation) -> None:
    """Send the simulated readings to EVENTHUB_CONNECTION's hub (exit 2 when it is not set)."""
    s = settings_or_exit()
    if s.eventhub_connection is None:
        err.print("[red]EVENTHUB_CONNECTION is not set; --to eventhub needs it[/red]")
        raise typer.Exit(2)
    with progress_bar() as bar:
        task = bar.add_task("send to Event Hubs", total=len(sim.readings))
        sent = send_to_eventhub(s.eventhub_connection.get_secret_value(), s.eventhub_name,
                                to_event_bodies(sim.readings), progress=lambda n: bar.advance(task, n))
    console.print(f"sent {sent:,} readings to Event Hub {s.eventhub_name}")
