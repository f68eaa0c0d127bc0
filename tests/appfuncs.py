"""The Functions app's functions, indexed once (the SDK lets `get_functions()` run once per app)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def functions() -> dict:
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def function(name: str):
    found = functions()
    assert name in found, f"no function {name!r} in function_app (have {sorted(found)})"
    return found[name]
