"""Engines: one `create_db_engine(url)` for SQLite files, PostgreSQL (psycopg) and SQL Server (pyodbc).

Azure SQL with Microsoft Entra ID: an `mssql+pyodbc` URL that names no login (no user, password,
`Authentication`, `Trusted_Connection`, DSN or `odbc_connect`) connects with an access token from
`DefaultAzureCredential` (the managed identity in Azure, `az login` on a laptop), handed to the ODBC
driver as the `SQL_COPT_SS_ACCESS_TOKEN` pre-connect attribute on every new connection:

    mssql+pyodbc://@<server>.database.windows.net/<db>?driver=ODBC+Driver+18+for+SQL+Server
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from fleetscore import clock

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-131072",  # 128 MiB: inserts land all over the (device, sensor, ts) tree
    "PRAGMA wal_autocheckpoint=16384",  # 64 MiB of WAL: checkpoints coalesce hot pages
)
"""Set on every new SQLite connection: WAL lets readers run beside the one writer."""
SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for a lock (its busy timeout), and retries a pragma the lock refused at once."""

SQL_COPT_SS_ACCESS_TOKEN = 1256
"""msodbcsql.h: the pre-connect attribute carrying an Entra access token (an `ACCESSTOKEN` struct)."""
AZURE_SQL_SCOPE = "https://database.windows.net/.default"
"""The token scope of every Azure SQL database (public cloud)."""
TOKEN_REFRESH_MARGIN_S = 300
"""A cached token is fetched again when it expires within this many seconds."""
MSSQL_POOL_RECYCLE_S = 1800
"""Pooled SQL Server connections are replaced after this many seconds: below the 60-90 minute lifetime of
an Entra access token, so no connection outlives the token it logged in with by long (TDS authenticates
only at login)."""
_LOGIN_KEYS = frozenset({"authentication", "trusted_connection", "odbc_connect", "dsn", "uid", "pwd"})
"""URL query keys (lower case) by which a URL chooses its own login, so no token is added."""


class TokenCredential(Protocol):
    """What `azure.identity` credentials provide: `get_token(scope)` → an object with `token` (str) and
    `expires_on` (epoch seconds)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


def create_db_engine(url: str, *, credential: TokenCredential | None = None) -> Engine:
    """An engine for `url`; SQLite files get their folder, WAL and a busy timeout; an Azure SQL URL without
    a login gets Entra access tokens from `credential` (default: `DefaultAzureCredential`, made on first use)."""
    parsed = _normalised(make_url(url))
    engine = sa.create_engine(parsed, **_engine_options(parsed))
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    if uses_entra_token(parsed):
        sa.event.listen(engine, "do_connect", AccessTokenConnect(EntraTokens(credential)))
    return engine


def uses_entra_token(url: URL) -> bool:
    """True for an `mssql+pyodbc` URL to a host and database that names no login of its own."""
    if url.get_backend_name() != "mssql" or url.get_driver_name() != "pyodbc":
        return False
    if url.username or url.password or not url.host or not url.database:
        return False
    return not {key.lower() for key in url.query} & _LOGIN_KEYS


def _normalised(url: URL) -> URL:
    """`url` with an `Authentication` query key in any spelling renamed `authentication`: SQLAlchemy's pyodbc
    dialect recognises only the lower-case key and otherwise adds `Trusted_Connection=Yes` beside it, a pair
    the ODBC driver refuses (FA001)."""
    for key in list(url.query):
        if key.lower() == "authentication" and key != "authentication":
            value = url.query[key]
            url = url.difference_update_query([key]).update_query_dict({"authentication": value})
    return url


def _engine_options(url: URL) -> dict[str, Any]:
    """`create_engine` keyword arguments per backend (creates a SQLite file's folder)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return {"future": True, "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "mssql":
        return {"future": True, "fast_executemany": True, "pool_pre_ping": True,
                "pool_recycle": MSSQL_POOL_RECYCLE_S}
    return {"future": True, "pool_pre_ping": True}


class EntraTokens:
    """Access tokens for Azure SQL from one credential, cached until `TOKEN_REFRESH_MARGIN_S` before expiry;
    thread-safe (the pool may open connections from several threads)."""

    def __init__(self, credential: TokenCredential | None = None, scope: str = AZURE_SQL_SCOPE) -> None:
        self._credential = credential
        self._scope = scope
        self._token: Any = None
        self._lock = threading.Lock()

    def current(self) -> str:
        """A token valid for at least `TOKEN_REFRESH_MARGIN_S` more seconds (fetched when needed)."""
        with self._lock:
            if self._token is None or self._token.expires_on - clock.now_ms() / 1000 <= TOKEN_REFRESH_MARGIN_S:
                self._token = self._get_credential().get_token(self._scope)
            return self._token.token

    def _get_credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential  # lazy: a heavy SDK, only for Azure SQL

            self._credential = DefaultAzureCredential()
        return self._credential


def access_token_struct(token: str) -> bytes:
    """The ODBC driver's `ACCESSTOKEN`: a 4-byte little-endian length, then the token with a zero byte after
    each byte (UTF-16-LE of the ASCII token), no terminator."""
    data = token.encode("utf-16-le")
    return struct.pack(f"<I{len(data)}s", len(data), data)


class AccessTokenConnect:
    """A `do_connect` listener: each new pyodbc connection logs in with a current Entra access token
    (`attrs_before`), and without the `Trusted_Connection=Yes` SQLAlchemy adds to a URL with no user."""

    def __init__(self, tokens: EntraTokens) -> None:
        self.tokens = tokens

    def __call__(self, _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs[0] = ";".join(part for part in cargs[0].split(";") if part.lower() != "trusted_connection=yes")
        attrs = dict(cparams.get("attrs_before") or {})
        attrs[SQL_COPT_SS_ACCESS_TOKEN] = access_token_struct(self.tokens.current())
        cparams["attrs_before"] = attrs


def _set_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            _execute_while_locked(cursor, pragma)
    finally:
        cursor.close()


def _execute_while_locked(cursor: Any, sql: str, seconds: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """Run `sql`, again after a short wait while SQLite says "database is locked", for up to `seconds`.

    Connections that switch a new file to WAL at the same moment each hold its shared lock and ask for the
    exclusive one: SQLite refuses one of them at once, without its busy timeout (which would deadlock), and
    that one succeeds once the other has switched."""
    deadline, delay = time.monotonic() + seconds, 0.005
    while True:
        try:
            cursor.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "database is locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.25)
