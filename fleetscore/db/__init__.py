"""The SQL store: schema, engine creation, reads, the scoring watermark, transient-error rules, migrations.

Each job has its module; this package re-exports their public names so callers write `from fleetscore import
db` and `db.readings`, `db.iter_tuples`, `db.upgrade(engine)`:

| module | owns |
| --- | --- |
| `schema` | `metadata`, the tables, the `ID` type, the run statuses, the delivery sinks' marks |
| `engine` | `create_db_engine` (SQLite pragmas, driver options) |
| `reads` | `iter_tuples`, `read_frame`, `chunks` for `IN (...)` lists |
| `columnar` | `arrow_batches`: bulk reads as Arrow tables (ADBC on SQLite files and PostgreSQL, else `iter_tuples`) |
| `adbc_sqlite_reader` | the ADBC SQLite read as a child process of its own (its copy of SQLite keeps its locks apart) |
| `watermark` | the scoring watermark: read, advance |
| `errors` | `is_transient`: which database errors are worth a retry; `LockNotGranted` (`sp_getapplock`) |
| `migrate` | `upgrade` (Alembic, `migrations/`) and `ddl` (the migrations as SQL per dialect) |
"""

from __future__ import annotations

from fleetscore.db.columnar import arrow_batches
from fleetscore.db.engine import create_db_engine
from fleetscore.db.errors import LockNotGranted, is_transient
from fleetscore.db.migrate import ddl, upgrade
from fleetscore.db.reads import IN_CHUNK, chunks, in_chunk, iter_tuples, read_frame
from fleetscore.db.schema import (
    ALERT_STATES,
    ALERT_STATUSES,
    EVENTGRID_MARK,
    ID,
    REVISION_KINDS,
    RUN_ACTIVE,
    RUN_TERMINAL,
    SINK_MARKS,
    WEBHOOK_MARK,
    SinkMark,
    alert_revisions,
    alerts,
    anomalies,
    dead_letters,
    metadata,
    prediction_files,
    readings,
    runs,
    watermarks,
    windows,
)
from fleetscore.db.watermark import SCORING_WATERMARK, advance_watermark, read_watermark

__all__ = [
    "ALERT_STATES", "ALERT_STATUSES", "EVENTGRID_MARK", "ID", "SINK_MARKS", "SinkMark", "WEBHOOK_MARK", "IN_CHUNK",
    "REVISION_KINDS", "alert_revisions", "RUN_ACTIVE", "RUN_TERMINAL", "SCORING_WATERMARK", "LockNotGranted",
    "advance_watermark", "alerts", "anomalies", "arrow_batches", "chunks", "create_db_engine", "dead_letters", "ddl",
    "in_chunk",
    "is_transient", "iter_tuples", "metadata", "prediction_files", "read_frame", "read_watermark", "readings", "runs",
    "upgrade", "watermarks", "windows",
]

