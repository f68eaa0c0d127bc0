"""Page tokens: keyset positions signed with HMAC-SHA256, tied to the query that issued them.

A token is `base64url(JSON payload) "." base64url(HMAC)`; the payload holds the sort key of the last row served
(`k`) and a digest of the query's filters (`q`). The next page continues strictly after that key in the sort
order, so rows inserted or updated meanwhile never repeat a row or skip one that was there (the sort keys are
immutable). A token that was changed, cut, or issued for other filters is a 400.

The key: API_TOKEN_SECRET, else FLEETSCORE_API_KEY, else a random key of this process (logged once: tokens then
work only on the instance that issued them).

:func:`newest_first` serves one page of a query in that order, for every list of the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from fleetscore.api.core import ApiContext, bad_request
from fleetscore.settings import Settings

log = logging.getLogger("fleetscore.api")
_process_key = secrets.token_bytes(32)
_warned = threading.Event()
MAX_TOKEN = 1000


def signing_key(settings: Settings) -> bytes:
    """The HMAC key of page tokens (see the module's docstring)."""
    for secret in (settings.api_token_secret, settings.api_key):
        if secret is not None and secret.get_secret_value():
            return hashlib.sha256(b"fleetscore-page-token\x00" + secret.get_secret_value().encode()).digest()
    if not _warned.is_set():
        _warned.set()
        log.warning("API_TOKEN_SECRET is not set: page tokens are signed with a key of this process only")
    return _process_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def query_digest(filters: Mapping[str, Any]) -> str:
    """16 hex digits naming a query's filters (the order of keys does not matter)."""
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_token(settings: Settings, filters: Mapping[str, Any], key: list[Any]) -> str:
    payload = json.dumps({"q": query_digest(filters), "k": key}, separators=(",", ":")).encode()
    mac = hmac.new(signing_key(settings), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def read_token(settings: Settings, token: str | None, filters: Mapping[str, Any], size: int) -> list[Any] | None:
    """The sort key a token continues after (None without a token); 400 for a token that is not ours, was
    changed, belongs to other filters, or holds a key of another shape than `size` values."""
    if token is None:
        return None
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError("too long")
        body, _, sig = token.partition(".")
        payload, mac = _unb64(body), _unb64(sig)
        if not hmac.compare_digest(mac, hmac.new(signing_key(settings), payload, hashlib.sha256).digest()):
            raise ValueError("signature")
        doc = json.loads(payload)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("bad page token: not one this API issued, or it was changed") from None
    if doc.get("q") != query_digest(filters):
        raise bad_request("bad page token: it belongs to a query with other filters; repeat those filters")
    key = doc.get("k")
    if not isinstance(key, list) or len(key) != size:
        raise bad_request("bad page token: no page position in it")
    return key


def newest_first(ctx: ApiContext, query: sa.Select, key: tuple[sa.Column, sa.Column], filters: Mapping[str, Any],
                 size: int, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `query` ordered by `key` (an integer column, then a text column: both fixed once a row is
    written) descending, strictly after `token`'s position: at most `size` rows and the next page's token (None
    on the last page). 400 for a bad token (:func:`read_token`)."""
    major, minor = key
    after = read_token(ctx.settings, token, filters, 2)
    if after is not None:
        first, last = after
        if not isinstance(first, int) or isinstance(first, bool) or not isinstance(last, str):
            raise bad_request("bad page token: no page position in it")
        query = query.where(sa.or_(major < first, sa.and_(major == first, minor < last)))
    query = query.order_by(major.desc(), minor.desc()).limit(size + 1)
    with ctx.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings().all()]
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    return rows, make_token(ctx.settings, filters, [int(rows[-1][major.name]), rows[-1][minor.name]])
