"""The one loader of the Functions app: its functions, read once per app object, and its folder.

The azure-functions SDK lets `FunctionApp.get_functions()` run once per app object (a second call
raises on duplicate names), so the local host, the demo and the tests all go through this cache.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

_cache: dict[int, tuple[Any, dict]] = {}
_lock = threading.Lock()


class _NoAuthLevelNotice(logging.Filter):
    """The SDK logs on the root logger that HTTP auth levels do not apply to an app with no HTTP function."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Auth level is not applied" not in record.getMessage()


def _function_app() -> ModuleType:
    """`function_app`, imported on first use: importing it registers every blueprint (the outermost layer)."""
    import function_app

    return function_app


def app_folder() -> Path:
    """The Functions app's root folder (where function_app.py and host.json are)."""
    return Path(_function_app().__file__).resolve().parent


def app_functions(app: Any = None) -> dict:
    """`{function name: azure.functions.decorators.core.Function}` of `app` (default `function_app.app`)."""
    if app is None:
        app = _function_app().app
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
