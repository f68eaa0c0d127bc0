"""Tumbling-window maths, as Azure Stream Analytics' `TumblingWindow(minute, W)`.

Windows are aligned to the Unix epoch, cover (end − W, end] — inclusive at the end — and are
labelled by their end: a reading at exactly 10:05:00 belongs to the window ending 10:05:00.
All times are int64 epoch milliseconds UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WINDOW_COLUMNS = ("device", "sensor", "window_end", "n", "sum", "sumsq", "min", "max")


def window_end(ts_ms: np.ndarray, window_ms: int) -> np.ndarray:
    """The end label of the window holding each timestamp: ceil(ts / W) · W (int64 ms)."""
    return -((-np.asarray(ts_ms, dtype=np.int64)) // window_ms) * window_ms


def aggregate(readings: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Aggregate readings (device, sensor, ts ms, value) into window rows.

    Returns one row per (device, sensor, window_end) with n, sum, sumsq, min, max, sorted by key.
    """
    if readings.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            WINDOW_COLUMNS, (object, object, "int64", "int64", "float64", "float64", "float64", "float64"),
            strict=True)})
    values = readings["value"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame({
        "device": readings["device"].to_numpy(),
        "sensor": readings["sensor"].to_numpy(),
        "window_end": window_end(readings["ts"].to_numpy(dtype=np.int64), window_ms),
        "value": values,
        "sq": values * values,
    })
    grouped = frame.groupby(["device", "sensor", "window_end"], sort=True)
    out = grouped.agg(n=("value", "size"), sum=("value", "sum"), sumsq=("sq", "sum"),
                      min=("value", "min"), max=("value", "max")).reset_index()
    out["n"] = out["n"].astype(np.int64)
    return out[list(WINDOW_COLUMNS)]


def closed_range(slot_ms: int, late_arrival_ms: int, watermark_ms: int | None,
                 window_ms: int, max_lookback_ms: int) -> tuple[int, int]:
    """The (from, until] range of window ends a run at `slot_ms` scores.

    until: the newest window end with end ≤ slot − lateness (a closed window, aligned down).
    from:  the watermark (exclusive) — or, before any run, until − max_lookback.
    """
    until = ((slot_ms - late_arrival_ms) // window_ms) * window_ms
    start = watermark_ms if watermark_ms is not None else until - max_lookback_ms
    return start, until
