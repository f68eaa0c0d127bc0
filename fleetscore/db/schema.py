"""The SQL schema: every table, the `ID` type and the run statuses (the contract for all SQL in fleetscore).

One SQLAlchemy Core code path serves `sqlite`, `postgresql+psycopg` and `mssql+pyodbc`.
All timestamps are stored as BIGINT milliseconds since the Unix epoch, UTC (`ts`, `window_end`,
`*_at`): keys compare exactly on every dialect and no session time zone can shift them.

A change here needs a migration in `fleetscore/db/migrations/versions/` (see `fleetscore.db.migrate`);
a test checks that the migrations build exactly this metadata.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mssql

metadata = sa.MetaData()
ID = sa.String(64).with_variant(mssql.VARCHAR(64, collation="Latin1_General_100_BIN2"), "mssql")
"""A device or sensor id: 1–64 characters of [A-Za-z0-9._:-], compared case-sensitively on every dialect
(SQL Server's default collation would make `d-1` and `D-1` one key)."""


def _ms() -> sa.BigInteger:
    """A time column's type: epoch milliseconds UTC."""
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

DEAD_LETTER_KEY_COMMENT = ("identity: SHA-256 (hex) of source, partition, sequence number, reason, payload and "
                           "its ordinal in the event; NULL for rows from before migration 0004")
"""A redelivered bad event maps to the same key and is recorded once (`fleetscore.ingest.store`)."""
DOCUMENT_REVISION_COMMENT = "the revision whose JSON document is in blob storage (outbox: < revision is pending)"
"""Alert documents are an outbox per revision (`fleetscore.alerts.outbox`), as `delivered_revision` is."""
EVENTGRID_REVISION_COMMENT = "the revision published to the Event Grid topic (outbox: < revision is pending)"
"""The Event Grid topic's delivery mark, beside the webhook's `delivered_revision` (`fleetscore.alerts.webhook`)."""
OPENED_BY_COMMENT = "strong | two_high | persistence: the episode rule that opened it (NULL: opened before 0008)"
"""`fleetscore.alerts.episodes.OPENING_RULES` owns the values."""
TRACEPARENT_COMMENT = "W3C traceparent of the run's trace (OpenTelemetry); the index continues it"

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
    sa.Column("letter_key", sa.String(64), comment=DEAD_LETTER_KEY_COMMENT),
    sa.Index("ix_dead_letters_reason", "reason"),
    # SQL Server lets a unique index hold one NULL only: rows from before migration 0004 have none
    sa.Index("ux_dead_letters_key", "letter_key", unique=True, mssql_where=sa.text("letter_key IS NOT NULL")),
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
    sa.Column("model_sha256", sa.String(64), comment="SHA-256 of the pack's manifest.json"),
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
    sa.Column("lease_owner", sa.String(120), comment="host:pid:token of the process running it locally"),
    sa.Column("lease_until", _ms(), comment="epoch ms UTC; renewed by its owner; NULL once a remote job owns it"),
    sa.Column("retry_reason", sa.UnicodeText(), comment="why this attempt was started (NULL: first attempt)"),
    sa.Column("attempt_history", sa.UnicodeText(), comment="JSON: earlier attempts, how each ended"),
    sa.Column("traceparent", sa.String(55), comment=TRACEPARENT_COMMENT),
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
    sa.Column("opened_by", sa.String(12), comment=OPENED_BY_COMMENT),
    sa.Column("model_version", sa.String(80)),
    sa.Column("run_id", sa.String(40)),
    sa.Column("raised_at", _ms(), nullable=False),
    sa.Column("updated_at", _ms(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False, default=1),
    sa.Column("delivered_revision", sa.Integer(), nullable=False, default=0),
    sa.Column("delivery_attempts", sa.Integer(), nullable=False, default=0),
    sa.Column("delivery_error", sa.UnicodeText()),
    sa.Column("document_revision", sa.Integer(), nullable=False, default=0, server_default=sa.text("0"),
              comment=DOCUMENT_REVISION_COMMENT),
    sa.Column("eventgrid_revision", sa.Integer(), nullable=False, default=0, server_default=sa.text("0"),
              comment=EVENTGRID_REVISION_COMMENT),
    sa.Column("eventgrid_attempts", sa.Integer(), nullable=False, default=0, server_default=sa.text("0")),
    sa.Column("eventgrid_error", sa.UnicodeText()),
    sa.Column("acknowledged_at", _ms(), comment="epoch ms UTC; set once by POST /api/alerts/{id}/acknowledge"),
    sa.Column("acknowledged_by", sa.Unicode(200)),
    sa.Column("resolved_at", _ms(), comment="epoch ms UTC; a person resolved it (status closed, no longer extended)"),
    sa.Column("resolved_by", sa.Unicode(200)),
    sa.Column("note", sa.Unicode(1000), comment="the note of the last acknowledge or resolve"),
    sa.Index("ix_alerts_pair", "device", "sensor"),
    sa.Index("ix_alerts_status", "status"),
    sa.Index("ix_alerts_first", "first_window_end", "alert_id"),
)

alert_revisions = sa.Table(
    "alert_revisions", metadata,
    sa.Column("alert_id", sa.String(80), primary_key=True),
    sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(20), nullable=False, comment="opened | updated | closed | acknowledged | resolved"),
    sa.Column("changed_at", _ms(), nullable=False),
    sa.Column("actor", sa.Unicode(200), comment="who acknowledged or resolved (NULL: the episode rules)"),
    sa.Column("note", sa.Unicode(1000)),
    sa.Column("document", sa.UnicodeText(), nullable=False, comment="the alert's JSON document at this revision"),
)

watermarks = sa.Table(
    "watermarks", metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("value", _ms(), nullable=False),
    sa.Column("updated_at", _ms(), nullable=False),
)

ALERT_STATUSES = ("open", "closed")
"""`alerts.status`: the episode's state, which the episode rules read (a resolved alert is closed)."""
ALERT_STATES = ("open", "acknowledged", "closed", "resolved")
"""An alert's lifecycle state (documents, the API): open and not acknowledged, open and acknowledged, closed by
the episode rules, resolved by a person (`fleetscore.alerts.documents.alert_state`)."""
REVISION_KINDS = ("opened", "updated", "closed", "acknowledged", "resolved")
"""`alert_revisions.kind`: what made the revision."""


class SinkMark(NamedTuple):
    """A delivery sink's columns in `alerts`: the revision it took (below `revision`: pending), its failed tries
    since, its last error."""

    sink: str
    delivered: str
    attempts: str
    error: str


WEBHOOK_MARK = SinkMark("webhook", "delivered_revision", "delivery_attempts", "delivery_error")
EVENTGRID_MARK = SinkMark("eventgrid", "eventgrid_revision", "eventgrid_attempts", "eventgrid_error")
SINK_MARKS = (WEBHOOK_MARK, EVENTGRID_MARK)
"""Every delivery sink's mark (`fleetscore.alerts.webhook` delivers, `fleetscore.alerts.store` moves the marks of
an acknowledged alert's quiet updates)."""

RUN_ACTIVE = ("claimed", "submitted", "running")
RUN_TERMINAL = ("succeeded", "partial", "failed")
"""Run statuses: a run is claimed, submitted to its backend, running, then ends in one of RUN_TERMINAL.
An active run is owned by the process holding its lease (`lease_until`), or, once submitted to Azure ML, by
the remote job (`lease_until` NULL, `backend_run_id` set): `fleetscore.runs.recovery`."""
