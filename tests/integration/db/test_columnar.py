"""Columnar reads (`db.arrow_batches`): ADBC on real SQLite files and PostgreSQL gives the same partitions, byte for
byte, as the DB-API driver's tuples; SQL Server, other parameters and unreachable drivers take the generic path."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql, sqlite

from fleetscore import db
from fleetscore.db import columnar
from fleetscore.runs import export
from fleetscore.runs.claims import claim_run
from fleetscore.runs.export import ROW_SCHEMA, export_run
from fleetscore.storage.folder import FolderStore
from fleetscore.storage.paths import partition_key, run_manifest_key
from scoring_job.pack import Lookback

W = 300_000
SLOT = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000 + 300_000
UNTIL = SLOT - SLOT % W
COLUMNAR_MIN_ROWS = export.COLUMNAR_MIN_ROWS
"""The library's threshold (the tests below set it to 0)."""


@pytest.fixture(autouse=True)
def _columnar_for_small_exports(monkeypatch):
    """These fleets are small: the export reads them through ADBC as it reads large ones."""
    monkeypatch.setattr(export, "COLUMNAR_MIN_ROWS", 0)


def _windows(seed: int) -> list[dict]:
    """Windows of devices with 1-5 sensors over 40 window ends (gaps included), awkward values included: -0.0
    stored as 0.0 by ingest but any float here, 17 significant digits, huge counts, ids with every allowed kind of
    character; n up to INTEGER's largest."""
    rng = random.Random(seed)
    rows = []
    for d in range(rng.randint(20, 60)):
        device = rng.choice(["d", "D.x", "dev:1-", "d_"]) + f"{d:03d}"
        for s in rng.sample(["temp", "hum", "p.1", "v:2", "x-y"], rng.randint(1, 5)):
            for k in sorted(rng.sample(range(40), rng.randint(1, 30))):
                value = rng.choice([0.0, 1e-300, -1.2345678901234567, 21.4, 1e300, rng.gauss(20, 5)])
                rows.append({"device": device, "sensor": s, "window_end": UNTIL - k * W,
                             "n": rng.choice([1, 5, 2**31 - 1]), "sum": value,
                             "sumsq": value * value if abs(value) < 1e150 else 0.0, "min": value - 1,
                             "max": value + 1, "updated_at": 0})
    return rows


def _export(engine, tmp_path, name: str, *, columnar_read: bool, lookback: Lookback) -> dict[str, bytes]:
    store = FolderStore(tmp_path / name)
    with engine.begin() as conn:
        conn.execute(sa.delete(db.runs))
    claim = claim_run(engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=12 * W, trigger="test", backend="local")
    manifest = export_run(engine, store, claim, model_version="v", window_ms=W, partition_models=7,
                          lookback=lookback, columnar=columnar_read)
    files = {p.name: store.get(partition_key(claim.run_id, p.name)) for p in manifest.partitions}
    manifest_json = store.get(run_manifest_key(claim.run_id)).decode()
    return {**files, "manifest": manifest_json.split('"created_at"')[0].encode()}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("lookback", [Lookback(), Lookback(6, ("hum",), 24)])
def test_adbc_export_is_byte_identical_to_the_dbapi_export(engine, tmp_path, monkeypatch, seed, lookback):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(seed))
    generic = _export(engine, tmp_path, "generic", columnar_read=False, lookback=lookback)

    def no_tuples(*args, **kwargs):
        raise AssertionError("the columnar read fell back to the DB-API driver")

    monkeypatch.setattr(columnar, "_tuple_batches", no_tuples)  # the ADBC path must serve SQLite files and PostgreSQL
    monkeypatch.setattr(export, "BATCH_ROWS", 13)  # batches cut inside devices: the cut does not depend on them
    fast = _export(engine, tmp_path, "adbc", columnar_read=True, lookback=lookback)
    assert len(generic) > 3
    assert fast == generic


def test_arrow_batches_cast_to_the_schema_and_skip_empty_results(engine):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(3))
    w = db.windows
    query = sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max)
    with engine.connect() as conn:
        tables = list(db.arrow_batches(conn, [query.where(w.c.window_end > UNTIL)], ROW_SCHEMA))
        assert tables == []
        tables = list(db.arrow_batches(conn, [query.order_by(w.c.device, w.c.sensor, w.c.window_end)], ROW_SCHEMA,
                                       batch_rows=50))
    assert all(t.schema == ROW_SCHEMA for t in tables)
    assert sum(len(t) for t in tables) == len(_windows(3))


