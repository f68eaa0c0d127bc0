"""The alert outbox on real SQLite and PostgreSQL, a folder store and a real process: a kill between the commit
and the blob writes, a hanging webhook, the timer function that drains it, `fleetscore alerts redeliver`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import sqlalchemy as sa
from azure.functions.timer import TimerRequest
from typer.testing import CliRunner

from fleetscore import db
from fleetscore.alerts import outbox
from fleetscore.alerts.documents import alert_document
from fleetscore.cli.alerts import alerts_app
from fleetscore.context import Services, set_services
from fleetscore.predictions.index import index_prediction_file
from fleetscore.settings import load_settings
from tests.helpers import REPO
from tests.helpers.appfuncs import function
from tests.helpers.fleet import RUN_A, RUN_B, RUN_C, T0, W, blob_doc, fire, prediction_file, rows_of, series
from tests.helpers.webhook import Hook

KILLED_INDEX = textwrap.dedent("""
    import os, signal, sys
    from fleetscore import db
    from fleetscore.predictions.index import index_prediction_file
    from fleetscore.settings import load_settings
    from fleetscore.storage.folder import FolderStore

    url, root, key = sys.argv[1:4]
    store = FolderStore(root)
    real_put = store.put

    def put(name, data, **kw):
        if name.startswith("alerts/"):  # the alert is committed; its document is next: die here
            os.kill(os.getpid(), signal.SIGKILL)
        return real_put(name, data, **kw)

    store.put = put
    index_prediction_file(db.create_db_engine(url), store, load_settings(), key)
""")


def index_killed_before_documents(engine, folder, run_id: str, rows: list[dict]) -> None:
    """Index a prediction file in a real process that is SIGKILLed at its first alert document write."""
    key = f"predictions/{run_id}/part-00000.parquet"
    folder.put(key, prediction_file(rows, run_id))
    url = engine.url.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-c", KILLED_INDEX, url, str(folder.root), key], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-3000:]


def documents_present(engine, folder) -> bool:
    """Every alert revision in SQL has its document, and it is that revision."""
    alerts = rows_of(engine, db.alerts)
    return bool(alerts) and all(folder.exists(_key(a)) and blob_doc(folder, a) == alert_document(a)
                                and a["document_revision"] == a["revision"] for a in alerts)


def _key(alert) -> str:
    from fleetscore.storage.paths import alert_document_key

    return alert_document_key(alert["alert_id"], alert["first_window_end"])


def test_documents_lost_to_a_kill_are_written_by_the_next_index_and_by_redeliver(engine, folder, settings,
                                                                                  monkeypatch):
    """Issue 14, failure 2: a kill after the index's commit left alerts without documents and nothing wrote
    them later; now every later indexed file, and `fleetscore alerts redeliver`, catches them up."""
    index_killed_before_documents(engine, folder, RUN_A, series("d-1", "temp", T0, 4, {1, 2}) +
                                  series("d-2", "temp", T0, 4, {3}))
    lost = rows_of(engine, db.alerts)
    assert len(lost) == 2 and not any(folder.exists(_key(a)) for a in lost)
    assert all(a["document_revision"] == 0 < a["revision"] for a in lost)  # pending in the outbox

    quiet = fire(engine, folder, settings, RUN_B, series("d-9", "temp", T0, 4))  # a file with no alert of its own
    assert quiet.alerts_changed == 0 and quiet.documents == 2
    assert documents_present(engine, folder)

    index_killed_before_documents(engine, folder, RUN_C, series("d-3", "rh", T0, 2, {0}))
    assert not documents_present(engine, folder)
    for key, value in {"FLEETSCORE_SQL_URL": engine.url.render_as_string(hide_password=False),
                       "FLEETSCORE_STORAGE": str(folder.root)}.items():
        monkeypatch.setenv(key, value)
    done = CliRunner().invoke(alerts_app, ["redeliver"])
    assert done.exit_code == 0, done.output
    assert "wrote 1 alert document(s)" in done.output
    assert documents_present(engine, folder)
    assert "wrote 0 alert document(s)" in CliRunner().invoke(alerts_app, ["redeliver"]).output
    again = CliRunner().invoke(alerts_app, ["redeliver", "--blobs"])  # every document rewritten, on request
    assert "wrote 3 alert document(s)" in again.output and documents_present(engine, folder)


class HangingHook:
    """A webhook on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_a_hanging_webhook_never_holds_up_indexing_and_a_drain_ends_by_its_deadline(engine, folder, monkeypatch):
    """Issue 14, failure 7: indexing made the webhook POSTs (≈32 s per file against a hanging endpoint); now it
    writes documents only, and a drain of the outbox stops at its deadline with the alert still pending."""
    hook = HangingHook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{hook.port}/hook")
    settings = load_settings()
    try:
        t0 = time.monotonic()
        fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 4, {1}))
        assert time.monotonic() - t0 < 3.0 and hook.connections == []
        assert documents_present(engine, folder)
        t0 = time.monotonic()
        result = outbox.drain(engine, folder, settings, seconds=2.0)
        took = time.monotonic() - t0
        assert 1.0 < took < 4.0 and len(hook.connections) >= 1
        assert result.delivered == 0 and result.documents == 0
        (alert,) = rows_of(engine, db.alerts)
        assert alert["delivered_revision"] == 0 < alert["revision"]  # still pending: the next round sends it
    finally:
        hook.close()


