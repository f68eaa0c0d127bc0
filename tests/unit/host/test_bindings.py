"""What the local host serves: settings by app-setting name, resolved bindings, refusals, retry policies."""

from __future__ import annotations

import os

import azure.functions as func
import pytest

from fleetscore.host.app import LocalHost
from fleetscore.host.bindings import (
    HostConfigError,
    RetryPolicy,
    SettingSource,
    blob_pattern,
    parse_timespan,
    read_functions,
    route_pattern,
)
from fleetscore.host.functions import app_functions
from fleetscore.settings import Settings, load_settings
from tests.helpers import REPO
from tests.helpers.appfuncs import functions
from tests.helpers.host import YEARLY, app_with, host_settings


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
    empty = Settings.model_construct(**{**host_settings(tmp_path).__dict__, "eventhub_name": ""})
    with pytest.raises(HostConfigError) as caught:
        LocalHost(empty, functions=list(functions().values()), state_dir=tmp_path / "host")
    assert "'ingest'" in str(caught.value) and "%EVENTHUB_NAME%" in str(caught.value)
    assert "not set" in str(caught.value)
    assert not (tmp_path / "host").exists()  # refused before touching anything


def test_function_app_is_served_with_its_settings_resolved(tmp_path):
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


def test_an_apps_functions_are_read_once_through_one_cache():
    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def tick(timer: func.TimerRequest) -> None: ...

    app = app_with(timers)
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
        LocalHost(settings, app=app_with(other_storage), state_dir=tmp_path / "h")

    def timespan(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule="%TICK_EVERY%")
        def tick(timer: func.TimerRequest) -> None: ...

    os.environ["TICK_EVERY"] = "00:05:00"
    try:
        with pytest.raises(HostConfigError, match=r"'tick': TimeSpan schedule '00:05:00' \(from %TICK_EVERY%\)"):
            LocalHost(settings, app=app_with(timespan), state_dir=tmp_path / "h")
    finally:
        del os.environ["TICK_EVERY"]
    with pytest.raises(HostConfigError, match=r"%TICK_EVERY%, which is not set"):
        LocalHost(settings, app=app_with(timespan), state_dir=tmp_path / "h")

    def queue_only(app):
        @app.function_name("hello")
        @app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
        def hello(msg: func.QueueMessage) -> None: ...

    with pytest.raises(HostConfigError, match="no timer, Event Hub, blob or HTTP function"):
        LocalHost(settings, app=app_with(queue_only), state_dir=tmp_path / "h")


def test_http_routes_follow_the_route_template_and_the_prefix(tmp_path):
    def http_only(app):
        @app.function_name("hello")
        @app.route(methods=["GET"])
        def hello(req: func.HttpRequest) -> func.HttpResponse: ...

        @app.function_name("item")
        @app.route(route="/items/{id:int}/{part?}", auth_level=func.AuthLevel.ANONYMOUS)
        def item(req: func.HttpRequest) -> func.HttpResponse: ...

    host = LocalHost(host_settings(tmp_path), app=app_with(http_only), state_dir=tmp_path / "h")
    by_name = {f.name: f for f in host.functions}
    assert by_name["hello"].route == "hello" and by_name["hello"].methods == ("GET",)  # route defaults to the name
    assert by_name["hello"].auth_level == "function" and by_name["item"].auth_level == "anonymous"
    item = by_name["item"].pattern
    assert item.fullmatch("items/7").group("id") == "7" and item.fullmatch("ITEMS/7/a%2Fb").group("part") == "a%2Fb"
    assert not item.fullmatch("items") and not item.fullmatch("items/7/a/b")
    assert host.http.below_prefix("/api/items/7") == "items/7" and host.http.below_prefix("/events") is None
    assert route_pattern("{*rest}").fullmatch("a/b/c").group("rest") == "a/b/c"


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
