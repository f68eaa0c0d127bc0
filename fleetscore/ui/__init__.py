"""The alerts page: one static HTML page, its script and its style sheet (package data beside this module), served
by `functions/ui.py` at `GET /<routePrefix>/ui` (anonymous: it holds no data and no key).

The page asks its user for a key and sends it as `x-functions-key` on every call to the HTTP API
(:mod:`fleetscore.api`), so no key is ever part of what is served here. The chart of an alert is drawn in the browser
as inline SVG from `GET /api/pairs/{device}/{sensor}/windows`: no image rendering on the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

PAGE = "alerts.html"
ASSETS = {PAGE: "text/html", "alerts.js": "text/javascript", "alerts.css": "text/css"}
"""The files served, with their media types (charset utf-8)."""
BASE_MARK = "%BASE%"
"""Where the page names the URL path it was served at, so its assets and the API resolve under any routePrefix."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Only this origin's script, style and API; no inline script; never framed (the page acts with a key)."""
_SAFE_PATH = re.compile(r"/[A-Za-z0-9/_.~-]{0,200}")


@dataclass(frozen=True)
class Asset:
    """One answer of the page's function: status, body, media type and headers."""

    status: int
    body: bytes
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


def page_base(path: str) -> str:
    """The URL path of the page (`/api/ui`) from the path it was requested at (`/api/ui`, `/api/ui/`,
    `/api/ui/alerts.js`); "" (relative) for a path of other characters."""
    path = path.rstrip("/")
    head, _, last = path.rpartition("/")
    base = head if last in ASSETS else path
    return base if _SAFE_PATH.fullmatch(base) else ""


def asset(name: str | None, path: str) -> Asset:
    """The page (`name` empty) or one of its files, for a request to URL path `path`; 404 for anything else."""
    name = name or PAGE
    if name not in ASSETS:
        return Asset(404, f"no file {name!r} here: the alerts page is {PAGE}".encode())
    body = resources.files(__name__).joinpath(name).read_bytes()
    if name == PAGE:
        body = body.replace(BASE_MARK.encode(), page_base(path).encode())
    return Asset(200, body, ASSETS[name], dict(SECURITY_HEADERS))
