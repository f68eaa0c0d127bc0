"""`fleetscore report`: one self-contained HTML file with plots (and, given labels, the detection section)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.console import err, services
from fleetscore.cli.evaluate import episode_rules, labels_or_exit
from fleetscore.evaluation.stored import NothingScored, evaluate_stored
from fleetscore.report.write import write_report


def report(
    run: Annotated[str | None, typer.Option("--run", help="focus on one run id")] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("fleetscore-report.html"),
    labels: Annotated[Path | None, typer.Option(help="CSV device,sensor,start,end of labelled events: adds "
                                                     "precision, recall and the threshold sweep")] = None,
) -> None:
    """One self-contained HTML file with plots: alerted pairs, runs over time, dead letters; with --labels, the
    alerts' detection quality and a precision-recall plot of the threshold sweep."""
    events = labels_or_exit(labels) if labels is not None else None
    svc = services()
    evaluation = None
    if events is not None:
        try:
            evaluation = evaluate_stored(svc.engine, svc.store, events, episode_rules(svc.settings))
        except NothingScored as exc:
            err.print(f"[yellow]no detection section: {exc}[/yellow]")
    try:
        path = write_report(svc.engine, out, store=svc.store, run_id=run, evaluation=evaluation)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"report: {path}")
