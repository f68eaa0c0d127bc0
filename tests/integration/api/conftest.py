"""The API's tests call the Functions app's HTTP functions with real `func.HttpRequest` objects against real
SQLite and PostgreSQL; every anomalous window opens an alert (ALERT_PERSISTENCE = 1/1) so the alerts are plain."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import azure.functions as func
import pytest

from fleetscore.context import Services, set_services
from fleetscore.settings import load_settings
from tests.helpers.appfuncs import function


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


class Hook:
    """A webhook receiver on 127.0.0.1 recording (alert_id, revision, state) of what it was sent."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.got.append((doc["alert_id"], doc["revision"], doc["state"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    receiver = Hook()
    yield receiver
    receiver.close()
