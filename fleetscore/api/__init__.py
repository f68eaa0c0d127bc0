"""The HTTP API for alert consumers: the core behind the Functions app's HTTP functions (`functions/api.py`).

Requests and responses are plain values (:class:`~fleetscore.api.core.ApiRequest`, :class:`~fleetscore.api.core.
ApiResponse`), so the core never imports `azure.functions`; every query is SQLAlchemy Core with bound parameters
(no SQL is built from request text). Authentication is the host's: function keys on Azure (`authLevel` function),
FLEETSCORE_API_KEY under `fleetscore up` (:mod:`fleetscore.host.http`).

| module | serves |
| --- | --- |
| `core` | request/response values, errors → JSON (400, 404, 409), the dispatcher |
| `params` | parsing and validating ids, times, lists, limits and bodies |
| `pages` | HMAC-signed keyset page tokens |
| `alerts` | `GET /api/alerts`, `GET /api/alerts/{alert_id}`, `POST …/acknowledge`, `POST …/resolve` |
| `pairs` | `GET /api/pairs/{device}/{sensor}/windows` |
| `runs` | `GET /api/runs`, `GET /api/health` |
| `openapi` | `GET /api/openapi.json` |
"""
