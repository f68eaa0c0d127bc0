"""Invoking a function as the Functions host does: one invocation id each, logged, counted, retried.

Each invocation is logged as the host logs it ("Executing 'Functions.x' (Reason=…, Id=…)") with its
invocation id in the log context; a function parameter named `context` receives an
:class:`InvocationContext`. A failed invocation is retried by the function's `@app.retry` policy; a retry
wait ends early when the host stops (that work is redelivered at the next start).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc

from fleetscore.clock import iso_offset, now_ms
from fleetscore.host.bindings import HostFunction
from fleetscore.logs import log_context

log = logging.getLogger("fleetscore.host")
RECENT = 50
"""How many finished invocations `/health` lists."""


class RetryContext(func_abc.RetryContext):
    """`context.retry_context` as the Python worker fills it (azure-functions-python-worker builds it from the
    host's `retry_context`): `retry_count` is 0 on the first try and equals `max_retry_count` on the last
    (0 when the function has no retry policy, -1 for retry forever)."""

    def __init__(self, retry_count: int, max_retry_count: int, exception: Any = None) -> None:
        self._retry_count, self._max_retry_count, self._exception = retry_count, max_retry_count, exception

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @property
    def max_retry_count(self) -> int:
        return self._max_retry_count

    @property
    def exception(self) -> Any:
        return self._exception


class InvocationContext(func.Context):
    """What a function parameter named `context` receives: an `azure.functions.Context`."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str,
                 retry_context: RetryContext) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._retry_context = retry_context
        self._thread_local_storage = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def retry_context(self) -> RetryContext:
        return self._retry_context

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def thread_local_storage(self) -> threading.local:
        return self._thread_local_storage


def invocation_context(function_name: str, *, retry_count: int = 0, max_retry_count: int = 0,
                       function_directory: str = ".") -> InvocationContext:
    """A context for calling a function outside the host (the demo, tests): a fresh invocation id; by default
    the only try of a function without a retry policy."""
    return InvocationContext(str(uuid.uuid4()), function_name, function_directory,
                             RetryContext(retry_count, max_retry_count))


class Invoker:
    """Runs the host's invocations and keeps their counts, the running ones and the last `RECENT`. Thread-safe.

    `stop` is the host's stop event: a retry wait returns as soon as it is set.
    """

    def __init__(self, functions: list[HostFunction], function_directory: str, stop: threading.Event) -> None:
        self.function_directory = function_directory
        self._stop = stop
        self._lock = threading.Lock()
        self._recent: deque[dict] = deque(maxlen=RECENT)
        self._stats = {f.name: {"invocations": 0, "failures": 0, "last": None} for f in functions}
        self._running: dict[str, dict] = {}

    def invoke(self, fn: HostFunction, make_args: Callable[[], dict], *, reason: str, retry: int = 0) -> str | None:
        """Run one invocation of `fn` with the arguments `make_args()` builds, logged under its own invocation
        id; returns None on success, else the error (`Type: message`)."""
        return self.call(fn, make_args, reason=reason, retry=retry)[1]

    def call(self, fn: HostFunction, make_args: Callable[[], dict], *, reason: str,
             retry: int = 0) -> tuple[Any, str | None]:
        """:meth:`invoke` that also returns what the function returned: (result, None) or (None, error)."""
        invocation_id = str(uuid.uuid4())
        started = now_ms()
        t0 = time.perf_counter()
        max_retry = fn.retry.max_retry_count if fn.retry else 0
        with log_context(invocation_id=invocation_id):
            log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)%s", fn.name, reason, invocation_id,
                     f" retry {retry} of {max_retry}" if retry else "")
            self._running[invocation_id] = {"function": fn.name, "id": invocation_id, "started": iso_offset(started)}
            try:
                result, error = self._call(fn, make_args, invocation_id, RetryContext(retry, max_retry), t0)
            finally:
                self._running.pop(invocation_id, None)
        self._record({"function": fn.name, "id": invocation_id, "reason": reason, "started": iso_offset(started),
                      "duration_ms": round((time.perf_counter() - t0) * 1000),
                      "status": "failed" if error else "succeeded", "error": error[:500] if error else None,
                      "retry": retry})
        return result, error

    def _call(self, fn: HostFunction, make_args: Callable[[], dict], invocation_id: str, retry: RetryContext,
              t0: float) -> tuple[Any, str | None]:
        """Call the function (awaiting a coroutine) and log the outcome; (its result, None) or (None, the error)."""
        try:
            kwargs = make_args()
            if fn.context_arg:
                kwargs[fn.context_arg] = InvocationContext(invocation_id, fn.name, self.function_directory, retry)
            result = fn.func(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(result)
        except Exception as exc:
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", fn.name, invocation_id,
                      (time.perf_counter() - t0) * 1000, exc_info=True)
            return None, f"{type(exc).__name__}: {exc}"
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", fn.name, invocation_id,
                 (time.perf_counter() - t0) * 1000)
        return result, None

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._recent.append(entry)
            stats = self._stats[entry["function"]]
            stats["invocations"] += 1
            stats["failures"] += 1 if entry["error"] else 0
            stats["last"] = entry

    def invoke_with_retry(self, fn: HostFunction, make_args: Callable[[], dict], *, reason: str) -> bool | None:
        """True on success, False when the retry policy is exhausted, None when the host stopped mid-wait."""
        retry = 0
        while True:
            if self.invoke(fn, make_args, reason=reason, retry=retry) is None:
                return True
            retry += 1
            if fn.retry is None or not fn.retry.allows(retry):
                return False
            delay = fn.retry.delay(retry)
            log.warning("Functions.%s: retry %d in %.1f s (%s)", fn.name, retry, delay, fn.retry.strategy)
            if self._stop.wait(delay):
                return None

    def snapshot(self) -> tuple[dict[str, dict], list[dict]]:
        """({function: its counts and last invocation}, the last invocations newest first), taken together."""
        with self._lock:
            return {k: dict(v) for k, v in self._stats.items()}, list(self._recent)[::-1]

    def running(self) -> list[dict]:
        """The invocations in progress: function, id, started."""
        return list(self._running.values())
