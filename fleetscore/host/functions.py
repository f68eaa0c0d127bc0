"""The Functions app's functions, read once per process.

The azure-functions SDK lets `FunctionApp.get_functions()` run once per app object (a second call
raises on duplicate names), so the local host, the demo and the tests all go through this cache.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def app_functions() -> dict:
    """`{function name: azure.functions.decorators.core.Function}` of `function_app.app`."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}
