"""Alert revisions as CloudEvents 1.0 (structured JSON mode): the webhook's body with
ALERT_WEBHOOK_FORMAT=cloudevents, and every event published to the Event Grid topic (:mod:`fleetscore.alerts.webhook`).

One event per alert revision::

    {"specversion": "1.0", "type": "com.fleetscore.alert.opened", "source": "/fleetscore/alerts",
     "id": "<alert_id>:<revision>", "time": "<updated_at, RFC 3339 UTC>",
     "subject": "devices/<device>/sensors/<sensor>",
     "datacontenttype": "application/json", "data": {<the alert document>}}

`id` is the webhook's ``Idempotency-Key`` too, so a consumer drops the rare duplicate (delivery is at least once)
whichever format it reads. `type` names what the revision did (:data:`KINDS`); `subject` lets an Event Grid
subscription filter by device (``subjectBeginsWith devices/d-0001/``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fleetscore.alerts.documents import alert_document

SPECVERSION = "1.0"
TYPE_PREFIX = "com.fleetscore.alert."
KINDS = ("opened", "updated", "closed", "acknowledged", "resolved")
"""What a revision did: the episode opened it (revision 1), it grew, it closed (the episode ended), or a person
acknowledged or resolved it (the alert lifecycle)."""
KIND_COLUMN = "revision_kind"
"""The kind of a row's latest revision as the delivery reads it (`alert_revisions.kind`, joined); a revision from
before that table (migration 0006) has none, and its kind is derived from the row."""
STRUCTURED = "application/cloudevents+json; charset=utf-8"
"""Content-Type of one event in structured mode (CloudEvents HTTP binding 1.0, section 3.2)."""
BATCH = "application/cloudevents-batch+json; charset=utf-8"
"""Content-Type of a JSON array of events (batched mode: what an Event Grid topic takes)."""


def revision_kind(record: Mapping[str, Any]) -> str:
    """The kind of the alert row's latest revision (one of :data:`KINDS`)."""
    recorded = record.get(KIND_COLUMN)
    if recorded in KINDS:
        return str(recorded)
    if record.get("resolved_at") is not None and record.get("resolved_at") == record.get("resolved_at"):  # not NaN
        return "resolved"
    if record.get("status") == "closed":
        return "closed"
    return "opened" if int(record.get("revision") or 1) == 1 else "updated"


def event_id(record: Mapping[str, Any]) -> str:
    """`<alert_id>:<revision>`: unique per revision, equal for a redelivery (the webhook's Idempotency-Key)."""
    return f"{record['alert_id']}:{int(record['revision'])}"


def alert_event(record: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The CloudEvent of an alert row's latest revision; `source` is ALERT_EVENT_SOURCE."""
    doc = alert_document(record)
    return {
        "specversion": SPECVERSION,
        "type": TYPE_PREFIX + revision_kind(record),
        "source": source,
        "id": event_id(record),
        "time": doc["updated_at"],
        "subject": f"devices/{doc['device']}/sensors/{doc['sensor']}",
        "datacontenttype": "application/json",
        "data": doc,
    }


def event_json(record: Mapping[str, Any], source: str) -> bytes:
    """One event, structured mode (UTF-8 JSON)."""
    return json.dumps(alert_event(record, source)).encode()


def batch_json(records: Sequence[Mapping[str, Any]], source: str) -> bytes:
    """A JSON array of events (batched mode), one per alert row."""
    return json.dumps([alert_event(r, source) for r in records]).encode()
