"""The `fleetscore` command line: the outermost layer over the core (typer + rich)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetscore.cli.alerts import alerts_app
from fleetscore.cli.aml import aml_app
from fleetscore.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Scheduled batch scoring of a whole IoT fleet's anomaly models.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="The SQL schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(aml_app, name="aml")
app.add_typer(alerts_app, name="alerts")
console = Console()
err = Console(stderr=True)


def fmt_ms(ms: int | None) -> str:
    """Epoch ms → `2026-11-23T10:05:00Z` (or '-')."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> int | None:
    """A CLI time (ISO-8601; naive means UTC) → epoch ms."""
    if text is None:
        return None
    from fleetscore.ingest.readings import InvalidReading, parse_ts

    try:
        return parse_ts(text, naive_tz=timezone.utc)
    except InvalidReading as exc:
        raise typer.BadParameter(exc.detail) from None


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def services():
    from fleetscore.context import Services, set_services

    svc = Services(settings())
    set_services(svc)
    return svc


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def stage_ticker(bar: Progress):
    """A `progress(stage, done, total)` callback that keeps one bar per stage."""
    tasks: dict[str, int] = {}

    def tick(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return tick


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    from fleetscore.logs import configure_logging

    configure_logging(logging.INFO if verbose else logging.WARNING)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of FLEETSCORE_SQL_URL."""
    from fleetscore import db

    s = settings()
    engine = db.create_db_engine(s.sql_url)
    applied = db.upgrade(engine)
    from sqlalchemy.engine import make_url

    where = make_url(s.sql_url).render_as_string(hide_password=True)
    console.print(f"schema at {where}: " + (f"applied migration(s) {applied}" if applied else "up to date"))


@db_app.command("sql")
def db_sql(dialect: Annotated[str, typer.Option(help="mssql (T-SQL), postgresql or sqlite")] = "mssql") -> None:
    """Print the schema's DDL (T-SQL for a DBA with --dialect mssql)."""
    from fleetscore import db

    if dialect not in ("mssql", "postgresql", "sqlite"):
        raise typer.BadParameter("dialect must be mssql, postgresql or sqlite")
    sys.stdout.write(db.ddl(dialect))


@db_app.command("watermark")
def db_watermark(
    set_to: Annotated[str | None, typer.Option("--set", help="move the scoring watermark forward to this time")] = None,
) -> None:
    """Show the scoring watermark (newest window end already scored), or move it forward — e.g. to the end
    of the training range, so the first run does not score the windows the models were trained on."""
    from fleetscore import clock, db

    svc = services()
    with svc.engine.begin() as conn:
        if set_to is not None:
            db.advance_watermark(conn, parse_time(set_to), clock.now_ms())
        value = db.read_watermark(conn)
    console.print(f"scoring watermark: {fmt_ms(value)}")


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="CSV, JSON lines or Parquet")],
    timezone_name: Annotated[str, typer.Option("--timezone", help="zone of naive timestamps in files")] = "UTC",
    chunk_rows: Annotated[int, typer.Option(help="readings per transaction")] = 50_000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load readings from files through the same validation and windowing as the ingest function."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from fleetscore.ingest.files import count_rows, ingest_file
    from fleetscore.ingest.store import IngestResult

    try:
        zone = ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {timezone_name!r}") from None
    svc = services()
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


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="readings file: .csv, .jsonl or .parquet")] = Path("fleet.parquet"),
    devices: int = 100, sensors: int = 5, days: float = 4.0,
    interval_seconds: Annotated[float, typer.Option(help="seconds between a sensor's readings")] = 60.0,
    seed: int = 0,
    fault_rate: Annotated[float, typer.Option(help="faults per device+sensor per faulty day")] = 0.075,
    clean_days: Annotated[float, typer.Option(help="days at the start without faults")] = 2.0,
    to: Annotated[str, typer.Option(help="file or eventhub")] = "file",
) -> None:
    """Simulate a fleet (baselines, daily cycles, noise, injected faults) with a ground-truth file."""
    from fleetscore.sim.simulate import send_to_eventhub, simulate_fleet, to_event_bodies, write_simulation

    sim = simulate_fleet(devices=devices, sensors=sensors, days=days, interval_seconds=interval_seconds,
                         seed=seed, fault_rate=fault_rate, clean_days=clean_days)
    if to == "eventhub":
        s = settings()
        if s.eventhub_connection is None:
            err.print("[red]EVENTHUB_CONNECTION is not set; --to eventhub needs it[/red]")
            raise typer.Exit(2)
        with progress_bar() as bar:
            task = bar.add_task("send to Event Hubs", total=len(sim.readings))
            sent = send_to_eventhub(s.eventhub_connection.get_secret_value(), s.eventhub_name,
                                    to_event_bodies(sim.readings), progress=lambda n: bar.advance(task, n))
        console.print(f"sent {sent:,} readings to Event Hub {s.eventhub_name}")
        return
    if to != "file":
        raise typer.BadParameter("--to must be file or eventhub")
    readings_path, faults_path = write_simulation(sim, out)
    console.print(f"{len(sim.readings):,} readings → {readings_path}\n{len(sim.faults):,} faults → {faults_path}")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Last runs, failures, open alerts, ingest figures and the model pack in force."""
    from fleetscore.cli.status import alerts_status, ingest_status, model_status, runs_status

    svc = services()
    doc = {"ingest": ingest_status(svc.engine), "runs": runs_status(svc.engine), "alerts": alerts_status(svc.engine),
           "model_pack": model_status(svc.store)}
    if as_json:
        console.print_json(json.dumps(doc, default=str))
        return
    ing = doc["ingest"]
    table = Table(title="ingest", show_header=False)
    table.add_row("readings", f"{ing['readings']:,}", f"{fmt_ms(ing['first_reading_ms'])} … "
                  f"{fmt_ms(ing['last_reading_ms'])}")
    table.add_row("windows", f"{ing['windows']:,}", f"{ing['pairs']:,} device+sensor pairs, newest "
                  f"{fmt_ms(ing['newest_window_end_ms'])}")
    table.add_row("late readings", f"{ing['late_readings']:,}", f"watermark {fmt_ms(ing['watermark_ms'])}")
    reasons = ", ".join(f"{k}={v:,}" for k, v in ing["dead_letters_by_reason"].items()) or "-"
    table.add_row("dead letters", f"{ing['dead_letters']:,}", reasons)
    pack = doc["model_pack"]
    table.add_row("model pack", pack.get("version") or "none (fleetscore train --activate)",
                  f"{pack.get('models', 0):,} models " + ", ".join(f"{k}={v}" for k, v in
                                                              (pack.get("algorithms") or {}).items()))
    console.print(table)
    runs_doc = doc["runs"]
    table = Table(title="last runs  (" + (", ".join(f"{k} {v}" for k, v in sorted(runs_doc["by_status"].items()))
                                         or "none yet") + ")")
    for col in ("run", "status", "backend", "models", "windows", "no model", "failures", "took s", "error"):
        table.add_column(col)
    for r in runs_doc["last"]:
        took = (r["finished_at"] - r["claimed_at"]) / 1000 if r["finished_at"] else None
        table.add_row(r["run_id"], r["status"], r["backend"] or "-", _n(r["models"]), _n(r["windows"]),
                      _n(r["windows_no_model"]), _n(r["failures"]), f"{took:.1f}" if took is not None else "-",
                      (r["error"] or "")[:60])
    console.print(table)
    al = doc["alerts"]
    table = Table(title="open alerts  (" + (", ".join(f"{k} {v}" for k, v in sorted(al["by_status"].items()))
                                           or "none")
                  + (f"; undelivered to the webhook {al['undelivered']}" if svc.settings.alert_webhook_url else "")
                  + ")")
    for col in ("alert", "device", "sensor", "severity", "windows", "max score", "first", "last"):
        table.add_column(col)
    for a in al["open"]:
        table.add_row(a["alert_id"], a["device"], a["sensor"], a["severity"], str(a["windows"]),
                      f"{a['max_score']:.3f}", fmt_ms(a["first_window_end"]), fmt_ms(a["last_window_end"]))
    console.print(table)


@app.command()
def train(
    from_: Annotated[str | None, typer.Option("--from", help="oldest window end (exclusive), ISO-8601")] = None,
    until: Annotated[str | None, typer.Option(help="newest window end (inclusive), ISO-8601")] = None,
    min_windows: Annotated[int | None, typer.Option(help="skip pairs with fewer windows")] = None,
    algorithm: Annotated[str | None, typer.Option(help="ocsvm-rbf, ocsvm-linear, isolation-forest, lof, "
                                                       "elliptic-envelope")] = None,
    activate: Annotated[bool, typer.Option(help="point models/CURRENT at the new pack")] = False,
) -> None:
    """Fit one model per device+sensor on its windows and write a new model-pack version."""
    from fleetscore.training import train as train_fleet

    svc = services()
    s = svc.settings
    with progress_bar() as bar:
        task = bar.add_task("train", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = train_fleet(svc.engine, svc.store, from_ms=parse_time(from_), until_ms=parse_time(until),
                                 min_windows=min_windows or s.model_min_windows,
                                 algorithm=algorithm or s.model_algorithm, features=s.features,
                                 window_minutes=s.window_minutes, activate=activate, params=s.model_params,
                                 progress=tick)
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    console.print(f"model pack {result.version}: {result.models:,} models from {result.windows:,} windows"
                  + (", active" if result.activated else " (not active: use --activate)"))
    if result.skipped:
        console.print(f"skipped {len(result.skipped):,} pair(s):")
        for (device, sensor), why in sorted(result.skipped.items())[:50]:
            console.print(f"  {device}/{sensor}: {why}")
        if len(result.skipped) > 50:
            console.print(f"  … and {len(result.skipped) - 50:,} more")


@app.command()
def run(
    slot: Annotated[str | None, typer.Option(help="schedule slot (ISO-8601); default the latest occurrence")] = None,
    retry: Annotated[bool, typer.Option(help="re-run a failed or partial run of the slot")] = False,
) -> None:
    """Run the scoring of one schedule slot now, as the timer would (claim, export, score, index)."""
    from fleetscore.clock import now_ms
    from fleetscore.runs.service import start_run
    from fleetscore.runs.slots import latest_occurrence

    svc = services()
    slot_ms = parse_time(slot) if slot else latest_occurrence(svc.settings.scoring_schedule, now_ms())
    with progress_bar() as bar:
        tick = stage_ticker(bar)
        outcome = start_run(svc, slot_ms, trigger="cli", retry=retry, progress=tick)
    if not outcome.claimed:
        err.print(f"run {outcome.run_id} is already claimed (use --retry to re-run a failed or partial run)")
        raise typer.Exit(1)
    m = outcome.manifest
    console.print(f"run {outcome.run_id}: {outcome.status}"
                  + (f", {m.pairs:,} models, {m.windows:,} windows in {len(m.partitions)} partition(s)" if m else "")
                  + (f" — {outcome.error}" if outcome.error else ""))
    if outcome.status == "failed":
        raise typer.Exit(1)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(help="working folder (wiped first)")] = Path(".fleetscore/demo"),
    devices: int = 100, sensors: int = 5,
    days: Annotated[float, typer.Option(help="simulated days; the first --train-days train the models")] = 3.0,
    train_days: float = 2.0,
    interval_seconds: Annotated[float, typer.Option(help="seconds between a sensor's readings")] = 60.0,
    seed: int = 7,
    fault_rate: Annotated[float, typer.Option(help="injected faults per device+sensor per faulty day")] = 0.075,
    nu: Annotated[float, typer.Option(help="one-class SVM nu (expected outlier share) for the demo's models")] = 0.01,
    alert_min_windows: Annotated[int, typer.Option(help="anomalous windows in a row that open an alert")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """The main job: simulate a fleet, ingest, train, replay the schedule, alert, report."""
    from dataclasses import asdict

    from fleetscore.cli.demo import run_demo

    if train_days >= days:
        raise typer.BadParameter("--train-days must be less than --days")
    with progress_bar() as bar:
        tick = stage_ticker(bar)
        s = run_demo(folder, devices=devices, sensors=sensors, days=days, train_days=train_days,
                     interval_seconds=interval_seconds, seed=seed, fault_rate=fault_rate, nu=nu,
                     alert_min_windows=alert_min_windows, progress=tick)
    if as_json:
        console.print_json(json.dumps(asdict(s), default=str))
        return
    typer.echo(f"fleetscore demo: {s.devices} devices × {s.sensors} sensors × {s.days:g} days "
                  f"in {s.folder}")
    typer.echo("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.stage_seconds.items()))
    typer.echo(f"readings {s.readings:,} (dead letters {s.dead_letters:,}) · models {s.models:,} "
                  f"(skipped {s.skipped_models:,})")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(s.runs_by_status.items()))
    typer.echo(f"runs {s.runs} ({statuses}) · windows scored {s.windows_scored:,} "
                  f"(without a model {s.windows_no_model:,})")
    typer.echo(f"anomalous windows {s.anomalies:,} · alerts {s.alerts:,} ({s.open_alerts} open)")
    typer.echo(f"injected faults in the scored span {s.faults} · precision {s.precision:.2f} "
                  f"({s.true_alerts}/{s.alerts} alerts match a fault) · recall {s.recall:.2f} "
                  f"({s.detected_faults}/{s.faults} faults alerted)")
    typer.echo(f"report: {s.report}")


@app.command()
def report(
    run: Annotated[str | None, typer.Option("--run", help="focus on one run id")] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("fleetscore-report.html"),
) -> None:
    """One self-contained HTML file with plots: alerted pairs, runs over time, dead letters."""
    from fleetscore.report.write import write_report

    svc = services()
    try:
        path = write_report(svc.engine, out, store=svc.store, run_id=run)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"report: {path}")


@app.command()
def runs(limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recent runs, newest first."""
    from fleetscore.runs.claims import list_runs

    frame = list_runs(services().engine, limit)
    if as_json:
        console.print_json(frame.to_json(orient="records"))
        return
    table = Table(title="runs")
    for col in ("run", "status", "backend", "model", "windows", "models", "no model", "failures", "took s"):
        table.add_column(col)
    for r in frame.itertuples():
        took = (r.finished_at - r.claimed_at) / 1000 if r.finished_at == r.finished_at and r.finished_at else None
        table.add_row(r.run_id, r.status, r.backend or "-", r.model_version or "-", _n(r.windows), _n(r.models),
                      _n(r.windows_no_model), _n(r.failures), f"{took:.1f}" if took is not None else "-")
    console.print(table)


def _n(value) -> str:
    return "-" if value is None or value != value else f"{int(value):,}"


from fleetscore.cli.up import up  # noqa: E402 - the local host's command, registered last

app.command("up")(up)

if __name__ == "__main__":  # pragma: no cover
    app()
