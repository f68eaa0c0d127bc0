"""Timer trigger: recover earlier runs (lapsed leases, Azure ML job states, automatic retries), then claim the
run of this schedule slot and submit it to the scoring backend."""

from __future__ import annotations

import logging

import azure.functions as func

from fleetscore import telemetry
from fleetscore.clock import now_ms
from fleetscore.context import get_services
from fleetscore.db import read_watermark
from fleetscore.logs import log_context
from fleetscore.runs.recovery import recover_runs
from fleetscore.runs.service import start_run
from fleetscore.runs.slots import run_id_for_slot, timer_slot

bp = func.Blueprint()
log = logging.getLogger("fleetscore.functions.schedule")


@bp.function_name("schedule")
@bp.timer_trigger(arg_name="timer", schedule="%SCORING_SCHEDULE%", run_on_startup=False, use_monitor=True)
def schedule(timer: func.TimerRequest) -> None:
    services = get_services()
    slot = timer_slot(services.settings.scoring_schedule, timer.schedule_status, now_ms())
    recover_runs(services)
    with log_context(run_id=run_id_for_slot(slot)):
        outcome = start_run(services, slot, trigger="timer (past due)" if timer.past_due else "timer")
        log.info("schedule: slot %s past_due=%s claimed=%s status=%s", outcome.run_id, timer.past_due,
                 outcome.claimed, outcome.status or "-")
    with services.engine.connect() as conn:
        telemetry.watermark_lag(now_ms(), read_watermark(conn))
