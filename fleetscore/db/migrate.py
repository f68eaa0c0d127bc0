"""Schema migrations: `upgrade(engine)` creates or migrates the schema, `ddl(dialect)` prints it for a DBA."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from fleetscore.clock import now_ms
from fleetscore.db.schema import metadata, schema_migrations


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "create the schema", _create_v1),
]
"""Ordered schema migrations; append new (version, description, step) entries, never edit old ones."""


def upgrade(engine: Engine) -> list[int]:
    """Create or migrate the schema; returns the versions applied now (empty when current)."""
    applied: list[int] = []
    with engine.begin() as conn:
        schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(sa.select(schema_migrations.c.version)).scalars())
        for version, description, step in MIGRATIONS:
            if version in done:
                continue
            step(conn)
            conn.execute(schema_migrations.insert().values(
                version=version, applied_at=now_ms(), description=description))
            applied.append(version)
    return applied


def ddl(dialect_name: str) -> str:
    """The schema's DDL for a dialect (`mssql` prints T-SQL for a DBA)."""
    dialect = {"mssql": mssql.dialect(deprecate_large_types=True), "postgresql": postgresql.dialect(),
               "sqlite": sqlite.dialect()}[dialect_name]
    terminator = "\nGO\n" if dialect_name == "mssql" else ";\n"
    parts = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + terminator)
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + terminator)
    return "\n".join(parts)
