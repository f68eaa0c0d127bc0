"""HTTP triggers: the alerts API (`fleetscore.api`), keys checked by the host (`authLevel` function).

Each function turns the `func.HttpRequest` into an `ApiRequest`, runs its handler and returns the
`func.HttpResponse`; routes are relative to host.json's `extensions.http.routePrefix` (default `api`).
"""

from __future__ import annotations

import azure.functions as func

from fleetscore.api import alerts, openapi, pairs, runs
from fleetscore.api.core import ApiContext, ApiRequest, Handler, handle
from fleetscore.context import get_services

bp = func.Blueprint()
KEY = func.AuthLevel.FUNCTION


def serve(handler: Handler, req: func.HttpRequest) -> func.HttpResponse:
    """Run a core handler for an HTTP request."""
    services = get_services()
    ctx = ApiContext(services.engine, services.store, services.settings)
    answer = handle(handler, ctx, ApiRequest(params=dict(req.params), route=dict(req.route_params),
                                             body=req.get_body() or b""))
    return func.HttpResponse(answer.body, status_code=answer.status, mimetype=answer.content_type)


@bp.function_name("api_list_alerts")
@bp.route(route="alerts", methods=[func.HttpMethod.GET], auth_level=KEY)
def api_list_alerts(req: func.HttpRequest) -> func.HttpResponse:
    return serve(alerts.list_alerts, req)


@bp.function_name("api_get_alert")
@bp.route(route="alerts/{alert_id}", methods=[func.HttpMethod.GET], auth_level=KEY)
def api_get_alert(req: func.HttpRequest) -> func.HttpResponse:
    return serve(alerts.get_alert, req)


@bp.function_name("api_acknowledge_alert")
@bp.route(route="alerts/{alert_id}/acknowledge", methods=[func.HttpMethod.POST], auth_level=KEY)
def api_acknowledge_alert(req: func.HttpRequest) -> func.HttpResponse:
    return serve(alerts.acknowledge, req)


@bp.function_name("api_resolve_alert")
@bp.route(route="alerts/{alert_id}/resolve", methods=[func.HttpMethod.POST], auth_level=KEY)
def api_resolve_alert(req: func.HttpRequest) -> func.HttpResponse:
    return serve(alerts.resolve, req)


@bp.function_name("api_pair_windows")
@bp.route(route="pairs/{device}/{sensor}/windows", methods=[func.HttpMethod.GET], auth_level=KEY)
def api_pair_windows(req: func.HttpRequest) -> func.HttpResponse:
    return serve(pairs.pair_windows, req)


@bp.function_name("api_runs")
@bp.route(route="runs", methods=[func.HttpMethod.GET], auth_level=KEY)
def api_runs(req: func.HttpRequest) -> func.HttpResponse:
    return serve(runs.list_runs, req)


@bp.function_name("api_health")
@bp.route(route="health", methods=[func.HttpMethod.GET], auth_level=KEY)
def api_health(req: func.HttpRequest) -> func.HttpResponse:
    return serve(runs.health, req)


@bp.function_name("api_openapi")
@bp.route(route="openapi.json", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
def api_openapi(req: func.HttpRequest) -> func.HttpResponse:
    return serve(openapi.openapi, req)
