"""The SQL store: schema, engine creation, migrations and transient-error classification.

One SQLAlchemy Core code path serves `sqlite`, `postgresql+psycopg` and `mssql+pyodbc`.
All timestamps are stored as BIGINT milliseconds since the Unix epoch, UTC (`ts`, `window_end`,
`*_at`): keys compare exactly on every dialect and no session time zone can shift them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from fleetscore.clock import now_ms

metadata = sa.MetaData()
ID = sa.String(64).with_variant(mssql.VARCHAR(64, collation="Latin1_General_100_BIN2"), "mssql")
"""A device or sensor id: 1–64 characters of [A-Za-z0-9._:-], compared case-sensitively on every dialect
(SQL Server's default collation would make `d-1` and `D-1` one key)."""


def _ms() -> sa.BigInteger:
    return sa.BigInteger()


readings = sa.Table(
    "readings", metadata,
    sa.Column("device", ID, nullable=False),
    sa.Column("sensor", ID, nullable=False),
    sa.Column("ts", _ms(), nullable=False, comment="epoch ms UTC"),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("ingested_at", _ms(), nullable=False),
    sa.Column("late", sa.Boolean(), nullable=False, default=False,
              comment="its window was already older than the scoring watermark when it arrived"),
    # the key is (device, sensor, ts); ordered time first, a batch of a fleet's newest readings lands on
    # a few adjacent pages instead of one page per device+sensor (the commit cost of a batch)
    sa.PrimaryKeyConstraint("ts", "device", "sensor", name="pk_readings"),
    sqlite_with_rowid=False,
)

windows = sa.Table(
    "windows", metadata,
    sa.Column("device", ID, nullable=False),
    sa.Column("sensor", ID, nullable=False),
    sa.Column("window_end", _ms(), nullable=False, comment="epoch ms UTC; window is (end-W, end]"),
    sa.Column("n", sa.Integer(), nullable=False),
    sa.Column("sum", sa.Float(53), nullable=False),
    sa.Column("sumsq", sa.Float(53), nullable=False),
    sa.Column("min", sa.Float(53), nullable=False),
    sa.Column("max", sa.Float(53), nullable=False),
    sa.Column("updated_at", _ms(), nullable=False),
    # key (device, sensor, window_end), ordered time first like readings: the windows a batch updates
    # and the range a run exports are adjacent
    sa.PrimaryKeyConstraint("window_end", "device", "sensor", name="pk_windows"),
    sqlite_with_rowid=False,
    # windows are rewritten while they fill: free space per page lets PostgreSQL update them in place (HOT)
    postgresql_with={"fillfactor": 70},
)

dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("received_at", _ms(), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("partition", sa.String(64)),
    sa.Column("sequence_number", sa.BigInteger()),
    sa.Column("offset", sa.String(64)),
    sa.Column("enqueued_time", _ms()),
    sa.Column("payload", sa.UnicodeText(), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("detail", sa.Unicode(1000), nullable=False),
    sa.Index("ix_dead_letters_reason", "reason"),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True, comment="derived from the schedule slot"),
    sa.Column("slot", _ms(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False, default=1),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("trigger", sa.String(40), nullable=False),
    sa.Column("backend", sa.String(40)),
    sa.Column("backend_run_id", sa.String(200)),
    sa.Column("model_version", sa.String(80)),
    sa.Column("window_from", _ms(), comment="exclusive"),
    sa.Column("window_until", _ms(), comment="inclusive"),
    sa.Column("partitions", sa.Integer()),
    sa.Column("models", sa.Integer()),
    sa.Column("windows", sa.Integer()),
    sa.Column("windows_no_model", sa.Integer()),
    sa.Column("failures", sa.Integer()),
    sa.Column("failure_detail", sa.UnicodeText()),
    sa.Column("error", sa.UnicodeText()),
    sa.Column("claimed_at", _ms(), nullable=False),
    sa.Column("submitted_at", _ms()),
    sa.Column("finished_at", _ms()),
    sa.Column("timings", sa.UnicodeText(), comment="JSON: seconds per stage"),
    sa.Index("ix_runs_slot", "slot"),
)

prediction_files = sa.Table(
    "prediction_files", metadata,
    sa.Column("name", sa.String(400), primary_key=True, comment="blob name"),
    sa.Column("etag", sa.String(100), nullable=False),
    sa.Column("run_id", sa.String(40)),
    sa.Column("status", sa.String(20), nullable=False, comment="indexed | error | poison"),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0),
    sa.Column("rows", sa.Integer()),
    sa.Column("anomalies", sa.Integer()),
    sa.Column("failures", sa.Integer()),
    sa.Column("windows_no_model", sa.Integer()),
    sa.Column("error", sa.UnicodeText()),
    sa.Column("indexed_at", _ms(), nullable=False),
)

anomalies = sa.Table(
    "anomalies", metadata,
    sa.Column("device", ID, primary_key=True),
    sa.Column("sensor", ID, primary_key=True),
    sa.Column("window_end", _ms(), primary_key=True),
    sa.Column("score", sa.Float(53), nullable=False),
    sa.Column("model_version", sa.String(80)),
    sa.Column("run_id", sa.String(40)),
    sa.Column("file_name", sa.String(400), nullable=False),
    sa.Index("ix_anomalies_file", "file_name"),
)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("alert_id", sa.String(80), primary_key=True),
    sa.Column("device", ID, nullable=False),
    sa.Column("sensor", ID, nullable=False),
    sa.Column("status", sa.String(10), nullable=False, comment="open | closed"),
    sa.Column("first_window_end", _ms(), nullable=False),
    sa.Column("last_window_end", _ms(), nullable=False),
    sa.Column("last_seen_window_end", _ms(), nullable=False, comment="newest window scored for the pair"),
    sa.Column("normal_after", sa.Integer(), nullable=False, default=0),
    sa.Column("windows", sa.Integer(), nullable=False),
    sa.Column("max_score", sa.Float(53), nullable=False),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("model_version", sa.String(80)),
    sa.Column("run_id", sa.String(40)),
    sa.Column("raised_at", _ms(), nullable=False),
    sa.Column("updated_at", _ms(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False, default=1),
    sa.Column("delivered_revision", sa.Integer(), nullable=False, default=0),
    sa.Column("delivery_attempts", sa.Integer(), nullable=False, default=0),
    sa.Column("delivery_error", sa.UnicodeText()),
    sa.Index("ix_alerts_pair", "device", "sensor"),
    sa.Index("ix_alerts_status", "status"),
)

watermarks = sa.Table(
    "watermarks", metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("value", _ms(), nullable=False),
    sa.Column("updated_at", _ms(), nullable=False),
)

schema_migrations = sa.Table(
    "schema_migrations", metadata,
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("applied_at", _ms(), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
)

SCORING_WATERMARK = "scoring"
RUN_ACTIVE = ("claimed", "submitted", "running")
RUN_TERMINAL = ("succeeded", "partial", "failed")
"""Run statuses: a run is claimed, submitted to its backend, running, then ends in one of RUN_TERMINAL."""


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


def read_frame(conn: Connection, query: sa.Select, columns: list[str] | None = None):
    """A query's rows as a pandas DataFrame, built column-wise from the driver's tuples (`iter_tuples`).
    Column names default to the query's."""
    import pandas as pd

    names = columns or [c.name for c in query.selected_columns]
    rows = list(iter_tuples(conn, query))
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    return pd.DataFrame(dict(zip(names, zip(*rows, strict=True), strict=True)))


IN_CHUNK = 900
"""Values per `IN (...)` list: below SQL Server's 2,100 parameters per statement with room to spare."""


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    """`items` in slices of at most `size` (for `IN (...)` lists)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_watermark(conn: Connection, name: str = SCORING_WATERMARK) -> int | None:
    """The newest window end (epoch ms) of completed runs, or None before the first."""
    return conn.execute(sa.select(watermarks.c.value).where(watermarks.c.name == name)).scalar()


def advance_watermark(conn: Connection, value: int, now: int, name: str = SCORING_WATERMARK) -> None:
    """Move the watermark forward to `value`, never back; safe against a concurrent first insert."""
    moved = conn.execute(watermarks.update().where(watermarks.c.name == name, watermarks.c.value < value)
                         .values(value=int(value), updated_at=now)).rowcount
    if moved or read_watermark(conn, name) is not None:
        return
    try:
        with conn.begin_nested():
            conn.execute(watermarks.insert().values(name=name, value=int(value), updated_at=now))
    except sa_exc.IntegrityError:  # another writer inserted it first
        conn.execute(watermarks.update().where(watermarks.c.name == name, watermarks.c.value < value)
                     .values(value=int(value), updated_at=now))


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "create the schema", _create_v1),
]
"""Ordered schema migrations; append new (version, description, step) entries, never edit old ones."""


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their folder, WAL and a busy timeout."""
    parsed = make_url(url)
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    elif parsed.get_backend_name() == "mssql":
        kwargs["fast_executemany"] = True
    else:
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-131072")  # 128 MiB: inserts land all over the (device, sensor, ts) tree
            cur.execute("PRAGMA wal_autocheckpoint=16384")  # 64 MiB of WAL: checkpoints coalesce hot pages
            cur.close()

    return engine


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
    from sqlalchemy.dialects import mssql, postgresql, sqlite

    dialect = {"mssql": mssql.dialect(deprecate_large_types=True), "postgresql": postgresql.dialect(),
               "sqlite": sqlite.dialect()}[dialect_name]
    terminator = "\nGO\n" if dialect_name == "mssql" else ";\n"
    parts = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + terminator)
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + terminator)
    return "\n".join(parts)


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth a retry: lost connections, deadlocks, locks, races on a key.

    An IntegrityError counts: it only arises when a concurrent writer stored the same key between
    our read and our insert, and the redelivered batch then sees that row.
    """
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.IntegrityError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        text = str(exc.orig).lower() if exc.orig is not None else ""
        return any(s in text for s in ("deadlock", "database is locked", "could not serialize",
                                       "connection", "timeout", "1205"))
    return False
