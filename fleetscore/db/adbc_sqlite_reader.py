"""The ADBC SQLite read, run as a process of its own: `python adbc_sqlite_reader.py DATABASE BATCH_ROWS [SORT_BY]`
reads queries from stdin (separated by NUL characters) and writes each one's rows to stdout as an Arrow IPC stream, one
stream after the other, all read in one transaction (one snapshot of the database). With SORT_BY (column names, comma
separated) each query's rows are read whole and sorted by those columns here, in Arrow: strings by their bytes, as
SQLite's BINARY collation orders them, in less than half the time SQLite's sorter takes.

Why a process: `adbc-driver-sqlite` links a copy of SQLite of its own, and a process that holds two copies on one
database file loses its locks (SQLite's "How To Corrupt An SQLite Database File", 2.2.1): POSIX advisory locks belong
to the process, so when one copy closes its descriptors it releases the other copy's locks too. Another process then
believes it is alone on the file: it checkpoints and resets the WAL under the engine's open connections, or truncates
the shared-memory file they have mapped (a SIGBUS). In a child process the driver's locks are its own.

Run as a script by path (not `-m`), so that the child imports pyarrow and the driver only (not this package).
Exit codes: 0 done, 2 the database could not be opened (nothing written: the caller reads through its own driver
instead), 1 anything else (the message on stderr).
"""

from __future__ import annotations

import os
import sys

PRAGMAS = (
    "PRAGMA busy_timeout = 30000",  # wait for a lock as the engine's connections do (`timeout` 30 s), not fail
    # helper threads for the sorter (the export's ORDER BY): the export runs two of these beside a scoring worker per
    # core, so one per two cores beyond the first two; none on 2 cores, where they only added CPU (export of 1,000,000
    # pairs in two streams 12.6-13.5 s with 2 helpers, 12.2 s without)
    f"PRAGMA threads = {min(max((os.cpu_count() or 1) // 2 - 1, 0), 8)}",
)
"""Set on the connection before the query."""
SEPARATOR = "\0"
"""Between two queries on stdin (SQL with literal ids and integers holds no NUL)."""
EXIT_UNAVAILABLE = 2
"""The exit code when the database cannot be opened through the driver."""


def main(database: str, batch_rows: int, queries: list[str], sort_by: list[str]) -> int:
    """Stream the rows of each of `queries` on `database` to stdout (an IPC stream each, in one read transaction),
    sorted by the columns `sort_by` if any; the exit code."""
    import adbc_driver_manager
    import adbc_driver_sqlite  # the low-level API: its DB-API module imports pandas (0.5 s a start)
    import pyarrow as pa

    try:
        handle = adbc_driver_sqlite.connect(database)
        conn = adbc_driver_manager.AdbcConnection(handle)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which reads through its own driver
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    with handle, conn, adbc_driver_manager.AdbcStatement(conn) as statement:
        for pragma in PRAGMAS:
            statement.set_sql_query(pragma)
            statement.execute_update()
        statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        conn.set_options(**{"adbc.connection.autocommit": "false"})  # BEGIN: every query reads the same snapshot
        sink = sys.stdout.buffer
        for sql in queries:
            statement.set_sql_query(sql)
            stream, _ = statement.execute_query()
            reader = pa.RecordBatchReader.from_stream(stream)
            if sort_by:
                reader = reader.read_all().sort_by([(name, "ascending") for name in sort_by]).to_reader(batch_rows)
            with pa.ipc.new_stream(sink, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
        sink.flush()
        conn.rollback()  # a read: nothing to commit
    return 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # this package's modules are not top-level
    try:
        sort_by = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else []
        sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.stdin.read().split(SEPARATOR), sort_by))
    except Exception as exc:  # noqa: BLE001 - one line for the caller's error (a broken pipe: the caller stopped)
        print(f"{type(exc).__name__}: {' / '.join(str(exc).splitlines())}", file=sys.stderr)
        sys.exit(1)
