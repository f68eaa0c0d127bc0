"""`fleetscore report`: one self-contained HTML file with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.console import err, services
from fleetscore.report.write import write_report


def report(
    run: Annotated[str | None, typer.Option("--run", help="focus on one run id")] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("fleetscore-report.html"),
) -> None:
    """One self-contained HTML file with plots: alerted pairs, runs over time, dead letters."""
    svc = services()
    try:
        path = write_report(svc.engine, out, store=svc.store, run_id=run)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"report: {path}")
