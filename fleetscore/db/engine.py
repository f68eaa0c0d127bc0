"""Engines: one `create_db_engine(url)` for SQLite files, PostgreSQL (psycopg) and SQL Server (pyodbc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-131072",  # 128 MiB: inserts land all over the (device, sensor, ts) tree
    "PRAGMA wal_autocheckpoint=16384",  # 64 MiB of WAL: checkpoints coalesce hot pages
)
"""Set on every new SQLite connection: WAL lets readers run beside the one writer."""


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their folder, WAL and a busy timeout."""
    parsed = make_url(url)
    engine = sa.create_engine(parsed, **_engine_options(parsed))
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _engine_options(url: URL) -> dict[str, Any]:
    """`create_engine` keyword arguments per backend (creates a SQLite file's folder)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return {"future": True, "connect_args": {"timeout": 30}}
    if backend == "mssql":
        return {"future": True, "fast_executemany": True}
    return {"future": True, "pool_pre_ping": True}


def _set_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()
