"""Schema migrations with Alembic, on a real SQLite file and the real PostgreSQL server: a fresh database,
a database made by fleetscore before Alembic (upgraded in place, rows kept), the offline SQL a DBA runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine, make_url

from fleetscore import db
from fleetscore.db import migrate
from tests.helpers import REPO
from tests.integration.db import legacy_v1

HEAD = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
TIP = HEAD[-1]
"""Every revision, oldest first: what a fresh database applies."""

SAMPLE_ROWS = {
    "readings": [{"device": "d-1", "sensor": "temp", "ts": 1_000, "value": 21.5, "ingested_at": 2_000,
                  "late": False},
                 {"device": "D-1", "sensor": "temp", "ts": 1_000, "value": -3.25, "ingested_at": 2_000,
                  "late": True}],
    "windows": [{"device": "d-1", "sensor": "temp", "window_end": 300_000, "n": 2, "sum": 43.0, "sumsq": 924.5,
                 "min": 21.5, "max": 21.5, "updated_at": 2_000}],
    "dead_letters": [{"id": 1, "received_at": 2_000, "source": "eventhub", "partition": "0", "sequence_number": 6,
                      "offset": "42", "enqueued_time": 1_500, "payload": "{not json ✗", "reason": "bad_json",
                      "detail": "Expecting property name"}],
    "runs": [{"run_id": "run-20261123T1200Z", "slot": 1_763_899_200_000, "attempt": 1, "status": "succeeded",
              "trigger": "timer", "backend": "local", "backend_run_id": None, "model_version": "v1",
              "window_from": 0, "window_until": 300_000, "partitions": 1, "models": 2, "windows": 1,
              "windows_no_model": 0, "failures": 0, "failure_detail": None, "error": None, "claimed_at": 3_000,
              "submitted_at": 3_100, "finished_at": 3_900, "timings": '{"export": 0.1}'}],
    "prediction_files": [{"name": "predictions/run-20261123T1200Z/part-00000.parquet", "etag": '"0x8D"',
                          "run_id": "run-20261123T1200Z", "status": "indexed", "attempts": 1, "rows": 1,
                          "anomalies": 1, "failures": 0, "windows_no_model": 0, "error": None,
                          "indexed_at": 4_000}],
    "anomalies": [{"device": "d-1", "sensor": "temp", "window_end": 300_000, "score": 1.25, "model_version": "v1",
                   "run_id": "run-20261123T1200Z",
                   "file_name": "predictions/run-20261123T1200Z/part-00000.parquet"}],
    "alerts": [{"alert_id": "d-1|temp|300000", "device": "d-1", "sensor": "temp", "status": "open",
                "first_window_end": 300_000, "last_window_end": 300_000, "last_seen_window_end": 300_000,
                "normal_after": 0, "windows": 1, "max_score": 1.25, "severity": "high", "model_version": "v1",
                "run_id": "run-20261123T1200Z", "raised_at": 4_000, "updated_at": 4_000, "revision": 1,
                "delivered_revision": 0, "delivery_attempts": 0, "delivery_error": None}],
    "watermarks": [{"name": "scoring", "value": 300_000, "updated_at": 4_000}],
}
"""One or two rows for every table (ids differing only in case, a non-ASCII payload)."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    """The URL of an empty database: a new SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = sa.create_engine(request.getfixturevalue("pg_url"), isolation_level="AUTOCOMMIT")
    name = f"fleetscore_migrations_{uuid.uuid4().hex[:10]}"
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server.url).set(database=name).render_as_string(hide_password=False)
    with server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


@pytest.fixture
def empty_engine(empty_url):
    engine = db.create_db_engine(empty_url)
    yield engine
    engine.dispose()


def version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(MigrationContext.configure(conn).get_current_heads())


