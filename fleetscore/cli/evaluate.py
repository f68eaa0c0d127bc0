"""`fleetscore evaluate --labels FILE`: detection quality of the deployed alerts on the user's own labelled events,
and a sweep of the threshold so an operator can choose an operating point."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from fleetscore.alerts.episodes import Persistence
from fleetscore.cli.console import console, err, fmt_ms, parse_time, services
from fleetscore.evaluation.labels import LabelError, read_labels
from fleetscore.evaluation.metrics import DEFAULT_TOLERANCE_WINDOWS, Detection
from fleetscore.evaluation.stored import Evaluation, NothingScored, evaluate_stored
from fleetscore.evaluation.sweep import EpisodeRules
from fleetscore.settings import Settings, parse_k_of_n

FIGURE_COLUMNS = ("alerts", "true", "false", "caught / events", "precision", "recall", "false / 1000 pair-days",
                  "median TTD (min)")
"""The columns of `_figures`: every table's detection figures."""


def evaluate(
    labels: Annotated[Path, typer.Option("--labels", help="CSV device,sensor,start,end (ISO-8601 or epoch ms)")],
    from_: Annotated[str | None, typer.Option("--from", help="first window end to count (ISO-8601; naive = UTC)")]
    = None,
    to: Annotated[str | None, typer.Option("--to", help="last window end to count (ISO-8601; naive = UTC)")] = None,
    shifts: Annotated[str | None, typer.Option(help="threshold shifts to sweep, comma list in score units "
                                                     "(default: around the deployed 0)")] = None,
    persistence: Annotated[str | None, typer.Option(help="ALERT_PERSISTENCE values to compare, comma list of k/n "
                                                         "(default: 2/3,3/3,3/4,3/5,4/4; the deployed one always)")]
    = None,
    tolerance_windows: Annotated[int, typer.Option(min=0, help="windows an event is widened by when matching")]
    = DEFAULT_TOLERANCE_WINDOWS,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Precision, recall, false alerts per 1,000 pair-days and time to detect of the alerts against labelled
    events, and the same figures over a sweep of the alert threshold and per ALERT_PERSISTENCE."""
    lo, hi, points = _time_option(from_, "--from"), _time_option(to, "--to"), parse_shifts(shifts)
    choices = parse_persistence(persistence)
    if lo is not None and hi is not None and hi <= lo:
        raise typer.BadParameter("must be after --from", param_hint="--to")
    events = labels_or_exit(labels)
    svc = services()
    try:
        result = evaluate_stored(svc.engine, svc.store, events, episode_rules(svc.settings), from_ms=lo, until_ms=hi,
                                 points=points, persistence=choices, tolerance_windows=tolerance_windows)
    except NothingScored as exc:
        err.print(f"[red]nothing to evaluate: {exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    print_evaluation(result, len(events))


def labels_or_exit(path: Path):
    """The labels of `path`, or exit 2 with the reason."""
    try:
        return read_labels(path)
    except LabelError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def episode_rules(settings: Settings) -> EpisodeRules:
    """The episode rules in force (window length, ALERT_PERSISTENCE, ALERT_CLOSE_AFTER_WINDOWS)."""
    return EpisodeRules(window_ms=settings.window_ms, persistence=Persistence(*settings.alert_k_of_n),
                        close_after=settings.alert_close_after_windows)


def _time_option(text: str | None, name: str) -> int | None:
    try:
        return parse_time(text)
    except typer.BadParameter as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def parse_shifts(text: str | None) -> list[float] | None:
    """`--shifts 0,0.1,0.5` → finite floats (None when not given)."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"want a comma list of numbers, got {text!r}", param_hint="--shifts") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"want a comma list of finite numbers, got {text!r}", param_hint="--shifts")
    return values


def parse_persistence(text: str | None) -> list[Persistence] | None:
    """`--persistence 2/3,3/4` → Persistence values (None when not given)."""
    if text is None:
        return None
    try:
        values = [Persistence(*parse_k_of_n(part)) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--persistence") from None
    if not values:
        raise typer.BadParameter(f"want a comma list of k/n, got {text!r}", param_hint="--persistence")
    return values


def print_evaluation(result: Evaluation, labelled: int) -> None:
    """The range, the deployed alerts' figures (and per opening rule), the sweep and the persistence table, as rich
    tables."""
    console.print(f"scored windows ({fmt_ms(result.from_ms)}, {fmt_ms(result.until_ms)}] of {result.runs} run(s): "
                  f"{result.pairs:,} pairs, {result.pair_days:,.1f} pair-days; labelled events {labelled:,} "
                  f"({result.deployed.events:,} in range); match tolerance {result.tolerance_windows} window(s)")
    for note in result.notes:
        err.print(f"[yellow]{note}[/yellow]")
    deployed = Table(title="deployed alerts", title_justify="left")
    for column in FIGURE_COLUMNS:
        deployed.add_column(column, justify="right")
    deployed.add_row(*_figures(result.deployed))
    console.print(deployed)
    if len(result.by_rule):
        console.print(rule_table(result.by_rule))
    table = Table(title="threshold sweep (shift in score units; 0 = deployed)", title_justify="left")
    for column in ("shift", "windows flagged", *FIGURE_COLUMNS):
        table.add_column(column, justify="right")
    for row in result.sweep.itertuples():
        style = "bold" if row.point == 0 else None
        table.add_row(f"{row.point:+.4g}", f"{row.flagged_share:.3%}", *_figures(row), style=style)
    console.print(table)
    console.print(persistence_choices_table(result))


def persistence_choices_table(result: Evaluation) -> Table:
    """The rules re-run with each ALERT_PERSISTENCE compared (the deployed one in bold)."""
    table = Table(title="ALERT_PERSISTENCE (thresholds as deployed)", title_justify="left")
    for column in ("k/n", *FIGURE_COLUMNS):
        table.add_column(column, justify="right")
    for row in result.by_persistence.itertuples():
        table.add_row(row.persistence, *_figures(row),
                      style="bold" if row.persistence == result.deployed_persistence else None)
    return table


def rule_table(by_rule: pd.DataFrame) -> Table:
    """`metrics.by_opening_rule`'s rows as a table."""
    table = Table(title="deployed alerts by the rule that opened them", title_justify="left")
    for column in ("opened by", "alerts", "true", "false", "precision", "false / 1000 pair-days"):
        table.add_column(column, justify="left" if column == "opened by" else "right")
    for r in by_rule.itertuples():
        rate = r.false_per_1000_pair_days
        table.add_row(r.opened_by, f"{r.alerts:,}", f"{r.true_alerts:,}", f"{r.false_alerts:,}", f"{r.precision:.3f}",
                      "-" if math.isnan(rate) else f"{rate:.1f}")
    return table


def _figures(d: Detection | tuple) -> list[str]:
    """alerts, true, false, caught/events, precision, recall, false per 1000 pair-days, median TTD as text."""
    rate, ttd = d.false_per_1000_pair_days, d.median_ttd_minutes
    return [f"{d.alerts:,}", f"{d.true_alerts:,}", f"{d.false_alerts:,}", f"{d.caught:,} / {d.events:,}",
            f"{d.precision:.3f}", f"{d.recall:.3f}", "-" if math.isnan(rate) else f"{rate:.1f}",
            "-" if math.isnan(ttd) else f"{ttd:.0f}"]
