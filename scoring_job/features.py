"""Per-window features from tumbling-window aggregates (pure, vectorised)."""

from __future__ import annotations

import numpy as np
import pandas as pd

try:
    from .contract import WINDOW_COLUMNS
except ImportError:  # the Azure ML code snapshot: this folder is the working directory, not a package
    from contract import WINDOW_COLUMNS

#: Default feature columns, in the order the models see them.
FEATURES: tuple[str, ...] = ("mean", "min", "max", "std")


def window_features(windows: pd.DataFrame) -> pd.DataFrame:
    """Turn window aggregates into model features.

    Input columns: device, sensor, window_end (tz-aware UTC), n (readings, int), sum, sumsq, min, max
    (float64, in the sensor's unit). Output columns: device, sensor, window_end, n, mean, min, max, std,
    one row per input row in the same order. ``std`` is the sample standard deviation (ddof=1, like
    Azure Stream Analytics ``STDEV``), 0.0 when n < 2; a tiny negative variance from rounding is clipped
    to 0. ``mean`` is NaN when n == 0.
    """
    missing = [c for c in WINDOW_COLUMNS if c not in windows.columns]
    if missing:
        raise ValueError(f"window_features: missing columns {missing}")
    n = windows["n"].to_numpy(dtype=np.int64)
    s = windows["sum"].to_numpy(dtype=np.float64)
    ss = windows["sumsq"].to_numpy(dtype=np.float64)
    nf = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s / nf, np.nan)
        # (sumsq - sum^2/n) / (n - 1); clip the rounding residue below zero
        var = np.where(n >= 2, (ss - s * mean) / (nf - 1.0), 0.0)
    var = np.where(np.isfinite(var), np.maximum(var, 0.0), var)
    std = np.sqrt(var)
    return pd.DataFrame(
        {
            "device": windows["device"].array,
            "sensor": windows["sensor"].array,
            "window_end": windows["window_end"].array,
            "n": n,
            "mean": mean,
            "min": windows["min"].to_numpy(dtype=np.float64),
            "max": windows["max"].to_numpy(dtype=np.float64),
            "std": std,
        },
        index=windows.index,
    )
