"""Event Hub trigger: readings in, windows out (what an Azure Stream Analytics job would do)."""

from __future__ import annotations

import logging

import azure.functions as func

from fleetscore.context import get_services
from fleetscore.ingest.readings import RawEvent
from fleetscore.ingest.store import ingest_events

bp = func.Blueprint()
log = logging.getLogger("fleetscore.functions.ingest")


def to_raw_event(event: func.EventHubEvent) -> RawEvent:
    """Copy what the core needs out of the SDK type (partition from the trigger metadata)."""
    partition = None
    try:
        context = (event.metadata or {}).get("PartitionContext") or {}
        partition = context.get("PartitionId")
    except Exception:  # metadata is optional and shaped by the host
        partition = None
    enqueued = event.enqueued_time
    return RawEvent(body=event.get_body() or b"", partition=partition, sequence_number=event.sequence_number,
                    offset=event.offset,
                    enqueued_time_ms=int(enqueued.timestamp() * 1000) if enqueued is not None else None)


@bp.function_name("ingest")
@bp.retry(strategy="exponential_backoff", max_retry_count="8",
          minimum_interval="00:00:02", maximum_interval="00:05:00")
@bp.event_hub_message_trigger(arg_name="events", event_hub_name="%EVENTHUB_NAME%",
                              connection="EVENTHUB_CONNECTION", cardinality=func.Cardinality.MANY,
                              consumer_group="$Default")
def ingest(events: list[func.EventHubEvent]) -> None:
    services = get_services()
    result = ingest_events(services.engine, [to_raw_event(e) for e in events],
                           source=f"eventhub:{services.settings.eventhub_name}",
                           window_ms=services.settings.window_ms)
    log.info("ingest: %d events, %d readings stored, %d duplicates, %d dead-lettered, %d late, %d windows",
             len(events), result.stored, result.duplicates, result.dead_lettered, result.late, result.windows)
