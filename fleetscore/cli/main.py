"""The `fleetscore` command line: the typer app, assembled from one module per command group.

The console script (`fleetscore`), `python -m fleetscore.cli.main` and `python -m fleetscore.cli` all run `app`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from fleetscore.cli.alerts import alerts_app
from fleetscore.cli.aml import aml_app
from fleetscore.cli.db import db_app
from fleetscore.cli.demo import demo
from fleetscore.cli.evaluate import evaluate
from fleetscore.cli.ingest import ingest, simulate
from fleetscore.cli.report import report
from fleetscore.cli.runs import run, runs
from fleetscore.cli.status import status
from fleetscore.cli.train import train
from fleetscore.cli.up import up
from fleetscore.logs import configure_logging

app = typer.Typer(help="Scheduled batch scoring of a whole IoT fleet's anomaly models.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    configure_logging(logging.INFO if verbose else logging.WARNING)


for command in (ingest, simulate, status, train, run, demo, evaluate, report, runs, up):  # the order `--help` lists
    app.command()(command)
app.add_typer(db_app, name="db")
app.add_typer(aml_app, name="aml")
app.add_typer(alerts_app, name="alerts")

if __name__ == "__main__":  # pragma: no cover
    app()
