"""OpenTelemetry metrics and traces: the one owner of fleetscore's instruments and spans.

Exported to Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set (:func:`configure`, the Azure
Monitor distro, imported only then), to nowhere otherwise: the OpenTelemetry API's default providers make every
call below a no-op. Call sites are one line each.

Metrics (meter ``fleetscore``). Attributes are small closed sets, never device or sensor ids, so the number of
series stays bounded however large the fleet:

=================================== ========== ==========================================
name                                unit       attributes
=================================== ========== ==========================================
fleetscore.readings.stored          {reading}  –
fleetscore.readings.late            {reading}  –
fleetscore.dead_letters             {event}    ``reason`` (the dead letter's reason code)
fleetscore.run.stage.duration       s          ``stage`` (export, submit, index, …)
fleetscore.windows.scored           {window}   –
fleetscore.anomalies                {window}   –
fleetscore.alerts.opened            {alert}    ``severity``
fleetscore.alerts.closed            {alert}    ``severity``
fleetscore.alerts.delivered         {revision} ``sink`` (webhook, eventgrid)
fleetscore.alerts.delivery_failures {revision} ``sink``
fleetscore.watermark.lag            s          – (now − the scoring watermark, at each timer fire)
=================================== ========== ==========================================

Traces (tracer ``fleetscore``): one trace per run. The span ``fleetscore.run`` (attribute ``fleetscore.run_id``)
holds a span per stage (``fleetscore.export``, ``fleetscore.submit`` — local scoring happens inside it —,
``fleetscore.index``); its W3C ``traceparent`` is stored on the run's row, so a file indexed later by the blob
trigger (a scoring job in Azure ML) is a ``fleetscore.index_file`` span of the same trace.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fleetscore.alerts.severity import SEVERITIES

log = logging.getLogger(__name__)

NAME = "fleetscore"
RUN_ID = "fleetscore.run_id"
"""The span attribute that carries the run id (every span of a run's trace)."""

OTHER = "other"
"""An attribute value outside its closed set is reported as this (cardinality stays bounded)."""
_PROPAGATOR = TraceContextTextMapPropagator()
_current_run: ContextVar[str | None] = ContextVar("fleetscore_run", default=None)
"""The run whose span is current in this context (its files' indexing is a child span, no lookup)."""


class Instruments:
    """Every instrument, made from one meter and one tracer."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        meter = metrics.get_meter(NAME, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(NAME, tracer_provider=tracer_provider)
        count = meter.create_counter
        self.readings_stored = count("fleetscore.readings.stored", "{reading}", "readings stored by ingest")
        self.readings_late = count("fleetscore.readings.late", "{reading}",
                                   "readings stored after their window was closed for scoring")
        self.dead_letters = count("fleetscore.dead_letters", "{event}", "bad events dead-lettered, by reason")
        self.stage_duration = meter.create_histogram("fleetscore.run.stage.duration", "s",
                                                     "wall time of a run's stage")
        self.windows_scored = count("fleetscore.windows.scored", "{window}", "windows of indexed prediction files")
        self.anomalies = count("fleetscore.anomalies", "{window}", "anomalous windows of indexed prediction files")
        self.alerts_opened = count("fleetscore.alerts.opened", "{alert}", "alerts opened, by severity")
        self.alerts_closed = count("fleetscore.alerts.closed", "{alert}", "alerts closed, by severity")
        self.delivered = count("fleetscore.alerts.delivered", "{revision}", "alert revisions delivered, by sink")
        self.delivery_failures = count("fleetscore.alerts.delivery_failures", "{revision}",
                                       "alert revisions whose delivery failed, by sink")
        self.watermark_lag = meter.create_gauge("fleetscore.watermark.lag", "s",
                                                "how far the scoring watermark is behind now")


_instruments = Instruments()
_configured = False


def use(meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None) -> Instruments:
    """Make the instruments from these providers (None: the global ones); tests pass in-memory readers."""
    global _instruments
    _instruments = Instruments(meter_provider, tracer_provider)
    return _instruments


def configure(connection_string: str | None) -> bool:
    """Export to Application Insights (once per process) when `connection_string` is set; True if it did.
    Logs stay with the Functions host's own Application Insights integration (OTEL_LOGS_EXPORTER defaults to
    none here), so each log line is sent once."""
    global _configured
    if not connection_string or _configured:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor  # lazy: the exporter loads only when used

    os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    configure_azure_monitor(connection_string=connection_string)
    _configured = True
    use()
    log.info("telemetry: OpenTelemetry metrics and traces export to Application Insights")
    return True


def _closed(value: Any, allowed: Iterable[str]) -> str:
    text = str(value)
    return text if text in allowed else OTHER


# ------------------------------------------------------------------------------------------ metrics
def ingested(stored: int, late: int, dead_reasons: Mapping[str, int]) -> None:
    """A committed ingest batch: readings stored, late ones among them, dead letters by reason code."""
    i = _instruments
    i.readings_stored.add(stored)
    i.readings_late.add(late)
    for reason, n in dead_reasons.items():
        i.dead_letters.add(n, {"reason": str(reason)[:40]})


def indexed(rows: int, anomalies: int, changed: Iterable[Mapping[str, Any]]) -> None:
    """An indexed prediction file: its windows, anomalies, and the alerts it opened or closed (by severity)."""
    i = _instruments
    i.windows_scored.add(rows)
    i.anomalies.add(anomalies)
    opened, closed = Counter(), Counter()
    for alert in changed:
        severity = _closed(alert.get("severity"), SEVERITIES)
        if alert.get("status") == "closed":
            closed[severity] += 1
        elif int(alert.get("revision") or 0) == 1:
            opened[severity] += 1
    for severity, n in opened.items():
        i.alerts_opened.add(n, {"severity": severity})
    for severity, n in closed.items():
        i.alerts_closed.add(n, {"severity": severity})


def delivery(sink: str, delivered: int, failed: int) -> None:
    """Alert revisions a sink (webhook, eventgrid) took or refused."""
    if delivered:
        _instruments.delivered.add(delivered, {"sink": sink})
    if failed:
        _instruments.delivery_failures.add(failed, {"sink": sink})


def watermark_lag(now_ms: int, watermark_ms: int | None) -> None:
    """Record how far (s) the scoring watermark is behind `now_ms`; nothing before the first run completed."""
    if watermark_ms is not None:
        _instruments.watermark_lag.set(max(0.0, (now_ms - watermark_ms) / 1000.0))


# ------------------------------------------------------------------------------------------ traces
@contextmanager
def run_span(run_id: str, trigger: str) -> Iterator[trace.Span]:
    """The root span of a run's trace (a new trace, whatever span is current)."""
    attributes = {RUN_ID: run_id, "fleetscore.trigger": trigger}
    token = _current_run.set(run_id)
    try:
        with _instruments.tracer.start_as_current_span("fleetscore.run", context=trace.set_span_in_context(
                trace.INVALID_SPAN), attributes=attributes) as span:
            yield span
    finally:
        _current_run.reset(token)


