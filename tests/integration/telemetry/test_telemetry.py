"""OpenTelemetry metrics and traces with the SDK's in-memory reader and span exporter: names, units, bounded
attributes (never a device id), one trace per run from the timer through export, scoring and indexing, the blob
trigger continuing it, and Application Insights only when its connection string is set."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleetscore import db, telemetry
from fleetscore.alerts import outbox, webhook
from fleetscore.context import Services, set_services
from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import ingest_events
from fleetscore.runs.claims import list_runs
from fleetscore.settings import load_settings
from tests.helpers.appfuncs import function
from tests.helpers.fleet import RUN_A, RUN_B, T0, W, fire, put_run, series, trained_fleet

HOUR = 3_600_000
UNITS = {"fleetscore.readings.stored": "{reading}", "fleetscore.readings.late": "{reading}",
         "fleetscore.dead_letters": "{event}", "fleetscore.run.stage.duration": "s",
         "fleetscore.windows.scored": "{window}", "fleetscore.anomalies": "{window}",
         "fleetscore.alerts.opened": "{alert}", "fleetscore.alerts.closed": "{alert}",
         "fleetscore.alerts.delivered": "{revision}", "fleetscore.alerts.delivery_failures": "{revision}",
         "fleetscore.watermark.lag": "s"}
ALLOWED_ATTRIBUTES = {"reason", "stage", "severity", "sink"}


@pytest.fixture
def otel():
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.use(MeterProvider(metric_readers=[reader]), tracer_provider)
    yield reader, spans
    telemetry.use()


def points(reader) -> dict[str, list]:
    """metric name → its data points; every metric's unit and attribute keys checked on the way."""
    out: dict[str, list] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "fleetscore"
            for metric in sm.metrics:
                assert metric.unit == UNITS[metric.name], metric.name
                for p in metric.data.data_points:
                    assert set(p.attributes) <= ALLOWED_ATTRIBUTES, (metric.name, dict(p.attributes))
                    assert not any(str(v).startswith(("d-", "temp", "rh")) for v in p.attributes.values())
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(pts, name, **attrs) -> float:
    return sum(p.value for p in pts.get(name, []) if all(p.attributes.get(k) == v for k, v in attrs.items()))


def test_ingest_index_and_delivery_metrics_with_bounded_attributes(otel, sqlite_engine, folder, monkeypatch):
    reader, _ = otel
    body = [{"device": f"d-{i}", "sensor": "temp", "ts": T0 / 1000 - 60 * i, "value": 20.0 + i} for i in range(5)]
    events = [RawEvent(json.dumps(body).encode()), RawEvent(b"{not json"), RawEvent(b'{"device": "d-9"}'),
              RawEvent(b'{"device": "d-8", "sensor": "temp", "ts": 1, "value": "hot"}')]
    result = ingest_events(sqlite_engine, events, source="test", window_ms=W)
    monkeypatch.setattr(webhook, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")  # nothing listens: refused
    monkeypatch.setenv("ALERT_PERSISTENCE", "1/1")  # every anomalous window opens an alert
    settings = load_settings()
    fire(sqlite_engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}) +
         series("d-2", "rh", T0, 4, {3}))
    fire(sqlite_engine, folder, settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, set()) +
         series("d-2", "rh", T0 + 4 * W, 4, {0, 1, 2, 3}))
    outbox.drain(sqlite_engine, folder, settings)
    pts = points(reader)
    assert total(pts, "fleetscore.readings.stored") == result.stored == 5
    assert sum(p.value for p in pts["fleetscore.dead_letters"]) == result.dead_lettered == 3
    assert {p.attributes["reason"] for p in pts["fleetscore.dead_letters"]} == set(result.dead_reasons)
    assert total(pts, "fleetscore.windows.scored") == 16 and total(pts, "fleetscore.anomalies") == 7
    assert total(pts, "fleetscore.alerts.opened", severity="medium") == 2  # no pack: severity medium
    assert total(pts, "fleetscore.alerts.closed", severity="medium") == 1  # d-1 closed by run B
    assert total(pts, "fleetscore.alerts.delivery_failures", sink="webhook") == 1  # refused: the round stops


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """A small simulated fleet in SQLite, trained on its first 2 days (models activated)."""
    services, sim, _ = trained_fleet(tmp_path, monkeypatch)
    yield services, sim
    set_services(None)


def test_one_trace_per_run_from_the_timer_through_export_scoring_and_indexing(otel, fleet):
    from azure.functions.timer import TimerRequest

    reader, exporter = otel
    services, sim = fleet
    slot = sim.clean_until_ms + 6 * HOUR + 5 * 60_000
    status = {"Last": None, "Next": datetime.fromtimestamp(slot / 1000, tz=timezone.utc).isoformat(),
              "LastUpdated": None}
    function("schedule").get_user_function()(TimerRequest(past_due=True, schedule_status=status))
    (run,) = list_runs(services.engine).to_dict("records")
    assert run["status"] == "succeeded"
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "fleetscore.run"]
    assert root.parent is None and root.attributes[telemetry.RUN_ID] == run["run_id"]
    trace_spans = [s for s in spans if s.context.trace_id == root.context.trace_id]
    names = [s.name for s in trace_spans]
    assert {"fleetscore.export", "fleetscore.submit", "fleetscore.index"} <= set(names)
    assert names.count("fleetscore.index_file") == run["partitions"] == 2
    assert all(s.attributes[telemetry.RUN_ID] == run["run_id"] for s in trace_spans)
    assert len({s.context.trace_id for s in spans if s.attributes.get(telemetry.RUN_ID)}) == 1
    with services.engine.connect() as conn:
        stored = conn.execute(sa.select(db.runs.c.traceparent)).scalar()
    assert stored.startswith(f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-")  # W3C traceparent
    pts = points(reader)
    assert {p.attributes["stage"] for p in pts["fleetscore.run.stage.duration"]} >= {"export", "submit", "index"}
    assert all(p.count == 1 and p.sum >= 0 for p in pts["fleetscore.run.stage.duration"])
    (lag,) = pts["fleetscore.watermark.lag"]
    assert lag.value > 0 and total(pts, "fleetscore.windows.scored") == run["windows"]


def test_the_blob_trigger_continues_the_runs_trace(otel, sqlite_engine, folder, settings):
    _, exporter = otel
    put_run(sqlite_engine, folder, RUN_A, T0 - W, T0 + 3 * W, {"part-00000.parquet": 4})
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with sqlite_engine.begin() as conn:
        conn.execute(db.runs.update().values(traceparent=parent))
    fire(sqlite_engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {3}))
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "fleetscore.index_file"]
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331" and span.attributes[telemetry.RUN_ID] == RUN_A


def test_application_insights_only_with_its_connection_string(monkeypatch):
    import azure.monitor.opentelemetry as distro

    calls = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kw: calls.append(kw))
    monkeypatch.setattr(telemetry, "_configured", False)
    monkeypatch.delenv("OTEL_LOGS_EXPORTER", raising=False)
    Services(load_settings())
    assert calls == []  # by default: nothing configured, the API's no-op providers
    cs = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1/"
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", cs)
    Services(load_settings())
    Services(load_settings())  # once per process
    assert calls == [{"connection_string": cs}]
    import os

    assert os.environ["OTEL_LOGS_EXPORTER"] == "none"  # logs stay with the Functions host's own integration
    telemetry.use()
