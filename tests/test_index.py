"""Indexing prediction files against real SQLite and PostgreSQL: once per ETag, bad files, run completion,
the blob function through the SDK's own types."""

from __future__ import annotations

import json
import threading

import azure.functions as func
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from fleetscore import clock, db
from fleetscore.context import Services, set_services
from fleetscore.predictions.files import read_predictions
from fleetscore.predictions.index import index_prediction_file
from fleetscore.settings import load_settings
from fleetscore.storage.folder import FolderStore
from tests.appfuncs import function
from tests.helpers import RUN_A, RUN_B, T0, W, prediction_file, put_run, rows_of, run_row, series, watermark


@pytest.fixture
def folder(tmp_path):
    return FolderStore(tmp_path / "blobs")


@pytest.fixture
def settings():
    return load_settings()


# --------------------------------------------------------------------------------------- parsing
def test_read_predictions_turns_the_contract_into_plain_columns():
    data = prediction_file(series("d-1", "temp", T0, 3, {1}), RUN_A)
    frame = read_predictions(data)
    assert frame["window_end"].tolist() == [T0, T0 + W, T0 + 2 * W]
    assert frame["is_anomaly"].tolist() == [False, True, False]
    assert frame["status"].tolist() == ["ok"] * 3 and frame["error"].tolist() == [None] * 3
    # dictionary-encoded strings (pandas Categoricals) are read as plain strings
    table = pq.read_table(pa.BufferReader(data))
    table = table.set_column(table.schema.get_field_index("status"), "status",
                             table.column("status").dictionary_encode())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    assert read_predictions(sink.getvalue().to_pybytes())["status"].tolist() == ["ok"] * 3


# ------------------------------------------------------------------------------------- idempotence
@pytest.mark.parametrize("kind", ["folder", pytest.param("azurite", marks=pytest.mark.azurite)])
def test_the_same_file_fired_three_times_is_indexed_once(engine, make_store, settings, kind):
    store = make_store(kind)
    key = f"predictions/{RUN_A}/part-00000.parquet"
    info = store.put(key, prediction_file(series("d-1", "temp", T0, 6, {2, 3}) + series("d-2", "rh", T0, 6), RUN_A))
    results = [index_prediction_file(engine, store, settings, key) for _ in range(3)]
    assert [r.status for r in results] == ["indexed", "unchanged", "unchanged"]
    assert results[0].rows == 12 and results[0].anomalies == 2 and results[0].alerts_changed == 1
    files = rows_of(engine, db.prediction_files)
    assert len(files) == 1 and files[0]["etag"] == info.etag and files[0]["attempts"] == 1
    counts = (files[0]["rows"], files[0]["anomalies"], files[0]["failures"], files[0]["windows_no_model"])
    assert counts == (12, 2, 0, 0)
    assert sorted(r["window_end"] for r in rows_of(engine, db.anomalies)) == [T0 + 2 * W, T0 + 3 * W]
    (alert,) = rows_of(engine, db.alerts)
    assert alert["revision"] == 1 and alert["windows"] == 2
    blobs = store.list("alerts/")
    assert [b.name for b in blobs] == [f"alerts/2026/11/23/{alert['alert_id']}.json"]
    # the trigger's bytes and ETag (bare, as blob properties may give it) are the same file
    again = index_prediction_file(engine, store, settings, key.split("/", 1)[1], data=store.get(key),
                                  etag=info.etag.strip('"'))
    assert again.status == "unchanged"


def test_a_newer_etag_replaces_the_files_rows(engine, folder, settings):
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 4, {0, 1}) + series("d-2", "rh", T0, 4, {3}), RUN_A))
    assert index_prediction_file(engine, folder, settings, key).status == "indexed"
    assert len(rows_of(engine, db.anomalies)) == 3
    folder.put(key, prediction_file(series("d-1", "temp", T0, 4, {1}), RUN_A))  # a rewrite: new ETag
    result = index_prediction_file(engine, folder, settings, key)
    assert result.status == "indexed" and result.rows == 4 and result.anomalies == 1
    assert [(r["device"], r["window_end"]) for r in rows_of(engine, db.anomalies)] == [("d-1", T0 + W)]
    (row,) = rows_of(engine, db.prediction_files)
    assert row["rows"] == 4 and row["anomalies"] == 1 and row["attempts"] == 1


