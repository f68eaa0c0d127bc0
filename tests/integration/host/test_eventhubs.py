"""Event Hub functions in a started host: batches, retries, checkpoints, the final try, a dead dispatcher."""

from __future__ import annotations

import json
import socket

import azure.functions as func
import sqlalchemy as sa

from fleetscore.context import get_services
from fleetscore.host.app import LocalHost
from fleetscore.host.spool import Spool
from fleetscore.ingest.deadletter import DeadLetterBatch, ingest_or_dead_letter
from fleetscore.storage import paths
from fleetscore.storage.folder import FolderStore
from functions.ingest import is_final_try, to_raw_event
from tests.helpers.host import app_with, host_settings, request, wait_for


def test_events_are_batched_retried_and_checkpointed_after_the_invocation(tmp_path):
    batches: list[list[tuple[int, bytes]]] = []
    failures = {"left": 1}

    def hubs(app):
        @app.function_name("eat")
        @app.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:00.05")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="%EVENTHUB_NAME%",
                                       connection="EVENTHUB_CONNECTION", cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent], context: func.Context) -> None:
            assert context.function_name == "eat" and context.invocation_id
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("transient")
            batches.append([(e.sequence_number, e.get_body()) for e in events])
            assert all(e.enqueued_time is not None and e.offset is not None for e in events)
            assert events[0].metadata["PartitionContext"]["EventHubName"] == "hub-x"

    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": {"maxEventBatchSize": 3}}}))
    settings = host_settings(tmp_path, EVENTHUB_NAME="hub-x")
    host = LocalHost(settings, app=app_with(hubs), state_dir=tmp_path / "host", host_json=host_json)
    # events stored while no host runs are delivered when it starts (the spool is the durable part)
    spool = Spool(tmp_path / "host" / "spool" / "hub-x", ["eat"])
    for i in range(7):
        spool.append(json.dumps({"i": i}).encode())
    spool.close()
    host.start()
    try:
        code, reply = request(host.url, "POST", "/events", b'{"i": 7}')
        assert code == 202 and reply["sequence_number"] == 8
        assert request(host.url, "POST", "/events", b"  ")[0] == 400
        assert request(host.url, "POST", "/events/other-hub", b"{}")[0] == 404
        wait_for(lambda: request(host.url, "GET", "/health")[1]["backlog"] == 0, 10, "the backlog to drain")
        health = request(host.url, "GET", "/health")[1]
    finally:
        host.stop()
    delivered = [seq for batch in batches for seq, _ in batch]
    assert delivered == list(range(1, 9))  # in order, each once after the one failed attempt was retried
    assert max(len(b) for b in batches) <= 3 and len(batches[0]) == 3
    fn = next(f for f in health["functions"] if f["name"] == "eat")
    assert fn["failures"] == 1 and fn["checkpoint"] == 8
    assert any(e["status"] == "failed" for e in health["last_invocations"])


def test_exhausted_retries_move_on_and_the_host_keeps_nothing(tmp_path):
    """As the Event Hubs host: after the last try the checkpoint moves on; no spool copy hides the loss."""
    def hubs(app):
        @app.function_name("eat")
        @app.retry(strategy="fixed_delay", max_retry_count="1", delay_interval="00:00:00.01")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent]) -> None:
            raise RuntimeError("always")

    host = LocalHost(host_settings(tmp_path), app=app_with(hubs), state_dir=tmp_path / "host").start()
    try:
        request(host.url, "POST", "/events", b'{"a": 1}')
        wait_for(lambda: host.spools["hub"].checkpointed("eat") == 1, 10, "the checkpoint")
    finally:
        host.stop()
    assert not (tmp_path / "host" / "spool" / "hub" / "failed").exists()


