"""The blob function `index_predictions` through the Functions SDK's own types."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.context import Services, set_services
from fleetscore.settings import load_settings
from tests.helpers.appfuncs import function
from tests.helpers.fleet import (
    RUN_A,
    T0,
    W,
    prediction_file,
    put_run,
    rows_of,
    run_row,
    series,
)


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

    good = prediction_file(series("d-1", "temp", T0, 12, {3, 4, 5}), RUN_A)  # 3 anomalies: alerts at 3/4
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
