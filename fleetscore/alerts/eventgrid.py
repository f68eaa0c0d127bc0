"""The Event Grid topic alert revisions are published to (EVENTGRID_TOPIC_ENDPOINT): its URL and its auth headers.

Publishing follows Event Grid's REST contract for a custom topic with the CloudEvents 1.0 input schema, as the
azure-eventgrid SDK sends it (``EventGridPublisherClient.send`` for CloudEvents): ``POST <endpoint>?api-version=
2018-01-01``, ``Content-Type: application/cloudevents-batch+json; charset=utf-8``, a JSON array of events (at most
1 MB in all), and either the topic's access key in the ``aeg-sas-key`` header (EVENTGRID_TOPIC_KEY) or a Microsoft
Entra access token for the scope ``https://eventgrid.azure.net/.default`` (``Authorization: Bearer``; the identity
needs the role EventGrid Data Sender on the topic). The delivery itself — retries, the deadline, the per-alert
mark — is the outbox's, shared with the webhook (:mod:`fleetscore.alerts.webhook`).
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fleetscore.settings import Settings

API_VERSION = "2018-01-01"
SCOPE = "https://eventgrid.azure.net/.default"
KEY_HEADER = "aeg-sas-key"
BATCH = 100
"""Alert events per POST (~1 KB each: far below the topic's 1 MB per request)."""
TOKEN_MARGIN_SECONDS = 300
"""A cached token is replaced this long before it expires."""


class CredentialError(RuntimeError):
    """No Microsoft Entra token could be had for the topic (nothing can be sent this round)."""


def publish_url(endpoint: str) -> str:
    """The topic endpoint with ``api-version`` set (kept when the endpoint already names one)."""
    parts = urlsplit(endpoint)
    query = dict(parse_qsl(parts.query))
    query.setdefault("api-version", API_VERSION)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


@lru_cache(maxsize=1)
def default_credential() -> Any:
    """One ``DefaultAzureCredential`` per process (the app's managed identity in Azure), made on first use."""
    from azure.identity import DefaultAzureCredential  # lazy: only a topic without a key needs it

    return DefaultAzureCredential()


class _TokenCache:
    """The topic's bearer token, fetched once and reused until :data:`TOKEN_MARGIN_SECONDS` before it expires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: Any = None

    def get(self) -> str:
        with self._lock:
            if self._token is None or self._token.expires_on - TOKEN_MARGIN_SECONDS <= time.time():
                try:
                    self._token = default_credential().get_token(SCOPE)
                except Exception as exc:  # azure-identity raises ClientAuthenticationError and its kin
                    raise CredentialError(f"no Microsoft Entra token for Event Grid ({SCOPE}): "
                                          f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            return str(self._token.token)

    def clear(self) -> None:
        with self._lock:
            self._token = None


tokens = _TokenCache()


def auth_headers(settings: Settings) -> dict[str, str]:
    """``aeg-sas-key`` with EVENTGRID_TOPIC_KEY, else ``Authorization: Bearer <Entra token>``."""
    if settings.eventgrid_topic_key is not None:
        return {KEY_HEADER: settings.eventgrid_topic_key.get_secret_value()}
    return {"Authorization": f"Bearer {tokens.get()}"}
