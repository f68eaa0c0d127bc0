"""The host's lifecycle: one host per state folder, stop during a retry wait, the scoring forkserver."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import azure.functions as func
import pytest

from fleetscore.host.app import LocalHost
from fleetscore.host.bindings import HostConfigError
from tests.helpers import REPO
from tests.helpers.host import YEARLY, app_with, host_settings, request, wait_for


def test_one_host_per_state_folder(tmp_path):
    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def tick(timer: func.TimerRequest) -> None: ...

    first = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host").start()
    try:
        second = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host")
        with pytest.raises(HostConfigError, match="another local host"):
            second.start()
    finally:
        first.stop()


def test_stop_does_not_wait_out_an_admin_fire_in_its_retry_wait(tmp_path):
    calls: list[int] = []

    def timers(app):
        @app.function_name("tick")
        @app.retry(strategy="fixed_delay", max_retry_count="1", delay_interval="00:00:30")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, use_monitor=False)
        def tick(timer: func.TimerRequest) -> None:
            calls.append(1)
            raise RuntimeError("down")

    host = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host").start()
    replies: list = []
    firing = threading.Thread(target=lambda: replies.append(
        request(host.url, "POST", "/admin/timers/tick", {"wait": True}, timeout=120)), daemon=True)
    firing.start()
    try:
        wait_for(lambda: calls, 10, "the first attempt")
        time.sleep(0.3)  # the request's thread is in the 30 s retry wait now
    finally:
        t0 = time.monotonic()
        host.stop()
        took = time.monotonic() - t0
    firing.join(10)
    assert took < 10, f"stop() took {took:.1f} s"
    assert len(replies) == 1 and replies[0][0] == 200 and replies[0][1]["status"] == "abandoned"
    assert calls == [1]


FORKSERVER_CHECK = """
import json, signal, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver

import azure.functions as func

from fleetscore.backends.local import _pool_context
from fleetscore.host.app import LocalHost
from fleetscore.settings import load_settings

app = func.FunctionApp()


@app.function_name("tick")
@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", use_monitor=False)
def tick(timer: func.TimerRequest) -> None: ...


folder = sys.argv[1]
settings = load_settings(FLEETSCORE_SQL_URL=f"sqlite:///{folder}/fleet.db", FLEETSCORE_STORAGE=f"{folder}/blobs",
                         SCORING_BACKEND="local")
host = LocalHost(settings, app=app, state_dir=f"{folder}/host", shield_workers=True).start()
try:
    pid = forkserver._forkserver._forkserver_pid  # started by start(), before any worker is needed
    ctx = _pool_context()
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        worker_sigint = pool.submit(signal.getsignal, signal.SIGINT).result()
    print(json.dumps({"method": ctx.get_start_method(), "pid": pid, "same_server": pid ==
                      forkserver._forkserver._forkserver_pid, "worker_sigint": str(worker_sigint)}))
finally:
    host.stop()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the forkserver's signal mask in /proc")
def test_up_starts_the_scoring_forkserver_with_sigint_ignored(tmp_path):
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "none.json")}
    done = subprocess.run([sys.executable, "-c", FORKSERVER_CHECK, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["pid"] is not None, "the host did not start the forkserver"
    assert out["method"] == "forkserver" and out["same_server"]  # the local backend reuses it
    assert out["worker_sigint"] == str(signal.SIG_IGN)  # Ctrl-C reaches the host alone