@pytest.mark.parametrize("columnar_read", [True, False])
def test_arrow_batches_give_several_queries_rows_one_query_after_the_other(engine, columnar_read):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(3))
    w = db.windows
    query = sa.select(*(w.c[n] for n in ROW_SCHEMA.names)).order_by(w.c.device, w.c.sensor, w.c.window_end)
    with engine.connect() as conn:
        whole = pa.concat_tables(db.arrow_batches(conn, [query], ROW_SCHEMA, columnar=columnar_read))
        devices = sorted(set(whole["device"].to_pylist()))
        lo, hi = devices[len(devices) // 3], devices[2 * len(devices) // 3]
        queries = [query.where(w.c.device < lo), query.where(w.c.window_end > UNTIL),  # an empty one between
                   query.where(w.c.device >= lo, w.c.device < hi), query.where(w.c.device >= hi)]
        tables = list(db.arrow_batches(conn, queries, ROW_SCHEMA, batch_rows=7, columnar=columnar_read))
    assert len(tables) >= 3 and pa.concat_tables(tables).equals(whole)  # PostgreSQL's ADBC batches go by bytes


def test_the_sqlite_reader_reads_its_queries_in_one_snapshot(tmp_path):
    """A row committed while the child is still sending the first query's rows is not in the second's."""
    path = tmp_path / "fleet.db"
    engine = db.create_db_engine(f"sqlite:///{path}")
    rows = _windows(11)
    with engine.begin() as conn:
        db.metadata.create_all(conn)
        conn.execute(db.windows.insert(), rows)
    schema = pa.schema([pa.field("x", pa.int64())])
    many = "SELECT a.n FROM windows AS a, windows AS b"  # far more than a pipe holds: the child waits on the pipe
    batches = columnar._sqlite_reader_batches(engine.url, [many, "SELECT count(*) FROM windows"], schema, 1000)
    assert len(next(batches)) == 1000
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), [{**rows[0], "window_end": UNTIL + W}])
        assert conn.execute(sa.select(sa.func.count()).select_from(db.windows)).scalar_one() == len(rows) + 1
    tables = list(batches)
    assert sum(len(t) for t in tables[:-1]) + 1000 == len(rows) ** 2
    assert tables[-1]["x"].to_pylist() == [len(rows)]
    engine.dispose()


def test_only_integer_parameters_are_rendered_and_only_for_adbc_dialects():
    w = db.windows
    query = sa.select(w.c.device).where(w.c.window_end > 5, w.c.window_end <= 10)
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
        assert columnar.literal_sql(dialect, query).endswith("windows.window_end > 5 AND windows.window_end <= 10")
        assert columnar.literal_sql(dialect, query.where(w.c.device == "x'; drop table windows; --")) is None
        assert columnar.literal_sql(dialect, query.where(w.c.sum > 0.5)) is None  # a float: bound, not rendered
    assert columnar.literal_sql(mssql.pyodbc.dialect(), query) is None  # SQL Server: the generic path, bound


def test_sqlite_memory_and_unreachable_postgresql_fall_back_to_the_dbapi_driver(tmp_path, caplog):
    memory = db.create_db_engine("sqlite://")
    with memory.begin() as conn:
        db.metadata.create_all(conn)
        conn.execute(db.windows.insert(), _windows(4)[:30])
    w = db.windows
    query = sa.select(w.c.device, w.c.sensor, w.c.window_end, w.c.n, w.c.sum, w.c.sumsq, w.c.min, w.c.max)
    with memory.connect() as conn:
        assert columnar._adbc_batches(conn, [query], ROW_SCHEMA, (), False, 10) is None
        assert sum(len(t) for t in db.arrow_batches(conn, [query], ROW_SCHEMA)) == 30
    nowhere = sa.engine.make_url("postgresql+psycopg://fleetscore:secret@127.0.0.1:1/none")
    assert columnar._adbc_pg_connect(nowhere) is None
    assert "columnar read unavailable" in caplog.text and "secret" not in caplog.text
    assert pa.types.is_int64(ROW_SCHEMA.field("window_end").type)