def test_the_final_try_dead_letters_the_batch_to_blob_storage(tmp_path):
    """The function's own dead-letter path, driven by the host's RetryContext: the store is down on every try,
    the last one writes the batch's exact bytes to deadletter/pending/ and returns, the checkpoint moves on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = sa.create_engine(f"postgresql+psycopg://x@127.0.0.1:{sock.getsockname()[1]}/x?connect_timeout=2")
    tries: list[tuple[int, int]] = []
    groups: list[str] = []

    def hubs(app):
        @app.function_name("eat")
        @app.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:00.01")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY, data_type=func.DataType.BINARY,
                                       consumer_group="%EVENTHUB_CONSUMER_GROUP%")
        def eat(events: list[func.EventHubEvent], context: func.Context) -> None:
            tries.append((context.retry_context.retry_count, context.retry_context.max_retry_count))
            groups.append(events[0].metadata["PartitionContext"]["ConsumerGroup"])
            ingest_or_dead_letter(lambda: down, get_services().store, [to_raw_event(e) for e in events],
                                  source="eventhub:hub", window_ms=300_000, final_try=is_final_try(context))

    settings = host_settings(tmp_path, EVENTHUB_CONSUMER_GROUP="fleetscore")
    host = LocalHost(settings, app=app_with(hubs), state_dir=tmp_path / "host").start()
    try:
        request(host.url, "POST", "/events", b"\xff not json")
        wait_for(lambda: host.spools["hub"].checkpointed("eat") == 1, 20, "the checkpoint")
        health = request(host.url, "GET", "/health")[1]
    finally:
        host.stop()
    assert tries == [(0, 2), (1, 2), (2, 2)] and groups == ["fleetscore"] * 3
    fn = next(f for f in health["functions"] if f["name"] == "eat")
    assert fn["failures"] == 2  # the last try succeeded: it kept the batch
    store = FolderStore(tmp_path / "blobs")
    (kept,) = store.list(paths.DEADLETTER_PENDING)
    batch = DeadLetterBatch.from_json(store.get(kept.name))
    assert [e.body for e in batch.events] == [b"\xff not json"] and batch.reason == "retries_exhausted"
    assert batch.events[0].sequence_number == 1 and batch.events[0].partition == "0"


def test_a_dead_dispatcher_degrades_health_and_refuses_its_hubs_events(tmp_path, monkeypatch):
    delivered: list[int] = []

    def hubs(app):
        @app.function_name("eat")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent]) -> None:
            delivered.extend(e.sequence_number for e in events)

    host = LocalHost(host_settings(tmp_path), app=app_with(hubs), state_dir=tmp_path / "host").start()
    try:
        assert request(host.url, "POST", "/events", b'{"a": 1}')[0] == 202
        wait_for(lambda: host.spools["hub"].checkpointed("eat") == 1, 10, "the first event")
        health = request(host.url, "GET", "/health")[1]
        assert health["status"] == "running" and health["dead_threads"] == {}

        def broken_read(after: int, limit: int) -> list:
            raise OSError("spool unreadable")

        monkeypatch.setattr(host.spools["hub"], "read", broken_read)  # escapes the dispatcher's loop
        health = wait_for(lambda: (h := request(host.url, "GET", "/health")[1])["status"] == "degraded" and h, 10,
                          "the degraded status")
        assert list(health["dead_threads"]) == ["eventhub:eat"]
        assert "OSError: spool unreadable" in health["dead_threads"]["eventhub:eat"]
        code, reply = request(host.url, "POST", "/events", b'{"a": 2}')
        assert code == 503 and "eat" in reply["error"]
        assert host.spools["hub"].backlog("eat") == 0  # refused, not stored for a dispatcher that is gone
    finally:
        host.stop()
    assert delivered == [1]


def test_an_oversized_body_gets_413_not_a_broken_pipe(tmp_path):
    """Issue 14, failure 8: a 20 MB POST /events, written whole before the reply is read (http.client), gets
    413 and a message; a client that asks `Expect: 100-continue` gets it without sending the body; nothing is
    spooled and the host takes the next event."""
    def hubs(app):
        @app.function_name("eat")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent]) -> None:
            pass

    host = LocalHost(host_settings(tmp_path), app=app_with(hubs), state_dir=tmp_path / "host").start()
    try:
        code, reply = request(host.url, "POST", "/events", b"[" + b" " * (20 * 1024 * 1024) + b"]")
        assert code == 413 and "at most 1048576 bytes" in reply["error"] and "20971522 bytes" in reply["error"]
        port = int(host.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            answer = sock.makefile("rb").read()  # the host closes after its reply; no body was sent
        assert answer.startswith(b"HTTP/1.0 413 ") and b"at most 1048576 bytes" in answer
        assert request(host.url, "POST", "/events", b'{"a": 1}')[0] == 202
        assert request(host.url, "GET", "/health")[1]["status"] == "running"
        assert host.spools["hub"].last_sequence_number == 1  # only the small event was taken
    finally:
        host.stop()
