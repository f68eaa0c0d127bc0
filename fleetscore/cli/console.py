"""What every command shares: the one console pair, the settings-or-exit helper, the services, progress bars,
and the CLI's time and count formats."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timezone
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleetscore.clock import iso_seconds
from fleetscore.context import Services, set_services
from fleetscore.ingest.readings import InvalidReading, parse_ts
from fleetscore.settings import Settings, SettingsError, load_settings

console = Console()
"""Results (stdout)."""
err = Console(stderr=True)
"""Errors and progress bars (stderr)."""

StageTick = Callable[[str, int, int], None]
"""`tick(stage, done, total)`: progress of a named stage, in that stage's own units."""


def settings_or_exit() -> Settings:
    """The settings, or exit 2 with the message naming every wrong setting."""
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def services() -> Services:
    """Services over the settings (exit 2 if they are wrong), installed as this process's services."""
    svc = Services(settings_or_exit())
    set_services(svc)
    return svc


def progress_bar() -> Progress:
    """Bars on stderr: description, bar, done/total, elapsed; left on screen when done."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def stage_ticker(bar: Progress) -> StageTick:
    """A `tick(stage, done, total)` callback that keeps one bar per stage."""
    tasks: dict[str, Any] = {}

    def tick(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return tick


def parse_time(text: str | None) -> int | None:
    """A CLI time (ISO-8601; naive means UTC) → epoch ms; None stays None."""
    if text is None:
        return None
    try:
        return parse_ts(text, naive_tz=timezone.utc)
    except InvalidReading as exc:
        raise typer.BadParameter(exc.detail) from None


def fmt_ms(ms: int | None) -> str:
    """Epoch ms → `2026-11-23T10:05:00Z` (or '-')."""
    return iso_seconds(ms, missing="-")


def fmt_count(value: Any) -> str:
    """A count with thousands separators; '-' for None or NaN."""
    return "-" if value is None or value != value else f"{int(value):,}"
