"""Helpers shared by the local host's tests: settings for a temporary folder, an app built in a test, loopback
HTTP, waiting for a condition, `fleetscore up` as a subprocess (:class:`Up`)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import azure.functions as func

from fleetscore.settings import Settings, load_settings

YEARLY = "0 0 0 1 1 *"
"""A schedule whose next occurrence is months away: only past-due and manual fires happen in a test."""


def ms(text: str) -> int:
    """ISO-8601 (`Z` allowed) → epoch ms."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The first truthy value of `predicate()`, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def request(url: str, method: str, path: str, body: bytes | dict | None = None, timeout: float = 30.0):
    """(status, JSON reply) over a direct loopback connection (no proxy)."""
    m = re.fullmatch(r"http://([^:/]+):(\d+)", url)
    assert m, url
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def host_settings(tmp_path: Path, **extra) -> Settings:
    """Settings with a SQLite file and a blob folder under `tmp_path`."""
    return load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{tmp_path / 'fleet.db'}",
                         FLEETSCORE_STORAGE=str(tmp_path / "blobs"), **extra)


def app_with(decorate: Callable[[func.FunctionApp], None]) -> func.FunctionApp:
    """A new FunctionApp with the functions `decorate(app)` registers."""
    app = func.FunctionApp()
    decorate(app)
    return app


class Up:
    """`fleetscore up` as a real subprocess in its own process group, on a free port."""

    def __init__(self, tmp_path: Path, env: dict, name: str) -> None:
        self.log = tmp_path / f"{name}.log"
        exe = Path(sys.executable).with_name("fleetscore")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetscore.cli.main"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*cmd, "up", "--port", "0", "--state-dir", str(tmp_path / "host"),
                                          "--blob-poll-seconds", "0.2"], cwd=tmp_path, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        found = wait_for(lambda: self.proc.poll() is not None or re.search(
            r"Listening on (http://127\.0\.0\.1:\d+)", self.log.read_text(errors="replace")), 60, "the host to listen")
        assert self.proc.poll() is None, self.log.read_text()
        self.url = found.group(1)

    def get(self, path: str):
        return request(self.url, "GET", path)[1]

    def post(self, path: str, body):
        return request(self.url, "POST", path, body)[0]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the host and its scoring workers, as a crash would
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)
