"""`fleetscore run` (score one schedule slot now) and `fleetscore runs` (the recent runs)."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from fleetscore.cli.console import console, err, fmt_count, parse_time, progress_bar, services, stage_ticker
from fleetscore.clock import iso_seconds, now_ms
from fleetscore.db import RUN_ACTIVE
from fleetscore.runs.claims import list_runs
from fleetscore.runs.service import start_run
from fleetscore.runs.slots import latest_occurrence


def run(
    slot: Annotated[str | None, typer.Option(help="schedule slot (ISO-8601); default the latest occurrence")] = None,
    retry: Annotated[bool, typer.Option(help="re-run a failed or partial run of the slot, or one whose process "
                                             "died (its lease lapsed)")] = False,
) -> None:
    """Run the scoring of one schedule slot now, as the timer would (claim, export, score, index)."""
    svc = services()
    slot_ms = parse_time(slot) if slot else latest_occurrence(svc.settings.scoring_schedule, now_ms())
    with progress_bar() as bar:
        outcome = start_run(svc, slot_ms, trigger="cli", retry=retry, progress=stage_ticker(bar))
    if not outcome.claimed:
        err.print(outcome.refused)
        raise typer.Exit(1)
    m = outcome.manifest
    console.print(f"run {outcome.run_id}: {outcome.status}"
                  + (f", {m.pairs:,} models, {m.windows:,} windows in {len(m.partitions)} partition(s)" if m else "")
                  + (f" — {outcome.error}" if outcome.error else ""))
    if outcome.status in ("failed", "lost"):
        raise typer.Exit(1)


def runs(limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recent runs, newest first."""
    frame = list_runs(services().engine, limit)
    if as_json:
        console.print_json(frame.to_json(orient="records"))
        return
    console.print(runs_table(frame))


ERROR_SHOWN = 300
"""Characters of a run's error shown in the table (`fleetscore runs --json` has all of it)."""


def runs_table(frame: pd.DataFrame) -> Table:
    """`list_runs`' frame (one row per run, times in epoch ms) as a table; took = finished - claimed, seconds;
    `why` is why the attempt was retried (or, for an active run, its lease)."""
    table = Table(title="runs")
    for col in ("run", "status", "try", "backend", "model", "windows", "models", "no model", "failures", "took s",
                "why", "error"):
        table.add_column(col)
    now = now_ms()
    for r in frame.to_dict("records"):
        took = (r["finished_at"] - r["claimed_at"]) / 1000 if _known(r["finished_at"]) else None
        table.add_row(r["run_id"], r["status"], str(r["attempt"]), r["backend"] or "-", r["model_version"] or "-",
                      fmt_count(r["windows"]), fmt_count(r["models"]), fmt_count(r["windows_no_model"]),
                      fmt_count(r["failures"]), f"{took:.1f}" if took is not None else "-", run_note(r, now),
                      str(r["error"])[:ERROR_SHOWN] if _known(r.get("error")) else "")
    return table


def run_note(row: dict, now: int) -> str:
    """An active run's lease (or the job that owns it), else why its attempt was retried ('' for a first try)."""
    if row["status"] in RUN_ACTIVE:
        if not _known(row.get("lease_until")):
            return f"owned by job {row.get('backend_run_id') or '-'}"
        state = "lapsed" if row["lease_until"] < now else "held"
        return f"lease {state} until {iso_seconds(row['lease_until'])}"
    return str(row.get("retry_reason") or "") if _known(row.get("retry_reason")) else ""


def _known(value: object) -> bool:
    return value is not None and value == value  # NaN / None from a frame: unknown
