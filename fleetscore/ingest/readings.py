"""Reading validation: event bodies and file rows in, valid readings and dead letters out.

The Reading contract (DESIGN.md): `{"device": "d-0001", "sensor": "temp", "ts": "2026-11-23T10:00:05Z",
"value": 21.4}`; an Event Hubs body is one such object or a JSON array of them. Nothing here raises on
bad input: each bad item becomes a `DeadLetter` with a reason code and a human detail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

import numpy as np
import pandas as pd

from fleetscore.clock import to_ms
from scoring_job.contract import ID_PATTERN

EPOCH_MS_THRESHOLD = 100_000_000_000
"""A numeric `ts` at or above this is epoch milliseconds, below it epoch seconds (1e11 s is year 5138)."""
MIN_TS_MS = 0
MAX_TS_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z
READING_COLUMNS = ("device", "sensor", "ts", "value")
_VALID_IDS: set[str] = set()
"""Ids already seen to match ID_PATTERN (bounded; a cache, not a registry)."""


@dataclass(frozen=True)
class RawEvent:
    """One delivered message, decoupled from `azure.functions.EventHubEvent`."""

    body: bytes
    partition: str | None = None
    sequence_number: int | None = None
    offset: str | None = None
    enqueued_time_ms: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A rejected payload with a short reason code (`bad_json`, `missing_field`, …) and a detail."""

    payload: str
    reason: str
    detail: str
    partition: str | None = None
    sequence_number: int | None = None
    offset: str | None = None
    enqueued_time_ms: int | None = None


@dataclass
class Decoded:
    """Validated readings as parallel lists plus the dead letters of one batch."""

    device: list[str] = field(default_factory=list)
    sensor: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    event_index: list[int] = field(default_factory=list)
    item_index: list[int] = field(default_factory=list)
    """Position in its event's JSON array, or -1 when the event is one object."""
    dead: list[DeadLetter] = field(default_factory=list)

    def add(self, device: str, sensor: str, ts: int, value: float, event_index: int, item_index: int) -> None:
        """Append one valid reading."""
        self.device.append(device)
        self.sensor.append(sensor)
        self.ts.append(ts)
        self.value.append(value)
        self.event_index.append(event_index)
        self.item_index.append(item_index)

    def payload_of(self, i: int, events: Sequence[RawEvent] | None = None) -> str:
        """The raw JSON of valid reading `i`, rebuilt on demand (for a dead letter written after
        validation, e.g. a conflict); without the events, the reading's parsed fields as JSON."""
        if events is not None:
            body = events[self.event_index[i]].body
            if self.item_index[i] < 0:
                return payload_text(body)
            try:
                return _dump(json.loads(body)[self.item_index[i]])
            except (ValueError, TypeError, IndexError, KeyError):
                pass
        return _dump({"device": self.device[i], "sensor": self.sensor[i], "ts": self.ts[i], "value": self.value[i]})

    def frame(self) -> pd.DataFrame:
        """Valid readings: device, sensor (str), ts (int64 epoch ms UTC), value (float64), plus
        plus event_index (position of its event in the batch)."""
        return pd.DataFrame({
            "device": pd.Series(self.device, dtype=object),
            "sensor": pd.Series(self.sensor, dtype=object),
            "ts": np.asarray(self.ts, dtype=np.int64),
            "value": np.asarray(self.value, dtype=np.float64),
            "event_index": np.asarray(self.event_index, dtype=np.int64),
        })