def test_a_later_file_with_the_same_window_replaces_its_anomaly(engine, folder, settings):
    first, second = f"predictions/{RUN_A}/part-00000.parquet", f"predictions/{RUN_B}/part-00000.parquet"
    folder.put(first, prediction_file(series("d-1", "temp", T0, 2, {1}, score=0.3), RUN_A))
    folder.put(second, prediction_file(series("d-1", "temp", T0 + W, 1, {0}, score=0.9), RUN_B, "v2"))
    index_prediction_file(engine, folder, settings, first)
    index_prediction_file(engine, folder, settings, second)
    (an,) = rows_of(engine, db.anomalies)
    assert (an["window_end"], an["score"], an["model_version"], an["file_name"]) == (T0 + W, 0.9, "v2", second)


# -------------------------------------------------------------------------------------- bad files
def wrong_columns() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"device": ["d-1"], "sensor": ["temp"], "value": [1.0]}), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("make_bad,fragment", [
    (lambda: prediction_file(series("d-1", "temp", T0, 5, {1}), RUN_A)[:-40], "not a readable Parquet file"),
    (lambda: b"device,sensor\nd-1,temp\n", "not a readable Parquet file"),
    (wrong_columns, "missing column(s)"),
], ids=["truncated", "csv", "wrong-columns"])
def test_bad_files_are_recorded_and_poisoned_after_the_threshold(engine, folder, monkeypatch, make_bad, fragment):
    monkeypatch.setenv("POISON_BLOB_THRESHOLD", "3")
    settings = load_settings()
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, make_bad())
    statuses = []
    for attempt in range(1, 6):
        result = index_prediction_file(engine, folder, settings, key)
        statuses.append(result.status)
        assert fragment in (result.error or "")
        (row,) = rows_of(engine, db.prediction_files)
        assert row["attempts"] == min(attempt, 3) and fragment in row["error"]
    assert statuses == ["error", "error", "poison", "poison", "poison"]
    assert rows_of(engine, db.anomalies) == [] and rows_of(engine, db.alerts) == []
    # a fixed file (new ETag) is processed normally again
    folder.put(key, prediction_file(series("d-1", "temp", T0, 5, {1}), RUN_A))
    fixed = index_prediction_file(engine, folder, settings, key)
    assert fixed.status == "indexed" and fixed.anomalies == 1
    (row,) = rows_of(engine, db.prediction_files)
    assert row["status"] == "indexed" and row["attempts"] == 1 and row["error"] is None


def test_values_the_database_would_refuse_are_a_file_error(sqlite_engine, folder, settings):
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d" * 65, "temp", T0, 2, {1}), RUN_A))
    result = index_prediction_file(sqlite_engine, folder, settings, key)
    assert result.status == "error" and "longer than 64" in result.error


def test_a_non_transient_database_error_is_recorded_on_the_file(sqlite_engine, folder, settings, monkeypatch):
    from fleetscore.alerts import store as alerts

    def refuse(*args, **kwargs):
        raise sa.exc.DataError("INSERT ...", {}, Exception("value out of range"))

    monkeypatch.setattr(alerts, "apply_file", refuse)
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 2, {1}), RUN_A))
    result = index_prediction_file(sqlite_engine, folder, settings, key)
    assert result.status == "error" and "DataError" in result.error
    (row,) = rows_of(sqlite_engine, db.prediction_files)
    assert row["status"] == "error" and row["attempts"] == 1 and "value out of range" in row["error"]
    assert rows_of(sqlite_engine, db.anomalies) == []  # the file's transaction was rolled back whole
    missing = index_prediction_file(sqlite_engine, folder, settings, f"predictions/{RUN_A}/part-00009.parquet")
    assert missing.status == "error" and missing.error == "blob not found"


