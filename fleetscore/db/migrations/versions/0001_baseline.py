"""The schema as fleetscore created it before Alembic (its hand-written migration 1).

A database made by that code is stamped at this revision instead of running it (`fleetscore.db.migrate`).
Frozen: a later schema change is a new revision, never an edit here.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64).with_variant(mssql.VARCHAR(64, collation="Latin1_General_100_BIN2"), "mssql")
"""A device or sensor id, compared case-sensitively on SQL Server too."""
MS = sa.BigInteger
"""A time: epoch milliseconds UTC."""
REAL = sa.Float(53)


def upgrade() -> None:
    for create in (create_readings, create_windows, create_dead_letters, create_runs, create_prediction_files,
                   create_anomalies, create_alerts, create_watermarks):
        create()


def create_readings() -> None:
    op.create_table(
        "readings",
        sa.Column("device", ID, nullable=False),
        sa.Column("sensor", ID, nullable=False),
        sa.Column("ts", MS(), nullable=False, comment="epoch ms UTC"),
        sa.Column("value", REAL, nullable=False),
        sa.Column("ingested_at", MS(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False,
                  comment="its window was already older than the scoring watermark when it arrived"),
        sa.PrimaryKeyConstraint("ts", "device", "sensor", name="pk_readings"),
        sqlite_with_rowid=False,
    )


def create_windows() -> None:
    op.create_table(
        "windows",
        sa.Column("device", ID, nullable=False),
        sa.Column("sensor", ID, nullable=False),
        sa.Column("window_end", MS(), nullable=False, comment="epoch ms UTC; window is (end-W, end]"),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("sum", REAL, nullable=False),
        sa.Column("sumsq", REAL, nullable=False),
        sa.Column("min", REAL, nullable=False),
        sa.Column("max", REAL, nullable=False),
        sa.Column("updated_at", MS(), nullable=False),
        sa.PrimaryKeyConstraint("window_end", "device", "sensor", name="pk_windows"),
        sqlite_with_rowid=False,
        postgresql_with={"fillfactor": 70},
    )


def create_dead_letters() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("received_at", MS(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("partition", sa.String(64)),
        sa.Column("sequence_number", sa.BigInteger()),
        sa.Column("offset", sa.String(64)),
        sa.Column("enqueued_time", MS()),
        sa.Column("payload", sa.UnicodeText(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Unicode(1000), nullable=False),
    )
    op.create_index("ix_dead_letters_reason", "dead_letters", ["reason"])


def create_runs() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(40), primary_key=True, comment="derived from the schedule slot"),
        sa.Column("slot", MS(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("trigger", sa.String(40), nullable=False),
        sa.Column("backend", sa.String(40)),
        sa.Column("backend_run_id", sa.String(200)),
        sa.Column("model_version", sa.String(80)),
        sa.Column("window_from", MS(), comment="exclusive"),
        sa.Column("window_until", MS(), comment="inclusive"),
        sa.Column("partitions", sa.Integer()),
        sa.Column("models", sa.Integer()),
        sa.Column("windows", sa.Integer()),
        sa.Column("windows_no_model", sa.Integer()),
        sa.Column("failures", sa.Integer()),
        sa.Column("failure_detail", sa.UnicodeText()),
        sa.Column("error", sa.UnicodeText()),
        sa.Column("claimed_at", MS(), nullable=False),
        sa.Column("submitted_at", MS()),
        sa.Column("finished_at", MS()),
        sa.Column("timings", sa.UnicodeText(), comment="JSON: seconds per stage"),
    )
    op.create_index("ix_runs_slot", "runs", ["slot"])


def create_prediction_files() -> None:
    op.create_table(
        "prediction_files",
        sa.Column("name", sa.String(400), primary_key=True, comment="blob name"),
        sa.Column("etag", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("status", sa.String(20), nullable=False, comment="indexed | error | poison"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer()),
        sa.Column("anomalies", sa.Integer()),
        sa.Column("failures", sa.Integer()),
        sa.Column("windows_no_model", sa.Integer()),
        sa.Column("error", sa.UnicodeText()),
        sa.Column("indexed_at", MS(), nullable=False),
    )


def create_anomalies() -> None:
    op.create_table(
        "anomalies",
        sa.Column("device", ID, primary_key=True),
        sa.Column("sensor", ID, primary_key=True),
        sa.Column("window_end", MS(), primary_key=True),
        sa.Column("score", REAL, nullable=False),
        sa.Column("model_version", sa.String(80)),
        sa.Column("run_id", sa.String(40)),
        sa.Column("file_name", sa.String(400), nullable=False),
    )
    op.create_index("ix_anomalies_file", "anomalies", ["file_name"])


def create_alerts() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(80), primary_key=True),
        sa.Column("device", ID, nullable=False),
        sa.Column("sensor", ID, nullable=False),
        sa.Column("status", sa.String(10), nullable=False, comment="open | closed"),
        sa.Column("first_window_end", MS(), nullable=False),
        sa.Column("last_window_end", MS(), nullable=False),
        sa.Column("last_seen_window_end", MS(), nullable=False, comment="newest window scored for the pair"),
        sa.Column("normal_after", sa.Integer(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("max_score", REAL, nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("model_version", sa.String(80)),
        sa.Column("run_id", sa.String(40)),
        sa.Column("raised_at", MS(), nullable=False),
        sa.Column("updated_at", MS(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("delivered_revision", sa.Integer(), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_error", sa.UnicodeText()),
    )
    op.create_index("ix_alerts_pair", "alerts", ["device", "sensor"])
    op.create_index("ix_alerts_status", "alerts", ["status"])


def create_watermarks() -> None:
    op.create_table(
        "watermarks",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", MS(), nullable=False),
        sa.Column("updated_at", MS(), nullable=False),
    )


def downgrade() -> None:
    for table in ("watermarks", "alerts", "anomalies", "prediction_files", "runs", "dead_letters", "windows",
                  "readings"):
        op.drop_table(table)