def test_a_sqlite_read_keeps_this_process_s_locks_on_the_database(tmp_path):
    """The ADBC driver's own copy of SQLite reads in a child process: in this one, closing its connection released
    the engine's POSIX locks, and another process, believing it was alone on the file, reset the WAL under them."""
    path = tmp_path / "fleet.db"
    engine = db.create_db_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        db.metadata.create_all(conn)
        conn.execute(sa.text("PRAGMA wal_autocheckpoint = 0"))  # the rows stay in the WAL
        conn.execute(db.windows.insert(), _windows(5))
    w = db.windows
    with engine.connect() as conn:  # an open connection: it holds its lock on the WAL index
        conn.execute(sa.select(sa.func.count()).select_from(w)).scalar_one()
        rows = sum(len(t) for t in db.arrow_batches(conn, [sa.select(*(w.c[n] for n in ROW_SCHEMA.names))],
                                                    ROW_SCHEMA))
        assert rows == len(_windows(5))
        wal = os.path.getsize(f"{path}-wal")
        other = subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                                "print(c.execute('select count(*) from windows').fetchone()[0]); c.close()", str(path)],
                               capture_output=True, text=True, check=True)
        assert int(other.stdout) == rows
        assert os.path.exists(f"{path}-wal") and os.path.getsize(f"{path}-wal") == wal > 0  # not checkpointed away
        assert conn.execute(sa.select(sa.func.count()).select_from(w)).scalar_one() == rows
    engine.dispose()


def test_a_failed_sqlite_reader_raises_its_message(tmp_path):
    path = tmp_path / "fleet.db"
    engine = db.create_db_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        db.metadata.create_all(conn)
    with pytest.raises(RuntimeError, match=r"ADBC SQLite reader failed \(exit 1\): .*no such table: nowhere"):
        columnar._sqlite_reader_batches(engine.url, ["SELECT device FROM nowhere"], ROW_SCHEMA, 10)
    engine.dispose()



def _export_streams(engine, tmp_path, name: str, *, streams: int, columnar_read: bool, lookback: Lookback,
                    partition_models: int = 7):
    """The export's partitions (names, tables) and manifest with `streams` device ranges."""
    store = FolderStore(tmp_path / name)
    with engine.begin() as conn:
        conn.execute(sa.delete(db.runs))
    claim = claim_run(engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=12 * W, trigger="test", backend="local")
    manifest = export_run(engine, store, claim, model_version="v", window_ms=W, partition_models=partition_models,
                          lookback=lookback, columnar=columnar_read, streams=streams)
    tables = {p.name: pq.read_table(pa.BufferReader(store.get(partition_key(claim.run_id, p.name))))
              for p in manifest.partitions}
    return tables, manifest


@pytest.mark.parametrize("columnar_read", [True, False])
@pytest.mark.parametrize("lookback", [Lookback(), Lookback(6, ("hum",), 24)])
def test_export_streams_split_the_devices_and_lose_or_repeat_no_row(engine, tmp_path, columnar_read, lookback):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(6))
    one, one_manifest = _export_streams(engine, tmp_path, "one", streams=1, columnar_read=columnar_read,
                                        lookback=lookback)
    for streams in (2, 3):
        parts, manifest = _export_streams(engine, tmp_path, f"s{streams}", streams=streams,
                                          columnar_read=columnar_read, lookback=lookback)
        devices = [set(t["device"].to_pylist()) for t in parts.values()]
        assert all(not (a & b) for i, a in enumerate(devices) for b in devices[i + 1:])  # whole devices
        assert [p.name for p in manifest.partitions] == sorted(parts)
        numbers = sorted(int(name[5:10]) for name in parts)
        assert {n % streams for n in numbers} == set(range(streams))  # every stream wrote, numbered k, k + streams...
        in_device_order = sorted(parts.values(), key=lambda t: t["device"][0].as_py())
        assert pa.concat_tables(in_device_order).equals(pa.concat_tables(one.values()))
        assert (manifest.pairs, manifest.windows) == (one_manifest.pairs, one_manifest.windows)
        again, _ = _export_streams(engine, tmp_path, f"again{streams}", streams=streams,
                                   columnar_read=columnar_read, lookback=lookback)
        assert again.keys() == parts.keys() and all(again[k].equals(parts[k]) for k in parts)  # a retry's names


def test_range_cuts_split_the_last_window_s_pairs_at_devices_and_window_ends_are_the_distinct_ends(engine):
    rows = _windows(7)
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), rows)
    latest = sorted((r["device"], r["sensor"]) for r in rows if r["window_end"] == UNTIL)
    with engine.connect() as conn:
        assert export.last_window(conn, UNTIL) == (UNTIL, len(latest))
        assert export.last_window(conn, UNTIL - 10**12) == (None, 0)
        assert export.range_cuts(conn, None, 2) == []
        assert export.range_cuts(conn, UNTIL, len(latest)) == []
        cuts = export.range_cuts(conn, UNTIL, 2)
        assert export.window_ends(conn, UNTIL - 10 * W, UNTIL) == sorted(
            {r["window_end"] for r in rows if UNTIL - 10 * W < r["window_end"] <= UNTIL})
        assert export.window_ends(conn, UNTIL, UNTIL + W) == []
    assert cuts == sorted(set(cuts)) and cuts[0] > latest[0][0]
    devices = [d for d, _ in latest]
    for start, cut in zip([devices[0], *cuts], cuts, strict=False):  # the device 2 pairs on, or the next one
        first = devices.index(start)
        assert cut == (devices[first + 2] if devices[first + 2] != start else devices[devices.index(start) + sum(
            d == start for d in devices)])
    ranges = [r for block in export.stream_ranges(cuts, 3) for r in block]
    assert ranges == list(zip([None, *cuts], [*cuts, None], strict=True))


