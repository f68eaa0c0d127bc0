"""The Event Hub function `ingest` through the Functions SDK's own types: binary bodies, dead-lettered batches,
and their replay with `fleetscore ingest --replay-deadletter`."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from types import SimpleNamespace

import azure.functions as func
import pytest
import sqlalchemy as sa
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum
from typer.testing import CliRunner

from fleetscore import db
from fleetscore.cli.main import app as cli
from fleetscore.context import Services, set_services
from fleetscore.host.invocation import invocation_context
from fleetscore.ingest.deadletter import DeadLetterBatch
from fleetscore.ingest.store import TransientIngestError
from fleetscore.settings import load_settings
from fleetscore.storage import paths
from fleetscore.storage.azure import AzureBlobStore
from fleetscore.storage.folder import FolderStore
from tests.helpers.appfuncs import function
from tests.helpers.azurite import STORE_KINDS, clear_account

ENQUEUED = "2026-11-23T10:00:09Z"
T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)
GOOD_A = b'{ "device" : "d-1", "sensor": "temp", "ts": "2026-11-23T10:00:05Z", "value": 21.40 }'  # odd spacing
GOOD_B = (f'[{{"device": "d-2", "sensor": "rh", "ts": {T0 + 1000}, "value": 40}}, '
          f'{{"device": "d-2", "sensor": "rh", "ts": {T0 + 61_000}, "value": 41.5}}]').encode()
NOT_JSON = b"\xff\xfe temp=21.4 \x00"


def delivered(bodies: list[bytes], *, first_seq: int = 10, partition: str = "3") -> list[func.EventHubEvent]:
    """The events the Python library decodes from what the host sends for `dataType: binary`, cardinality many:
    a `collection_bytes` datum plus `SystemPropertiesArray` and `PartitionContext` trigger metadata."""
    props = [{"SequenceNumber": first_seq + i, "Offset": 4096 * (first_seq + i), "EnqueuedTimeUtc": ENQUEUED,
              "PartitionKey": None} for i in range(len(bodies))]
    metadata = {"SystemPropertiesArray": Datum(json.dumps(props), "json"),
                "PartitionContext": Datum(json.dumps({"EventHubName": "readings", "ConsumerGroup": "fleetscore",
                                                      "PartitionId": partition}), "json")}
    return EventHubTriggerConverter.decode(Datum(SimpleNamespace(bytes=list(bodies)), "collection_bytes"),
                                           trigger_metadata=metadata)


def rows(url: str, table: sa.Table) -> list[dict]:
    engine = db.create_db_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table)).mappings()]
    finally:
        engine.dispose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket closes


def test_trigger_binds_binary_bodies_and_the_consumer_group_setting():
    spec = json.loads(function("ingest").get_function_json())
    (binding,) = spec["bindings"]
    assert binding["type"] == "eventHubTrigger" and binding["cardinality"].lower() == "many"
    assert str(binding["dataType"]).lower() == "binary"  # bodies as bytes: the host never parses them as JSON
    assert binding["consumerGroup"] == "%EVENTHUB_CONSUMER_GROUP%"
    assert binding["eventHubName"] == "%EVENTHUB_NAME%"


def test_a_non_json_event_is_dead_lettered_and_its_batch_stored(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    monkeypatch.setenv("FLEETSCORE_SQL_URL", url)
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "blobs"))
    events = delivered([GOOD_A, NOT_JSON, GOOD_B])
    assert [e.get_body() for e in events] == [GOOD_A, NOT_JSON, GOOD_B]  # the bytes as sent, not re-serialised
    function("ingest").get_user_function()(events, context=invocation_context("ingest", max_retry_count=8))
    stored = sorted((r["device"], r["sensor"], r["value"]) for r in rows(url, db.readings))
    assert stored == [("d-1", "temp", 21.4), ("d-2", "rh", 40.0), ("d-2", "rh", 41.5)]
    (dead,) = rows(url, db.dead_letters)
    assert dead["reason"] == "bad_json" and dead["partition"] == "3"
    assert dead["sequence_number"] == 11 and dead["offset"] == str(4096 * 11)
    assert not (tmp_path / "blobs" / paths.DEADLETTER).exists()  # nothing for the batch-level dead letter


@pytest.fixture(params=STORE_KINDS)
def storage(request, tmp_path) -> str:
    """FLEETSCORE_STORAGE for a local folder, or for the session's Azurite (emptied)."""
    if request.param == "folder":
        return str(tmp_path / "blobs")
    conn = request.getfixturevalue("azurite")
    clear_account(conn)
    return conn


