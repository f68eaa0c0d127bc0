"""Timer trigger: drain the alert outbox (pending alert documents, then webhook deliveries) within a deadline."""

from __future__ import annotations

import logging

import azure.functions as func

from fleetscore.alerts.outbox import SCHEDULE, drain
from fleetscore.context import get_services

bp = func.Blueprint()
log = logging.getLogger("fleetscore.functions.alerts")


@bp.function_name("alert_outbox")
@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False, use_monitor=False)
def alert_outbox(timer: func.TimerRequest) -> None:
    services = get_services()
    result = drain(services.engine, services.store, services.settings)
    log.info("alert_outbox: %d document(s), %d delivered, %d failed%s", result.documents, result.delivered,
             result.document_failures + result.delivery_failed, ", out of time" if result.out_of_time else "")
