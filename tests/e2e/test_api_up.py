"""The HTTP API on a running `fleetscore up`: the key as on Azure, and its OpenAPI document checked by schemathesis
(property-based requests to every operation, no server error and every answer as the document says)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetscore import db
from fleetscore.alerts import store as alert_store
from fleetscore.settings import load_settings
from fleetscore.storage import open_store
from tests.helpers.fleet import RUN_A, RUN_B, T0, W, fire, put_run, series
from tests.helpers.host import YEARLY, wait_for

KEY = "local-test-key"


def seed(settings) -> None:
    """A few alerts (one acknowledged, one resolved, one opened before the rule that opened it was recorded) and
    runs, so the operations have data to return."""
    engine = db.create_db_engine(settings.sql_url)
    db.upgrade(engine)
    folder = open_store(settings.storage)
    put_run(engine, folder, RUN_A, T0 - W, T0 + 5 * W, {"part-00000.parquet": 12})
    fire(engine, folder, settings, RUN_A, series("d-1", "temp", T0, 6, {1, 2}) + series("d-2", "temp", T0, 6, {4}))
    put_run(engine, folder, RUN_B, T0 + 5 * W, T0 + 11 * W, {"part-00000.parquet": 6})
    fire(engine, folder, settings, RUN_B, series("d-3", "rh", T0 + 6 * W, 6, {0, 5}))
    ids = sorted(a["alert_id"] for a in alert_store.list_alerts(engine))
    with engine.begin() as conn:
        alert_store.acknowledge(conn, ids[0], by="ana", note="looking", now=T0 + 20 * W)
        alert_store.resolve(conn, ids[1], by="bo", note=None, now=T0 + 21 * W)
        conn.execute(db.alerts.update().where(db.alerts.c.alert_id == ids[2]).values(opened_by=None))  # before 0008
    engine.dispose()


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict]:
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)", url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_the_api_on_fleetscore_up_holds_to_its_openapi_document(tmp_path):
    env = {**os.environ, "FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}", "ALERT_PERSISTENCE": "1/1",
           "FLEETSCORE_STORAGE": str(tmp_path / "blobs"), "SCORING_SCHEDULE": YEARLY, "FLEETSCORE_API_KEY": KEY,
           "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "no-local.settings.json"), "PYTHONUNBUFFERED": "1"}
    seed(load_settings(**{k: env[k] for k in ("FLEETSCORE_SQL_URL", "FLEETSCORE_STORAGE", "ALERT_PERSISTENCE")}))
    exe = Path(sys.executable).with_name("fleetscore")
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "up", "--port", "0", "--state-dir", str(tmp_path / "host")], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        found = wait_for(lambda: proc.poll() is not None or re.search(
            r"Listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace")), 60, "the host to listen")
        assert proc.poll() is None, log.read_text()
        url = found.group(1)
        assert get(url, "/api/alerts")[0] == 401
        assert get(url, "/api/alerts", {"x-functions-key": "wrong"})[0] == 401
        status, doc = get(url, f"/api/alerts?code={KEY}")
        assert status == 200 and len(doc["alerts"]) == 4
        assert sorted(map(str, (a["opened_by"] for a in doc["alerts"]))) == ["None", "persistence", "persistence",
                                                                           "persistence"]
        assert get(url, "/api/openapi.json")[1]["openapi"].startswith("3.")  # anonymous, as on Azure
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        done = subprocess.run(
            [st, "run", f"{url}/api/openapi.json", "--url", f"{url}/api", "-H", f"x-functions-key: {KEY}",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                         "response_schema_conformance",
             "--max-examples", "25", "--seed", "15", "--phases", "examples,coverage,fuzzing",
             "--generation-deterministic"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**env, "NO_COLOR": "1"})
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "No issues found" in done.stdout or "passed" in done.stdout, done.stdout[-3000:]
        print(done.stdout[-1500:])
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]
    finally:
        proc.terminate()
        proc.wait(60)
