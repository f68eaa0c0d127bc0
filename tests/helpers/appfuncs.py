"""The Functions app's functions, indexed once (the SDK lets `get_functions()` run once per app)."""

from __future__ import annotations

from fleetscore.host.functions import app_functions


def functions() -> dict:
    return app_functions()


def function(name: str):
    found = functions()
    assert name in found, f"no function {name!r} in function_app (have {sorted(found)})"
    return found[name]
