"""The schedule monitor's semantics: past-due occurrences, a changed schedule, the status round trip."""

from __future__ import annotations

from fleetscore.host.schedule_status import ScheduleStatus, check_past_due, next_occurrence
from tests.helpers.host import YEARLY, ms


def test_schedule_monitor_semantics():
    now = ms("2026-06-01T12:00:00Z")
    fresh, missed = check_past_due(YEARLY, None, now)
    assert missed is None and fresh.next_ms == ms("2027-01-01T00:00:00Z")
    # the host was down over an occurrence: fire it once, past due, with Next = the missed occurrence
    stale = ScheduleStatus(next_ms=ms("2026-01-01T00:00:00Z"), last_ms=ms("2025-01-01T00:00:00Z"))
    status, missed = check_past_due(YEARLY, stale, now)
    assert missed == ms("2026-01-01T00:00:00Z") and status.next_ms == missed
    # the schedule changed since the status was written: the new schedule's occurrence after Last counts
    changed = ScheduleStatus(next_ms=ms("2026-07-01T00:00:00Z"), last_ms=ms("2026-05-31T00:00:00Z"))
    status, missed = check_past_due("0 0 0 * * *", changed, now)
    assert missed == ms("2026-06-01T00:00:00Z")
    assert next_occurrence("0 */5 * * * *", ms("2026-06-01T12:00:00Z")) == ms("2026-06-01T12:05:00Z")
    assert ScheduleStatus.from_binding(ScheduleStatus(5_000, None, 7_000).to_binding()) == \
        ScheduleStatus(5_000, None, 7_000)