# ---------------------------------------------------------------------------------- run completion
def test_run_completes_when_its_last_partition_is_indexed_in_any_order(engine, folder, settings):
    until = T0 + 11 * W
    put_run(engine, folder, RUN_A, T0 - W, until, {"part-00000.parquet": 12, "part-00001.parquet": 24,
                                                   "part-00002.parquet": 12})
    files = {
        "part-00002.parquet": series("d-3", "temp", T0, 12, {4}),
        "part-00000.parquet": series("d-1", "temp", T0, 12),
        "part-00001.parquet": series("d-2", "temp", T0, 12) + series("d-2", "rh", T0, 12, status="no_model"),
    }
    results = []
    for name, rows in files.items():  # out of order: the last partition arrives first
        folder.put(f"predictions/{RUN_A}/{name}", prediction_file(rows, RUN_A))
        results.append(index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}"))
        if len(results) < 3:
            assert run_row(engine, RUN_A)["status"] == "submitted" and watermark(engine) is None
    assert [r.run_completed for r in results] == [False, False, True]
    assert results[-1].run_status == "succeeded"
    run = run_row(engine, RUN_A)
    assert run["status"] == "succeeded" and run["finished_at"] is not None
    assert (run["windows"], run["windows_no_model"], run["failures"], run["failure_detail"]) == (48, 12, 0, None)
    assert watermark(engine) == until
    # indexing a partition again (new ETag) neither reopens nor re-completes the run
    folder.put(f"predictions/{RUN_A}/part-00000.parquet", prediction_file(series("d-1", "temp", T0, 12, {0}), RUN_A))
    again = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00000.parquet")
    assert again.status == "indexed" and not again.run_completed
    assert run_row(engine, RUN_A)["finished_at"] == run["finished_at"]


def test_a_retried_run_completes_only_when_its_new_attempt_is_fully_indexed(engine, folder, settings):
    import time

    until = T0 + 11 * W
    parts = {"part-00000.parquet": 12, "part-00001.parquet": 12}
    put_run(engine, folder, RUN_A, T0 - W, until, parts)
    for i, name in enumerate(parts):
        folder.put(f"predictions/{RUN_A}/{name}", prediction_file(series(f"d-{i}", "temp", T0, 12), RUN_A))
        index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}")
    assert run_row(engine, RUN_A)["status"] == "succeeded"
    time.sleep(0.01)
    with engine.begin() as conn:  # `fleetscore run --retry`: claimed again, files rewritten one by one
        conn.execute(db.runs.update().values(status="claimed", attempt=2, claimed_at=clock.now_ms(), finished_at=None))
    folder.put(f"predictions/{RUN_A}/part-00001.parquet", prediction_file(series("d-1", "temp", T0, 12), RUN_A))
    first = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00001.parquet")
    assert first.status == "indexed" and not first.run_completed  # part-00000 is still attempt 1's
    assert run_row(engine, RUN_A)["status"] == "claimed"
    folder.put(f"predictions/{RUN_A}/part-00000.parquet", prediction_file(series("d-0", "temp", T0, 12), RUN_A))
    last = index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/part-00000.parquet")
    assert last.run_completed and run_row(engine, RUN_A)["status"] == "succeeded"


