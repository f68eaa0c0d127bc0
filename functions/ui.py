"""HTTP trigger: the alerts page (`fleetscore.ui`), anonymous — it serves static files that hold no data and no key;
the page calls the API (`functions/api.py`, authLevel function) with the key its user enters."""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from fleetscore import ui

bp = func.Blueprint()


@bp.function_name("alerts_page")
@bp.route(route="ui/{file?}", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
def alerts_page(req: func.HttpRequest) -> func.HttpResponse:
    """`GET /api/ui`: the page; `GET /api/ui/alerts.js`, `…/alerts.css`: its script and style sheet."""
    found = ui.asset(req.route_params.get("file"), urlsplit(req.url).path)
    return func.HttpResponse(found.body, status_code=found.status, headers=found.headers, mimetype=found.content_type)
