"""An Azure Functions app's functions, read once per app object.

The azure-functions SDK lets `FunctionApp.get_functions()` run once per app object (a second call
raises on duplicate names), so the local host, the demo and the tests all go through this cache.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_cache: dict[int, tuple[Any, dict]] = {}
_lock = threading.Lock()


class _NoAuthLevelNotice(logging.Filter):
    """The SDK logs on the root logger that HTTP auth levels do not apply to an app with no HTTP function."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Auth level is not applied" not in record.getMessage()


def app_functions(app: Any = None) -> dict:
    """`{function name: azure.functions.decorators.core.Function}` of `app` (default `function_app.app`)."""
    if app is None:
        import function_app

        app = function_app.app
    with _lock:
        hit = _cache.get(id(app))
        if hit is None or hit[0] is not app:
            quiet = _NoAuthLevelNotice()
            root = logging.getLogger()
            root.addFilter(quiet)
            try:
                hit = (app, {f.get_function_name(): f for f in app.get_functions()})
            finally:
                root.removeFilter(quiet)
            _cache[id(app)] = hit
        return hit[1]
