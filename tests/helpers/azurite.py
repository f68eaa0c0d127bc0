"""Pytest plugin: a real Azurite (from npm) for the session, and blob stores of both kinds.

- ``azurite``: starts ``node_modules/.bin/azurite-blob`` on a free loopback port with its data in a
  temp folder, waits until it answers, yields its connection string, stops it at the end. A missing
  Azurite fails the test with the command that installs it (``npm ci``); it never skips.
- ``make_store(kind)``: a fresh store, ``"folder"`` (an empty temp folder) or ``"azurite"`` (the
  session's Azurite with every blob deleted: the containers are fixed names, so tests share them).
- ``store``: ``make_store`` parametrized over both kinds, so one test runs against each.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetscore.storage.azure import AzureBlobStore, azurite_connection_string
from fleetscore.storage.base import BlobStore
from fleetscore.storage.folder import FolderStore
from tests.helpers import REPO

AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"
STORE_KINDS = ["folder", pytest.param("azurite", marks=pytest.mark.azurite)]
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    """True once the server gives any HTTP response (an unauthenticated request gets an error status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start(location: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    last_log = ""
    for _ in range(3):  # the free port can be taken between probing and Azurite binding it: retry
        port = _free_port()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
                 "--silent", "--skipApiVersionCheck", "--loose"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(f"http://127.0.0.1:{port}/devstoreaccount1?comp=list"):
                return proc, port
            time.sleep(0.1)
        _stop(proc)
        last_log = log_path.read_text(errors="replace")[-2000:]
        if "EADDRINUSE" not in last_log:
            break
    pytest.fail(f"Azurite did not start within {START_TIMEOUT:.0f}s ({AZURITE_BIN}); its output:\n{last_log}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[str]:
    """A running Azurite blob service for the session; yields its connection string."""
    if not os.access(AZURITE_BIN, os.X_OK):
        pytest.fail(f"Azurite is not installed ({AZURITE_BIN} is missing): run `npm ci` in {REPO} "
                    f"(or `make node`), then run the tests again")
    location = tmp_path_factory.mktemp("azurite")
    proc, port = _start(location, location.parent / f"{location.name}.log")
    try:
        yield azurite_connection_string(f"http://127.0.0.1:{port}/devstoreaccount1")
    finally:
        _stop(proc)


def clear_account(connection_string: str) -> None:
    """Delete every blob in every container of the account (the containers stay)."""
    service = AzureBlobStore(connection_string=connection_string).service_client
    for container in service.list_containers():
        client = service.get_container_client(container.name)
        names = [b.name for b in client.list_blobs()]
        for start in range(0, len(names), 256):
            client.delete_blobs(*names[start:start + 256], delete_snapshots="include")


@pytest.fixture
def make_store(request, tmp_path) -> Callable[[str], BlobStore]:
    """``make_store("folder" | "azurite")``: a store that starts empty for this test.

    Several azurite stores in one test share the account (the account is cleared only once).
    """
    state = {"folders": 0, "cleared": False}

    def make(kind: str) -> BlobStore:
        if kind == "folder":
            state["folders"] += 1
            return FolderStore(tmp_path / f"blobs-{state['folders']}")
        if kind == "azurite":
            conn = request.getfixturevalue("azurite")
            if not state["cleared"]:
                clear_account(conn)
                state["cleared"] = True
            return AzureBlobStore(connection_string=conn)
        raise ValueError(f"unknown store kind {kind!r} (folder or azurite)")

    return make


@pytest.fixture(params=STORE_KINDS)
def store(request, make_store) -> BlobStore:
    """The same test against a local folder and a real Azurite."""
    return make_store(request.param)
