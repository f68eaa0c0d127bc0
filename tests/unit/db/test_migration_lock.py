"""SQL Server's schema migration lock, at the SQL level: `db.upgrade` on an Azure SQL engine (the real
mssql+pyodbc dialect, engine options and Alembic migrations) whose `do_connect` hands back a recording stand-in
for a pyodbc connection instead of calling the driver. Each statement and each commit/rollback is recorded in
order, so the tests show where the lock is taken and released relative to the migration's transaction.

Why a session-owned lock: with autocommit off the ODBC driver runs `SET IMPLICIT_TRANSACTIONS ON`, where
EXEC starts no transaction, and a Transaction-owned `sp_getapplock` needs one (sql-docs
sp-getapplock-transact-sql.md, set-implicit-transactions-transact-sql.md)."""

from __future__ import annotations

import time
from collections import namedtuple

import pyodbc
import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.db import migrate

AZURE_URL = "mssql+pyodbc://@fleet.database.windows.net/fleetscore?driver=ODBC+Driver+18+for+SQL+Server"
AccessToken = namedtuple("AccessToken", "token expires_on")  # azure.core.credentials.AccessToken's fields
ANSWERS = {
    "SERVERPROPERTY('ProductVersion')": [("12.0.2000.8",)],  # Azure SQL Database reports 12.x
    "schema_name()": [("dbo",)],
    "NVARCHAR(max)": [("test max support",)],
    "sys.system_views": [("dm_exec_sessions",)],
    "transaction_isolation_level": [("READ COMMITTED",)],
}
"""Rows for the dialect's first-connect queries (by a fragment of their SQL); other SELECTs find no rows:
an empty database."""

MIGRATIONS = [f"{i:04d}" for i in range(1, 9)]
"""Every revision of the chain, oldest first (as `tests/integration/db/test_migrations.py` lists them)."""


class Server:
    """What the stand-in connections saw, in order: `("sql", text)`, `("commit",)`, `("rollback",)`,
    `("close",)`; `applock` is what `sp_getapplock` returns, `fail_on` a fragment whose statement raises."""

    def __init__(self, applock: int = 0, release: int = 0, fail_on: str | None = None) -> None:
        self.events: list[tuple[str, ...]] = []
        self.applock, self.release, self.fail_on = applock, release, fail_on
        self.connections = 0

    def statements(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "sql"]


