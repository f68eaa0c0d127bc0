"""`fleetscore db`: create or migrate the SQL schema, print its DDL, show or move the scoring watermark."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from fleetscore import clock, db
from fleetscore.cli.console import console, fmt_ms, parse_time, services, settings_or_exit

db_app = typer.Typer(help="The SQL schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of FLEETSCORE_SQL_URL."""
    s = settings_or_exit()
    engine = db.create_db_engine(s.sql_url)
    applied = db.upgrade(engine)
    where = make_url(s.sql_url).render_as_string(hide_password=True)
    console.print(f"schema at {where}: " + (f"applied migration(s) {applied}" if applied else "up to date"))


@db_app.command("sql")
def db_sql(dialect: Annotated[str, typer.Option(help="mssql (T-SQL), postgresql or sqlite")] = "mssql") -> None:
    """Print the schema's DDL (T-SQL for a DBA with --dialect mssql)."""
    if dialect not in ("mssql", "postgresql", "sqlite"):
        raise typer.BadParameter("dialect must be mssql, postgresql or sqlite")
    sys.stdout.write(db.ddl(dialect))


@db_app.command("watermark")
def db_watermark(
    set_to: Annotated[str | None, typer.Option("--set", help="move the scoring watermark forward to this time")] = None,
) -> None:
    """Show the scoring watermark (newest window end already scored), or move it forward — e.g. to the end
    of the training range, so the first run does not score the windows the models were trained on."""
    svc = services()
    with svc.engine.begin() as conn:
        if set_to is not None:
            db.advance_watermark(conn, parse_time(set_to), clock.now_ms())
        value = db.read_watermark(conn)
    console.print(f"scoring watermark: {fmt_ms(value)}")
