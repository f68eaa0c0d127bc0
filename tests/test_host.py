"""The local host (`fleetscore up`): spool, receipts, settings, triggers, and the whole thing end to end."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import azure.functions as func
import numpy as np
import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.host.app import LocalHost
from fleetscore.host.bindings import (
    HostConfigError,
    RetryPolicy,
    SettingSource,
    blob_pattern,
    parse_timespan,
    read_functions,
)
from fleetscore.host.functions import app_functions
from fleetscore.host.receipts import DONE, FAILED, POISON, BlobReceipts
from fleetscore.host.spool import Spool
from fleetscore.host.timers import ScheduleStatus, TimerStatusStore, check_past_due, iso, next_occurrence
from fleetscore.runs.slots import latest_occurrence, parse_status_time
from fleetscore.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
YEARLY = "0 0 0 1 1 *"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def request(url: str, method: str, path: str, body: bytes | dict | None = None, timeout: float = 30.0):
    """(status, JSON reply) over a direct loopback connection (no proxy)."""
    m = re.fullmatch(r"http://([^:/]+):(\d+)", url)
    assert m, url
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def host_settings(tmp_path: Path, **extra) -> Settings:
    return load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{tmp_path / 'fleet.db'}",
                         FLEETSCORE_STORAGE=str(tmp_path / "blobs"), **extra)


# --------------------------------------------------------------------------------------------------- spool
def test_spool_appends_reads_in_order_and_checkpoints_across_restarts(tmp_path):
    spool = Spool(tmp_path / "s", ["ingest"])
    records = [spool.append(f'{{"n": {i}}}'.encode(), enqueued_ms=1_000 + i) for i in range(5)]
    assert [r.sequence_number for r in records] == [1, 2, 3, 4, 5]
    assert [r.offset for r in records] == sorted({r.offset for r in records}) and records[0].offset == 0
    assert spool.backlog("ingest") == 5
    got = spool.read(0, 3)
    assert [(r.sequence_number, r.body, r.enqueued_ms) for r in got] == [
        (1, b'{"n": 0}', 1000), (2, b'{"n": 1}', 1001), (3, b'{"n": 2}', 1002)]
    assert [r.offset for r in got] == [r.offset for r in records[:3]]
    assert [r.sequence_number for r in spool.read(3, 10)] == [4, 5]
    spool.checkpoint("ingest", 3)
    assert spool.backlog("ingest") == 2
    spool.close()

    again = Spool(tmp_path / "s", ["ingest"])  # a restart: the checkpoint holds, undelivered records remain
    assert again.checkpointed("ingest") == 3 and again.last_sequence_number == 5
    assert [r.body for r in again.read(again.checkpointed("ingest"), 10)] == [b'{"n": 3}', b'{"n": 4}']
    assert again.append(b"next").sequence_number == 6
    with pytest.raises(ValueError, match="past the end"):
        again.checkpoint("ingest", 7)
    again.close()


def test_spool_cuts_a_torn_append_and_keeps_acknowledged_records(tmp_path):
    spool = Spool(tmp_path / "s", ["c"])
    spool.append(b"one")
    spool.append(b"two")
    spool.close()
    segment = next((tmp_path / "s").glob("segment-*.log"))
    size = segment.stat().st_size
    with open(segment, "ab") as fh:  # a crash in the middle of the third append
        fh.write(b"3 123 10 0000abcd\nhalf")
    again = Spool(tmp_path / "s", ["c"])
    assert segment.stat().st_size == size
    assert [r.body for r in again.read(0, 10)] == [b"one", b"two"]
    assert again.append(b"three").sequence_number == 3
    assert [r.body for r in again.read(2, 10)] == [b"three"]
    again.close()


def test_spool_rotates_segments_and_drops_those_every_consumer_has_passed(tmp_path):
    spool = Spool(tmp_path / "s", ["a", "b"], segment_bytes=64)
    for i in range(10):
        spool.append(b"x" * 40 + str(i).encode())
    segments = sorted((tmp_path / "s").glob("segment-*.log"))
    assert len(segments) == 10  # every record passes 64 bytes: one segment each
    assert [r.sequence_number for r in spool.read(0, 100)] == list(range(1, 11))
    assert [r.sequence_number for r in spool.read(4, 3)] == [5, 6, 7]
    spool.checkpoint("a", 8)
    assert len(list((tmp_path / "s").glob("segment-*.log"))) == 10  # consumer b still needs them
    spool.checkpoint("b", 6)
    assert len(list((tmp_path / "s").glob("segment-*.log"))) == 4  # 7..10 remain
    assert spool.backlog("a") == 2 and spool.backlog("b") == 4
    assert [r.body[-1:] for r in spool.read(6, 10)] == [b"6", b"7", b"8", b"9"]
    offsets = [r.offset for r in spool.read(6, 10)]
    spool.close()
    again = Spool(tmp_path / "s", ["a", "b", "new"], segment_bytes=64)
    assert [r.offset for r in again.read(6, 10)] == offsets
    assert again.checkpointed("new") == 6  # a new consumer starts at the oldest record kept
    assert again.append(b"y").sequence_number == 11
    again.close()


def test_spool_wait_wakes_on_append(tmp_path):
    spool = Spool(tmp_path / "s", ["c"])
    assert spool.wait(0, 0.01) is False
    threading.Timer(0.05, lambda: spool.append(b"z")).start()
    assert spool.wait(0, 5.0) is True
    spool.close()


# ------------------------------------------------------------------------------------------------ receipts
def test_receipts_survive_a_restart_and_ignore_a_torn_line(tmp_path):
    receipts = BlobReceipts(tmp_path, "index")
    receipts.record("predictions/r/a.parquet", '"e1"', DONE, attempts=1)
    receipts.record("predictions/r/b.parquet", '"e1"', FAILED, attempts=1, error="boom")
    receipts.record("predictions/r/b.parquet", '"e1"', FAILED, attempts=2, error="boom")
    receipts.record("predictions/r/c.parquet", '"e9"', POISON, attempts=5, error="bad file")
    receipts.close()
    with open(tmp_path / "index.jsonl", "ab") as fh:
        fh.write(b'{"blob": "predictions/r/d.parq')  # crash mid-append
    again = BlobReceipts(tmp_path, "index")
    assert again.get("predictions/r/a.parquet", '"e1"').final
    assert again.get("predictions/r/a.parquet", '"e2"') is None  # a new version is a new blob to fire for
    b = again.get("predictions/r/b.parquet", '"e1"')
    assert (b.status, b.attempts, b.final) == (FAILED, 2, False)
    assert again.get("predictions/r/c.parquet", '"e9"').status == POISON
    assert again.counts() == {DONE: 1, FAILED: 1, POISON: 1}
    assert len((tmp_path / "index.jsonl").read_text().splitlines()) == 3  # compacted at open
    again.close()


# -------------------------------------------------------------------------------------------- settings
def test_setting_source_reads_settings_by_alias_then_environment_then_local_settings(tmp_path):
    settings = load_settings(EVENTHUB_NAME="hub-a", SCORING_SCHEDULE="0 */5 * * * *")
    source = SettingSource(settings, environ={"OTHER": "from-env", "EMPTY": " "},
                           local_values={"OTHER": "from-file", "ONLY_FILE": "file-value"})
    assert source.get("EVENTHUB_NAME") == "hub-a"
    assert source.get("WINDOW_MINUTES") == "5"
    assert source.get("OTHER") == "from-env"
    assert source.get("ONLY_FILE") == "file-value"
    assert source.get("EMPTY") is None and source.get("NOPE") is None
    assert source.get("EVENTHUB_CONNECTION") is None  # unset optional setting
    assert source.resolve("%EVENTHUB_NAME%", function="f", prop="eventHubName") == "hub-a"
    assert source.resolve("pre-%ONLY_FILE%-post", function="f", prop="path") == "pre-file-value-post"
    with pytest.raises(HostConfigError, match=r"function 'f': binding property 'path' names the setting %NOPE%"):
        source.resolve("x/%NOPE%/{name}", function="f", prop="path")


def test_local_host_refuses_to_start_when_a_binding_names_an_unset_setting(tmp_path):
    from tests.appfuncs import functions

    empty = Settings.model_construct(**{**host_settings(tmp_path).__dict__, "eventhub_name": ""})
    with pytest.raises(HostConfigError) as caught:
        LocalHost(empty, functions=list(functions().values()), state_dir=tmp_path / "host")
    assert "'ingest'" in str(caught.value) and "%EVENTHUB_NAME%" in str(caught.value)
    assert "not set" in str(caught.value)
    assert not (tmp_path / "host").exists()  # refused before touching anything


def test_function_app_is_served_with_its_settings_resolved(tmp_path):
    from tests.appfuncs import functions

    settings = host_settings(tmp_path, EVENTHUB_NAME="fleet-readings", SCORING_SCHEDULE="0 */10 * * * *")
    host = LocalHost(settings, functions=list(functions().values()), state_dir=tmp_path / "host",
                     host_json=REPO / "host.json")
    served = {f.name: f for f in host.functions}
    assert set(served) >= {"ingest", "schedule"}
    assert served["ingest"].event_hub == "fleet-readings" and served["ingest"].many
    assert served["ingest"].retry == RetryPolicy("exponential_backoff", 8, minimum_interval=2.0,
                                                 maximum_interval=300.0)
    assert served["schedule"].schedule == "0 */10 * * * *"
    assert served["schedule"].use_monitor and not served["schedule"].run_on_startup
    assert host.config.max_event_batch_size == 500 and host.config.poison_blob_threshold == 5
    blobs = [f for f in host.functions if f.trigger == "blobTrigger"]
    assert [f.path for f in blobs] == ["predictions/{name}"]


def _app_with(decorate) -> func.FunctionApp:
    app = func.FunctionApp()
    decorate(app)
    return app


def test_an_apps_functions_are_read_once_through_one_cache():
    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def tick(timer: func.TimerRequest) -> None: ...

    app = _app_with(timers)
    first = read_functions(app)
    assert [f.get_function_name() for f in first] == ["tick"]
    assert read_functions(app) == first  # the SDK's get_functions() ran once for this app
    assert list(app_functions(app).values()) == first


def test_bindings_the_local_host_cannot_satisfy_are_refused_by_name(tmp_path):
    settings = host_settings(tmp_path)

    def other_storage(app):
        @app.function_name("watch")
        @app.blob_trigger(arg_name="blob", path="predictions/{name}", connection="OTHER_STORAGE")
        def watch(blob: func.InputStream) -> None: ...

    with pytest.raises(HostConfigError, match=r"'watch': blob connection 'OTHER_STORAGE'.*FLEETSCORE_STORAGE"):
        LocalHost(settings, app=_app_with(other_storage), state_dir=tmp_path / "h")

    def timespan(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule="%TICK_EVERY%")
        def tick(timer: func.TimerRequest) -> None: ...

    os.environ["TICK_EVERY"] = "00:05:00"
    try:
        with pytest.raises(HostConfigError, match=r"'tick': TimeSpan schedule '00:05:00' \(from %TICK_EVERY%\)"):
            LocalHost(settings, app=_app_with(timespan), state_dir=tmp_path / "h")
    finally:
        del os.environ["TICK_EVERY"]
    with pytest.raises(HostConfigError, match=r"%TICK_EVERY%, which is not set"):
        LocalHost(settings, app=_app_with(timespan), state_dir=tmp_path / "h")

    def http_only(app):
        @app.function_name("hello")
        @app.route(route="hello")
        def hello(req: func.HttpRequest) -> func.HttpResponse: ...

    with pytest.raises(HostConfigError, match="no timer, Event Hub or blob function"):
        LocalHost(settings, app=_app_with(http_only), state_dir=tmp_path / "h")


def test_retry_policy_and_timespans():
    assert parse_timespan("00:00:02") == 2.0 and parse_timespan("1.00:00:00.5") == 86400.5
    policy = RetryPolicy.from_settings({"strategy": "exponential_backoff", "max_retry_count": "3",
                                        "minimum_interval": "00:00:02", "maximum_interval": "00:00:05"})
    assert [policy.delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 5.0]
    assert policy.allows(3) and not policy.allows(4)
    fixed = RetryPolicy.from_settings({"strategy": "fixed_delay", "max_retry_count": "-1",
                                       "delay_interval": "00:00:01"})
    assert fixed.delay(7) == 1.0 and fixed.allows(10_000)
    pattern = blob_pattern("predictions/{run}/{name}.parquet")
    assert pattern.fullmatch("predictions/r1/part-0.parquet").group("run") == "r1"
    assert not pattern.fullmatch("data/r1/part-0.parquet")


# ---------------------------------------------------------------------------------------------- timers
def test_schedule_monitor_semantics():
    now = ms("2026-06-01T12:00:00Z")
    fresh, missed = check_past_due(YEARLY, None, now)
    assert missed is None and fresh.next_ms == ms("2027-01-01T00:00:00Z")
    # the host was down over an occurrence: fire it once, past due, with Next = the missed occurrence
    stale = ScheduleStatus(next_ms=ms("2026-01-01T00:00:00Z"), last_ms=ms("2025-01-01T00:00:00Z"))
    status, missed = check_past_due(YEARLY, stale, now)
    assert missed == ms("2026-01-01T00:00:00Z") and status.next_ms == missed
    # the schedule changed since the status was written: the new schedule's occurrence after Last counts
    changed = ScheduleStatus(next_ms=ms("2026-07-01T00:00:00Z"), last_ms=ms("2026-05-31T00:00:00Z"))
    status, missed = check_past_due("0 0 0 * * *", changed, now)
    assert missed == ms("2026-06-01T00:00:00Z")
    assert next_occurrence("0 */5 * * * *", ms("2026-06-01T12:00:00Z")) == ms("2026-06-01T12:05:00Z")
    assert ScheduleStatus.from_binding(ScheduleStatus(5_000, None, 7_000).to_binding()) == \
        ScheduleStatus(5_000, None, 7_000)


def test_timer_fires_past_due_once_at_start_and_admin_fires_a_slot(tmp_path):
    calls: list[tuple[bool, dict]] = []

    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, use_monitor=True)
        def tick(timer: func.TimerRequest) -> None:
            calls.append((timer.past_due, dict(timer.schedule_status)))

    now = int(time.time() * 1000)
    this_year = latest_occurrence(YEARLY, now)
    last_year = latest_occurrence(YEARLY, this_year - 1)
    TimerStatusStore(tmp_path / "host" / "timers").save("tick", ScheduleStatus(this_year, last_year, last_year))
    host = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host").start()
    try:
        wait_for(lambda: calls, 10, "the past-due invocation")
        past_due, status = calls[0]
        assert past_due is True and parse_status_time(status["Next"]) == this_year
        saved = wait_for(lambda: (s := TimerStatusStore(tmp_path / "host" / "timers").load("tick")) and
                         s.last_ms == this_year and s, 5, "the status update")
        assert saved.next_ms == next_occurrence(YEARLY, now)

        code, reply = request(host.url, "POST", "/admin/timers/tick", {"slot": iso(last_year), "wait": True})
        assert code == 200 and reply["status"] == "succeeded"
        assert calls[-1][0] is False and parse_status_time(calls[-1][1]["Next"]) == last_year
        code, reply = request(host.url, "POST", "/admin/timers/tick", {"slot": "2020-02-02T00:00:00Z"})
        assert code == 400 and "not an occurrence" in reply["error"]
        code, _ = request(host.url, "POST", "/admin/timers/nope", {})
        assert code == 404
    finally:
        host.stop()
    assert len(calls) == 2
    # restarted: the status is current, so no past-due invocation
    host = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host").start()
    time.sleep(0.5)
    host.stop()
    assert len(calls) == 2


def test_run_on_startup_only_when_the_binding_says_so(tmp_path):
    calls: dict[str, list] = {"eager": [], "lazy": []}

    def timers(app):
        @app.function_name("eager")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, run_on_startup=True, use_monitor=False)
        def eager(timer: func.TimerRequest) -> None:
            calls["eager"].append(timer.past_due)

        @app.function_name("lazy")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def lazy(timer: func.TimerRequest) -> None:
            calls["lazy"].append(timer.past_due)

    host = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host").start()
    try:
        wait_for(lambda: calls["eager"], 10, "the startup invocation")
        time.sleep(0.3)
    finally:
        host.stop()
    assert calls == {"eager": [False], "lazy": []}
    assert not (tmp_path / "host" / "timers" / "eager.json").exists()  # no monitor, no status
    assert (tmp_path / "host" / "timers" / "lazy.json").exists()


# ---------------------------------------------------------------------------------------------- events
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
    host = LocalHost(settings, app=_app_with(hubs), state_dir=tmp_path / "host", host_json=host_json)
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


def test_exhausted_retries_move_on_and_keep_the_batch(tmp_path):
    def hubs(app):
        @app.function_name("eat")
        @app.retry(strategy="fixed_delay", max_retry_count="1", delay_interval="00:00:00.01")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent]) -> None:
            raise RuntimeError("always")

    host = LocalHost(host_settings(tmp_path), app=_app_with(hubs), state_dir=tmp_path / "host").start()
    try:
        request(host.url, "POST", "/events", b'{"a": 1}')
        wait_for(lambda: host.spools["hub"].checkpointed("eat") == 1, 10, "the checkpoint")
    finally:
        host.stop()
    kept = list((tmp_path / "host" / "spool" / "hub" / "failed").glob("eat-1-1.jsonl"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["body"] == '{"a": 1}'


# ----------------------------------------------------------------------------------------------- blobs
def test_blob_trigger_fires_once_per_version_survives_restart_and_poisons(tmp_path):
    from fleetscore.storage import open_store

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
        return LocalHost(settings, app=_app_with(blobs), state_dir=tmp_path / "host", blob_poll_seconds=0.05).start()

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


def test_one_host_per_state_folder(tmp_path):
    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def tick(timer: func.TimerRequest) -> None: ...

    first = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host").start()
    try:
        second = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host")
        with pytest.raises(HostConfigError, match="another local host"):
            second.start()
    finally:
        first.stop()


def test_a_dead_dispatcher_degrades_health_and_refuses_its_hubs_events(tmp_path, monkeypatch):
    delivered: list[int] = []

    def hubs(app):
        @app.function_name("eat")
        @app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="X",
                                       cardinality=func.Cardinality.MANY)
        def eat(events: list[func.EventHubEvent]) -> None:
            delivered.extend(e.sequence_number for e in events)

    host = LocalHost(host_settings(tmp_path), app=_app_with(hubs), state_dir=tmp_path / "host").start()
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


def test_stop_does_not_wait_out_an_admin_fire_in_its_retry_wait(tmp_path):
    calls: list[int] = []

    def timers(app):
        @app.function_name("tick")
        @app.retry(strategy="fixed_delay", max_retry_count="1", delay_interval="00:00:30")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, use_monitor=False)
        def tick(timer: func.TimerRequest) -> None:
            calls.append(1)
            raise RuntimeError("down")

    host = LocalHost(host_settings(tmp_path), app=_app_with(timers), state_dir=tmp_path / "host").start()
    replies: list = []
    firing = threading.Thread(target=lambda: replies.append(
        request(host.url, "POST", "/admin/timers/tick", {"wait": True}, timeout=120)), daemon=True)
    firing.start()
    try:
        wait_for(lambda: calls, 10, "the first attempt")
        time.sleep(0.3)  # the request's thread is in the 30 s retry wait now
    finally:
        t0 = time.monotonic()
        host.stop()
        took = time.monotonic() - t0
    firing.join(10)
    assert took < 10, f"stop() took {took:.1f} s"
    assert len(replies) == 1 and replies[0][0] == 200 and replies[0][1]["status"] == "abandoned"
    assert calls == [1]


FORKSERVER_CHECK = """
import json, signal, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver

