"""The kill test: a real `fleetscore run` SIGKILLed at export, scoring and indexing is completed by `--retry` or by
the next timer fire as soon as its lease lapsed, with outputs byte-identical to a clean run and every alert and
its document present.

The process stops itself at a named stage through `FLEETSCORE_TEST_KILL_AT` (`fleetscore.runs.lease`), read in
one place: the first renewal tick of that stage (after the first partition exported, scored or indexed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleetscore import clock, db
from fleetscore.context import Services, set_services
from fleetscore.ingest.files import ingest_file
from fleetscore.runs.slots import run_id_for_slot
from fleetscore.settings import load_settings
from fleetscore.sim.simulate import simulate_fleet, write_simulation
from fleetscore.storage.base import LOCK_NAME, TMP_PREFIX
from fleetscore.storage.folder import FolderStore
from fleetscore.training import train
from tests.helpers import REPO
from tests.helpers.appfuncs import function

W, HOUR = 300_000, 3_600_000
ALERT_FIELDS = ("alert_id", "device", "sensor", "status", "first_window_end", "last_window_end",
                "last_seen_window_end", "windows", "max_score", "severity", "model_version", "run_id")
"""What an alert is (its timestamps and revision counters depend on when and how often it was written)."""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, int]:
    """A simulated fleet ingested into SQLite and trained (models activated); the slot to run, 6 h after training."""
    root = tmp_path_factory.mktemp("kill-base")
    engine = db.create_db_engine(f"sqlite:///{root / 'fleet.db'}")
    db.upgrade(engine)
    store = FolderStore(root / "blobs")
    sim = simulate_fleet(devices=6, sensors=2, days=3, interval_seconds=60, seed=3, clean_days=2)
    readings, _ = write_simulation(sim, root / "fleet.parquet")
    ingest_file(engine, readings, window_ms=W, naive_tz=timezone.utc)
    train(engine, store, from_ms=None, until_ms=sim.clean_until_ms, min_windows=48, algorithm="ocsvm-rbf",
          features=("mean", "min", "max", "std"), window_minutes=5, activate=True, n_jobs=1)
    engine.dispose()
    return root, sim.clean_until_ms + 6 * HOUR + 5 * 60_000


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONFAULTHANDLER": "1", "FLEETSCORE_SQL_URL": f"sqlite:///{root / 'fleet.db'}",
            "FLEETSCORE_STORAGE": str(root / "blobs"), "PARTITION_MODELS": "4", "SCORING_WORKERS": "2",
            "LATE_ARRIVAL_SECONDS": "300", "FLEETSCORE_LOCAL_SETTINGS": str(root / "no-local.settings.json"),
            **extra}


def _cli(root: Path, slot: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`fleetscore run --slot S [args]` as a real process in its own process group. Its output goes to files, not
    pipes: the pool workers of a killed run outlive it and would hold a pipe open."""
    iso = datetime.fromtimestamp(slot / 1000, tz=timezone.utc).isoformat()
    out, err = root / "stdout.txt", root / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "fleetscore.cli.main", "run", "--slot", iso, *args],
                                cwd=REPO, env={**os.environ, **_env(root, **env)}, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: its threads' tracebacks to stderr
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the pool workers a killed run left behind
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text()[-6000:])


def _timer(root: Path, slot: int, monkeypatch) -> None:
    """The timer function fired for `slot`, through the SDK's own TimerRequest, in this process."""
    from azure.functions.timer import TimerRequest

    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    services = Services(load_settings())
    set_services(services)
    try:
        nxt = datetime.fromtimestamp(slot / 1000, tz=timezone.utc).isoformat()
        function("schedule").get_user_function()(TimerRequest(past_due=False, schedule_status={"Next": nxt}))
    finally:
        services.close()
        set_services(None)


