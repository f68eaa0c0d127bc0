"""Bulk reads: a query's rows as the driver's plain tuples or as a DataFrame, and `IN (...)` lists in chunks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

IN_CHUNK = 900
"""Values per `IN (...)` list: below SQL Server's 2,100 parameters per statement with room to spare."""
SQLITE_IN_CHUNK = 30_000
"""Values per `IN (...)` list on SQLite 3.32 and later, which binds up to 32,766 parameters per statement (999
before): a query that scans a time range filters a batch's devices in one pass instead of one per `IN_CHUNK`."""


def in_chunk(dialect: sa.Dialect) -> int:
    """Values per `IN (...)` list on a database of `dialect`."""
    if dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 32, 0):
        return SQLITE_IN_CHUNK
    return IN_CHUNK


def iter_tuples(conn: Connection, query: sa.Executable, chunk_rows: int = 50_000, *,
                server_side: bool = True) -> Iterator[tuple]:
    """Stream a query's rows as the driver's plain tuples, `chunk_rows` at a time, inside `conn`'s
    transaction. For bulk reads of plain columns (strings, integers, floats), where SQLAlchemy's Row
    objects cost more than the query. With `server_side`, PostgreSQL reads through a server-side cursor so
    memory stays bounded (two more round trips: not for small reads)."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    args = tuple(params[k] for k in compiled.positiontup) if compiled.positiontup is not None else params
    raw = conn.connection.dbapi_connection
    named = server_side and conn.dialect.name == "postgresql"
    cursor = raw.cursor(name=f"fleetscore_{id(query):x}") if named else raw.cursor()
    try:
        cursor.execute(str(compiled), args)
        while rows := cursor.fetchmany(chunk_rows):
            yield from rows
    finally:
        cursor.close()


def read_frame(conn: Connection, query: sa.Select, columns: list[str] | None = None) -> pd.DataFrame:
    """A query's rows as a DataFrame (one column per selected column, object dtype when empty), built
    column-wise from the driver's tuples (`iter_tuples`). Column names default to the query's."""
    names = columns or [c.name for c in query.selected_columns]
    rows = list(iter_tuples(conn, query))
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    return pd.DataFrame(dict(zip(names, zip(*rows, strict=True), strict=True)))


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    """`items` in slices of at most `size` (for `IN (...)` lists)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
