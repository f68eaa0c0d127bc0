"""Tumbling-window maths, as Azure Stream Analytics' `TumblingWindow(minute, W)`.

Windows are aligned to the Unix epoch, cover (end − W, end] — inclusive at the end — and are
labelled by their end: a reading at exactly 10:05:00 belongs to the window ending 10:05:00.
All times are int64 epoch milliseconds UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring_job.contract import WINDOW_COLUMNS


def window_end(ts_ms: np.ndarray, window_ms: int) -> np.ndarray:
    """The end label of the window holding each timestamp: ceil(ts / W) · W (int64 ms)."""
    return -((-np.asarray(ts_ms, dtype=np.int64)) // window_ms) * window_ms


def window_end_of(ts_ms: int, window_ms: int) -> int:
    """`window_end` for one timestamp (plain ints, for per-row loops)."""
    return -(-ts_ms // window_ms) * window_ms


def aggregate(readings: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Aggregate readings (device, sensor, ts ms, value) into window rows.

    Returns one row per (device, sensor, window_end) with n, sum, sumsq, min, max, sorted by key.
    Each window's values are summed in ascending value order, so the sums are bit-identical whatever
    order the readings arrived in (a property the ingest guarantees rely on).
    """
    return aggregate_arrays(readings["device"].to_numpy(dtype=object), readings["sensor"].to_numpy(dtype=object),
                            readings["ts"].to_numpy(dtype=np.int64), readings["value"].to_numpy(dtype=np.float64),
                            window_ms)


def aggregate_arrays(device: np.ndarray, sensor: np.ndarray, ts: np.ndarray, value: np.ndarray,
                     window_ms: int) -> pd.DataFrame:
    """`aggregate` over parallel arrays (object, object, int64 ms, float64), all of one length."""
    if len(ts) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            WINDOW_COLUMNS, (object, object, "int64", "int64", "float64", "float64", "float64", "float64"),
            strict=True)})
    dev_codes, dev_names = pd.factorize(device, sort=True)
    sen_codes, sen_names = pd.factorize(sensor, sort=True)
    ends = window_end(ts, window_ms)
    order = np.lexsort((value, ends, sen_codes, dev_codes))
    dev_s, sen_s, end_s, val_s = dev_codes[order], sen_codes[order], ends[order], value[order]
    new_group = np.empty(len(order), dtype=bool)
    new_group[0] = True
    new_group[1:] = (dev_s[1:] != dev_s[:-1]) | (sen_s[1:] != sen_s[:-1]) | (end_s[1:] != end_s[:-1])
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, len(order)))
    return pd.DataFrame({
        "device": np.asarray(dev_names, dtype=object)[dev_s[starts]],
        "sensor": np.asarray(sen_names, dtype=object)[sen_s[starts]],
        "window_end": end_s[starts],
        "n": counts.astype(np.int64),
        "sum": np.add.reduceat(val_s, starts),
        "sumsq": np.add.reduceat(val_s * val_s, starts),
        "min": val_s[starts],
        "max": val_s[starts + counts - 1],
    })


def closed_range(slot_ms: int, late_arrival_ms: int, watermark_ms: int | None,
                 window_ms: int, max_lookback_ms: int) -> tuple[int, int]:
    """The (from, until] range of window ends a run at `slot_ms` scores.

    until: the newest window end with end ≤ slot − lateness (a closed window, aligned down).
    from:  the watermark (exclusive) — or, before any run, until − max_lookback.
    """
    until = ((slot_ms - late_arrival_ms) // window_ms) * window_ms
    start = watermark_ms if watermark_ms is not None else until - max_lookback_ms
    return start, until
