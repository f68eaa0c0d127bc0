"""`/api/alerts…`: the HTTP functions with real `func.HttpRequest` objects on real SQLite and PostgreSQL — filters,
paging across inserts, page tokens, one alert with its revisions, acknowledge and resolve and their delivery through
the outbox (documents and webhook)."""

from __future__ import annotations

import json

import pytest

from fleetscore import db
from fleetscore.alerts import outbox
from tests.helpers.appfuncs import function
from tests.helpers.fleet import RUN_A, RUN_B, RUN_C, RUN_D, T0, W, blob_doc, fire, rows_of, series
from tests.integration.api.conftest import Api

EXPECTED_ROUTES = {
    "api_list_alerts": ("GET", "alerts", "FUNCTION"),
    "api_get_alert": ("GET", "alerts/{alert_id}", "FUNCTION"),
    "api_acknowledge_alert": ("POST", "alerts/{alert_id}/acknowledge", "FUNCTION"),
    "api_resolve_alert": ("POST", "alerts/{alert_id}/resolve", "FUNCTION"),
    "api_pair_windows": ("GET", "pairs/{device}/{sensor}/windows", "FUNCTION"),
    "api_runs": ("GET", "runs", "FUNCTION"),
    "api_health": ("GET", "health", "FUNCTION"),
    "api_openapi": ("GET", "openapi.json", "ANONYMOUS"),
}


def test_http_function_bindings():
    """The v2 SDK writes `authLevel` as the enum's name (FUNCTION), which the host reads case-insensitively."""
    for name, (method, route, level) in EXPECTED_ROUTES.items():
        trigger, output = json.loads(function(name).get_function_json())["bindings"]
        assert trigger == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": [method],
                           "authLevel": level, "route": route}, name
        assert output == {"direction": "OUT", "type": "http", "name": "$return"}


def ids(doc) -> list[str]:
    return [a["alert_id"] for a in doc["alerts"]]


def by_pair(engine) -> dict[tuple[str, str], str]:
    return {(a["device"], a["sensor"]): a["alert_id"] for a in rows_of(engine, db.alerts)}


def test_list_filters_and_orders_newest_episode_first(engine, folder, api):
    fire(engine, folder, api.settings, RUN_A, series("d-1", "temp", T0, 4, {1, 2}) + series("d-2", "temp", T0, 4, {3})
         + series("d-3", "rh", T0, 4, {0}))
    a = by_pair(engine)
    status, doc = api.alerts()
    assert status == 200 and ids(doc) == [a["d-2", "temp"], a["d-1", "temp"], a["d-3", "rh"]]
    assert doc["next_page"] is None and doc["alerts"][0]["state"] == "open"
    assert ids(api.alerts(device="d-1")[1]) == [a["d-1", "temp"]]
    assert ids(api.alerts(sensor="rh")[1]) == [a["d-3", "rh"]]
    assert ids(api.alerts(**{"from": "2026-11-23T10:15:00Z"})[1]) == [a["d-2", "temp"]]
    assert ids(api.alerts(to="2026-11-23T10:04:59+00:00")[1]) == [a["d-3", "rh"]]
    assert len(api.alerts(severity="medium,low")[1]["alerts"]) == 3
    assert api.alerts(severity="critical")[1]["alerts"] == []
    assert ids(api.alerts(state="open", status="open")[1]) == [a["d-2", "temp"], a["d-1", "temp"]]
    assert ids(api.alerts(state="closed,acknowledged")[1]) == [a["d-3", "rh"]]  # 3 normal windows closed it
    assert api.alerts(state="resolved")[1] == {"alerts": [], "next_page": None}
    for bad in ({"state": "gone"}, {"device": "d 1"}, {"from": "yesterday"}, {"from": "2026-11-23T10:00:00"},
                {"limit": "0"}, {"limit": "x"}, {"from": "2026-11-24T00:00:00Z", "to": "2026-11-23T00:00:00Z"}):
        status, err = api.alerts(**bad)
        assert status == 400 and err["error"], bad


def test_pages_are_stable_while_alerts_are_raised_and_tokens_are_checked(engine, folder, api):
    rows = []
    for i in range(5):
        rows += series(f"d-{i}", "temp", T0, 6, {i})
    fire(engine, folder, api.settings, RUN_A, rows)
    everything = ids(api.alerts()[1])
    status, first = api.alerts(limit=2)
    assert status == 200 and ids(first) == everything[:2] and first["next_page"]
    # meanwhile: a newer episode (before the cursor) and an older one (after it) are raised
    fire(engine, folder, api.settings, RUN_B, series("d-8", "temp", T0 + 20 * W, 2, {0})
         + series("d-9", "temp", T0 - 10 * W, 2, {0}))
    seen = ids(first)
    token = first["next_page"]
    while token:
        status, page = api.alerts(limit=2, page=token)
        assert status == 200
        seen += ids(page)
        token = page["next_page"]
    older = by_pair(engine)["d-9", "temp"]
    assert seen == everything + [older]  # each alert once, in order; the newer one is on page 1 of a new query
    tampered = first["next_page"][:-2] + ("AA" if not first["next_page"].endswith("AA") else "BB")
    for bad, params in ((tampered, {}), ("abc", {}), ("x.y.z", {}), (first["next_page"], {"device": "d-1"})):
        status, err = api.alerts(limit=2, page=bad, **params)
        assert status == 400 and "page token" in err["error"], bad


