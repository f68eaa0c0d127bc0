"""Bulk reads as Arrow: a query's rows in record batches of a given schema, without a Python object per value
where a columnar driver serves the database.

- SQLite files and PostgreSQL: Apache Arrow's ADBC drivers (`adbc-driver-sqlite`, `adbc-driver-postgresql`) build
  the columns in C (PostgreSQL: `COPY (query) TO STDOUT (FORMAT binary)`, streamed). They open a connection of their
  own from the engine's URL and read committed rows, one statement, one snapshot, as a query on the engine's
  connection does. The query's parameters must all be integers or device/sensor ids (lists of them for an IN): they
  are rendered into the SQL as literals, because the PostgreSQL driver streams through COPY only for a statement
  without bound parameters. The SQLite driver reads in a child process (`adbc_sqlite_reader`, an Arrow IPC stream
  on a pipe): it links a copy of SQLite of its own, and two copies in one process release each other's file locks,
  so another connection checkpointed the WAL away under the engine's (a SIGBUS, or a corrupt database). The child
  also reads and sorts while this process writes what it has read.
- Anything else (SQL Server, an in-memory SQLite database, a driver that is not installed, a connection the driver
  cannot open): the generic path, the DB-API driver's tuples (`reads.iter_tuples`) turned into columns a batch at a
  time.

Both paths give the same values in the same types (the schema's: each batch is cast to it), so what is built from
them is byte-identical (`tests/integration/db/test_columnar.py`); only the batch lengths may differ.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

import fleetscore.db.adbc_sqlite_reader as adbc_sqlite_reader
from fleetscore.db.reads import iter_tuples
from scoring_job.contract import ID_PATTERN

log = logging.getLogger(__name__)

BATCH_ROWS = 100_000
"""Rows per batch (the ADBC SQLite driver's batches; the generic path's; PostgreSQL's are sized by bytes)."""
PG_BATCH_BYTES = 16 << 20
"""The ADBC PostgreSQL driver's batch size hint (bytes)."""


def arrow_batches(conn: Connection, queries: Sequence[sa.Select], schema: pa.Schema, *, order_by: Sequence[str] = (),
                  small: bool = False, batch_rows: int = BATCH_ROWS, columnar: bool = True) -> Iterator[pa.Table]:
    """The rows of `queries`, one query's after the other's (their columns in `schema`'s order, no NULLs), each query's
    ordered by its columns `order_by`, as tables of `schema`, streamed; through ADBC where it serves `conn`'s database
    (module docstring) unless `columnar` is False. The ADBC SQLite reader reads them all in one transaction and, when
    each query's rows are `small` (they fit in memory), sorts them itself rather than in SQLite (the same order).
    Closing the iterator closes its reader (an ADBC connection, a reader process) at once."""
    batches = _adbc_batches(conn, queries, schema, order_by, small, batch_rows) if columnar else None
    if batches is None:
        batches = (table for query in queries
                   for table in _tuple_batches(conn, _ordered(query, order_by), schema, batch_rows))
    with closing(batches):
        for table in batches:
            if len(table):
                yield table


def _ordered(query: sa.Select, order_by: Sequence[str]) -> sa.Select:
    """`query` ordered by its selected columns named `order_by`."""
    return query.order_by(*(query.selected_columns[name] for name in order_by)) if order_by else query


def _tuple_batches(conn: Connection, query: sa.Select, schema: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    """The generic path: the driver's tuples, `batch_rows` at a time, as columns."""
    return tuple_tables(iter_tuples(conn, query), schema, batch_rows)


def tuple_tables(rows: Iterator[tuple], schema: pa.Schema, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """Rows (tuples in `schema`'s column order) as tables of `schema`, `batch_rows` rows each (the last shorter)."""
    while True:
        enabled = gc.isenabled()
        gc.disable()  # the rows are plain tuples (no cycles): collections while building them cost ~40 %
        try:
            batch = list(islice(rows, batch_rows))
            columns = tuple(zip(*batch, strict=True))
        finally:
            if enabled:
                gc.enable()
        if not batch:
            return
        yield pa.Table.from_arrays([_column(values, field.type) for values, field in zip(columns, schema, strict=True)],
                                   schema=schema)


def _column(values: tuple, type_: pa.DataType) -> pa.Array:
    """One column of Python values as an Arrow array of `type_` (numbers through numpy: one C loop)."""
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return pa.array(np.array(values, dtype=type_.to_pandas_dtype()))
    return pa.array(values, type_)


def _adbc_batches(conn: Connection, queries: Sequence[sa.Select], schema: pa.Schema, order_by: Sequence[str],
                  small: bool, batch_rows: int) -> Iterator[pa.Table] | None:
    """The ADBC stream of `queries`' rows (`arrow_batches`), or None where no ADBC driver serves `conn` (the caller
    falls back)."""
    sort_by = list(order_by) if small and conn.dialect.name == "sqlite" else []
    sqls = [literal_sql(conn.dialect, query if sort_by else _ordered(query, order_by)) for query in queries]
    if not sqls or None in sqls:
        return None
    if conn.dialect.name == "sqlite":
        return _sqlite_reader_batches(conn.engine.url, sqls, schema, batch_rows, sort_by)
    adbc = _adbc_pg_connect(conn.engine.url)
    if adbc is None:
        return None
    return _stream(adbc, sqls, schema)


def _stream(adbc: Any, sqls: list[str], schema: pa.Schema) -> Iterator[pa.Table]:
    """The results of `sqls` on the ADBC PostgreSQL connection `adbc` (closed at the end) as tables of `schema`."""
    with closing(adbc), closing(adbc.cursor()) as cursor:
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(PG_BATCH_BYTES)})
        for sql in sqls:
            cursor.execute(sql)
            for batch in cursor.fetch_record_batch():
                yield _as_schema(batch, schema)


def _as_schema(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([batch]).rename_columns(schema.names).cast(schema)


def _sqlite_reader_batches(url: URL, sqls: list[str], schema: pa.Schema, batch_rows: int, sort_by: Sequence[str] = ()
                           ) -> Iterator[pa.Table] | None:
    """The rows of `sqls`, one after the other (each sorted by the columns `sort_by` if any), on the SQLite file of
    `url`, read through ADBC in a child process (`adbc_sqlite_reader`: the driver's own copy of SQLite must not share
    this process's locks), or None where it cannot serve the file (an in-memory or URI database, the driver not
    installed, the file not opened: logged)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query:
        return None
    if importlib.util.find_spec("adbc_driver_sqlite") is None:
        return None
    child = subprocess.Popen([sys.executable, str(Path(adbc_sqlite_reader.__file__)), database, str(batch_rows),
                              ",".join(sort_by)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        child.stdin.write(adbc_sqlite_reader.SEPARATOR.join(sqls).encode())
        child.stdin.close()
        reader = pa.ipc.open_stream(child.stdout)
    except (pa.ArrowInvalid, OSError):  # no stream: the child stopped before its first message
        error = _finish(child)
        if child.returncode == adbc_sqlite_reader.EXIT_UNAVAILABLE:
            log.warning("columnar read unavailable (%s); reading rows through the DB-API driver", error)
            return None
        raise RuntimeError(f"the ADBC SQLite reader failed (exit {child.returncode}): {error}") from None
    return _child_stream(child, reader, len(sqls), schema)


def _child_stream(child: subprocess.Popen, reader: pa.RecordBatchStreamReader, streams: int, schema: pa.Schema
                  ) -> Iterator[pa.Table]:
    """The batches of the child's `streams` IPC streams (`reader` the first) as tables of `schema`, then the child
    waited for; a child that failed (or a stream that broke off) raises with the child's message, and a caller that
    stops early kills the child."""
    try:
        for k in range(streams):
            for batch in reader if k == 0 else pa.ipc.open_stream(child.stdout):
                yield _as_schema(batch, schema)
        broken = ""
    except (pa.ArrowInvalid, OSError) as exc:  # the stream broke off: the child's exit says why
        broken = f"{type(exc).__name__}: {exc}"
    except BaseException:  # the caller stopped (GeneratorExit) or failed: the rest is not wanted
        child.kill()
        _finish(child)
        raise
    error = _finish(child)
    if child.returncode or broken:
        raise RuntimeError(f"the ADBC SQLite reader failed (exit {child.returncode}): {error or broken}")


def _finish(child: subprocess.Popen) -> str:
    """Wait for `child` (its pipes closed); its stderr (its error, one line)."""
    child.stdout.close()
    error = child.stderr.read().decode(errors="replace").strip()
    child.stderr.close()
    child.wait()
    return error


def literal_sql(dialect: sa.Dialect, query: sa.Select) -> str | None:
    """`query` as SQL for an ADBC `dialect` (sqlite, postgresql) with its parameters as literals, when every one is a
    plain integer, a device or sensor id (`contract.ID_PATTERN`: no quote, no backslash, nothing to escape) or a list
    of those (an IN); None otherwise (other dialects, other parameters: the generic path binds them)."""
    if dialect.name not in ("sqlite", "postgresql"):
        return None
    params = query.compile(dialect=dialect).params
    if not all(_literal_safe(v) for v in params.values()):
        return None
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _literal_safe(value: Any) -> bool:
    """A plain integer (bool refused), an id, or a non-empty list or tuple of those."""
    if isinstance(value, list | tuple):
        return bool(value) and all(_literal_safe(v) for v in value)
    return type(value) is int or (type(value) is str and ID_PATTERN.fullmatch(value) is not None)


def _adbc_pg_connect(url: URL) -> Any | None:
    """An ADBC DB-API connection to the PostgreSQL database of `url`, or None when the driver is not installed or
    cannot connect (logged)."""
    try:
        import adbc_driver_postgresql.dbapi as adbc_pg  # lazy: an optional driver

        return adbc_pg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to connect: the generic path reads the same rows
        log.warning("columnar read unavailable (%s: %s); reading rows through the DB-API driver",
                    type(exc).__name__, exc)
        return None
