"""HTTP triggers on the local host: `/<routePrefix>/<route>` to the function whose route template matches, with the
key check the Functions host makes, the request as a real `func.HttpRequest` and its `func.HttpResponse` back.

Keys: a function whose `authLevel` is not `anonymous` needs the key, sent as on Azure in the `x-functions-key`
header or the `code` query parameter; locally the one key is FLEETSCORE_API_KEY. Without it the local host serves
no HTTP function at all (503 with a message saying so): no key, no API. A missing or wrong key is a 401; a path
below the prefix that no route matches a 404, a route with another method a 405; a function that raises a 500
(logged, as the Functions host does); a function that returns None a 204.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import azure.functions as func

from fleetscore.host.bindings import HostFunction
from fleetscore.host.invocation import Invoker

log = logging.getLogger("fleetscore.host")
KEY_HEADER, KEY_PARAM = "x-functions-key", "code"
"""Where a caller puts a function key (Azure Functions HTTP trigger docs, "API key authorization")."""


@dataclass(frozen=True)
class HttpAnswer:
    """What the local host sends back for a request to an HTTP function."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> HttpAnswer:
        return cls(status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json", **headers})


def _specificity(fn: HostFunction) -> tuple[int, int]:
    """Literal segments first, as ASP.NET Core routing prefers them over parameters."""
    segments = fn.route.split("/") if fn.route else []
    return -sum(1 for s in segments if "{" not in s), len(segments)


class HttpTriggers:
    """The HTTP functions of an app, routed below `route_prefix`, keyed with `api_key` (None: no API)."""

    def __init__(self, functions: list[HostFunction], invoker: Invoker, *, api_key: str | None,
                 route_prefix: str) -> None:
        self.functions = sorted(functions, key=_specificity)
        self.invoker = invoker
        self.api_key = api_key or None
        self.prefix = route_prefix.strip("/")

    def below_prefix(self, path: str) -> str | None:
        """The path below the route prefix (no leading slash), None when `path` is not under it."""
        if not self.functions:
            return None
        path = path.lstrip("/")
        if not self.prefix:
            return path
        head, sep, rest = path.partition("/")
        return rest if head.lower() == self.prefix.lower() and (sep or not rest) else None

    def health(self, fn: HostFunction) -> dict[str, Any]:
        return {"route": f"/{self.prefix}/{fn.route}" if self.prefix else f"/{fn.route}", "methods": list(fn.methods),
                "auth_level": fn.auth_level, "served": self.api_key is not None}

    def serve(self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
              body: bytes, base_url: str) -> HttpAnswer | None:
        """Answer a request (path percent-encoded, without the query); None when `path` is not below the prefix."""
        rest = self.below_prefix(path)
        if rest is None:
            return None
        if self.api_key is None:
            return HttpAnswer.error(503, "the HTTP API is off: set FLEETSCORE_API_KEY to serve it under "
                                         "`fleetscore up` (callers send it as x-functions-key or ?code=)")
        found = self._route(method.upper(), rest)
        if isinstance(found, HttpAnswer):
            return found
        fn, route_params = found
        if fn.auth_level != "anonymous" and not self._key_ok(query, headers):
            return HttpAnswer.error(401, "missing or wrong key: send it in the x-functions-key header or ?code=")
        params: dict[str, str] = {}
        for name, value in query:
            params.setdefault(name, value)
        url = base_url + path + ("?" + urlencode(list(query)) if query else "")
        request = func.HttpRequest(method.upper(), url, headers=dict(headers), params=params,
                                   route_params=route_params, body=body)
        result, error = self.invoker.call(fn, lambda: {fn.arg_name: request}, reason="HTTP request")
        if error is not None:
            return HttpAnswer.error(500, f"the function {fn.name} failed (see the host's log)")
        return _answer(result)

    def _route(self, method: str, rest: str) -> tuple[HostFunction, dict[str, str]] | HttpAnswer:
        allowed: list[str] = []
        for fn in self.functions:
            m = fn.pattern.fullmatch(rest) if fn.pattern is not None else None
            if m is None:
                continue
            if fn.methods and method not in fn.methods:
                allowed += fn.methods
                continue
            return fn, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        if allowed:
            return HttpAnswer.error(405, f"{method} is not allowed here", Allow=", ".join(dict.fromkeys(allowed)))
        return HttpAnswer.error(404, f"no HTTP function has the route /{self.prefix}/{rest}")

    def _key_ok(self, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> bool:
        sent = [v for k, v in headers.items() if k.lower() == KEY_HEADER] + [v for k, v in query if k == KEY_PARAM]
        assert self.api_key is not None
        return any(hmac.compare_digest(s.encode(), self.api_key.encode()) for s in sent)


def _answer(result: Any) -> HttpAnswer:
    """A function's return value as the Functions host sends it: HttpResponse as is, None as 204, text as 200."""
    if result is None:
        return HttpAnswer(204)
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items()}
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = f"{result.mimetype}; charset={result.charset}"
        return HttpAnswer(result.status_code, result.get_body(), headers)
    if isinstance(result, (str, bytes)):
        return HttpAnswer(200, result.encode() if isinstance(result, str) else result, {"Content-Type": "text/plain"})
    return HttpAnswer.error(500, f"the function returned a {type(result).__name__}, not an HttpResponse")
