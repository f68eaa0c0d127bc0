"""Shared fixtures: real SQLite files and a real PostgreSQL database per test session."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.context import set_services
from fleetscore.settings import load_settings
from fleetscore.storage.folder import FolderStore

pytest_plugins = ["tests.helpers.azurite"]

PG_ADMIN_URL = os.environ.get("FLEETSCORE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """No test sees the developer's local.settings.json or another test's services."""
    monkeypatch.setenv("FLEETSCORE_LOCAL_SETTINGS", str(tmp_path / "no-local.settings.json"))
    from fleetscore.settings import get_settings

    get_settings.cache_clear()
    yield
    set_services(None)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database on the local server for this session (fails if the server is down)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"fleetscore_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (make test starts it): {exc}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = db.create_db_engine(sqlite_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url):
    engine = db.create_db_engine(pg_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in db.metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names}"))
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request):
    """The same test against a real SQLite file and the real PostgreSQL server."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


@pytest.fixture
def folder(tmp_path):
    """A blob store in a temporary folder."""
    return FolderStore(tmp_path / "blobs")


@pytest.fixture
def settings():
    """The settings of the test's environment (defaults unless the test set variables first)."""
    return load_settings()