def test_stream_ranges_are_adjacent_blocks_of_ranges_that_cover_every_device():
    assert export.stream_ranges([], 2) == [[(None, None)]]
    assert export.stream_ranges(["b"], 4) == [[(None, "b")], [("b", None)]]
    assert export.stream_ranges(["b", "c", "d", "e"], 2) == [[(None, "b"), ("b", "c"), ("c", "d")],
                                                            [("d", "e"), ("e", None)]]
    assert export.stream_ranges(["b", "c"], 1) == [[(None, "b"), ("b", "c"), ("c", None)]]


def test_window_ends_stop_one_past_a_limit_and_a_run_over_more_ends_scans_instead(engine, tmp_path, monkeypatch):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(8))
    with engine.connect() as conn:
        every = export.window_ends(conn, UNTIL - 40 * W, UNTIL)
        assert export.window_ends(conn, UNTIL - 40 * W, UNTIL, limit=3) == every[:4]
    one, _ = _export_streams(engine, tmp_path, "one", streams=1, columnar_read=True, lookback=Lookback())
    monkeypatch.setattr(export, "MAX_SEEK_ENDS", 2)  # more ends than that: the streams scan their device ranges
    parts, _ = _export_streams(engine, tmp_path, "two", streams=2, columnar_read=True, lookback=Lookback())
    assert len(parts) > 1
    assert pa.concat_tables(sorted(parts.values(), key=lambda t: t["device"][0].as_py())).equals(
        pa.concat_tables(one.values()))


def test_a_last_window_most_devices_missed_sorts_in_the_database_not_in_memory(engine, tmp_path, monkeypatch):
    """The ranges are cut at the last window's pairs: when it holds far fewer than the run's first window, each range
    is that much larger, so its rows are sorted by the database (streamed), not read whole into the reader's memory."""
    rows = [{"device": f"d{d:03d}", "sensor": "temp", "window_end": UNTIL - k * W, "n": 1, "sum": float(d),
             "sumsq": float(d * d), "min": float(d), "max": float(d), "updated_at": 0}
            for d in range(40) for k in range(10) if k > 0 or d % 10 == 0]  # the last window: 4 of 40 devices
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), rows)
    sorted_in_memory: list[bool] = []
    arrow_batches = db.arrow_batches

    def recorded(*args, small=False, **kwargs):
        sorted_in_memory.append(small)
        return arrow_batches(*args, small=small, **kwargs)

    monkeypatch.setattr(db, "arrow_batches", recorded)
    parts, _ = _export_streams(engine, tmp_path, "sparse", streams=2, columnar_read=True, lookback=Lookback(),
                               partition_models=2)
    generic, _ = _export_streams(engine, tmp_path, "generic", streams=1, columnar_read=False, lookback=Lookback(),
                                 partition_models=2)
    assert sorted_in_memory and not any(sorted_in_memory)
    assert pa.concat_tables(sorted(parts.values(), key=lambda t: t["device"][0].as_py())).equals(
        pa.concat_tables(sorted(generic.values(), key=lambda t: t["device"][0].as_py())))
    with engine.begin() as conn:  # the last window as full as the others: the ranges are sorted in the reader
        conn.execute(db.windows.insert(), [dict(r, window_end=UNTIL) for r in rows
                                           if r["window_end"] == UNTIL - W and r["device"][-1] != "0"])
    sorted_in_memory.clear()
    _export_streams(engine, tmp_path, "full", streams=2, columnar_read=True, lookback=Lookback(), partition_models=2)
    assert sorted_in_memory and all(sorted_in_memory)


