"""Parsing and validating what a request carries: ids, times, comma lists, limits, JSON bodies (400 on error)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fleetscore.api.core import bad_request
from fleetscore.clock import to_ms
from scoring_job.contract import ID_PATTERN

ALERT_ID_PATTERN = r"^[A-Za-z0-9._:|-]{1,80}$"
"""An alert id as the API accepts it (today's ids are `al-` + 16 hex digits; `alerts.alert_id` holds 80)."""
_ALERT_ID = re.compile(ALERT_ID_PATTERN)
_DEVICE_ID = ID_PATTERN
ID_RULE = f"^{ID_PATTERN.pattern}$"
"""The device/sensor id rule as an anchored regex (OpenAPI)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_ACTOR = 200
MAX_NOTE = 1000
MAX_BODY = 16 * 1024


def alert_id(value: str | None) -> str:
    if value is None or not _ALERT_ID.fullmatch(value):
        raise bad_request(f"bad alert id {value!r}: 1-80 characters of [A-Za-z0-9._:|-]")
    return value


def pair_id(name: str, value: str | None) -> str:
    """A device or sensor id (the ingest rule)."""
    if value is None or not _DEVICE_ID.fullmatch(value):
        raise bad_request(f"bad {name} {value!r}: 1-64 characters of [A-Za-z0-9._:-]")
    return value


def optional_pair_id(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return None if value is None else pair_id(name, value)


def time_ms(name: str, value: str | None) -> int | None:
    """An ISO-8601 time with an offset (`Z` allowed) → epoch ms; None when absent."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(f"bad {name} {value!r}: want ISO-8601 with an offset, e.g. 2026-11-23T10:00:00Z") from None
    if parsed.tzinfo is None:
        raise bad_request(f"bad {name} {value!r}: give an offset (Z or +hh:mm)")
    try:
        return to_ms(parsed)
    except OverflowError:
        raise bad_request(f"bad {name} {value!r}: out of range") from None


def choices(params: Mapping[str, str], name: str, allowed: Sequence[str]) -> list[str] | None:
    """A comma list of words from `allowed`; None when absent."""
    value = params.get(name)
    if value is None:
        return None
    words = [w.strip() for w in value.split(",")]
    bad = [w for w in words if w not in allowed]
    if not words or bad:
        raise bad_request(f"bad {name} {value!r}: a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(words))


def limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    value = params.get("limit")
    if value is None:
        return default
    if not value.strip().isdigit() or not 1 <= int(value) <= maximum:
        raise bad_request(f"bad limit {value!r}: an integer from 1 to {maximum}")
    return int(value)


def action_body(body: bytes) -> tuple[str, str | None]:
    """(by, note) of an acknowledge/resolve body: `{"by": "...", "note": "..."}` (note optional)."""
    if len(body) > MAX_BODY:
        raise bad_request(f"the body is over {MAX_BODY} bytes")
    try:
        doc: Any = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the body is not JSON: send {\"by\": \"who\", \"note\": \"why\"}") from None
    if not isinstance(doc, dict):
        raise bad_request("the body must be a JSON object {\"by\": \"who\", \"note\": \"why\"}")
    unknown = sorted(set(doc) - {"by", "note"})
    if unknown:
        raise bad_request(f"unknown field(s) {unknown}: the body has by and note")
    by, note = doc.get("by"), doc.get("note")
    if not _text(by, MAX_ACTOR) or not by.strip():
        raise bad_request(f"by: who acts, a non-empty string of at most {MAX_ACTOR} characters (no control characters)")
    if note is not None and not _text(note, MAX_NOTE):
        raise bad_request(f"note: a string of at most {MAX_NOTE} characters (no control characters but newlines)")
    return by.strip(), note


def _text(value: Any, most: int) -> bool:
    """A string of at most `most` characters that every database stores (UTF-8, no NUL or control characters)."""
    if not isinstance(value, str) or len(value) > most or _CONTROL.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        return False
    return True
