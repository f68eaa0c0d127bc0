"""Request and response values of the HTTP API, its errors, and the one place they become JSON responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from fleetscore.settings import Settings
from fleetscore.storage.base import BlobStore

log = logging.getLogger("fleetscore.api")
JSON = "application/json"


class ApiError(Exception):
    """A request the API refuses: `status` (400, 404, 409) and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


@dataclass(frozen=True)
class ApiRequest:
    """What a handler reads of an HTTP request: query parameters, route parameters, the body."""

    params: Mapping[str, str] = field(default_factory=dict)
    route: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class ApiResponse:
    """A handler's answer: status, body bytes and content type."""

    status: int
    body: bytes
    content_type: str = JSON

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> ApiResponse:
        return cls(status, json.dumps(doc, allow_nan=False, separators=(",", ":")).encode())

    def doc(self) -> Any:
        """The body parsed as JSON (tests, the local host)."""
        return json.loads(self.body)


@dataclass(frozen=True)
class ApiContext:
    """The services a handler uses."""

    engine: Engine
    store: BlobStore
    settings: Settings


Handler = Callable[[ApiContext, ApiRequest], Any]
"""A handler returns a JSON-able document (200) or an ApiResponse, or raises ApiError."""


def handle(handler: Handler, ctx: ApiContext, request: ApiRequest) -> ApiResponse:
    """Run `handler`: its document as 200 JSON; ApiError as its status with `{"error": message}`. Anything else
    propagates (the Functions host answers 500 and logs it)."""
    try:
        result = handler(ctx, request)
    except ApiError as exc:
        return ApiResponse.json({"error": exc.message}, exc.status)
    return result if isinstance(result, ApiResponse) else ApiResponse.json(result)