def schema_diff(engine: Engine) -> list:
    """Alembic's differences between the database and `db.metadata` (empty when they match)."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), db.metadata)


def table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def all_rows(engine: Engine, tables: list[sa.Table]) -> dict[str, list[tuple]]:
    """Every row of `tables`, in key order."""
    with engine.connect() as conn:
        return {t.name: conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all() for t in tables}


def test_a_fresh_database_upgrades_to_head_and_matches_the_metadata(empty_engine):
    assert db.upgrade(empty_engine) == HEAD
    assert version(empty_engine) == [TIP]
    assert table_names(empty_engine) == set(db.metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_engine) == []


def test_upgrading_a_current_database_is_a_no_op(empty_engine):
    db.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(db.watermarks.insert().values(name="scoring", value=1, updated_at=2))
    assert db.upgrade(empty_engine) == []
    assert db.upgrade(empty_engine) == []
    assert version(empty_engine) == [TIP]
    assert all_rows(empty_engine, [db.watermarks]) == {"watermarks": [("scoring", 1, 2)]}


def test_a_database_made_before_alembic_upgrades_in_place(empty_engine):
    assert legacy_v1.upgrade(empty_engine) == [1]
    with empty_engine.begin() as conn:
        for table in legacy_v1.TABLES:
            conn.execute(table.insert(), SAMPLE_ROWS[table.name])
    before = all_rows(empty_engine, legacy_v1.TABLES)
    assert sum(map(len, before.values())) == sum(map(len, SAMPLE_ROWS.values()))

    assert db.upgrade(empty_engine) == HEAD[1:]  # stamped at the baseline, its tables kept

    assert version(empty_engine) == [TIP]
    assert table_names(empty_engine) == set(db.metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_engine) == []
    assert all_rows(empty_engine, legacy_v1.TABLES) == before  # every row's old columns; new ones are added
    assert db.upgrade(empty_engine) == []


def test_a_database_whose_version_table_is_empty_is_adopted_too(empty_engine):
    """The old `fleetscore db sql` printed `schema_migrations` without its row: a DBA's database, not yet
    started by the app, has the tables and an empty version table."""
    legacy_v1.metadata.create_all(empty_engine)
    assert db.upgrade(empty_engine) == HEAD[1:]
    assert schema_diff(empty_engine) == []


def test_downgrading_to_the_baseline_gives_the_old_code_its_database_back(empty_engine):
    db.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        cfg = migrate.config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, migrate.BASELINE)
    assert legacy_v1.upgrade(empty_engine) == []  # the old code sees its version 1
    assert db.upgrade(empty_engine) == HEAD[1:]
    assert schema_diff(empty_engine) == []


def test_a_database_a_newer_fleetscore_migrated_is_left_as_it_is(empty_engine, caplog):
    db.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    assert db.upgrade(empty_engine) == []
    assert version(empty_engine) == ["9999"]
    assert "revision 9999, which this fleetscore does not know" in caplog.text


def test_two_processes_upgrading_at_once_migrate_once(empty_url, tmp_path):
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from fleetscore import db
        engine = db.create_db_engine({empty_url!r})
        print("ready", flush=True)
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        print(db.upgrade(engine), flush=True)
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    go.touch()
    results = sorted(worker.communicate(timeout=120)[0].strip() for worker in workers)
    assert [w.returncode for w in workers] == [0, 0]
    assert results == [str(HEAD), "[]"]
    engine = db.create_db_engine(empty_url)
    assert version(engine) == [TIP] and schema_diff(engine) == []
    engine.dispose()


def test_the_offline_sql_for_mssql_has_every_table_in_go_batches():
    text = db.ddl("mssql")
    for table in db.metadata.sorted_tables:
        assert f"CREATE TABLE {table.name} (" in text
    assert "device VARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL" in text
    assert "payload NVARCHAR(max) NOT NULL" in text
    assert "CREATE INDEX ix_alerts_pair ON alerts (device, sensor)" in text
    assert "\nGO\n" in text and text.rstrip().endswith("GO")
    assert "INSERT INTO alembic_version" in text and f"'{TIP}'" in text


def test_the_offline_sql_builds_the_schema_when_a_dba_runs_it(empty_url):
    """What `fleetscore db sql` prints, run as a script: the database is at head and matches the metadata."""
    dialect = make_url(empty_url).get_backend_name()
    text = db.ddl(dialect)
    if dialect == "sqlite":
        with sqlite3.connect(make_url(empty_url).database) as conn:
            conn.executescript(text)
    else:
        raw = sa.create_engine(empty_url, isolation_level="AUTOCOMMIT")
        with raw.connect() as conn:
            conn.exec_driver_sql(text)
        raw.dispose()
    engine = db.create_db_engine(empty_url)
    assert version(engine) == [TIP] and schema_diff(engine) == []
    assert db.upgrade(engine) == []
    engine.dispose()


def test_the_offline_sql_names_its_dialects():
    with pytest.raises(ValueError, match="oracle"):
        db.ddl("oracle")
