"""Blob functions in a started host: once per version, across restarts, poison."""

from __future__ import annotations

import time

import azure.functions as func

from fleetscore.host.app import LocalHost
from fleetscore.host.receipts import DONE, FAILED, POISON
from fleetscore.storage import open_store
from tests.helpers.host import app_with, host_settings, request, wait_for


def test_blob_trigger_fires_once_per_version_survives_restart_and_poisons(tmp_path):
    seen: list[tuple[str, bytes, str]] = []

    def blobs(app):
        @app.function_name("watch")
        @app.blob_trigger(arg_name="blob", path="predictions/{name}", connection="AzureWebJobsStorage",
                          source=func.BlobSource.EVENT_GRID)
        def watch(blob: func.InputStream) -> None:
            data = blob.read()
            if data == b"bad":
                raise ValueError("unreadable")
            seen.append((blob.name, data, blob.blob_properties["ETag"]))

    settings = host_settings(tmp_path)
    store = open_store(settings.storage)
    store.put("predictions/r1/a.parquet", b"a1")
    store.put("predictions/r1/.a.parquet.tmp", b"half")  # a writer's temp file: not a blob to fire for
    store.put("data/r1/x.parquet", b"other container")

    def start() -> LocalHost:
        return LocalHost(settings, app=app_with(blobs), state_dir=tmp_path / "host", blob_poll_seconds=0.05).start()

    host = start()
    try:
        wait_for(lambda: len(seen) == 1, 10, "the first blob")
        store.put("predictions/r1/b.parquet", b"bad")
        wait_for(lambda: host.receipts["watch"].counts()[POISON] == 1, 10, "the poison receipt")
        failed = host.receipts["watch"].poisoned()[0]
        assert failed.blob == "predictions/r1/b.parquet" and failed.attempts == 5 and "unreadable" in failed.error
    finally:
        host.stop()
    assert [s[0] for s in seen] == ["predictions/r1/a.parquet"]
    host = start()  # a restart fires for neither the handled nor the poisoned version
    try:
        time.sleep(0.4)
        assert len(seen) == 1
        info = store.put("predictions/r1/a.parquet", b"a2")  # a new version of the same blob fires again
        wait_for(lambda: len(seen) == 2, 10, "the new version")
        assert seen[-1] == ("predictions/r1/a.parquet", b"a2", info.etag)
        health = request(host.url, "GET", "/health")[1]
        watch = next(f for f in health["functions"] if f["name"] == "watch")
        assert watch["receipts"] == {DONE: 2, FAILED: 0, POISON: 1}
    finally:
        host.stop()
