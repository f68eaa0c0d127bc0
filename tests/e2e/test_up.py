"""`fleetscore up` end to end as a real process: killed mid-run, it loses no reading and doubles no alert."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timezone

import numpy as np
import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.clock import iso_offset
from fleetscore.ingest.files import ingest_file
from fleetscore.runs.slots import latest_occurrence, run_id_for_slot
from fleetscore.settings import load_settings
from fleetscore.storage import open_store
from fleetscore.training import train
from tests.helpers.host import YEARLY, Up, ms, wait_for

DEVICES = [f"d-{i:04d}" for i in range(1, 9)]
SENSORS = ["temp", "hum"]
BASE = {"temp": 21.0, "hum": 45.0}
MINUTE, HOUR = 60_000, 3_600_000


def readings_between(start_ms: int, end_ms: int, seed: int, anomalous: tuple[str, str, int] | None = None) -> list:
    """One reading a minute per pair in (start, end]; `anomalous` = (device, sensor, from_ms) gets +40 from then."""
    rng = np.random.default_rng(seed)
    out = []
    for ts in range(start_ms + MINUTE, end_ms + 1, MINUTE):
        for device in DEVICES:
            for sensor in SENSORS:
                value = BASE[sensor] + float(rng.normal(0, 0.5))
                if anomalous and (device, sensor) == anomalous[:2] and ts > anomalous[2]:
                    value += 40.0
                out.append({"device": device, "sensor": sensor, "ts": iso_offset(ts).replace("+00:00", "Z"),
                            "value": round(value, 3)})
    return out


def by_minute(readings: list) -> list[list]:
    groups: dict[str, list] = {}
    for r in readings:
        groups.setdefault(r["ts"], []).append(r)
    return list(groups.values())


def key(r: dict) -> tuple[str, str, int]:
    return r["device"], r["sensor"], ms(r["ts"])


@pytest.mark.slow
def test_up_end_to_end_kill_mid_run_loses_no_reading_and_doubles_no_alert(tmp_path):
    now = int(time.time() * 1000)
    this_slot = latest_occurrence(YEARLY, now)  # two past yearly slots; the next scheduled one is months away
    last_slot = latest_occurrence(YEARLY, this_slot - 1)
    env = {**os.environ, "FLEETSCORE_SQL_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
           "FLEETSCORE_STORAGE": str(tmp_path / "blobs"), "SCORING_SCHEDULE": YEARLY, "LATE_ARRIVAL_SECONDS": "0",
           "WINDOW_MINUTES": "5", "PARTITION_MODELS": "2", "SCORING_WORKERS": "1",
           "FLEETSCORE_LOCAL_SETTINGS": str(tmp_path / "no-local.settings.json"), "PYTHONUNBUFFERED": "1"}
    settings = load_settings(FLEETSCORE_SQL_URL=env["FLEETSCORE_SQL_URL"], FLEETSCORE_STORAGE=env["FLEETSCORE_STORAGE"])
    engine = db.create_db_engine(settings.sql_url)
    db.upgrade(engine)
    store = open_store(settings.storage)

    def stored() -> set:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(db.readings.c.device, db.readings.c.sensor, db.readings.c.ts)).all())

    def run_status(slot: int) -> str | None:
        with engine.connect() as conn:
            return conn.execute(sa.select(db.runs.c.status).where(db.runs.c.slot == slot)).scalar()

    def table(t: sa.Table) -> list:
        with engine.connect() as conn:
            return conn.execute(sa.select(t)).mappings().all()

    def episodes(device: str, sensor: str, after_ms: int) -> list:
        return [a for a in table(db.alerts) if (a["device"], a["sensor"]) == (device, sensor)
                and a["first_window_end"] > after_ms]

    # history for training goes in from a file before the host starts; the model pack is activated
    history = readings_between(last_slot - 10 * HOUR, last_slot - HOUR, seed=1)
    history_file = tmp_path / "history.jsonl"
    history_file.write_text("".join(json.dumps(r) + "\n" for r in history))
    ingest_file(engine, history_file, window_ms=5 * MINUTE, naive_tz=timezone.utc)
    trained = train(engine, store, from_ms=None, until_ms=last_slot - HOUR, min_windows=48, algorithm="ocsvm-rbf",
                    features=settings.features, window_minutes=5, activate=True, n_jobs=1)
    assert trained.models == len(DEVICES) * len(SENSORS)

    # --- 1: the last hour before the first slot arrives over HTTP, with an anomaly on d-0002/temp
    host = Up(tmp_path, env, "up-1")
    stop_posting = threading.Event()
    try:
        recent = readings_between(last_slot - HOUR, last_slot, seed=2,
                                  anomalous=("d-0002", "temp", last_slot - 20 * MINUTE))
        minutes = by_minute(recent)
        for r in minutes[0]:  # single JSON readings as bodies ...
            assert host.post("/events", json.dumps(r).encode()) == 202
        for group in minutes[1:]:  # ... and JSON arrays
            assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: {key(r) for r in history + recent} <= stored(), 30, "the posted readings in SQL")

        assert host.post("/admin/timers/schedule", {"slot": iso_offset(last_slot)}) == 202
        wait_for(lambda: run_status(last_slot) in ("succeeded", "partial"), 60, "the first run to complete")
        files = table(db.prediction_files)
        assert len(files) == len(DEVICES) and {f["status"] for f in files} == {"indexed"}
        raised = episodes("d-0002", "temp", last_slot - 30 * MINUTE)
        assert len(raised) == 1 and raised[0]["last_window_end"] == last_slot
        # the blob trigger indexed every prediction file too, which changed nothing
        wait_for(lambda: next(f for f in host.get("/health")["functions"]
                              if f["name"] == "index_predictions")["receipts"]["done"] == len(files),
                 20, "the blob trigger's receipts")
        assert episodes("d-0002", "temp", last_slot - 30 * MINUTE) == raised

        # --- 2: the hour before the next slot; kill the host mid-run while events are being posted
        before = readings_between(this_slot - HOUR, this_slot - 30 * MINUTE, seed=3)
        for group in by_minute(before):
            assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: {key(r) for r in before} <= stored(), 30, "the first half hour in SQL")
        during = readings_between(this_slot - 30 * MINUTE, this_slot + 6 * HOUR, seed=4,
                                  anomalous=("d-0003", "hum", this_slot - 15 * MINUTE))
        groups = by_minute(during)
        acked: list[int] = []

        def poster() -> None:
            for i, group in enumerate(groups):
                if stop_posting.is_set():
                    return
                try:
                    if host.post("/events", json.dumps(group).encode()) == 202:
                        acked.append(i)
                except OSError:
                    return  # the host is gone
                time.sleep(0.02)

        posting = threading.Thread(target=poster, daemon=True)
        posting.start()
        wait_for(lambda: len(acked) >= 5, 20, "events flowing")
        assert host.post("/admin/timers/schedule", {"slot": iso_offset(this_slot)}) == 202
        run_dir = tmp_path / "blobs" / "predictions" / run_id_for_slot(this_slot)
        wait_for(lambda: run_dir.is_dir() and any(p.suffix == ".parquet" for p in run_dir.iterdir()), 60,
                 "the second run's first prediction file", interval=0.005)
        host.kill()
        posting.join(30)
    finally:
        stop_posting.set()
        if host.proc.poll() is None:
            host.kill()
    assert run_status(this_slot) in ("claimed", "submitted", "running"), "the kill must land mid-run"
    assert 5 <= len(acked) < len(groups), "the kill must land while events are being posted"

    # --- 3: restart on the same state: the spool redelivers, the blob trigger indexes what the run wrote
    host = Up(tmp_path, env, "up-2")
    try:
        wait_for(lambda: host.get("/health")["backlog"] == 0, 30, "the spool to drain after the restart")
        missing = {key(r) for i in acked for r in groups[i]} - stored()
        assert not missing, f"{len(missing)} acknowledged reading(s) lost, e.g. {sorted(missing)[:3]}"
        done = set(acked)
        for i, group in enumerate(groups):  # the devices resend what was never acknowledged
            if i not in done:
                assert host.post("/events", json.dumps(group).encode()) == 202
        wait_for(lambda: host.get("/health")["backlog"] == 0, 30, "the resent events")
        assert stored() == {key(r) for r in history + recent + before + during}

        written = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".parquet")
        wait_for(lambda: sorted(f["name"].rsplit("/", 1)[-1] for f in table(db.prediction_files)
                                if f["run_id"] == run_dir.name and f["status"] == "indexed") == written,
                 30, "every prediction file of the killed run indexed")
        if len(written) == len(DEVICES):  # every partition was scored before the kill: the run completes
            wait_for(lambda: run_status(this_slot) in ("succeeded", "partial"), 30, "the second run to complete")
        by_pair: dict[tuple[str, str], list] = {}
        for a in table(db.alerts):
            by_pair.setdefault((a["device"], a["sensor"]), []).append(a)
        for pair, alerts in by_pair.items():  # one alert per episode: never two over the same windows
            alerts.sort(key=lambda a: a["first_window_end"])
            for earlier, later in zip(alerts, alerts[1:], strict=False):
                assert earlier["last_window_end"] < later["first_window_end"], f"doubled alert for {pair}"
        assert len(episodes("d-0002", "temp", last_slot - 30 * MINUTE)) == 1
        if "part-00002.parquet" in written:  # d-0003's partition was scored: its episode raised one alert
            assert len(episodes("d-0003", "hum", this_slot - 30 * MINUTE)) == 1
        assert host.terminate() == 0  # SIGTERM: a clean stop
    finally:
        if host.proc.poll() is None:
            host.kill()
    log_text = (tmp_path / "up-2.log").read_text()
    assert "Executing 'Functions.index_predictions'" in log_text and "local host stopped" in log_text
    engine.dispose()
