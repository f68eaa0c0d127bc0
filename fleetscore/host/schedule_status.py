"""Timer schedule status, as the Functions host's schedule monitor keeps it (`use_monitor=True`).

The host stores `{"Last", "Next", "LastUpdated"}` per timer function (in Azure under
`azure-webjobs-hosts/timers/<host id>/<function>/status`); here it is `<folder>/<function>.json`. At start,
a status whose `Next` has passed means occurrences were missed while the host was down: the function is
invoked once with `IsPastDue` and the status as stored, so `ScheduleStatus.Next` is the (first) missed
occurrence. After every scheduled invocation the status becomes Last = the occurrence fired, Next = the
first occurrence after now, LastUpdated = now. If the schedule changed since the status was written (Next
is not what the schedule gives after Last), the schedule's own next occurrence is used, as the host does.
Times are UTC (WEBSITE_TIME_ZONE is not applied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from croniter import croniter

from fleetscore.clock import iso_offset, to_datetime
from fleetscore.host.spool import write_json_atomic
from fleetscore.runs.slots import latest_occurrence, parse_status_time
from fleetscore.settings import ncrontab_to_croniter

NEVER = "0001-01-01T00:00:00+00:00"
"""`DateTime.MinValue`: the host's `Last` before the first invocation."""


def next_occurrence(ncrontab: str, after_ms: int) -> int:
    """The first occurrence of the schedule strictly after `after_ms`."""
    start = to_datetime(after_ms)
    nxt = croniter(ncrontab_to_croniter(ncrontab), start).get_next(datetime)
    ms = int(round(nxt.timestamp() * 1000))
    if ms <= after_ms:  # croniter works in whole seconds; step past a sub-second `after`
        nxt = croniter(ncrontab_to_croniter(ncrontab), start + timedelta(seconds=1)).get_next(datetime)
        ms = int(round(nxt.timestamp() * 1000))
    return ms


def is_occurrence(ncrontab: str, at_ms: int) -> bool:
    """Is `at_ms` an occurrence of the schedule?"""
    return latest_occurrence(ncrontab, at_ms) == at_ms


@dataclass(frozen=True)
class ScheduleStatus:
    """One timer function's status, epoch ms UTC (None: never)."""

    next_ms: int
    last_ms: int | None = None
    last_updated_ms: int | None = None

    def to_binding(self) -> dict[str, str]:
        """The `ScheduleStatus` a TimerRequest carries."""
        return {"Last": iso_offset(self.last_ms, NEVER), "Next": iso_offset(self.next_ms, NEVER),
                "LastUpdated": iso_offset(self.last_updated_ms, NEVER)}

    @classmethod
    def from_binding(cls, doc: dict) -> ScheduleStatus | None:
        nxt = parse_status_time(doc.get("Next"))
        if nxt is None:
            return None
        last = parse_status_time(doc.get("Last"))
        updated = parse_status_time(doc.get("LastUpdated"))
        never = parse_status_time(NEVER)
        return cls(nxt, None if last == never else last, None if updated == never else updated)


def check_past_due(ncrontab: str, status: ScheduleStatus | None, now_ms: int) -> tuple[ScheduleStatus, int | None]:
    """(the status in force, the missed occurrence to fire past-due or None) — the host's CheckPastDue."""
    if status is None:
        return ScheduleStatus(next_occurrence(ncrontab, now_ms), None, now_ms), None
    if status.last_ms is not None:
        expected = next_occurrence(ncrontab, status.last_ms)
    elif status.last_updated_ms is not None:
        expected = next_occurrence(ncrontab, status.last_updated_ms)
    else:
        expected = status.next_ms
    recorded = status.next_ms if status.next_ms == expected else expected
    current = ScheduleStatus(recorded, status.last_ms, status.last_updated_ms)
    return current, (recorded if now_ms > recorded else None)


def after_invocation(ncrontab: str, fired_ms: int, now_ms: int) -> ScheduleStatus:
    """The status after the occurrence `fired_ms` ran (finishing at `now_ms`)."""
    return ScheduleStatus(next_occurrence(ncrontab, now_ms), fired_ms, now_ms)


class TimerStatusStore:
    """`<folder>/<function>.json` per timer function, replaced atomically."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, function: str) -> Path:
        return self.folder / f"{function}.json"

    def load(self, function: str) -> ScheduleStatus | None:
        path = self.path(function)
        if not path.is_file():
            return None
        try:
            return ScheduleStatus.from_binding(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, AttributeError):
            return None  # unreadable: start afresh, as with no status

    def save(self, function: str, status: ScheduleStatus) -> None:
        write_json_atomic(self.path(function), status.to_binding())
