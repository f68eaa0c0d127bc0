"""Process-wide services: settings, the SQL engine and the blob store, each created once and lazily.

Azure SDK clients are created only when their service is configured, so the local default imports
none of the heavy ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.engine import Engine

from fleetscore import db, telemetry
from fleetscore.settings import Settings, get_settings
from fleetscore.storage import open_store
from fleetscore.storage.base import BlobStore


@dataclass
class Services:
    """What the functions and the CLI share; `upgrade` creates the schema on first use."""

    settings: Settings
    upgrade_schema: bool = True

    def __post_init__(self) -> None:
        cs = self.settings.applicationinsights_connection_string
        telemetry.configure(cs.get_secret_value() if cs is not None else None)  # once per process; else nothing

    @cached_property
    def engine(self) -> Engine:
        engine = db.create_db_engine(self.settings.sql_url)
        if self.upgrade_schema:
            db.upgrade(engine)
        return engine

    @cached_property
    def store(self) -> BlobStore:
        return open_store(self.settings.storage)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


_services: Services | None = None
_services_lock = threading.Lock()


def get_services() -> Services:
    """The services of this process (the Functions worker keeps one per process)."""
    global _services
    with _services_lock:
        if _services is None:
            _services = Services(get_settings())
        return _services


def set_services(services: Services | None) -> None:
    """Replace the process's services (the CLI with explicit settings, and tests)."""
    global _services
    with _services_lock:
        if _services is not None and _services is not services:
            _services.close()
        _services = services


def forget_services(services: Services) -> None:
    """Unset the process's services if they are `services` (a local host stopping); the caller closes them."""
    global _services
    with _services_lock:
        if _services is services:
            _services = None