class InvalidReading(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_id(value: object, name: str) -> str:
    """A device/sensor id: a string or integer (turned into a string) matching `ID_PATTERN`."""
    if type(value) is str and value in _VALID_IDS:  # a fleet's ids repeat in every batch
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidReading("bad_id", f"{name} must be a string or integer, got {type(value).__name__}")
    text = str(value)
    if not ID_PATTERN.fullmatch(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidReading("bad_id", f"{name} {shown!r} is not 1-64 characters of [A-Za-z0-9._:-]")
    if len(_VALID_IDS) < 200_000:
        _VALID_IDS.add(text)
    return text


def parse_ts(value: object, *, naive_tz: tzinfo | None = None) -> int:
    """Epoch ms UTC from ISO-8601 with an offset, or epoch seconds/milliseconds.

    A naive ISO timestamp is refused unless `naive_tz` says which zone it is in (files only).
    Sub-millisecond parts are rounded to the nearest millisecond.
    """
    if isinstance(value, bool):
        raise InvalidReading("bad_ts", "ts must be ISO-8601 or epoch seconds/ms, got a boolean")
    if isinstance(value, (int, float)):
        try:
            if not math.isfinite(value):
                raise InvalidReading("bad_ts", f"ts {value!r} is not finite")
            ms = int(value) if abs(value) >= EPOCH_MS_THRESHOLD else int(round(value * 1000))
        except OverflowError:  # a JSON integer too large for a float
            raise InvalidReading("bad_ts", f"ts {str(value)[:40]}... is out of range") from None
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidReading("bad_ts", f"ts {value[:80]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            if naive_tz is None:
                raise InvalidReading("naive_ts", f"ts {value[:80]!r} has no UTC offset")
            parsed = parsed.replace(tzinfo=naive_tz)
        ms = to_ms(parsed)
    else:
        raise InvalidReading("bad_ts", f"ts must be ISO-8601 or epoch seconds/ms, got {type(value).__name__}")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise InvalidReading("bad_ts", f"ts {value!r} is outside 1970..9999")
    return ms


def parse_value(value: object) -> float:
    """A finite JSON number (booleans and numeric strings are refused); -0.0 becomes 0.0, so that a window's
    stored min/max/sum do not depend on which of two equal readings arrived first."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidReading("bad_value", f"value must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer too large for a float
        raise InvalidReading("bad_value", f"value {str(value)[:40]}... is out of range") from None
    if not math.isfinite(number):
        raise InvalidReading("bad_value", f"value {value!r} is not finite")
    return number + 0.0  # IEEE 754: -0.0 + 0.0 == +0.0, every other value unchanged


def parse_reading(item: object, *, naive_tz: tzinfo | None = None) -> tuple[str, str, int, float]:
    """One reading object → (device, sensor, ts_ms, value), or `InvalidReading`."""
    if not isinstance(item, dict):
        raise InvalidReading("not_object", f"a reading must be a JSON object, got {type(item).__name__}")
    missing = [k for k in READING_COLUMNS if k not in item or item[k] is None]
    if missing:
        raise InvalidReading("missing_field", "missing field(s): " + ", ".join(missing))
    return (parse_id(item["device"], "device"), parse_id(item["sensor"], "sensor"),
            parse_ts(item["ts"], naive_tz=naive_tz), parse_value(item["value"]))


def payload_text(raw: bytes | str) -> str:
    """A payload as storable text: undecodable bytes backslash-escaped, NUL (refused by PostgreSQL text)
    written as \\u0000."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="backslashreplace")
    return text.replace("\x00", "\\u0000")


class _Meta(Mapping):
    """An event's position fields as DeadLetter keyword arguments, read only when a letter is written."""

    __slots__ = ("_event",)
    _KEYS = ("partition", "sequence_number", "offset", "enqueued_time_ms")

    def __init__(self, event: RawEvent) -> None:
        self._event = event

    def __getitem__(self, key: str):
        return getattr(self._event, key)

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


def _well_formed(item: object) -> tuple[str, str, int, float] | None:
    """The common case without the general checks: known ids, epoch-ms int ts in range, a finite float
    value. None sends the item through `parse_reading` (which decides, and explains, everything else)."""
    if type(item) is not dict:
        return None
    device, sensor, ts, value = item.get("device"), item.get("sensor"), item.get("ts"), item.get("value")
    if (type(device) is str and type(sensor) is str and type(ts) is int and type(value) is float
            and device in _VALID_IDS and sensor in _VALID_IDS and EPOCH_MS_THRESHOLD <= ts <= MAX_TS_MS
            and math.isfinite(value)):
        return device, sensor, ts, value + 0.0  # -0.0 → 0.0, as parse_value
    return None


def decode_events(events: Sequence[RawEvent]) -> Decoded:
    """Decode a delivered batch; never raises on bad input."""
    out = Decoded()
    add = out.add
    for index, event in enumerate(events):
        meta = _Meta(event)
        body = event.body
        if not body or not body.strip():
            out.dead.append(DeadLetter(payload_text(body or b""), "empty_body", "the event body is empty", **meta))
            continue
        try:  # JSON between systems is UTF-8 (RFC 8259): decode directly, no encoding detection
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            doc = json.loads(text[1:] if text.startswith("\ufeff") else text)  # a leading BOM is tolerated
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            out.dead.append(DeadLetter(payload_text(body), "bad_json", f"not JSON: {exc}"[:1000], **meta))
            continue
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            out.dead.append(DeadLetter(payload_text(body), "empty_body", "the event holds an empty array", **meta))
        single = not isinstance(doc, list)
        for pos, item in enumerate(items):
            reading = _well_formed(item)
            if reading is not None:
                add(*reading, index, -1 if single else pos)
                continue
            try:
                device, sensor, ts, value = parse_reading(item)
            except InvalidReading as bad:
                payload = payload_text(body) if single else _dump(item)
                out.dead.append(DeadLetter(payload, bad.reason, bad.detail[:1000], **meta))
                continue
            add(device, sensor, ts, value, index, -1 if single else pos)
    return out


def _dump(item: object) -> str:
    try:
        return json.dumps(item, allow_nan=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(item)


def decode_records(records: Iterable[dict], *, naive_tz: tzinfo | None = timezone.utc) -> Decoded:
    """Validate rows read from a file (CSV, JSON lines, Parquet); naive timestamps are read in `naive_tz`."""
    out = Decoded()
    for index, item in enumerate(records):
        try:
            device, sensor, ts, value = parse_reading(item, naive_tz=naive_tz)
        except InvalidReading as bad:
            out.dead.append(DeadLetter(_dump(item), bad.reason, bad.detail[:1000]))
            continue
        out.add(device, sensor, ts, value, index, -1)
    return out