def test_the_timer_function_drains_the_outbox(tmp_path, monkeypatch):
    """The `alert_outbox` timer function through the SDK's types: its binding, and a fire that writes the
    pending documents (here: left by a crash) and delivers to the webhook."""
    spec = json.loads(function("alert_outbox").get_function_json())
    (binding,) = spec["bindings"]
    assert binding["type"] == "timerTrigger" and binding["direction"] == "IN" and binding["name"] == "timer"
    assert binding["schedule"] == outbox.SCHEDULE == "0 * * * * *"
    assert binding["useMonitor"] is False and binding.get("runOnStartup", False) is False

    hook = Hook()
    for key, value in {"FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
                       "FLEETSCORE_STORAGE": str(tmp_path / "blobs"),
                       "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.port}/hook"}.items():
        monkeypatch.setenv(key, value)
    services = Services(load_settings())
    set_services(services)
    try:
        fire(services.engine, services.store, services.settings, RUN_A, series("d-1", "temp", T0 + 8 * W, 2, {0}))
        with services.engine.begin() as conn:  # as if the process died before writing the document
            conn.execute(sa.update(db.alerts).values(document_revision=0))
        assert not documents_present(services.engine, services.store) and hook.accepted == []
        function("alert_outbox").get_user_function()(TimerRequest(past_due=False))
        assert documents_present(services.engine, services.store)
        (alert,) = rows_of(services.engine, db.alerts)
        assert [(body["alert_id"], body["revision"]) for _, body in hook.accepted] == [(alert["alert_id"], 1)]
        assert alert["delivered_revision"] == 1
    finally:
        hook.close()
        services.close()


def test_a_slow_writer_of_an_old_revision_cannot_overwrite_a_newer_document(sqlite_engine, folder, settings):
    """Writers of one alert's document take turns under its row lock and record the revision they wrote: an
    index that changes the alert while an outbox round holds it waits, and writes the newer document after."""
    fire(sqlite_engine, folder, settings, RUN_A, series("d-1", "temp", T0, 2, {1}))
    (alert,) = rows_of(sqlite_engine, db.alerts)
    with sqlite_engine.begin() as conn:
        conn.execute(sa.update(db.alerts).values(document_revision=0))
    entered, release = threading.Event(), threading.Event()
    real_put = folder.put

    def slow_put(key, data, **kw):
        if key.startswith("alerts/") and not entered.is_set():
            entered.set()
            release.wait(10)
        return real_put(key, data, **kw)

    folder.put = slow_put
    round_ = threading.Thread(target=outbox.write_documents, args=(sqlite_engine, folder))
    round_.start()
    assert entered.wait(10)
    later = threading.Thread(target=index_prediction_file, args=(
        sqlite_engine, folder, settings, f"predictions/{RUN_B}/part-00000.parquet"))
    folder.put(f"predictions/{RUN_B}/part-00000.parquet",
               prediction_file(series("d-1", "temp", T0 + 2 * W, 2, {0, 1}), RUN_B))
    later.start()
    time.sleep(0.5)
    release.set()
    round_.join(20)
    later.join(20)
    (now,) = rows_of(sqlite_engine, db.alerts)
    assert now["revision"] == alert["revision"] + 1
    assert blob_doc(folder, now)["revision"] == now["revision"] == now["document_revision"]


def test_the_local_host_serves_the_outbox_timer_like_any_timer(tmp_path, monkeypatch):
    """`fleetscore up` serves function_app's `alert_outbox` on its schedule; a manual fire over the host's admin
    API drains what a crash left pending."""
    from fleetscore.host.app import LocalHost
    from tests.helpers.appfuncs import functions
    from tests.helpers.host import host_settings, request

    settings = host_settings(tmp_path)
    services = Services(settings)
    fire(services.engine, services.store, settings, RUN_A, series("d-1", "temp", T0, 2, {0}))
    with services.engine.begin() as conn:
        conn.execute(sa.update(db.alerts).values(document_revision=0))
    assert not documents_present(services.engine, services.store)
    host = LocalHost(settings, functions=list(functions().values()), state_dir=tmp_path / "host")
    served = {f.name: f for f in host.functions}
    assert served["alert_outbox"].schedule == outbox.SCHEDULE and not served["alert_outbox"].use_monitor
    host.start()
    try:
        code, reply = request(host.url, "POST", "/admin/timers/alert_outbox", {"wait": True})
        assert code == 200 and reply["status"] == "succeeded"
    finally:
        host.stop()
    assert documents_present(services.engine, services.store)
    services.close()


def test_the_outbox_locks_compile_for_sql_server_and_postgresql():
    """SQL Server ignores FOR UPDATE: a no-op UPDATE of the page's pending alerts takes their row locks first."""
    from sqlalchemy.dialects import mssql, postgresql

    lock, select = outbox.lock_statements("mssql", ["al-1", "al-2"])
    lock_sql = str(lock.compile(dialect=mssql.dialect()))
    assert lock_sql.startswith("UPDATE alerts SET document_revision=alerts.document_revision WHERE")
    assert "alerts.document_revision < alerts.revision" in lock_sql
    assert "FOR UPDATE" not in str(select.compile(dialect=mssql.dialect()))
    lock, select = outbox.lock_statements("postgresql", ["al-1"])
    assert lock is None and str(select.compile(dialect=postgresql.dialect())).endswith(
        "ORDER BY alerts.alert_id FOR UPDATE")
