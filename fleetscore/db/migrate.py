"""Schema migrations with Alembic: `upgrade(engine)` brings a database to the newest revision, `ddl(dialect)`
prints the same migrations as SQL for a DBA.

The Alembic environment is the package folder `fleetscore/db/migrations/` (`env.py`, `versions/`), configured
here in code: no `alembic.ini`. A database created by fleetscore before Alembic (it has the hand-written
`schema_migrations` table) is stamped at the baseline revision, whose tables it already has, then upgraded.

A schema change: edit `schema.py`, then add the next revision under `migrations/versions/`; Alembic drafts it
from the difference between `schema.py` and a database at head:

    with engine.begin() as conn:
        cfg = config()
        cfg.attributes["connection"] = conn
        command.revision(cfg, "what changes", autogenerate=True, rev_id="0003")
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""The Alembic environment: `env.py`, `script.py.mako`, `versions/`."""
BASELINE = "0001"
"""The revision whose tables a database made by the hand-written migrations already has."""
LEGACY_VERSION_TABLE = "schema_migrations"
"""The hand-written migrations' version table: its presence marks a database made before Alembic."""
OFFLINE_DIALECTS: dict[str, dict[str, Any]] = {
    # NVARCHAR(max), not the deprecated NTEXT; column comments are extended properties of a named schema
    "mssql": {"dialect_opts": {"deprecate_large_types": True}, "default_schema": "dbo"},
    "postgresql": {},
    "sqlite": {},
}
"""The dialects `ddl` prints SQL for, each with what `migrations/env.py` reads in offline mode: the dialect's
constructor options and the schema a connection would have had as its default."""
LOCK_SQL = {
    "postgresql": "SELECT pg_advisory_xact_lock(7262916203)",  # an arbitrary key, fleetscore's own
    "sqlite": "BEGIN IMMEDIATE",
    "mssql": ("DECLARE @result int; EXEC @result = sp_getapplock @Resource = N'fleetscore_migrations', "
              "@LockMode = 'Exclusive', @LockOwner = 'Transaction', @LockTimeout = 60000; "
              "IF @result < 0 RAISERROR('timed out waiting for the schema migration lock', 16, 1);"),
}
"""Per dialect, the statement that opens a migration's transaction holding a database-wide lock until it
ends, so two processes starting at once migrate one after the other."""

log = logging.getLogger(__name__)
_in_process = threading.Lock()
"""Alembic's `context` and `op` are process-wide: one migration at a time per process."""


def config(output_buffer: io.StringIO | None = None) -> Config:
    """The Alembic configuration of fleetscore's migrations (set `attributes["connection"]` to run online;
    offline SQL goes to `output_buffer`)."""
    cfg = Config(output_buffer=output_buffer)
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def upgrade(engine: Engine) -> list[str]:
    """Bring `engine`'s database to the newest revision; returns the revisions applied now, oldest first
    (empty when it was current: one read of `alembic_version`, no lock). Safe to call on every start and from
    several processes at once. A database at a revision this code does not know (a newer fleetscore migrated
    it) is left as it is, with a warning: the schema's changes add, so this code still finds its tables."""
    script = ScriptDirectory.from_config(config())
    with engine.connect() as conn:
        if _nothing_to_do(script, _current(conn)):
            return []
    with _in_process, engine.begin() as conn:
        _lock(conn)
        before = _current(conn)
        if _nothing_to_do(script, before):
            return []
        cfg = config()
        cfg.attributes["connection"] = conn
        if not before and sa.inspect(conn).has_table(LEGACY_VERSION_TABLE):
            command.stamp(cfg, BASELINE)
            before = {BASELINE}
        command.upgrade(cfg, "head")
    return _revisions_after(script, before)


def ddl(dialect_name: str) -> str:
    """The migrations from an empty database to the newest revision as SQL for `dialect_name` (`mssql`
    prints T-SQL with `GO` batches for a DBA), `alembic_version` included."""
    if dialect_name not in OFFLINE_DIALECTS:
        raise ValueError(f"no offline SQL for dialect {dialect_name!r}: one of {sorted(OFFLINE_DIALECTS)}")
    output = io.StringIO()
    cfg = config(output_buffer=output)
    cfg.attributes.update(dialect_name=dialect_name, **OFFLINE_DIALECTS[dialect_name])
    with _in_process:
        command.upgrade(cfg, "head", sql=True)
    return output.getvalue()


def _current(conn: Connection) -> set[str]:
    """The revisions the database is at (empty before the first, or without `alembic_version`)."""
    return set(MigrationContext.configure(conn).get_current_heads())


def _lock(conn: Connection) -> None:
    """Open `conn`'s transaction with the database-wide migration lock (`LOCK_SQL`), where the dialect has one."""
    statement = LOCK_SQL.get(conn.dialect.name)
    if statement is not None:
        conn.exec_driver_sql(statement)


def _nothing_to_do(script: ScriptDirectory, current: set[str]) -> bool:
    """True when the database is at the heads, or at a revision newer than this code knows (warned)."""
    if current == set(script.get_heads()):
        return True
    unknown = current - {s.revision for s in script.walk_revisions()}
    if unknown:
        log.warning("the database is at revision %s, which this fleetscore does not know (a newer one migrated "
                    "it): its schema is left as it is", ", ".join(sorted(unknown)))
    return bool(unknown)


def _revisions_after(script: ScriptDirectory, before: set[str]) -> list[str]:
    """The revisions from just after `before` (empty: the base) up to the heads, oldest first."""
    lower = next(iter(before)) if before else "base"
    return [s.revision for s in reversed(list(script.iterate_revisions("heads", lower)))]