def test_failed_windows_or_an_unreadable_partition_make_a_partial_run(engine, folder, settings):
    until_a, until_b = T0 + 11 * W, T0 + 23 * W
    put_run(engine, folder, RUN_A, T0 - W, until_a, {"part-00000.parquet": 24})
    put_run(engine, folder, RUN_B, until_a, until_b, {"part-00000.parquet": 12, "part-00001.parquet": 12})
    with engine.begin() as conn:  # a newer watermark never goes back
        conn.execute(db.watermarks.insert().values(name=db.SCORING_WATERMARK, value=until_b, updated_at=0))
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 12) + series("d-2", "temp", T0, 12, status="error"),
                                    RUN_A))
    result = index_prediction_file(engine, folder, settings, key)
    assert result.run_completed and result.run_status == "partial"
    run = run_row(engine, RUN_A)
    assert run["status"] == "partial" and run["failures"] == 12
    assert json.loads(run["failure_detail"]) == {"d-2/temp": "model failed"}
    assert watermark(engine) == until_b

    folder.put(f"predictions/{RUN_B}/part-00001.parquet", b"PAR1 truncated")
    folder.put(f"predictions/{RUN_B}/part-00000.parquet", prediction_file(series("d-1", "temp", until_a + W, 12),
                                                                          RUN_B))
    first = index_prediction_file(engine, folder, settings, f"predictions/{RUN_B}/part-00001.parquet")
    assert first.status == "error" and not first.run_completed
    second = index_prediction_file(engine, folder, settings, f"predictions/{RUN_B}/part-00000.parquet")
    assert second.run_completed and second.run_status == "partial"
    run = run_row(engine, RUN_B)
    assert run["status"] == "partial" and run["failures"] == 12 and "unreadable" in run["error"]
    assert "file/part-00001.parquet" in json.loads(run["failure_detail"])


def test_a_writers_temp_file_is_ignored(engine, folder, settings):
    # score.py writes `.part-NNNNN.parquet.<random>.tmp` next to the file, then renames it; in Azure the
    # blob trigger sees the temp blob too
    key = f"predictions/{RUN_A}/.part-00000.parquet.x1y2.tmp"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 12, {3}), RUN_A))
    result = index_prediction_file(engine, folder, settings, key)
    assert result.status == "ignored"
    assert rows_of(engine, db.prediction_files) == [] and rows_of(engine, db.anomalies) == []


def test_a_file_of_an_unknown_run_is_indexed(engine, folder, settings, caplog):
    key = "predictions/run-nobody/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 3, {2}), "run-nobody"))
    with caplog.at_level("INFO", logger="fleetscore.predictions.index"):
        result = index_prediction_file(engine, folder, settings, key)
    assert result.status == "indexed" and result.run_id == "run-nobody" and not result.run_completed
    assert "unknown run" in caplog.text
    assert len(rows_of(engine, db.anomalies)) == 1 and rows_of(engine, db.runs) == []


def test_a_terminal_run_is_left_alone(engine, folder, settings):
    put_run(engine, folder, RUN_A, T0 - W, T0 + 11 * W, {"part-00000.parquet": 12}, status="failed")
    key = f"predictions/{RUN_A}/part-00000.parquet"
    folder.put(key, prediction_file(series("d-1", "temp", T0, 12), RUN_A))
    assert not index_prediction_file(engine, folder, settings, key).run_completed
    assert run_row(engine, RUN_A)["status"] == "failed" and watermark(engine) is None