def test_one_alert_with_its_revisions_and_the_errors(engine, folder, api):
    fire(engine, folder, api.settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}))
    fire(engine, folder, api.settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 2, {0}))
    (alert_id,) = by_pair(engine).values()
    status, doc = api.alert(alert_id)
    assert status == 200 and doc["revision"] == 2 and doc["windows"] == 3 and doc["revisions_total"] == 2
    assert [(r["revision"], r["kind"], r["by"]) for r in doc["revisions"]] == [(1, "opened", None),
                                                                               (2, "updated", None)]
    assert doc["revisions"][0]["document"]["windows"] == 2 and doc["revisions"][1]["document"]["windows"] == 3
    assert api.alert("al-0000000000000000") == (404, {"error": "no alert al-0000000000000000"})
    assert api.alert("bad id")[0] == 400 and api.alert("x" * 81)[0] == 400


def sent(hook) -> list[tuple[str, int, str]]:
    """(alert_id, revision, state) of every document the webhook received, in order."""
    return [(doc["alert_id"], doc["revision"], doc["state"]) for _, doc in hook.received]


def test_acknowledge_and_resolve_are_revisions_delivered_through_the_outbox(engine, folder, hook):
    api = Api(engine, folder, ALERT_WEBHOOK_URL=hook.url)
    fire(engine, folder, api.settings, RUN_A, series("d-1", "temp", T0, 4, {2, 3}))
    (alert_id,) = by_pair(engine).values()
    outbox.drain(engine, folder, api.settings)
    assert sent(hook) == [(alert_id, 1, "open")]

    status, doc = api.act("acknowledge", alert_id, {"by": "ana", "note": "on it"})
    assert status == 200 and (doc["state"], doc["status"], doc["revision"]) == ("acknowledged", "open", 2)
    assert doc["acknowledged_by"] == "ana" and doc["note"] == "on it" and doc["acknowledged_at"].endswith("Z")
    assert api.act("acknowledge", alert_id, {"by": "bo"})[0] == 409
    outbox.drain(engine, folder, api.settings)
    assert sent(hook)[-1] == (alert_id, 2, "acknowledged")
    assert blob_doc(folder, rows_of(engine, db.alerts)[0])["state"] == "acknowledged"

    # the episode goes on: the acknowledged alert follows it (a revision, a document) but nobody is notified again
    fire(engine, folder, api.settings, RUN_B, series("d-1", "temp", T0 + 4 * W, 4, {0, 1}))
    outbox.drain(engine, folder, api.settings)
    (row,) = rows_of(engine, db.alerts)
    assert (row["revision"], row["windows"], row["status"]) == (3, 4, "open") and len(sent(hook)) == 2
    assert row["delivered_revision"] == 3 and blob_doc(folder, row)["revision"] == 3

    status, doc = api.act("resolve", alert_id, {"by": "bo", "note": "sensor replaced"})
    assert status == 200 and (doc["state"], doc["status"], doc["revision"]) == ("resolved", "closed", 4)
    outbox.drain(engine, folder, api.settings)
    assert sent(hook)[-1] == (alert_id, 4, "resolved")
    assert blob_doc(folder, rows_of(engine, db.alerts)[0])["state"] == "resolved"
    assert api.act("resolve", alert_id, {"by": "bo"})[0] == 409
    assert api.act("acknowledge", alert_id, {"by": "x"})[0] == 409

    # the pair is anomalous again: a new alert, the resolved one is left as it is
    fire(engine, folder, api.settings, RUN_C, series("d-1", "temp", T0 + 8 * W, 2, {0}))
    alerts = {a["alert_id"]: a for a in rows_of(engine, db.alerts)}
    (new_id,) = set(alerts) - {alert_id}
    assert alerts[alert_id]["revision"] == 4 and alerts[new_id]["status"] == "open"
    assert alerts[new_id]["first_window_end"] == T0 + 8 * W
    status, detail = api.alert(alert_id)
    assert [(r["kind"], r["by"], r["note"]) for r in detail["revisions"]] == [
        ("opened", None, None), ("acknowledged", "ana", "on it"), ("updated", None, None),
        ("resolved", "bo", "sensor replaced")]
    assert ids(api.alerts(state="resolved")[1]) == [alert_id] and ids(api.alerts(state="open")[1]) == [new_id]


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", {"note": "who?"}, {"by": ""}, {"by": "x" * 201},
                                  {"by": "a", "note": 5}, {"by": "a", "extra": 1}, {"by": "a\x00b"},
                                  b'{"by": "\\ud800"}'])
def test_bad_action_bodies_are_400(engine, folder, api, body):
    fire(engine, folder, api.settings, RUN_D, series("d-1", "temp", T0, 2, {0}))
    (alert_id,) = by_pair(engine).values()
    status, err = api.act("acknowledge", alert_id, body)
    assert status == 400 and err["error"]
    assert api.act("resolve", "al-0000000000000000", {"by": "a"})[0] == 404