@contextmanager
def stage(name: str, run_id: str) -> Iterator[trace.Span]:
    """A stage of a run: a child span, and its wall time (s) in ``fleetscore.run.stage.duration``."""
    t0 = time.perf_counter()
    try:
        with _instruments.tracer.start_as_current_span(f"fleetscore.{name}", attributes={RUN_ID: run_id}) as span:
            yield span
    finally:
        _instruments.stage_duration.record(time.perf_counter() - t0, {"stage": name})


def failed(exc: BaseException) -> None:
    """Mark the current span failed with `exc` (a run that failed still ends its trace)."""
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))


def traceparent() -> str | None:
    """The current span's W3C traceparent (stored on the run's row), or None when nothing is recorded."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def index_span(name: str, run_id: str | None, parent: Callable[[], str | None]) -> Iterator[trace.Span]:
    """A prediction file's indexing: a child of the current span (a local run indexing what it scored), else of
    the run's stored traceparent, `parent()` (the blob trigger; read only then), else a trace of its own."""
    context = None
    if run_id is None or _current_run.get() != run_id:
        stored = parent()
        context = _PROPAGATOR.extract({"traceparent": stored}) if stored else None
    attributes = {"fleetscore.blob": name, **({RUN_ID: run_id} if run_id else {})}
    with _instruments.tracer.start_as_current_span("fleetscore.index_file", context=context,
                                                   attributes=attributes) as span:
        yield span
