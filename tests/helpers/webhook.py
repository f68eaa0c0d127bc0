"""A webhook receiver on 127.0.0.1 for the alert sinks' tests (a real HTTP server, never a mock)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Hook:
    """A webhook on 127.0.0.1 (`url`: `/hook` on `port`; 0 picks a free port, a closed hook's port opens it again).
    It answers `status` (503: down) to every POST and keeps each request's headers and JSON body, before it
    answers: all in `received`, those answered 2xx in `accepted`."""

    def __init__(self, port: int = 0):
        self.status = 200
        self.received: list[tuple[dict[str, str], Any]] = []
        self.accepted: list[tuple[dict[str, str], Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                request = (dict(self.headers), json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = hook.status
                hook.received.append(request)
                if 200 <= status < 300:
                    hook.accepted.append(request)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