def test_a_failing_stream_fails_the_export_before_its_manifest(engine, tmp_path, monkeypatch):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(9))
    with engine.connect() as conn:
        assert len(export.stream_ranges(export.range_cuts(conn, UNTIL, 3), 2)) == 2
    store = FolderStore(tmp_path / "blobs")
    put = store.put
    written: list[str] = []

    def put_or_fail(key, data, **kwargs):
        if key.endswith("part-00001.parquet"):  # stream 1's first partition
            raise OSError("disk full")
        written.append(key)
        return put(key, data, **kwargs)

    monkeypatch.setattr(store, "put", put_or_fail)
    claim = claim_run(engine, SLOT, window_ms=W, late_ms=0, max_lookback_ms=12 * W, trigger="test", backend="local")
    with pytest.raises(OSError, match="disk full") as failure:
        export_run(engine, store, claim, model_version="v", window_ms=W, partition_models=3, streams=2)
    assert not any(k.endswith("manifest.json") for k in written)
    # the failed stream's reader is closed with it, not when its traceback is collected: while the error is still
    # held (here by `failure`), nothing of the export keeps a lock on the windows (PostgreSQL: its ADBC connection
    # sat idle in a transaction and a TRUNCATE waited for it)
    assert failure.value.__traceback__ is not None
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
        conn.execute(sa.delete(db.windows) if engine.dialect.name == "sqlite" else sa.text("TRUNCATE windows"))


def test_the_stream_queries_compile_for_sql_server_with_bound_parameters():
    """SQL Server takes the generic path: the stream's IN list and device bounds are bound parameters (at most
    MAX_SEEK_ENDS + 3 of them, under its 2,100), and the cut query pages in the dialect's way."""
    w = db.windows
    ends = [UNTIL - k * W for k in range(export.MAX_SEEK_ENDS)]
    query = columnar._ordered(export._export_query(sa.and_(w.c.window_end > 0, w.c.window_end.in_(ends)), "d010",
                                                   "d020"), export.ORDER)
    sql = str(query.compile(dialect=mssql.pyodbc.dialect()))
    assert "windows.device >= :device_1" in sql and "windows.device < :device_2" in sql
    assert sql.endswith("ORDER BY windows.device, windows.sensor, windows.window_end")
    assert columnar.literal_sql(mssql.pyodbc.dialect(), query) is None  # not rendered: bound
    params = query.compile(dialect=mssql.pyodbc.dialect(), compile_kwargs={"render_postcompile": True}).params
    assert len(params) == export.MAX_SEEK_ENDS + 3 <= 2100
    cut = str(export._device_at(UNTIL, "d010", 5).compile(dialect=mssql.pyodbc.dialect()))
    assert "ROW_NUMBER() OVER (ORDER BY windows.device, windows.sensor)" in cut  # the dialect's paging
    assert cut.endswith("WHERE mssql_rn > :param_1 AND mssql_rn <= :param_2 + :param_1")


def test_a_sqlite_reader_that_fails_mid_stream_raises_after_its_first_batches(tmp_path):
    path = tmp_path / "fleet.db"
    engine = db.create_db_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        db.metadata.create_all(conn)
        conn.execute(db.windows.insert(), _windows(10))
    schema = pa.schema([pa.field("x", pa.int64())])
    # the driver types the column from its first batch (integers), then meets a string: an error mid-stream
    sql = "SELECT CASE WHEN rowid_ < 10 THEN rowid_ ELSE 'text' END FROM (SELECT row_number() OVER () AS rowid_ " \
          "FROM windows)"
    batches = columnar._sqlite_reader_batches(engine.url, [sql], schema, 5)
    first = next(batches)
    assert first.schema == schema and len(first) == 5
    with pytest.raises(RuntimeError, match=r"ADBC SQLite reader failed \(exit 1\): .*(?i:type mismatch)"):
        list(batches)
    stopped = columnar._sqlite_reader_batches(engine.url, ["SELECT window_end FROM windows"] * 2, schema, 5)
    assert len(next(stopped)) == 5
    stopped.close()  # the caller stops early: the child is killed and reaped, nothing raised
    engine.dispose()


def test_a_small_export_reads_through_the_dbapi_driver_without_starting_a_reader(engine, tmp_path, monkeypatch):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), _windows(11))
    generic = _export(engine, tmp_path, "generic", columnar_read=False, lookback=Lookback())
    monkeypatch.setattr(export, "COLUMNAR_MIN_ROWS", COLUMNAR_MIN_ROWS)  # the default: these ~40 devices are below it

    def no_columnar(*args, **kwargs):
        raise AssertionError("a small export started a columnar read")

    monkeypatch.setattr(columnar, "_adbc_batches", no_columnar)
    assert _export(engine, tmp_path, "small", columnar_read=True, lookback=Lookback()) == generic