def open_storage(setting: str):
    return FolderStore(setting) if "://" not in setting and "=" not in setting else \
        AzureBlobStore(connection_string=setting)


def test_store_down_through_every_retry_keeps_the_batch_and_replay_restores_it(storage, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"postgresql+psycopg://fleet@127.0.0.1:{closed_port()}/fleet"
                                             f"?connect_timeout=2")
    monkeypatch.setenv("FLEETSCORE_STORAGE", storage)
    monkeypatch.setenv("EVENTHUB_NAME", "readings")
    bodies = [GOOD_A, NOT_JSON, GOOD_B]
    fn = function("ingest").get_user_function()
    for retry in range(8):  # the database refuses connections: every try but the last is retried by the host
        with pytest.raises(TransientIngestError):
            fn(delivered(bodies), context=invocation_context("ingest", retry_count=retry, max_retry_count=8))
    store = open_storage(storage)
    assert store.list(paths.DEADLETTER_PENDING) == []
    assert fn(delivered(bodies), context=invocation_context("ingest", retry_count=8, max_retry_count=8)) is None
    (kept,) = store.list(paths.DEADLETTER_PENDING)
    kept_bytes = store.get(kept.name)
    batch = DeadLetterBatch.from_json(kept_bytes)
    assert [e.body for e in batch.events] == bodies  # byte for byte
    assert [(e.partition, e.sequence_number, e.offset) for e in batch.events] == \
        [("3", 10, "40960"), ("3", 11, "45056"), ("3", 12, "49152")]
    assert {e.enqueued_time_ms for e in batch.events} == {T0 + 9000}
    assert batch.reason == "retries_exhausted" and "OperationalError" in batch.error
    assert batch.source == "eventhub:readings"

    # the database is back: the operator replays; readings and dead letters are as if the batch had gone through
    url = f"sqlite:///{tmp_path / 'back.db'}"
    monkeypatch.setenv("FLEETSCORE_SQL_URL", url)
    runner = CliRunner()
    done = runner.invoke(cli, ["ingest", "--replay-deadletter", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["replayed"] == 1 and summary["stored"] == 3 and summary["dead_lettered"] == 1
    direct = tmp_path / "direct.db"
    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"sqlite:///{direct}")
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "direct-blobs"))
    set_services(Services(load_settings()))
    function("ingest").get_user_function()(delivered(bodies), context=invocation_context("ingest"))
    key = ["device", "sensor", "ts", "value"]
    assert sorted(tuple(r[k] for k in key) for r in rows(url, db.readings)) == \
        sorted(tuple(r[k] for k in key) for r in rows(f"sqlite:///{direct}", db.readings))
    assert [(d["reason"], d["sequence_number"], d["partition"]) for d in rows(url, db.dead_letters)] == \
        [("bad_json", 11, "3")]
    assert store.list(paths.DEADLETTER_PENDING) == []
    (moved,) = store.list(paths.DEADLETTER_REPLAYED)
    assert moved.name == paths.replayed_deadletter_key(kept.name) and store.get(moved.name) == kept_bytes

    # a second replay finds nothing pending and changes nothing
    monkeypatch.setenv("FLEETSCORE_SQL_URL", url)
    monkeypatch.setenv("FLEETSCORE_STORAGE", storage)
    again = runner.invoke(cli, ["ingest", "--replay-deadletter", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["replayed"] == 0
    assert len(rows(url, db.readings)) == 3 and len(rows(url, db.dead_letters)) == 1


def test_a_non_transient_store_failure_keeps_the_batch_on_the_first_try(tmp_path, monkeypatch):
    import fleetscore.ingest.store as ingest_mod

    monkeypatch.setenv("FLEETSCORE_SQL_URL", f"sqlite:///{tmp_path / 'f.db'}")
    monkeypatch.setenv("FLEETSCORE_STORAGE", str(tmp_path / "blobs"))

    def broken(*a, **k):
        raise ValueError("bug in window maths")

    monkeypatch.setattr(ingest_mod, "aggregate_arrays", broken)
    fn = function("ingest").get_user_function()
    assert fn(delivered([GOOD_A]), context=invocation_context("ingest", retry_count=0, max_retry_count=8)) is None
    (kept,) = FolderStore(tmp_path / "blobs").list(paths.DEADLETTER_PENDING)
    batch = DeadLetterBatch.from_json(FolderStore(tmp_path / "blobs").get(kept.name))
    assert batch.reason == "store_failed" and "bug in window maths" in batch.error
    assert [e.body for e in batch.events] == [GOOD_A]
