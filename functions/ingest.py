"""Event Hub trigger: readings in, windows out (what an Azure Stream Analytics job would do)."""

from __future__ import annotations

import logging

import azure.functions as func

from fleetscore.context import get_services
from fleetscore.ingest.deadletter import ingest_or_dead_letter
from fleetscore.ingest.readings import RawEvent

bp = func.Blueprint()
log = logging.getLogger("fleetscore.functions.ingest")


def to_raw_event(event: func.EventHubEvent) -> RawEvent:
    """Copy what the core needs out of the SDK type: the body bytes as sent, the partition (from the trigger
    metadata's PartitionContext), offset, sequence number and enqueued time."""
    partition = None
    try:
        context = (event.metadata or {}).get("PartitionContext") or {}
        partition = context.get("PartitionId")
    except Exception:  # metadata is optional and shaped by the host
        partition = None
    enqueued = event.enqueued_time
    return RawEvent(body=event.get_body() or b"", partition=None if partition is None else str(partition),
                    sequence_number=event.sequence_number,
                    offset=None if event.offset is None else str(event.offset),
                    enqueued_time_ms=int(enqueued.timestamp() * 1000) if enqueued is not None else None)


def is_final_try(context: func.Context) -> bool:
    """True on the retry policy's last try (`retry_count == max_retry_count`), or when there is no policy;
    never for a policy that retries forever (-1)."""
    retry = getattr(context, "retry_context", None)
    if retry is None:
        return True
    return retry.max_retry_count >= 0 and retry.retry_count >= retry.max_retry_count


@bp.function_name("ingest")
@bp.retry(strategy="exponential_backoff", max_retry_count="8",
          minimum_interval="00:00:02", maximum_interval="00:05:00")
@bp.event_hub_message_trigger(arg_name="events", event_hub_name="%EVENTHUB_NAME%",
                              connection="EVENTHUB_CONNECTION", cardinality=func.Cardinality.MANY,
                              consumer_group="%EVENTHUB_CONSUMER_GROUP%", data_type=func.DataType.BINARY)
def ingest(events: list[func.EventHubEvent], context: func.Context) -> None:
    services = get_services()
    outcome = ingest_or_dead_letter(lambda: services.engine, services.store, [to_raw_event(e) for e in events],
                                    source=f"eventhub:{services.settings.eventhub_name}",
                                    window_ms=services.settings.window_ms, final_try=is_final_try(context))
    result = outcome.result
    log.info("ingest: %d events, %d readings stored, %d duplicates, %d dead-lettered, %d late, %d windows%s",
             len(events), result.stored, result.duplicates, result.dead_lettered, result.late, result.windows,
             f"; batch kept in {outcome.deadletter_key}" if outcome.deadletter_key else "")
