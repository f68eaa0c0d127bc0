"""`fleetscore run` (score one schedule slot now) and `fleetscore runs` (the recent runs)."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from fleetscore.cli.console import console, err, fmt_count, parse_time, progress_bar, services, stage_ticker
from fleetscore.clock import now_ms
from fleetscore.runs.claims import list_runs
from fleetscore.runs.service import start_run
from fleetscore.runs.slots import latest_occurrence


def run(
    slot: Annotated[str | None, typer.Option(help="schedule slot (ISO-8601); default the latest occurrence")] = None,
    retry: Annotated[bool, typer.Option(help="re-run a failed or partial run of the slot")] = False,
) -> None:
    """Run the scoring of one schedule slot now, as the timer would (claim, export, score, index)."""
    svc = services()
    slot_ms = parse_time(slot) if slot else latest_occurrence(svc.settings.scoring_schedule, now_ms())
    with progress_bar() as bar:
        outcome = start_run(svc, slot_ms, trigger="cli", retry=retry, progress=stage_ticker(bar))
    if not outcome.claimed:
        err.print(f"run {outcome.run_id} is already claimed (use --retry to re-run a failed or partial run)")
        raise typer.Exit(1)
    m = outcome.manifest
    console.print(f"run {outcome.run_id}: {outcome.status}"
                  + (f", {m.pairs:,} models, {m.windows:,} windows in {len(m.partitions)} partition(s)" if m else "")
                  + (f" — {outcome.error}" if outcome.error else ""))
    if outcome.status == "failed":
        raise typer.Exit(1)


def runs(limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recent runs, newest first."""
    frame = list_runs(services().engine, limit)
    if as_json:
        console.print_json(frame.to_json(orient="records"))
        return
    console.print(runs_table(frame))


def runs_table(frame: pd.DataFrame) -> Table:
    """`list_runs`' frame (one row per run, times in epoch ms) as a table; took = finished - claimed, seconds."""
    table = Table(title="runs")
    for col in ("run", "status", "backend", "model", "windows", "models", "no model", "failures", "took s"):
        table.add_column(col)
    for r in frame.itertuples():
        took = (r.finished_at - r.claimed_at) / 1000 if r.finished_at == r.finished_at and r.finished_at else None
        table.add_row(r.run_id, r.status, r.backend or "-", r.model_version or "-", fmt_count(r.windows),
                      fmt_count(r.models), fmt_count(r.windows_no_model), fmt_count(r.failures),
                      f"{took:.1f}" if took is not None else "-")
    return table
