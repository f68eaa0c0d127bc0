"""Timer functions in a started host: the past-due fire at start, manual fires over HTTP, runOnStartup."""

from __future__ import annotations

import time

import azure.functions as func

from fleetscore.clock import iso_offset
from fleetscore.host.app import LocalHost
from fleetscore.host.schedule_status import ScheduleStatus, TimerStatusStore, next_occurrence
from fleetscore.runs.slots import latest_occurrence, parse_status_time
from tests.helpers.host import YEARLY, app_with, host_settings, request, wait_for


def test_timer_fires_past_due_once_at_start_and_admin_fires_a_slot(tmp_path):
    calls: list[tuple[bool, dict]] = []

    def timers(app):
        @app.function_name("tick")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, use_monitor=True)
        def tick(timer: func.TimerRequest) -> None:
            calls.append((timer.past_due, dict(timer.schedule_status)))

    now = int(time.time() * 1000)
    this_year = latest_occurrence(YEARLY, now)
    last_year = latest_occurrence(YEARLY, this_year - 1)
    TimerStatusStore(tmp_path / "host" / "timers").save("tick", ScheduleStatus(this_year, last_year, last_year))
    host = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host").start()
    try:
        wait_for(lambda: calls, 10, "the past-due invocation")
        past_due, status = calls[0]
        assert past_due is True and parse_status_time(status["Next"]) == this_year
        saved = wait_for(lambda: (s := TimerStatusStore(tmp_path / "host" / "timers").load("tick")) and
                         s.last_ms == this_year and s, 5, "the status update")
        assert saved.next_ms == next_occurrence(YEARLY, now)

        code, reply = request(host.url, "POST", "/admin/timers/tick", {"slot": iso_offset(last_year),
                                                                        "wait": True})
        assert code == 200 and reply["status"] == "succeeded"
        assert calls[-1][0] is False and parse_status_time(calls[-1][1]["Next"]) == last_year
        code, reply = request(host.url, "POST", "/admin/timers/tick", {"slot": "2020-02-02T00:00:00Z"})
        assert code == 400 and "not an occurrence" in reply["error"]
        code, _ = request(host.url, "POST", "/admin/timers/nope", {})
        assert code == 404
    finally:
        host.stop()
    assert len(calls) == 2
    # restarted: the status is current, so no past-due invocation
    host = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host").start()
    time.sleep(0.5)
    host.stop()
    assert len(calls) == 2


def test_run_on_startup_only_when_the_binding_says_so(tmp_path):
    calls: dict[str, list] = {"eager": [], "lazy": []}

    def timers(app):
        @app.function_name("eager")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY, run_on_startup=True, use_monitor=False)
        def eager(timer: func.TimerRequest) -> None:
            calls["eager"].append(timer.past_due)

        @app.function_name("lazy")
        @app.timer_trigger(arg_name="timer", schedule=YEARLY)
        def lazy(timer: func.TimerRequest) -> None:
            calls["lazy"].append(timer.past_due)

    host = LocalHost(host_settings(tmp_path), app=app_with(timers), state_dir=tmp_path / "host").start()
    try:
        wait_for(lambda: calls["eager"], 10, "the startup invocation")
        time.sleep(0.3)
    finally:
        host.stop()
    assert calls == {"eager": [False], "lazy": []}
    assert not (tmp_path / "host" / "timers" / "eager.json").exists()  # no monitor, no status
    assert (tmp_path / "host" / "timers" / "lazy.json").exists()
