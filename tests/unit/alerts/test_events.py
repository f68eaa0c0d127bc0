"""Alert revisions as CloudEvents 1.0: every kind validated against the CloudEvents 1.0 JSON schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from fleetscore.alerts import events
from fleetscore.alerts.documents import alert_document
from tests.helpers import REPO

SCHEMA = json.loads((REPO / "tests" / "data" / "cloudevents-1.0.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())

ROW = {"alert_id": "d-0001|temp|1795600800000", "device": "d-0001", "sensor": "temp", "status": "open",
       "first_window_end": 1_795_600_800_000, "last_window_end": 1_795_601_100_000, "windows": 2, "max_score": 1.5,
       "severity": "high", "model_version": "v1", "run_id": "20261123T1205Z", "raised_at": 1_795_601_200_000,
       "updated_at": 1_795_601_500_123, "revision": 1}


def valid(event: dict) -> dict:
    errors = sorted(VALIDATOR.iter_errors(event), key=str)
    assert not errors, [e.message for e in errors]
    return event


def test_the_schema_rejects_what_the_spec_rejects():
    good = events.alert_event(ROW, "/fleetscore/alerts")
    for broken in ({k: v for k, v in good.items() if k != "source"}, {**good, "specversion": "0.3"},
                   {**good, "time": "yesterday"}, {**good, "id": ""}, {**good, "Bad_Name": 1},
                   {**good, "data_base64": "eA=="}, {**good, "source": "not a uri"}):
        assert list(VALIDATOR.iter_errors(broken)), broken


@pytest.mark.parametrize(("changes", "kind"), [
    ({}, "opened"),
    ({"revision": 2}, "updated"),
    ({"revision": 3, "status": "closed"}, "closed"),
    ({"revision": 4, "status": "closed", "resolved_at": 1_795_602_000_000}, "resolved"),
    ({"revision": 2, "revision_kind": "acknowledged", "acknowledged_at": 1_795_601_900_000}, "acknowledged"),
    ({"revision": 5, "revision_kind": "updated", "acknowledged_at": 1_795_601_900_000}, "updated"),
])
def test_each_revision_is_a_valid_cloudevent_of_its_kind(changes, kind):
    row = {**ROW, **changes}
    event = valid(events.alert_event(row, "/fleetscore/alerts"))
    assert event["specversion"] == "1.0" and event["type"] == f"com.fleetscore.alert.{kind}"
    assert event["id"] == f"{ROW['alert_id']}:{row['revision']}"  # the webhook's Idempotency-Key
    assert event["source"] == "/fleetscore/alerts" and event["datacontenttype"] == "application/json"
    assert event["subject"] == "devices/d-0001/sensors/temp"
    assert event["time"] == alert_document(row)["updated_at"] and event["time"].startswith("2026-")
    assert event["data"] == json.loads(json.dumps(alert_document(row)))


def test_structured_and_batched_bytes():
    one = json.loads(events.event_json(ROW, "urn:fleetscore:test"))
    assert valid(one)["source"] == "urn:fleetscore:test"
    batch = json.loads(events.batch_json([ROW, {**ROW, "alert_id": "d-2|rh|1", "revision": 2}], "/x"))
    assert [valid(e)["id"] for e in batch] == [f"{ROW['alert_id']}:1", "d-2|rh|1:2"]
    assert events.STRUCTURED.startswith("application/cloudevents+json")
    assert events.BATCH.startswith("application/cloudevents-batch+json")
