"""The local host's HTTP endpoint (loopback): events in, manual timer fires, health.

- `POST /events` (or `/events/<hub>`): the body is one event body (a JSON reading or array, as devices
  send), at most 1 MB; 202 with its sequence number, offset and enqueued time once it is durable. A larger
  body is refused by its Content-Length with 413 before any of it is read; what the client still sends is
  discarded (never buffered) for a bounded time, so a client that writes its whole body before reading the
  reply (Python's http.client) gets the 413 instead of a broken pipe. A client that sent
  `Expect: 100-continue` gets the 413 instead of the go-ahead and sends nothing.
- `POST /admin/timers/<function>` (also `/admin/functions/<function>`, like the host's admin API): body
  `{"slot": ISO}` (default the newest occurrence), `"wait": true` to answer (200) after the invocation.
- `GET /health` (also `/admin/host/status`): the host's status as JSON.
- `/<routePrefix>/…` (default `/api/…`), any method: the app's HTTP functions (:mod:`fleetscore.host.httptriggers`),
  bodies up to :data:`MAX_HTTP_BYTES`.

Errors are JSON `{"error": ...}`: 400 bad input, 404 unknown hub/function/route, 411 a chunked body,
413 too large, 503 the host is stopping or the hub's dispatcher died.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from fleetscore.clock import iso_offset
from fleetscore.host.httptriggers import HttpAnswer
from fleetscore.host.spool import SpoolRecord
from fleetscore.ingest.readings import InvalidReading, parse_ts

log = logging.getLogger("fleetscore.host")
MAX_EVENT_BYTES = 1024 * 1024
"""Event Hubs' largest publication, one event or a batch: 1 MB on the Standard, Premium and Dedicated tiers
(256 KB on Basic); the service rejects anything larger (Azure Event Hubs quotas and limits)."""
MAX_ADMIN_BYTES = 64 * 1024
MAX_HTTP_BYTES = 4 * 1024 * 1024
"""The largest request body the local host hands an HTTP function."""
DISCARD_SECONDS = 10.0
"""How long the rest of a refused body is read and thrown away before the connection is closed (s)."""
DISCARD_MAX_BYTES = 256 * 1024 * 1024
"""At most this much of a refused body is read and thrown away; past it the connection is closed."""
DISCARD_CHUNK = 64 * 1024


class HostApi(Protocol):
    """What the endpoint serves (a :class:`fleetscore.host.app.LocalHost`)."""

    stopping: bool

    def health(self) -> dict: ...

    def post_event(self, body: bytes, hub: str | None = None) -> SpoolRecord: ...

    def fire_timer(self, name: str, slot_ms: int | None = None, *, wait: bool = False) -> dict: ...

    def is_http_path(self, path: str) -> bool: ...

    def serve_http(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                   body: bytes) -> HttpAnswer | None: ...


class HostServer(ThreadingHTTPServer):
    """A threading HTTP server for `host`; closing it joins the request threads."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], host: HostApi) -> None:
        self.host = host
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: HostServer
    timeout = 30
    server_version = "fleetscore-host"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("http %s %s", self.address_string(), format % args)

    def _reply(self, status: int, doc: dict, *, close: bool = False) -> None:
        data = json.dumps(doc, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _body(self, limit: int) -> bytes | None:
        """The request body (at most `limit` bytes), or None after replying with the error."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length (no chunked bodies)"})
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
            return None
        if length > limit:
            self._refuse_too_large(length, limit)
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _refuse_too_large(self, length: int, limit: int) -> None:
        """413 for a body of `length` bytes (Content-Length) over `limit`, then the body thrown away unread."""
        self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": f"the body is {length} bytes; an event is at most {limit} bytes (Event Hubs' "
                              f"publication limit), send smaller events or split an array into several"},
                    close=True)
        if self.headers.get("Expect", "").lower() != "100-continue":  # such a client waits for our go-ahead
            self._discard(length)

    def _discard(self, length: int) -> None:
        """Read and drop up to `length` bytes of the request body, for at most DISCARD_SECONDS and
        DISCARD_MAX_BYTES: closing a socket with unread data resets the connection, and a client still
        writing its body would see a broken pipe instead of the reply."""
        deadline = time.monotonic() + DISCARD_SECONDS
        left = min(length, DISCARD_MAX_BYTES)
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(DISCARD_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:  # a timeout, or the client gave up
            return

    def _http_function(self) -> bool:
        """Serve the request with the app's HTTP functions when its path is below their route prefix."""
        path, _, query = self.path.partition("?")
        host = self.server.host
        if not host.is_http_path(path):
            return False
        if host.stopping:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the host is stopping"})
            return True
        body = self._body(MAX_HTTP_BYTES) if self.command not in ("GET", "HEAD") else b""
        if body is None:
            return True
        headers = {k: v for k, v in self.headers.items()}
        answer = host.serve_http(self.command, path, parse_qsl(query, keep_blank_values=True), headers, body)
        assert answer is not None
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)
        self.wfile.flush()
        return True

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if not self._http_function():
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.command} {self.path}"})

    def __getattr__(self, name: str) -> Any:
        """Any other method (DELETE, PATCH, TRACE, QUERY…) as PUT: an HTTP function's route answers it (405 when
        the route has other methods), anything else is a 404 — never http.server's 501 for an unknown method."""
        if name.startswith("do_"):
            return self.do_PUT
        raise AttributeError(name)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self._http_function():
            return
        if self.path.rstrip("/") in ("/health", "/admin/host/status"):
            self._reply(HTTPStatus.OK, self.server.host.health())
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self._http_function():
            return
        host = self.server.host
        path = self.path.split("?", 1)[0].rstrip("/")
        if host.stopping:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the host is stopping"})
            return
        if path == "/events":
            self._post_event(host, None)
        elif path.startswith("/events/"):
            self._post_event(host, unquote(path[len("/events/"):]))
        elif m := re.fullmatch(r"/admin/(?:timers|functions)/([^/]+)", path):
            self._post_timer(host, unquote(m.group(1)))
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})

    def _post_event(self, host: HostApi, hub: str | None) -> None:
        body = self._body(MAX_EVENT_BYTES)
        if body is None:
            return
        if not body.strip():
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "empty event body"})
            return
        try:
            record = host.post_event(body, hub)
        except KeyError as exc:
            self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc.args[0])})
            return
        except RuntimeError as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._reply(HTTPStatus.ACCEPTED, {"sequence_number": record.sequence_number, "offset": str(record.offset),
                                          "enqueued_time": iso_offset(record.enqueued_ms)})

    def _post_timer(self, host: HostApi, name: str) -> None:
        body = self._body(MAX_ADMIN_BYTES)
        if body is None:
            return
        try:
            doc = json.loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the body must be a JSON object")
            slot = doc.get("slot")
            slot_ms = parse_ts(slot, naive_tz=timezone.utc) if slot not in (None, "") else None
            result = host.fire_timer(name, slot_ms, wait=bool(doc.get("wait", False)))
        except KeyError as exc:
            self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc.args[0])})
            return
        except InvalidReading as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"slot: {exc.detail}"})
            return
        except ValueError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except RuntimeError as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._reply(HTTPStatus.OK if "wait" in doc and doc["wait"] else HTTPStatus.ACCEPTED, result)
