"""The API's tests call the Functions app's HTTP functions with real `func.HttpRequest` objects against real
SQLite and PostgreSQL; every anomalous window opens an alert (ALERT_PERSISTENCE = 1/1) so the alerts are plain."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import azure.functions as func
import pytest

from fleetscore.context import Services, set_services
from fleetscore.settings import load_settings
from tests.helpers.appfuncs import function
from tests.helpers.webhook import Hook


@pytest.fixture(autouse=True)
def every_anomaly_alerts(monkeypatch):
    monkeypatch.setenv("ALERT_PERSISTENCE", "1/1")


class Api:
    """The app's HTTP functions over one database and blob folder, called as the Functions worker calls them."""

    def __init__(self, engine, folder, **env):
        url = engine.url.render_as_string(hide_password=False)
        self.settings = load_settings(FLEETSCORE_SQL_URL=url, FLEETSCORE_STORAGE=str(folder.root), **env)
        set_services(Services(self.settings))
        self.engine, self.store = engine, folder

    def call(self, name: str, method: str, path: str, *, params=None, route=None, body=None):
        """(status, JSON) of function `name` for a request; `body` a dict (JSON) or bytes."""
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        query = f"?{urlencode(params)}" if params else ""
        req = func.HttpRequest(method, f"http://localhost/api/{path}{query}", headers={}, params=params or {},
                               route_params=route or {}, body=data)
        resp = function(name).get_user_function()(req)
        assert isinstance(resp, func.HttpResponse) and resp.mimetype == "application/json"
        return resp.status_code, json.loads(resp.get_body())

    def alerts(self, **params):
        return self.call("api_list_alerts", "GET", "alerts", params={k: str(v) for k, v in params.items()})

    def alert(self, alert_id: str):
        return self.call("api_get_alert", "GET", f"alerts/{alert_id}", route={"alert_id": alert_id})

    def act(self, action: str, alert_id: str, body):
        return self.call(f"api_{action}_alert", "POST", f"alerts/{alert_id}/{action}", route={"alert_id": alert_id},
                         body=body)


@pytest.fixture
def api(engine, folder):
    return Api(engine, folder)


@pytest.fixture
def hook():
    """The shared webhook receiver (tests/helpers/webhook.py)."""
    receiver = Hook()
    yield receiver
    receiver.close()
