"""Time: the wall clock and the conversions between epoch milliseconds and ISO-8601.

Every time in fleetscore is an int of epoch milliseconds UTC; text appears only at the edges (CLI, report,
alert documents, the host's timer status, simulated readings). The formats, by what they produce:

| function | output for 2026-11-23 10:05:00.000 / .123 |
| --- | --- |
| `iso_seconds` | `2026-11-23T10:05:00Z` / `2026-11-23T10:05:00Z` (milliseconds dropped) |
| `iso_exact` | `2026-11-23T10:05:00Z` / `2026-11-23T10:05:00.123Z` (milliseconds only when there are any) |
| `iso_offset` | `2026-11-23T10:05:00.000+00:00` / `...00.123+00:00` (the Functions host's timer status) |
| `iso_array` | `b"2026-11-23T10:05:00.000Z"` / `b"...00.123Z"` (vectorised, an S24 array) |

A missing time (None, NaN, pd.NA) formats as `missing`, which each caller chooses.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DAY_MS = 86_400_000


def now_ms() -> int:
    """Wall clock, epoch milliseconds UTC."""
    return time.time_ns() // 1_000_000


def to_datetime(ms: int) -> datetime:
    """Epoch ms → an aware UTC datetime (exact: no float on the way)."""
    return EPOCH + timedelta(milliseconds=int(ms))


def to_ms(when: datetime | pd.Timestamp | str | int) -> int:
    """Epoch ms UTC from a datetime/Timestamp/ISO string (naive means UTC) or an int of epoch ms.

    Sub-millisecond parts are rounded to the nearest millisecond (half to even)."""
    if isinstance(when, (int, np.integer)) and not isinstance(when, bool):
        return int(when)
    if not isinstance(when, datetime):
        when = pd.Timestamp(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - EPOCH
    return delta.days * DAY_MS + delta.seconds * 1000 + round(delta.microseconds / 1000)


def _missing(ms: Any) -> bool:
    return ms is None or bool(pd.isna(ms))


def iso_seconds(ms: Any, missing: str | None = None) -> str | None:
    """Epoch ms → `2026-11-23T10:05:00Z` (to the second, milliseconds dropped); `missing` for a missing time."""
    if _missing(ms):
        return missing
    return to_datetime(int(ms) // 1000 * 1000).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_exact(ms: Any, missing: str | None = None) -> str | None:
    """Epoch ms → `2026-11-23T10:05:00Z`, or `2026-11-23T10:05:00.123Z` when it has milliseconds;
    `missing` for a missing time."""
    if _missing(ms):
        return missing
    ms = int(ms)
    text = to_datetime(ms).isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def iso_offset(ms: Any, missing: str | None = None) -> str | None:
    """Epoch ms → `2026-11-23T10:05:00.000+00:00` (always milliseconds; the form of the Functions host's
    timer status); `missing` for a missing time."""
    if _missing(ms):
        return missing
    return to_datetime(int(ms)).isoformat(timespec="milliseconds")


def iso_array(ms: np.ndarray | Iterable[int]) -> np.ndarray:
    """Epoch ms (any shape, flattened to n) → ISO-8601 UTC with milliseconds and 'Z'
    (`2026-01-05T00:00:03.042Z`) as an (n,) bytes array of dtype S24.

    Vectorised (≈6x faster than `np.datetime_as_string`); years 1970–9999.
    """
    ts = np.asarray(ms, dtype=np.int64).ravel()
    if ts.size == 0:
        return np.empty(0, dtype="S24")
    day = ts // DAY_MS
    ms_of_day = (ts - day * DAY_MS).astype(np.int32)
    d0 = int(day.min())
    span = np.arange(d0, int(day.max()) + 1).astype("datetime64[D]")
    dates = np.frombuffer(np.datetime_as_string(span, unit="D").astype("S10").tobytes(), np.uint8).reshape(-1, 10)
    out = np.empty((ts.size, 24), dtype=np.uint8)
    out[:, :10] = dates[(day - d0).astype(np.intp)]
    out[:, 10], out[:, 13], out[:, 16], out[:, 19], out[:, 23] = ord("T"), ord(":"), ord(":"), ord("."), ord("Z")
    hours = ms_of_day // 3_600_000
    rest = ms_of_day - hours * 3_600_000
    minutes = rest // 60_000
    rest -= minutes * 60_000
    seconds = rest // 1000
    millis = rest - seconds * 1000
    for col, value in ((11, hours), (14, minutes), (17, seconds)):
        tens = value // 10
        out[:, col] = 48 + tens
        out[:, col + 1] = 48 + value - tens * 10
    hundreds = millis // 100
    below_100 = millis - hundreds * 100
    tens = below_100 // 10
    out[:, 20], out[:, 21], out[:, 22] = 48 + hundreds, 48 + tens, 48 + below_100 - tens * 10
    return out.view("S24").ravel()
