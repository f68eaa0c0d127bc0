"""Indexing prediction files against real SQLite and PostgreSQL: once per ETag, newer ETags, bad files and
poison, values the database refuses, temp files, files of unknown runs."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.predictions.index import index_prediction_file
from fleetscore.settings import load_settings
from tests.helpers.fleet import (
    RUN_A,
    RUN_B,
    T0,
    W,
    prediction_file,
    rows_of,
    series,
)


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