import azure.functions as func

from fleetscore.backends.local import _pool_context
from fleetscore.host.app import LocalHost
from fleetscore.settings import load_settings

app = func.FunctionApp()


@app.function_name("tick")
@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", use_monitor=False)
def tick(timer: func.TimerRequest) -> None: ...


folder = sys.argv[1]
settings = load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder}/fleet.db", FLEETSCORE_STORAGE=f"{folder}/blobs",
                         SCORING_BACKEND="local")
host = LocalHost(settings, app=app, state_dir=f"{folder}/host", shield_workers=True).start()
try:
    pid = forkserver._forkserver._forkserver_pid  # started by start(), before any worker is needed
    ctx = _pool_context()
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        worker_sigint = pool.submit(signal.getsignal, signal.SIGINT).result()
    print(json.dumps({"method": ctx.get_start_method(), "pid": pid, "same_server": pid ==
                      forkserver._forkserver._forkserver_pid, "worker_sigint": str(worker_sigint)}))
finally:
    host.stop()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the forkserver's signal mask in /proc")
def test_up_starts_the_scoring_forkserver_with_sigint_ignored(tmp_path):
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "none.json")}
    done = subprocess.run([sys.executable, "-c", FORKSERVER_CHECK, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["pid"] is not None, "the host did not start the forkserver"
    assert out["method"] == "forkserver" and out["same_server"]  # the local backend reuses it
    assert out["worker_sigint"] == str(signal.SIG_IGN)  # Ctrl-C reaches the host alone


# ------------------------------------------------------------------------------------------ end to end
DEVICES = [f"d-{i:04d}" for i in range(1, 9)]
SENSORS = ["temp", "hum"]
BASE = {"temp": 21.0, "hum": 45.0}
MINUTE, HOUR = 60_000, 3_600_000


def readings_between(start_ms: int, end_ms: int, seed: int, anomalous: tuple[str, str, int] | None = None) -> list:
    """One reading a minute per pair in (start, end]; `anomalous` = (device, sensor, from_ms) gets +40 from then."""
    rng = np.random.default_rng(seed)
    out = []
    for ts in range(start_ms + MINUTE, end_ms + 1, MINUTE):
        for device in DEVICES:
            for sensor in SENSORS:
                value = BASE[sensor] + float(rng.normal(0, 0.5))
                if anomalous and (device, sensor) == anomalous[:2] and ts > anomalous[2]:
                    value += 40.0
                out.append({"device": device, "sensor": sensor, "ts": iso(ts).replace("+00:00", "Z"),
                            "value": round(value, 3)})
    return out


def by_minute(readings: list) -> list[list]:
    groups: dict[str, list] = {}
    for r in readings:
        groups.setdefault(r["ts"], []).append(r)
    return list(groups.values())


def key(r: dict) -> tuple[str, str, int]:
    return r["device"], r["sensor"], ms(r["ts"])


class Up:
    """`fleetscore up` as a real subprocess in its own process group, on a free port."""

    def __init__(self, tmp_path: Path, env: dict, name: str) -> None:
        self.log = tmp_path / f"{name}.log"
        exe = Path(sys.executable).with_name("fleetscore")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetscore.cli.main"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*cmd, "up", "--port", "0", "--state-dir", str(tmp_path / "host"),
                                          "--blob-poll-seconds", "0.2"], cwd=tmp_path, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        found = wait_for(lambda: self.proc.poll() is not None or re.search(
            r"Listening on (http://127\.0\.0\.1:\d+)", self.log.read_text(errors="replace")), 60, "the host to listen")
        assert self.proc.poll() is None, self.log.read_text()
        self.url = found.group(1)

    def get(self, path: str):
        return request(self.url, "GET", path)[1]

    def post(self, path: str, body):
        return request(self.url, "POST", path, body)[0]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the host and its scoring workers, as a crash would
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.mark.slow
def test_up_end_to_end_kill_mid_run_loses_no_reading_and_doubles_no_alert(tmp_path):
    from fleetscore.ingest.files import ingest_file
    from fleetscore.runs.slots import run_id_for_slot
    from fleetscore.storage import open_store
    from fleetscore.training import train

    now = int(time.time() * 1000)
    this_slot = latest_occurrence(YEARLY, now)  # two past yearly slots; the next scheduled one is months away
    last_slot = latest_occurrence(YEARLY, this_slot - 1)
    env = {**os.environ, "FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
           "FLEETSCORE_STORAGE": str(tmp_path / "blobs"), "SCORING_SCHEDULE": YEARLY, "LATE_ARRIVAL_SECONDS": "0",
           "WINDOW_MINUTES": "5", "PARTITION_MODELS": "2", "SCORING_WORKERS": "1",
           "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "no-local.settings.json"), "PYTHONUNBUFFERED": "1"}
    settings = load_settings(FLEETSCORE_SQL_URL=env["FLEETSCORE_SQL_URL"], FLEETSCORE_STORAGE=env["FLEETSCORE_STORAGE"])
    engine = db.create_db_engine(settings.sql_url)
    db.upgrade(engine)
    store = open_store(settings.storage)

    def stored() -> set:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(db.readings.c.device, db.readings.c.sensor, db.readings.c.ts)).all())

    def run_status(slot: int) -> str | None:
        with engine.connect() as conn:
            return conn.execute(sa.select(db.runs.c.status).where(db.runs.c.slot == slot)).scalar()

    def table(t: sa.Table) -> list:
        with engine.connect() as conn:
            return conn.execute(sa.select(t)).mappings().all()

    def episodes(device: str, sensor: str, after_ms: int) -> list:
        return [a for a in table(db.alerts) if (a["device"], a["sensor"]) == (device, sensor)
                and a["first_window_end"] > after_ms]

    # history for training goes in from a file before the host starts; the model pack is activated
    history = readings_between(last_slot - 10 * HOUR, last_slot - HOUR, seed=1)
    history_file = tmp_path / "history.jsonl"
    history_file.write_text("".join(json.dumps(r) + "\n" for r in history))
    ingest_file(engine, history_file, window_ms=5 * MINUTE, naive_tz=timezone.utc)
    trained = train(engine, store, from_ms=None, until_ms=last_slot - HOUR, min_windows=48, algorithm="ocsvm-rbf",
                    features=settings.features, window_minutes=5, activate=True, n_jobs=1)
    assert trained.models == len(DEVICES) * len(SENSORS)

    # --- 1: the last hour before the first slot arrives over HTTP, with an anomaly on d-0002/temp
    host = Up(tmp_path, env, "up-1")
    stop_posting = threading.Event()
    try:
        recent = readings_between(last_slot - HOUR, last_slot, seed=2,
                                  anomalous=("d-0002", "temp", last_slot - 20 * MINUTE))
        minutes = by_minute(recent)
        for r in minutes[0]:  # single JSON readings as bodies ...
            assert host.post("/events", json.dumps(r).encode()) == 202
        for group in minutes[1:]:  # ... and JSON arrays
            assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: {key(r) for r in history + recent} <= stored(), 30, "the posted readings in SQL")

        assert host.post("/admin/timers/schedule", {"slot": iso(last_slot)}) == 202
        wait_for(lambda: run_status(last_slot) in ("succeeded", "partial"), 60, "the first run to complete")
        files = table(db.prediction_files)
        assert len(files) == len(DEVICES) and {f["status"] for f in files} == {"indexed"}
        raised = episodes("d-0002", "temp", last_slot - 30 * MINUTE)
        assert len(raised) == 1 and raised[0]["last_window_end"] == last_slot
        # the blob trigger indexed every prediction file too, which changed nothing
        wait_for(lambda: next(f for f in host.get("/health")["functions"]
                              if f["name"] == "index_predictions")["receipts"]["done"] == len(files),
                 20, "the blob trigger's receipts")
        assert episodes("d-0002", "temp", last_slot - 30 * MINUTE) == raised

        # --- 2: the hour before the next slot; kill the host mid-run while events are being posted
        before = readings_between(this_slot - HOUR, this_slot - 30 * MINUTE, seed=3)
        for group in by_minute(before):
            assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: {key(r) for r in before} <= stored(), 30, "the first half hour in SQL")
        during = readings_between(this_slot - 30 * MINUTE, this_slot + 6 * HOUR, seed=4,
                                  anomalous=("d-0003", "hum", this_slot - 15 * MINUTE))
        groups = by_minute(during)
        acked: list[int] = []

        def poster() -> None:
            for i, group in enumerate(groups):
                if stop_posting.is_set():
                    return
                try:
                    if host.post("/events", json.dumps(group).encode()) == 202:
                        acked.append(i)
                except OSError:
                    return  # the host is gone
                time.sleep(0.02)

        posting = threading.Thread(target=poster, daemon=True)
        posting.start()
        wait_for(lambda: len(acked) >= 5, 20, "events flowing")
        assert host.post("/admin/timers/schedule", {"slot": iso(this_slot)}) == 202
        run_dir = tmp_path / "blobs" / "predictions" / run_id_for_slot(this_slot)
        wait_for(lambda: run_dir.is_dir() and any(p.suffix == ".parquet" for p in run_dir.iterdir()), 60,
                 "the second run's first prediction file", interval=0.005)
        host.kill()
        posting.join(30)
    finally:
        stop_posting.set()
        if host.proc.poll() is None:
            host.kill()
    assert run_status(this_slot) in ("submitted", "running"), "the kill must land mid-run"
    assert 5 <= len(acked) < len(groups), "the kill must land while events are being posted"

    # --- 3: restart on the same state: the spool redelivers, the blob trigger indexes what the run wrote
    host = Up(tmp_path, env, "up-2")
    try:
        wait_for(lambda: host.get("/health")["backlog"] == 0, 30, "the spool to drain after the restart")
        missing = {key(r) for i in acked for r in groups[i]} - stored()
        assert not missing, f"{len(missing)} acknowledged reading(s) lost, e.g. {sorted(missing)[:3]}"
        done = set(acked)
        for i, group in enumerate(groups):  # the devices resend what was never acknowledged
            if i not in done:
                assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: host.get("/health")["backlog"] == 0, 30, "the resent events")
        assert stored() == {key(r) for r in history + recent + before + during}

        written = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".parquet")
        wait_for(lambda: sorted(f["name"].rsplit("/", 1)[-1] for f in table(db.prediction_files)
                                if f["run_id"] == run_dir.name and f["status"] == "indexed") == written,
                 30, "every prediction file of the killed run indexed")
        if len(written) == len(DEVICES):  # every partition was scored before the kill: the run completes
            wait_for(lambda: run_status(this_slot) in ("succeeded", "partial"), 30, "the second run to complete")
        by_pair: dict[tuple[str, str], list] = {}
        for a in table(db.alerts):
            by_pair.setdefault((a["device"], a["sensor"]), []).append(a)
        for pair, alerts in by_pair.items():  # one alert per episode: never two over the same windows
            alerts.sort(key=lambda a: a["first_window_end"])
            for earlier, later in zip(alerts, alerts[1:], strict=False):
                assert earlier["last_window_end"] < later["first_window_end"], f"doubled alert for {pair}"
        assert len(episodes("d-0002", "temp", last_slot - 30 * MINUTE)) == 1
        if "part-00002.parquet" in written:  # d-0003's partition was scored: its episode raised one alert
            assert len(episodes("d-0003", "hum", this_slot - 30 * MINUTE)) == 1
        assert host.terminate() == 0  # SIGTERM: a clean stop
    finally:
        if host.proc.poll() is None:
            host.kill()
    log_text = (tmp_path / "up-2.log").read_text()
    assert "Executing 'Functions.index_predictions'" in log_text and "local host stopped" in log_text
    engine.dispose()