class Cursor:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.description: list[tuple] | None = None
        self.rowcount = -1
        self.rows: list[tuple] = []
        self.fast_executemany = False

    def execute(self, sql: str, *params) -> Cursor:
        self.server.events.append(("sql", sql))
        if self.server.fail_on and self.server.fail_on in sql:
            raise pyodbc.ProgrammingError("42000", f"the server refused: {sql.split('(')[0].strip()}")
        self.rows = self._answer(sql)
        if "OUTPUT inserted." in sql:  # the dialect's RETURNING: the inserted key comes back
            self.rows = [tuple(params)]
        is_query = sql.lstrip().upper().startswith("SELECT") or "SELECT @rc" in sql or "OUTPUT inserted." in sql
        self.description = [("c0", None, None, None, None, None, None)] if is_query else None
        self.rowcount = -1 if is_query else 1
        return self

    def _answer(self, sql: str) -> list[tuple]:
        if "sp_getapplock" in sql:
            return [(self.server.applock,)]
        if "sp_releaseapplock" in sql:
            return [(self.server.release,)]
        if sql.strip() == "SELECT 1":
            return [(1,)]
        return next((list(rows) for fragment, rows in ANSWERS.items() if fragment in sql), [])

    def executemany(self, sql: str, seq) -> None:
        for params in seq:
            self.execute(sql, *params)

    def fetchone(self):
        return self.rows.pop(0) if self.rows else None

    def fetchall(self):
        rows, self.rows = self.rows, []
        return rows

    def fetchmany(self, size: int = 1):
        rows, self.rows = self.rows[:size], self.rows[size:]
        return rows

    def setinputsizes(self, _sizes) -> None:
        pass

    def nextset(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Connection:
    """Enough of a pyodbc connection for SQLAlchemy's pyodbc dialect."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.autocommit = False
        server.connections += 1

    def cursor(self) -> Cursor:
        return Cursor(self.server)

    def commit(self) -> None:
        self.server.events.append(("commit",))

    def rollback(self) -> None:
        self.server.events.append(("rollback",))

    def close(self) -> None:
        self.server.events.append(("close",))

    def getinfo(self, _what: int) -> str:
        return "12.00.2000"

    def add_output_converter(self, *_args) -> None:
        pass


class Credential:
    """A stand-in with azure-identity's `get_token` shape (no identity endpoint is asked)."""

    def get_token(self, *_scopes: str, **_kwargs) -> AccessToken:
        return AccessToken("tok", int(time.time()) + 3600)


def azure_engine(server: Server) -> sa.Engine:
    """An Azure SQL engine as `create_db_engine` makes it, connecting to `server`'s stand-in connections."""
    engine = db.create_db_engine(AZURE_URL, credential=Credential())
    sa.event.listen(engine, "do_connect", lambda *_args: Connection(server))
    return engine


def events_after_first_connect(server: Server) -> list[tuple[str, ...]]:
    """The events from the first `sp_getapplock` on (the dialect's first-connect queries cut off)."""
    first = next(i for i, e in enumerate(server.events) if e[0] == "sql" and "sp_getapplock" in e[1])
    return server.events[first:]


def kinds(events: list[tuple[str, ...]]) -> list[str]:
    """Each event as `lock`, `release`, `ddl`, `sql`, `commit`, `rollback`, `close`."""
    def kind(e: tuple[str, ...]) -> str:
        if e[0] != "sql":
            return e[0]
        if "sp_getapplock" in e[1]:
            return "lock"
        if "sp_releaseapplock" in e[1]:
            return "release"
        return "ddl" if e[1].lstrip().upper().startswith(("CREATE", "DROP", "INSERT", "UPDATE")) else "sql"
    return [kind(e) for e in events]


def test_the_lock_is_owned_by_the_session_and_checked():
    assert "@LockOwner = 'Session'" in migrate.MSSQL_LOCK and "'Transaction'" not in migrate.MSSQL_LOCK
    assert f"@LockTimeout = {migrate.MSSQL_LOCK_TIMEOUT_MS}" in migrate.MSSQL_LOCK
    assert migrate.MSSQL_LOCK.endswith("SELECT @rc AS rc") and migrate.MSSQL_UNLOCK.endswith("SELECT @rc AS rc")
    assert "sp_releaseapplock @Resource = N'fleetscore_migrations', @LockOwner = 'Session'" in migrate.MSSQL_UNLOCK
    assert "mssql" not in migrate.LOCK_SQL


def test_an_empty_azure_sql_database_migrates_between_lock_and_release():
    server = Server()
    assert db.upgrade(azure_engine(server)) == MIGRATIONS
    events = events_after_first_connect(server)
    steps = kinds(events)
    # the lock opens no transaction; the migration's DDL runs in one transaction, committed before release
    assert steps[:2] == ["lock", "commit"]
    assert steps.count("lock") == 1 and steps.count("release") == 1
    release = steps.index("release")
    assert steps[release - 1] == "commit" and steps[release + 1] == "commit"
    ddl = [i for i, k in enumerate(steps) if k == "ddl"]
    assert ddl and min(ddl) >= 2 and max(ddl) < release - 1
    assert "commit" not in steps[2:release - 1] and "rollback" not in steps[2:release - 1]
    created = [e[1] for e in events if e[0] == "sql" and e[1].lstrip().upper().startswith("CREATE TABLE")]
    assert any("alembic_version" in s for s in created) and any("readings" in s for s in created)


def test_a_failed_migration_rolls_back_and_still_releases_the_lock():
    server = Server(fail_on="CREATE TABLE readings")
    with pytest.raises(sa.exc.DBAPIError, match="the server refused"):
        db.upgrade(azure_engine(server))
    steps = kinds(events_after_first_connect(server))
    release = steps.index("release")
    assert steps[release - 1] == "rollback" and "commit" not in steps[2:release]


@pytest.mark.parametrize("code", [-1, -2, -3, -999])
def test_a_refused_lock_raises_and_migrates_nothing(code):
    server = Server(applock=code)
    with pytest.raises(db.LockNotGranted) as raised:
        db.upgrade(azure_engine(server))
    assert raised.value.code == code and db.is_transient(raised.value) is (code != -999)
    steps = kinds(events_after_first_connect(server))
    assert "ddl" not in steps and "release" not in steps


def test_a_failed_release_closes_the_connection_instead_of_pooling_it_with_the_lock():
    for server in (Server(release=-999), Server(fail_on="sp_releaseapplock")):
        engine = azure_engine(server)
        assert db.upgrade(engine) == MIGRATIONS
        steps = kinds(events_after_first_connect(server))
        assert steps[steps.index("release") + 1:].count("close") == 1
        opened = server.connections
        with engine.connect():  # the pool has no connection to hand out again: a new session
            assert server.connections == opened + 1
