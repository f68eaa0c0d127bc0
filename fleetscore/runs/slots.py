"""Schedule slots: which NCRONTAB occurrence a timer invocation stands for, and the run id it gives.

A slot is the occurrence the timer was scheduled for, never the wall clock at which it ran: a late or
past-due invocation still scores the slot it was meant for, so its `run_id` (derived from the slot) is
the same however often, however late and on however many instances the timer fires.
All times are epoch milliseconds UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

from croniter import croniter

from fleetscore.clock import to_datetime, to_ms
from fleetscore.settings import ncrontab_to_croniter

_FRACTION = re.compile(r"(\.\d{6})\d+")
"""The host writes .NET timestamps with 7 fractional digits; Python reads at most 6."""


def latest_occurrence(ncrontab: str, at_ms: int) -> int:
    """The newest occurrence of the schedule at or before `at_ms`."""
    it = croniter(ncrontab_to_croniter(ncrontab), to_datetime(at_ms) + timedelta(milliseconds=1))
    return to_ms(it.get_prev(datetime))


def occurrences(ncrontab: str, after_ms: int, until_ms: int) -> list[int]:
    """Every occurrence in (after_ms, until_ms], oldest first."""
    it = croniter(ncrontab_to_croniter(ncrontab), to_datetime(after_ms))
    out = []
    while (nxt := to_ms(it.get_next(datetime))) <= until_ms:
        out.append(nxt)
    return out


def parse_status_time(text: str | None) -> int | None:
    """A ScheduleStatus time (`2026-11-23T10:05:00.0072521+00:00`; naive means UTC) → epoch ms, or None."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", str(text).strip().replace("Z", "+00:00")))
    except ValueError:
        return None
    return to_ms(parsed)  # naive means UTC


def timer_slot(ncrontab: str, schedule_status: Mapping | None, now_ms: int) -> int:
    """The slot a timer invocation stands for.

    With the monitor's ScheduleStatus (`use_monitor=True`), `Next` is the occurrence being fired — also
    for a past-due catch-up after downtime, where it lies in the past. It must be an occurrence of the
    schedule and not in the future. Without a usable status, the newest occurrence at or before now
    (plus one second of clock skew, since a timer may fire a hair early).
    """
    expected = parse_status_time((schedule_status or {}).get("Next"))
    if expected is not None and expected <= now_ms + 1000:
        slot = latest_occurrence(ncrontab, expected)
        if slot == expected:
            return slot
    return latest_occurrence(ncrontab, now_ms + 1000)


def run_id_for_slot(slot_ms: int) -> str:
    """`20261123T100500Z`: the slot's UTC time, sortable, one per slot."""
    return to_datetime(slot_ms).strftime("%Y%m%dT%H%M%SZ")


def slot_of_run_id(run_id: str) -> int:
    """Inverse of `run_id_for_slot`."""
    return to_ms(datetime.strptime(run_id, "%Y%m%dT%H%M%SZ"))  # naive means UTC
