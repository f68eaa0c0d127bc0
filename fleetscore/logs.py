"""Logging: the standard `logging` module, each line carrying the run id and invocation id.

`log_context(run_id=..., invocation_id=...)` sets them for the code below it (contextvars, so
threads and the local host's invocations keep their own). A filter masks every secret in force.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterable, Iterator

from fleetscore.settings import get_settings

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="-")
_invocation_id: contextvars.ContextVar[str] = contextvars.ContextVar("invocation_id", default="-")
FORMAT = "%(asctime)s %(levelname)s %(name)s [run=%(run_id)s inv=%(invocation_id)s] %(message)s"


@contextlib.contextmanager
def log_context(*, run_id: str | None = None, invocation_id: str | None = None) -> Iterator[None]:
    tokens = []
    if run_id is not None:
        tokens.append((_run_id, _run_id.set(run_id)))
    if invocation_id is not None:
        tokens.append((_invocation_id, _invocation_id.set(invocation_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds run_id and invocation_id to every record and masks secrets in its message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id.get()
        record.invocation_id = _invocation_id.get()
        if self.secrets:
            message = record.getMessage()
            masked = message
            for secret in self.secrets:
                masked = masked.replace(secret, "***")
            if masked != message:
                record.msg, record.args = masked, None
        return True


def configure_logging(level: int = logging.INFO, secrets: Iterable[str] | None = None) -> None:
    """Root handler with the context format; secrets default to those of the current settings."""
    if secrets is None:
        try:
            secrets = get_settings().secrets()
        except Exception:  # bad settings are reported by the command that needs them
            secrets = []
    root = logging.getLogger()
    context_filter = ContextFilter(secrets)
    for handler in list(root.handlers):
        if getattr(handler, "_fleetscore", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._fleetscore = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(context_filter)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("azure", "urllib3", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
