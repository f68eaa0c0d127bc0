"""The alerts page's function (`functions/ui.py`) called as the Functions worker calls it, with real `func.HttpRequest`
objects: its binding, the page and its files with their media types and security headers, no key in anything it
serves, 404 for other names."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from fleetscore import ui
from tests.helpers.appfuncs import function


def get(path: str, file: str | None = None) -> func.HttpResponse:
    req = func.HttpRequest("GET", f"https://app.example.net{path}", headers={}, params={},
                           route_params={"file": file} if file is not None else {}, body=b"")
    resp = function("alerts_page").get_user_function()(req)
    assert isinstance(resp, func.HttpResponse)
    return resp


def test_binding_is_an_anonymous_get_below_the_route_prefix():
    trigger, output = json.loads(function("alerts_page").get_function_json())["bindings"]
    assert trigger == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": ["GET"],
                       "authLevel": "ANONYMOUS", "route": "ui/{file?}"}
    assert output == {"direction": "OUT", "type": "http", "name": "$return"}


def test_the_page_names_its_files_under_the_path_it_was_served_at(monkeypatch):
    monkeypatch.setenv("FLEETSCORE_API_KEY", "a-secret-key")
    for path, base in (("/api/ui", "/api/ui"), ("/api/ui/", "/api/ui"), ("/fleet/ui", "/fleet/ui")):
        resp = get(path)
        body = resp.get_body().decode()
        assert resp.status_code == 200 and resp.mimetype == "text/html"
        assert f'<script src="{base}/alerts.js" defer>' in body and f'href="{base}/alerts.css"' in body
        assert "%BASE%" not in body and "a-secret-key" not in body
        assert "<script>" not in body  # no inline script: the CSP allows only this origin's files
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # a path of other characters is never written into the page: its files are then named from the root
    assert '<script src="/alerts.js" defer>' in get("/api/ui%22onload=x").get_body().decode()
    assert ui.page_base('/api/ui"><script>') == ""


@pytest.mark.parametrize(("file", "mimetype"), [("alerts.js", "text/javascript"), ("alerts.css", "text/css"),
                                                ("alerts.html", "text/html")])
def test_the_files_are_served_with_their_media_types(file, mimetype):
    resp = get(f"/api/ui/{file}", file)
    assert resp.status_code == 200 and resp.mimetype == mimetype and resp.charset == "utf-8"
    assert resp.get_body() and "Content-Security-Policy" in resp.headers


def test_the_script_never_writes_markup_from_data():
    script = get("/api/ui/alerts.js", "alerts.js").get_body().decode()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    assert "x-functions-key" in script and "sessionStorage" in script


@pytest.mark.parametrize("file", ["index.html", "..%2F__init__.py", "__init__.py", "alerts.JS"])
def test_other_names_are_404(file):
    resp = get(f"/api/ui/{file}", file)
    assert resp.status_code == 404 and b"alerts.html" in resp.get_body()
