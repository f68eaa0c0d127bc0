"""Window maths against an independent pandas computation (timestamps, `dt.ceil`, `resample`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleetscore.ingest.windows import aggregate, closed_range, window_end

W_MIN = 5
W_MS = W_MIN * 60_000


def to_ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)


@pytest.mark.parametrize(("ts", "end"), [
    ("2026-11-23T10:05:00Z", "2026-11-23T10:05:00Z"),      # exactly on the boundary: inclusive end
    ("2026-11-23T10:05:00.001Z", "2026-11-23T10:10:00Z"),  # one ms later: next window
    ("2026-11-23T10:04:59.999Z", "2026-11-23T10:05:00Z"),
    ("2026-11-23T10:00:00.001Z", "2026-11-23T10:05:00Z"),
    ("2026-11-24T00:00:00Z", "2026-11-24T00:00:00Z"),
    ("1970-01-01T00:00:00.001Z", "1970-01-01T00:05:00Z"),
])
def test_boundaries_are_inclusive_at_the_end(ts, end):
    assert int(window_end(np.array([to_ms(ts)]), W_MS)[0]) == to_ms(end)


def independent_windows(df: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """The same aggregation written another way: pandas timestamps and dt.ceil."""
    t = pd.to_datetime(df["ts"], unit="ms", utc=True)
    frame = df.assign(end=t.dt.ceil(f"{minutes}min"))
    rows = []
    for (device, sensor, end), g in frame.groupby(["device", "sensor", "end"]):
        v = g["value"].to_numpy()
        rows.append((device, sensor, int(end.value // 1_000_000), len(v), v.sum(), (v ** 2).sum(), v.min(), v.max()))
    return pd.DataFrame(rows, columns=["device", "sensor", "window_end", "n", "sum", "sumsq", "min", "max"])


@pytest.mark.parametrize("minutes", [1, 5, 7, 60])
def test_aggregate_matches_independent_pandas(minutes):
    rng = np.random.default_rng(minutes)
    base = to_ms("2026-11-23T00:00:00Z")
    n = 5000
    # a third of the readings sit exactly on a minute boundary, the rest anywhere
    ts = base + rng.integers(0, 6 * 3600, n) * 1000
    ts[: n // 3] = base + rng.integers(0, 360, n // 3) * 60_000
    df = pd.DataFrame({"device": rng.choice(["d-1", "d-2", "d-3"], n),
                       "sensor": rng.choice(["temp", "rh"], n), "ts": ts, "value": rng.normal(20, 5, n)})
    df = df.drop_duplicates(["device", "sensor", "ts"])
    ours = aggregate(df, minutes * 60_000).reset_index(drop=True)
    theirs = independent_windows(df, minutes)
    assert list(ours.columns) == list(theirs.columns)
    assert ours[["device", "sensor", "window_end", "n"]].astype(str).equals(
        theirs[["device", "sensor", "window_end", "n"]].astype(str))
    for col in ("sum", "sumsq", "min", "max"):
        np.testing.assert_allclose(ours[col], theirs[col], rtol=1e-12)


def test_closed_range_against_hand_computation():
    slot = to_ms("2026-11-23T11:05:00Z")
    late = 300_000
    # with 5 min lateness, the newest closed window ends 11:00
    assert closed_range(slot, late, None, W_MS, 3_600_000) == (to_ms("2026-11-23T10:00:00Z"),
                                                                to_ms("2026-11-23T11:00:00Z"))
    # a watermark bounds the start; lateness not on a window boundary rounds the end down
    assert closed_range(slot, 420_000, to_ms("2026-11-23T10:40:00Z"), W_MS, 3_600_000) == (
        to_ms("2026-11-23T10:40:00Z"), to_ms("2026-11-23T10:55:00Z"))
