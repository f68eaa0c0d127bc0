"""Engines for Azure SQL: what the engine hands pyodbc when it opens a connection, with no server.

A recorder registered after the engine's own `do_connect` listener sees the arguments `pyodbc.connect` would
get, then stops the connect; the credential is a stand-in with azure-identity's `get_token` shape."""

from __future__ import annotations

import struct
import threading
import time
from collections import namedtuple

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.db.engine import (
    AZURE_SQL_SCOPE,
    MSSQL_POOL_RECYCLE_S,
    SQL_COPT_SS_ACCESS_TOKEN,
    TOKEN_REFRESH_MARGIN_S,
    access_token_struct,
    uses_entra_token,
)

AZURE_URL = "mssql+pyodbc://@fleet.database.windows.net/fleetscore?driver=ODBC+Driver+18+for+SQL+Server"
AccessToken = namedtuple("AccessToken", "token expires_on")  # azure.core.credentials.AccessToken's fields


class Credential:
    """Hands out `tok-1`, `tok-2`, ... each valid for `lifetime_s` seconds; records the scopes asked for."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"tok-{len(self.scopes)}", int(time.time() + self.lifetime_s))


class Stop(Exception):
    """Raised by the recorder instead of calling pyodbc.connect."""


def handed_to_pyodbc(engine: sa.Engine) -> tuple[list, dict]:
    """Open a connection; return the (cargs, cparams) pyodbc.connect would receive."""
    seen: list[tuple[list, dict]] = []

    @sa.event.listens_for(engine, "do_connect")
    def record(_dialect, _record, cargs, cparams):
        seen.append((list(cargs), dict(cparams)))
        raise Stop

    try:
        with pytest.raises(Stop):
            engine.connect()
    finally:
        sa.event.remove(engine, "do_connect", record)
    return seen[0]


def token_of(attr: bytes) -> str:
    (size,) = struct.unpack_from("<I", attr)
    assert size == len(attr) - 4
    return attr[4:].decode("utf-16-le")


def test_azure_sql_url_logs_in_with_an_access_token_and_no_trusted_connection():
    credential = Credential(lifetime_s=3600)
    engine = db.create_db_engine(AZURE_URL, credential=credential)
    cargs, cparams = handed_to_pyodbc(engine)
    connection_string = cargs[0]
    assert "trusted_connection" not in connection_string.lower()
    assert "authentication" not in connection_string.lower() and "uid=" not in connection_string.lower()
    assert "Server=fleet.database.windows.net" in connection_string
    assert "DRIVER={ODBC Driver 18 for SQL Server}" in connection_string
    attr = cparams["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN]
    assert attr == struct.pack("<I", 10) + b"t\0o\0k\0-\x001\0"  # length, then each byte of the token + a zero
    assert token_of(attr) == "tok-1"
    assert credential.scopes == [(AZURE_SQL_SCOPE,)]


def test_token_is_reused_while_valid_and_fetched_again_near_expiry():
    lasting = Credential(lifetime_s=3600)
    engine = db.create_db_engine(AZURE_URL, credential=lasting)
    first = [token_of(handed_to_pyodbc(engine)[1]["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN]) for _ in range(3)]
    assert first == ["tok-1"] * 3 and len(lasting.scopes) == 1

    expiring = Credential(lifetime_s=TOKEN_REFRESH_MARGIN_S - 1)  # each token is already inside the margin
    engine = db.create_db_engine(AZURE_URL, credential=expiring)
    tokens = [token_of(handed_to_pyodbc(engine)[1]["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN]) for _ in range(2)]
    assert tokens == ["tok-1", "tok-2"]


def test_mssql_pool_checks_and_recycles_connections_below_the_token_lifetime():
    engine = db.create_db_engine(AZURE_URL, credential=Credential(lifetime_s=3600))
    assert engine.pool._pre_ping is True
    assert 0 < engine.pool._recycle == MSSQL_POOL_RECYCLE_S < 3600  # an Entra token lives 60-90 minutes


@pytest.mark.parametrize("url", [
    AZURE_URL + "&Authentication=ActiveDirectoryMsi",  # the form docs/AZURE.md used to give
    AZURE_URL + "&authentication=ActiveDirectoryDefault",
])
def test_url_with_its_own_authentication_gets_no_token_and_no_trusted_connection(url):
    credential = Credential(lifetime_s=3600)
    engine = db.create_db_engine(url, credential=credential)
    assert not uses_entra_token(engine.url)
    cargs, cparams = handed_to_pyodbc(engine)
    assert "trusted_connection" not in cargs[0].lower()
    assert "Authentication=ActiveDirectory" in cargs[0]
    assert "attrs_before" not in cparams and credential.scopes == []


@pytest.mark.parametrize("url", [
    "mssql+pyodbc://user:secret@fleet.database.windows.net/fleetscore?driver=ODBC+Driver+18+for+SQL+Server",
    AZURE_URL + "&Trusted_Connection=yes",
    "mssql+pyodbc://@my-dsn",
    "postgresql+psycopg://postgres@127.0.0.1/test",
    "sqlite:///fleet.db",
])
def test_urls_that_choose_their_login_do_not_use_tokens(url):
    assert not uses_entra_token(sa.engine.make_url(url))


def test_access_token_struct_matches_the_drivers_layout():
    token = "eyJ0eXAiOiJKV1Qi"
    attr = access_token_struct(token)
    expanded = b"".join(bytes([b, 0]) for b in token.encode("ascii"))  # Microsoft's loop, byte by byte
    assert attr == len(expanded).to_bytes(4, "little") + expanded


def test_connections_switching_a_new_sqlite_file_to_wal_at_once_all_connect(tmp_path):
    """Connections that switch a new file to WAL at the same moment: SQLite refuses one of them at once
    ("database is locked", no busy timeout), which used to fail that process's first query (a migration of two
    processes at once did). Each trial is a new file and 8 threads let go together; without the retry this test
    failed in 6 runs of 6 on a 2-core VM."""
    failures: list[BaseException] = []
    for trial in range(30):
        url = f"sqlite:///{tmp_path / f'fresh-{trial}.db'}"
        start = threading.Barrier(8)

        def connect(url: str = url, start: threading.Barrier = start) -> None:
            engine = db.create_db_engine(url)
            start.wait()
            try:
                with engine.connect() as conn:
                    assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                failures.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=connect) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
