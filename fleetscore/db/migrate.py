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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from fleetscore.db.errors import LockNotGranted

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
}
"""Per dialect, the statement that opens a migration's transaction holding a database-wide lock until it
ends, so two processes starting at once migrate one after the other (SQL Server: `MSSQL_LOCK`)."""
MSSQL_LOCK_RESOURCE = "fleetscore_migrations"
MSSQL_LOCK_TIMEOUT_MS = 60_000
"""How long a migration waits for another process's migration before giving up (ms)."""
MSSQL_LOCK = (
    "DECLARE @nocount int = @@OPTIONS & 512, @rc int;\nSET NOCOUNT ON;\n"
    f"EXEC @rc = sp_getapplock @Resource = N'{MSSQL_LOCK_RESOURCE}', @LockMode = 'Exclusive', "
    f"@LockOwner = 'Session', @LockTimeout = {MSSQL_LOCK_TIMEOUT_MS};\n"
    "IF @nocount = 0 SET NOCOUNT OFF;\nSELECT @rc AS rc")
"""SQL Server's migration lock: an exclusive application lock owned by the session, taken before the
migration's transaction and released after it ends (`MSSQL_UNLOCK`); selects `sp_getapplock`'s return code
(>= 0: granted). Not owned by the transaction: in the ODBC driver's manual-commit mode (IMPLICIT_TRANSACTIONS
ON) EXEC opens no transaction, and on an empty database there is no table a SELECT could open one with."""
MSSQL_UNLOCK = (
    "DECLARE @nocount int = @@OPTIONS & 512, @rc int;\nSET NOCOUNT ON;\n"
    f"EXEC @rc = sp_releaseapplock @Resource = N'{MSSQL_LOCK_RESOURCE}', @LockOwner = 'Session';\n"
    "IF @nocount = 0 SET NOCOUNT OFF;\nSELECT @rc AS rc")
"""Releases `MSSQL_LOCK`; selects `sp_releaseapplock`'s return code (0: released)."""

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
    with _in_process, _locked_transaction(engine) as conn:
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


@contextmanager
def _locked_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction, holding the database-wide migration lock until the transaction ended:
    PostgreSQL and SQLite lock as the transaction's first statement (`LOCK_SQL`); SQL Server takes a
    session-owned lock before it begins and releases it after the commit or rollback (`MSSQL_LOCK`)."""
    with engine.connect() as conn:
        if conn.dialect.name != "mssql":
            with conn.begin():
                statement = LOCK_SQL.get(conn.dialect.name)
                if statement is not None:
                    conn.exec_driver_sql(statement)
                yield conn
            return
        _mssql_applock(conn)
        try:
            with conn.begin():
                yield conn
        finally:
            _mssql_release(conn)


def _mssql_applock(conn: Connection) -> None:
    """Take `MSSQL_LOCK` on `conn`'s session, leaving no transaction open; `LockNotGranted` when
    `sp_getapplock` refuses it (< 0). On any other failure the DBAPI connection is closed, so a lock the server
    may have granted ends with its session instead of staying with a pooled connection."""
    try:
        code = conn.exec_driver_sql(MSSQL_LOCK).scalar_one()
        conn.commit()  # ends SQLAlchemy's autobegun transaction; the server has none open, the lock stays
    except BaseException:
        conn.invalidate()
        raise
    if code < 0:
        raise LockNotGranted(code)


def _mssql_release(conn: Connection) -> None:
    """Release `MSSQL_LOCK`; if that fails, close the DBAPI connection instead (the server frees a session's
    locks when it ends), so no pooled connection keeps holding it. Never raises: the migration's outcome wins."""
    if conn.invalidated:
        return  # the session is gone, and its lock with it
    try:
        code = conn.exec_driver_sql(MSSQL_UNLOCK).scalar_one()
        conn.commit()
    except Exception:  # noqa: BLE001 - any failure: fall back to ending the session
        log.warning("could not release the schema migration lock: closing its connection", exc_info=True)
        code = -999
    if code < 0:
        conn.invalidate()


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