def _outputs(root: Path) -> dict:
    """Every data and prediction file's bytes, the anomalies, the alerts and their documents, the watermark."""
    engine = sa.create_engine(f"sqlite:///{root / 'fleet.db'}")
    with engine.connect() as conn:
        anomalies = sorted(tuple(r) for r in conn.execute(sa.select(db.anomalies)))
        alerts = sorted(tuple(getattr(r, f) for f in ALERT_FIELDS)
                        for r in conn.execute(sa.select(db.alerts)))
        watermark = db.read_watermark(conn)
    engine.dispose()
    store = FolderStore(root / "blobs")
    files = {info.name: _content(info.name, store.get(info.name)) for top in ("data/", "predictions/")
             for info in store.list(top)}
    documents = [info.name for info in store.list("alerts/") if info.name.endswith(".json")]
    return {"files": files, "anomalies": anomalies, "alerts": alerts, "documents": documents,
            "watermark": watermark}


def _content(key: str, data: bytes) -> bytes | dict:
    """A blob's bytes; a run manifest as JSON without `created_at` (when the attempt wrote it)."""
    if not key.endswith("/manifest.json"):
        return data
    return {k: v for k, v in json.loads(data).items() if k != "created_at"}


def _run_row(root: Path, run_id: str) -> dict:
    engine = sa.create_engine(f"sqlite:///{root / 'fleet.db'}")
    with engine.connect() as conn:
        row = dict(conn.execute(sa.select(db.runs).where(db.runs.c.run_id == run_id)).mappings().one())
    engine.dispose()
    return row


@pytest.fixture(scope="module")
def clean(base, tmp_path_factory) -> dict:
    """The outputs of the slot's run and the next timer fire, nothing killed."""
    src, slot = base
    root = tmp_path_factory.mktemp("kill-clean")
    shutil.copytree(src, root, dirs_exist_ok=True)
    done = _cli(root, slot)
    assert done.returncode == 0, done.stderr
    with pytest.MonkeyPatch.context() as monkeypatch:
        _timer(root, slot + HOUR, monkeypatch)
    return _outputs(root)


@pytest.mark.parametrize("stage,recover", [("export", "retry"), ("score", "timer"), ("index", "retry")])
def test_a_run_killed_at_any_stage_is_completed_identically(base, clean, tmp_path, monkeypatch, stage, recover):
    src, slot = base
    root = tmp_path / "fleet"
    shutil.copytree(src, root)
    run_id = run_id_for_slot(slot)
    killed = _cli(root, slot, FLEETSCORE_TEST_KILL_AT=stage, RUN_LEASE_SECONDS="2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    row = _run_row(root, run_id)
    assert row["status"] in db.RUN_ACTIVE and row["lease_until"] is not None
    time.sleep(max(0.0, (row["lease_until"] - clock.now_ms()) / 1000) + 0.05)  # until the lease lapsed
    if recover == "retry":
        retried = _cli(root, slot, "--retry")
        assert retried.returncode == 0, retried.stderr
        assert f"run {run_id}: succeeded" in retried.stdout
    _timer(root, slot + HOUR, monkeypatch)  # the next fire: recovers a killed run first, then its own slot
    row = _run_row(root, run_id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert row["retry_reason"].startswith("retried by hand (--retry)" if recover == "retry"
                                          else "automatic retry by the timer")
    # the local backend scores (and indexes) partitions while the export still writes others: a kill there finds the
    # run still claimed, after the export running
    lapsed_while = ("claimed",) if stage == "export" else ("claimed", "running")
    assert "lease lapsed at" in row["retry_reason"]
    assert any(f"while {status}:" in row["retry_reason"] for status in lapsed_while), row["retry_reason"]
    assert _run_row(root, run_id_for_slot(slot + HOUR))["status"] == "succeeded"
    got = _outputs(root)
    assert got["files"].keys() == clean["files"].keys()  # as the store lists them: a write the kill cut short
    # leaves only its hidden temp file (`TMP_PREFIX`), which no list or read ever sees
    leftovers = [p for p in (root / "blobs").rglob("*") if p.is_file() and p.name.startswith(".")]
    assert all(p.name.startswith(TMP_PREFIX) or p.name == LOCK_NAME for p in leftovers), leftovers
    assert [k for k in got["files"] if got["files"][k] != clean["files"][k]] == []  # byte-identical files
    assert got["anomalies"] == clean["anomalies"] and got["watermark"] == clean["watermark"]
    assert got["alerts"] == clean["alerts"] and got["alerts"]
    assert got["documents"] == clean["documents"] and len(got["documents"]) == len(got["alerts"])