def test_two_indexers_racing_on_the_last_partitions_complete_the_run_once(engine, folder, settings):
    names = [f"part-{i:05d}.parquet" for i in range(6)]
    until = T0 + 11 * W
    put_run(engine, folder, RUN_A, T0 - W, until, {n: 12 for n in names})
    for i, n in enumerate(names):
        folder.put(f"predictions/{RUN_A}/{n}", prediction_file(series(f"d-{i}", "temp", T0, 12, {5}), RUN_A))
    results, errors = [], []
    barrier = threading.Barrier(len(names))

    def index(name: str) -> None:
        barrier.wait()
        for _ in range(20):  # the host retries transient errors (SQLite busy, a key race)
            try:
                results.append(index_prediction_file(engine, folder, settings, f"predictions/{RUN_A}/{name}"))
                return
            except Exception as exc:
                if not db.is_transient(exc):
                    errors.append(exc)
                    return
        errors.append(RuntimeError("gave up"))

    threads = [threading.Thread(target=index, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.status for r in results) == ["indexed"] * 6
    assert sum(r.run_completed for r in results) == 1
    assert run_row(engine, RUN_A)["status"] == "succeeded" and watermark(engine) == until
    assert len(rows_of(engine, db.alerts)) == 6


# --------------------------------------------------------------------------------- the blob function
def test_blob_function_binding():
    spec = json.loads(function("index_predictions").get_function_json())
    (binding,) = spec["bindings"]
    assert binding["type"] == "blobTrigger" and binding["direction"] == "IN" and binding["name"] == "blob"
    assert binding["path"] == "predictions/{name}" and binding["connection"] == "AzureWebJobsStorage"
    assert binding["source"] == "EventGrid"


def test_blob_function_indexes_and_never_raises_for_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"sqlite:///{tmp_path / 'fleet.db'}")
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "blobs"))
    monkeypatch.setenv("POISON_BLOB_THRESHOLD", "2")
    services = Services(load_settings())
    set_services(services)
    store = services.store
    put_run(services.engine, store, RUN_A, T0 - W, T0 + 11 * W, {"part-00000.parquet": 12, "part-00001.parquet": 12})
    fn = function("index_predictions").get_user_function()

    def fire(name: str, data: bytes, etag: str | None, *, container_prefix: bool = True) -> None:
        key = f"predictions/{RUN_A}/{name}"
        props = {"ETag": etag, "ContentLength": len(data)} if etag else None
        fn(func.blob.InputStream(data=data, name=key if container_prefix else key.split("/", 1)[1],
                                 uri=f"http://127.0.0.1:10000/devstoreaccount1/{key}", length=len(data),
                                 blob_properties=props))

    good = prediction_file(series("d-1", "temp", T0, 12, {3, 4}), RUN_A)
    for _ in range(3):
        fire("part-00000.parquet", good, "0x8DCAFE0001")
    fire("part-00000.parquet", good, "0x8DCAFE0001", container_prefix=False)
    for _ in range(3):  # truncated: an error, then poison; no exception out of the function
        fire("part-00001.parquet", good[: len(good) // 2], "0x8DCAFE0002")
    files = {r["name"]: r for r in rows_of(services.engine, db.prediction_files)}
    assert files[f"predictions/{RUN_A}/part-00000.parquet"]["status"] == "indexed"
    assert files[f"predictions/{RUN_A}/part-00000.parquet"]["etag"] == '"0x8DCAFE0001"'
    assert files[f"predictions/{RUN_A}/part-00001.parquet"]["status"] == "poison"
    assert files[f"predictions/{RUN_A}/part-00001.parquet"]["attempts"] == 2
    assert len(rows_of(services.engine, db.alerts)) == 1
    assert run_row(services.engine, RUN_A)["status"] == "partial"
    # without blob properties the content stands in for the ETag: still indexed once
    other = prediction_file(series("d-2", "temp", T0, 12, {1}), "run-x")
    for _ in range(2):
        fn(func.blob.InputStream(data=other, name="predictions/run-x/part-00000.parquet"))
    assert [r["attempts"] for r in rows_of(services.engine, db.prediction_files)
            if r["name"].startswith("predictions/run-x/")] == [1]


def test_blob_function_reraises_transient_database_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"sqlite:///{tmp_path / 'fleet.db'}")
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "blobs"))
    services = Services(load_settings())
    set_services(services)
    services.engine.dispose()
    (tmp_path / "fleet.db").unlink()
    (tmp_path / "fleet.db").mkdir()  # the database file cannot be opened: an OperationalError
    data = prediction_file(series("d-1", "temp", T0, 3, {1}), RUN_A)
    fn = function("index_predictions").get_user_function()
    with pytest.raises(sa.exc.OperationalError):
        fn(func.blob.InputStream(data=data, name=f"predictions/{RUN_A}/part-00000.parquet",
                                 blob_properties={"ETag": '"0x1"'}))
