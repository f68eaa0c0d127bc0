"""Timer triggers: each timer function fires on its NCRONTAB schedule (UTC), one occurrence at a time.

With `useMonitor` (the default) the schedule status is kept as the host's schedule monitor keeps it
(:mod:`fleetscore.host.schedule_status`): occurrences missed while the host was down give one past-due
invocation at start. `runOnStartup` is honoured only when the binding sets it. A manual fire
(`POST /admin/timers/<function>`) invokes a past occurrence now and leaves the status alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.functions.timer import TimerRequest

from fleetscore.clock import iso_offset, now_ms
from fleetscore.host.bindings import HostFunction
from fleetscore.host.invocation import Invoker
from fleetscore.host.schedule_status import (
    ScheduleStatus,
    TimerStatusStore,
    after_invocation,
    check_past_due,
    is_occurrence,
    next_occurrence,
)
from fleetscore.runs.slots import latest_occurrence

log = logging.getLogger("fleetscore.host")
OUTCOME = {True: "succeeded", False: "failed", None: "abandoned"}
"""A manual fire's status by :meth:`Invoker.invoke_with_retry`'s result."""


def timer_request(status: ScheduleStatus, past_due: bool) -> TimerRequest:
    """The `TimerRequest` an invocation receives: its schedule status and whether it is past due."""
    return TimerRequest(past_due=past_due, schedule_status=status.to_binding(), schedule={"AdjustForDST": True})


class Timers:
    """The timer functions of a host: their schedule loops, status (`status[name]`) and manual fires."""

    def __init__(self, functions: list[HostFunction], invoker: Invoker, stop: threading.Event) -> None:
        self.functions = {f.name: f for f in functions}
        self.invoker = invoker
        self._stop = stop
        self._locks = {f.name: threading.Lock() for f in functions}
        """One invocation of a timer function at a time, scheduled or manual."""
        self.status: dict[str, ScheduleStatus] = {}
        self.store: TimerStatusStore | None = None

    def open(self, folder: Path) -> None:
        """Keep the monitored functions' status in `<folder>/<function>.json`."""
        self.store = TimerStatusStore(folder)

    def run(self, fn: HostFunction) -> None:
        """Fire `fn` at each occurrence until the host stops (a host thread)."""
        status = self._start(fn)
        while not self._stop.is_set():
            now = now_ms()
            if now < status.next_ms:
                self._stop.wait(min((status.next_ms - now) / 1000, 30.0))
                continue
            fired = self._fire_scheduled(fn, status, status.next_ms, past_due=False)
            if fired is None:
                return
            status = fired

    def _start(self, fn: HostFunction) -> ScheduleStatus:
        """The status at start, after the past-due invocation of a missed occurrence or the runOnStartup one."""
        assert self.store is not None
        now = now_ms()
        if fn.use_monitor:
            status, missed = check_past_due(fn.schedule, self.store.load(fn.name), now)
            self.store.save(fn.name, status)
        else:
            status, missed = ScheduleStatus(next_occurrence(fn.schedule, now), None, now), None
        self.status[fn.name] = status
        if missed is not None:
            log.info("Functions.%s: occurrence %s was missed; invoking it past due", fn.name, iso_offset(missed))
            return self._fire_scheduled(fn, status, missed, past_due=True) or status
        if fn.run_on_startup:
            with self._locks[fn.name]:
                self.invoker.invoke_with_retry(fn, lambda: {fn.arg_name: timer_request(status, False)},
                                               reason="Timer fired at startup (runOnStartup)")
        return status

    def _fire_scheduled(self, fn: HostFunction, status: ScheduleStatus, occurrence: int, *,
                        past_due: bool) -> ScheduleStatus | None:
        """Invoke one scheduled occurrence, then persist the next status (None: stopped during a retry wait)."""
        with self._locks[fn.name]:
            reason = f"Timer fired at {iso_offset(now_ms())} for {iso_offset(occurrence)}"
            outcome = self.invoker.invoke_with_retry(fn, lambda: {fn.arg_name: timer_request(status, past_due)},
                                                     reason=reason + (" (past due)" if past_due else ""))
        if outcome is None:
            return None
        new = after_invocation(fn.schedule, occurrence, now_ms())
        if fn.use_monitor and self.store is not None:
            self.store.save(fn.name, new)
        self.status[fn.name] = new
        return new

    def function(self, name: str) -> HostFunction:
        """The timer function `name`; KeyError naming the timers when there is none."""
        fn = self.functions.get(name)
        if fn is None:
            raise KeyError(f"no timer function {name!r} (timers: {sorted(self.functions)})")
        return fn

    def fire(self, fn: HostFunction, slot_ms: int | None, *, wait: bool,
             spawn: Callable[[str, Callable[[], None]], Any]) -> dict:
        """Fire `fn` for schedule slot `slot_ms` (epoch ms; default the newest occurrence) now, in this thread
        when `wait`, else in a thread `spawn(name, target)` starts. ValueError for a slot that is not a past
        occurrence. The TimerRequest carries `ScheduleStatus.Next` = the slot, as a scheduled fire would."""
        now = now_ms()
        slot = latest_occurrence(fn.schedule, now) if slot_ms is None else int(slot_ms)
        if slot > now + 1000:
            raise ValueError(f"slot {iso_offset(slot)} is in the future")
        if not is_occurrence(fn.schedule, slot):
            raise ValueError(f"slot {iso_offset(slot)} is not an occurrence of the schedule {fn.schedule!r}")
        status = ScheduleStatus(slot, None, now)
        result: dict[str, Any] = {"function": fn.name, "slot": iso_offset(slot)}

        def fire() -> None:
            with self._locks[fn.name]:
                outcome = self.invoker.invoke_with_retry(fn, lambda: {fn.arg_name: timer_request(status, False)},
                                                         reason=f"Manual fire for {iso_offset(slot)} (admin API)")
            result["status"] = OUTCOME[outcome]

        if wait:
            fire()
        else:
            spawn(f"admin:{fn.name}", fire)
            result["status"] = "accepted"
        return result

    def health(self, fn: HostFunction) -> dict[str, Any]:
        """`fn`'s part of `/health`: schedule, next and last occurrence."""
        status = self.status.get(fn.name)
        return {"schedule": fn.schedule, "next": iso_offset(status.next_ms) if status else None,
                "last_occurrence": iso_offset(status.last_ms) if status and status.last_ms else None}
