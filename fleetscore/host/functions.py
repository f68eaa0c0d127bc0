"""The Functions app's functions, read once per process.

The azure-functions SDK lets `FunctionApp.get_functions()` run once per app object (a second call
raises on duplicate names), so the local host, the demo and the tests all go through this cache.
"""

from __future__ import annotations

import logging
from functools import lru_cache


class _NoAuthLevelNotice(logging.Filter):
    """The SDK logs on the root logger that HTTP auth levels do not apply to an app with no HTTP function."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Auth level is not applied" not in record.getMessage()


@lru_cache(maxsize=1)
def app_functions() -> dict:
    """`{function name: azure.functions.decorators.core.Function}` of `function_app.app`."""
    import function_app

    quiet = _NoAuthLevelNotice()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        return {f.get_function_name(): f for f in function_app.app.get_functions()}
    finally:
        root.removeFilter(quiet)
