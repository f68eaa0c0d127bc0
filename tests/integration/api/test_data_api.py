"""`/api/pairs/{device}/{sensor}/windows`, `/api/runs`, `/api/health`: real SQLite and PostgreSQL, a folder store."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fleetscore import db
from fleetscore.alerts.episodes import HIGH_SHARE
from fleetscore.clock import iso_exact, now_ms
from tests.helpers.fleet import RUN_A, T0, W, fire, put_run, series


def windows(api, device="d-1", sensor="temp", **params):
    return api.call("api_pair_windows", "GET", f"pairs/{device}/{sensor}/windows", params=params,
                    route={"device": device, "sensor": sensor})


def test_a_pairs_windows_scores_thresholds_and_alert_spans(engine, folder, api):
    with engine.begin() as conn:
        conn.execute(db.windows.insert(), [{"device": "d-1", "sensor": "temp", "window_end": T0 + i * W, "n": 2,
                                            "sum": 40.0 + i, "sumsq": (20.0 + i / 2) ** 2 * 2, "min": 20.0,
                                            "max": 21.0 + i, "updated_at": 1} for i in range(4)])
    put_run(engine, folder, RUN_A, T0 - W, T0 + 3 * W, {"part-00000.parquet": 8})
    rows = series("d-1", "temp", T0, 4, {2}) + series("d-2", "temp", T0, 4, {1})
    for row in rows:
        row.update(threshold=0.1, threshold_strong=2.0)
    fire(engine, folder, api.settings, RUN_A, rows)
    span = {"from": iso_exact(T0), "to": iso_exact(T0 + 3 * W)}
    status, doc = windows(api, **span)
    assert status == 200 and doc["prediction_files_read"] == 1 and doc["notes"] == []
    got = doc["windows"]
    assert [w["window_end"] for w in got] == [iso_exact(T0 + i * W) for i in range(4)]
    assert [w["mean"] for w in got] == [20.0, 20.5, 21.0, 21.5] and got[1]["n"] == 2 and got[3]["max"] == 24.0
    assert [w["is_anomaly"] for w in got] == [False, False, True, False]
    assert got[2]["score"] == 0.5 and got[0]["score"] == -0.5 and got[2]["threshold"] == 0.1
    assert got[2]["threshold_strong"] == 2.0 and got[2]["run_id"] == RUN_A and got[2]["status"] == "ok"
    assert got[2]["threshold_high"] == pytest.approx(0.1 + HIGH_SHARE * (2.0 - 0.1))
    (alert,) = doc["alerts"]
    assert alert["first_window_end"] == iso_exact(T0 + 2 * W) and alert["state"] == "open"

    folder.delete(f"predictions/{RUN_A}/part-00000.parquet")  # the anomalies table still knows the anomaly
    status, doc = windows(api, **span)
    assert status == 200 and doc["prediction_files_read"] == 0 and "could not read" in doc["notes"][0]
    assert [w["score"] for w in doc["windows"]] == [None, None, 0.5, None]
    for bad in ({"from": "x"}, {"from": iso_exact(T0 + W), "to": iso_exact(T0)},
                {"from": iso_exact(T0), "to": iso_exact(T0 + 8 * 86_400_000)}):
        assert windows(api, **bad)[0] == 400, bad
    assert windows(api, device="d 1")[0] == 400 and windows(api, sensor="t" * 65)[0] == 400
    assert windows(api, device="nobody")[1]["windows"] == []


def put_runs(engine, *runs: tuple[str, int, str]) -> None:
    with engine.begin() as conn:
        conn.execute(db.runs.insert(), [{"run_id": rid, "slot": slot, "attempt": 1, "status": status,
                                         "trigger": "timer", "claimed_at": slot, "finished_at": slot + 1000,
                                         "error": "boom" if status == "failed" else None,
                                         "timings": '{"export": 0.5}'} for rid, slot, status in runs])


def test_runs_newest_slot_first_paged_and_filtered(engine, folder, api):
    put_runs(engine, ("r1", T0, "succeeded"), ("r2", T0 + 3_600_000, "partial"), ("r3", T0 + 7_200_000, "failed"))
    status, first = api.call("api_runs", "GET", "runs", params={"limit": "2"})
    assert status == 200 and [r["run_id"] for r in first["runs"]] == ["r3", "r2"]
    assert first["runs"][0]["error"] == "boom" and first["runs"][0]["timings"] == {"export": 0.5}
    assert first["runs"][1]["slot"] == iso_exact(T0 + 3_600_000)
    put_runs(engine, ("r4", T0 + 10_800_000, "running"))  # a new run does not shift the next page
    status, second = api.call("api_runs", "GET", "runs", params={"limit": "2", "page": first["next_page"]})
    assert [r["run_id"] for r in second["runs"]] == ["r1"] and second["next_page"] is None
    status, failed = api.call("api_runs", "GET", "runs", params={"status": "failed,partial"})
    assert [r["run_id"] for r in failed["runs"]] == ["r3", "r2"]
    assert api.call("api_runs", "GET", "runs", params={"status": "lost"})[0] == 400
    assert api.call("api_runs", "GET", "runs", params={"page": first["next_page"], "status": "failed"})[0] == 400


def test_health_says_the_last_run_the_watermark_lag_undelivered_alerts_and_dead_letters(engine, folder, api):
    status, empty = api.call("api_health", "GET", "health")
    assert status == 200 and empty["last_run"] is None and empty["watermark_lag_seconds"] is None
    now = now_ms()
    put_runs(engine, ("r1", now - 7_200_000, "succeeded"), ("r2", now - 3_600_000, "failed"))
    with engine.begin() as conn:
        db.advance_watermark(conn, now - 600_000, now)
        conn.execute(db.dead_letters.insert(), [
            {"received_at": t, "source": "eventhub", "payload": "x", "reason": reason, "detail": "", "letter_key": k}
            for t, reason, k in ((now - 60_000, "bad_json", "a"), (now - 120_000, "bad_json", "b"),
                                 (now - 100_000, "bad_ts", "c"), (now - 2 * 3_600_000, "bad_ts", "d"))])
    fire(engine, folder, api.settings, RUN_A, series("d-1", "temp", T0, 2, {0}))
    with engine.begin() as conn:
        conn.execute(sa.update(db.alerts).values(document_revision=0))
    status, doc = api.call("api_health", "GET", "health")
    assert status == 200 and doc["status"] == "degraded"
    assert doc["last_run"]["run_id"] == "r2" and doc["last_completed_run"]["run_id"] == "r1"
    assert 590 <= doc["watermark_lag_seconds"] <= 700
    assert doc["undelivered_alerts"] == {"documents": 1}
    assert doc["dead_letters_last_hour"] == 3 and doc["dead_letters_last_hour_by_reason"] == {"bad_json": 2,
                                                                                                "bad_ts": 1}
