"""The change-z detector: each window against its own pair's recent windows, as robust z-scores (pure numpy/pandas).

A sensor's level moves for many normal reasons that a model of absolute values has to learn one by one (daily and
weekly cycles, trends, slow wander, a new operating point): a window is judged instead by how it *changes* from the
windows just before it, and by its spread.

Features (:func:`change_features`, over window features sorted or not; times epoch ms or UTC datetimes):

* ``mean_change``: the window's mean minus the median of the pair's means in the :data:`CONTEXT_WINDOWS` windows
  before it (windows ending in [end - C·W, end - W]); NaN when none of them has a reading, and NaN while *settling*;
* ``settling``: the window lies within :data:`SETTLE_WINDOWS` windows after an *announced change* of its device: a
  window of one of the device's announce sensors (:data:`ANNOUNCE_SENSORS`, e.g. a setpoint) whose mean differs
  from that sensor's previous window or whose readings differ within it. A new setpoint moves the sensors it
  controls to a new level: that is not a fault, and the recent windows are a baseline again once they have settled.

The detector (:class:`ChangeDetector`, ``MODEL_ALGORITHM=change-z``) fits seven numbers per pair on its training
windows (settling ones and those without a baseline left out): the daily cycle's share of ``mean_change`` (a
least-squares fit of it on the sine and cosine of the time of day: a daily cycle makes the recent past lag the
present by an amount that depends on the hour, which this removes), the median and robust scale of what remains,
a floor for the spread (:data:`STD_FLOOR_SHARE` of the median std of the windows whose readings differ: a
sensor that reports only changes, or a coarse one, has mostly windows of no spread, and a floor of 0 would make
any change look infinitely far from them) and the median and robust scale of log(std + floor) (at least
:data:`LOG_STD_SCALE_FLOOR`). The score of a window is the larger of |z| of the two; a window without a baseline
(no reading in the context) contributes no change, a window with fewer than 2 readings no spread. A robust scale
is the larger of 1.4826·MAD and the 90th percentile of |x - median| / 1.645 (equal for a normal sample; the second
does not collapse on quantised or mostly-constant sensors, whose MAD is 0). A sensor stuck on one value has std 0,
log(floor) far below its usual spread; a spike, a step or a burst of noise moves the mean or the spread away from the
recent past.

The scoring job needs :data:`LOOKBACK_WINDOWS` windows before a run's first window to compute both (the export
carries them as context rows, not scored).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

try:
    from .features import epoch_ms, window_features
except ImportError:  # the Azure ML code snapshot: this folder is the working directory, not a package
    from features import epoch_ms, window_features

CONTEXT_WINDOWS = 6
"""Windows before a window that form its baseline (30 minutes at 5-minute windows)."""
SETTLE_WINDOWS = 18
"""Windows after an announced change (its own included) that are not judged (90 minutes at 5-minute windows)."""
LOOKBACK_WINDOWS = CONTEXT_WINDOWS + SETTLE_WINDOWS
"""Windows before a run's first window that its scoring reads (baselines and changes announced before it)."""
ANNOUNCE_SENSORS: tuple[str, ...] = ("setpoint",)
"""Sensors whose change announces a normal level change of their device's other sensors (default)."""
FEATURES: tuple[str, ...] = ("mean_change", "std", "n", "tod_sin", "tod_cos")
"""What the change-z detector reads, in this order (``n``: readings in the window; the time of day as in
:func:`features.time_features`)."""
PARAMS: tuple[str, ...] = ("daily_sin", "daily_cos", "change_center", "change_scale", "std_floor", "log_std_center",
                           "log_std_scale")
"""A fitted detector's numbers, in this order (what the model pack stores per model)."""
MIN_DAILY_FIT = 20
"""Windows with a change that the daily share is fitted on at least (else it is taken as none)."""
STD_FLOOR_SHARE = 0.1
"""The spread's floor, as a share of the pair's median window std over windows with 2 readings or more that differ."""
LOG_STD_SCALE_FLOOR = 0.25
"""The log spread's scale is at least this: a window std of a few readings varies by ~1/sqrt(2(n - 1)) in log terms
(0.35 at 5 readings), and a quantised sensor whose windows nearly all show the same std (two readings one step
apart) would otherwise get a scale of almost nothing and call every other window far out."""
_MAD_TO_SD = 1.4826
_Q90_TO_SD = 1.0 / 1.645
_TINY = 1e-12


def baseline_change(mean: np.ndarray, device: np.ndarray, sensor: np.ndarray, end: np.ndarray, window_ms: int,
                    context: int) -> np.ndarray:
    """(rows,) mean minus the median of the earlier means of the same pair ending within ``context`` windows before
    it; rows sorted by (device, sensor, end), ``end`` epoch ms. NaN where no earlier mean is in reach."""
    rows = len(mean)
    earlier = np.full((rows, context), np.nan)
    for j in range(1, min(context, rows - 1) + 1):  # row i - j, the j-th row before
        reach = (device[j:] == device[:-j]) & (sensor[j:] == sensor[:-j]) & (end[j:] - end[:-j] <= context * window_ms)
        earlier[j:, j - 1] = np.where(reach, mean[:-j], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no baseline
        return mean - np.nanmedian(earlier, axis=1) if rows else np.zeros(0)


def announced_changes(frame: pd.DataFrame, end: np.ndarray, announce: Sequence[str]) -> pd.DataFrame:
    """The announced changes (columns device, start: the window end of the change, epoch ms), sorted by start:
    windows of an announce sensor whose mean differs from its previous window's or whose min differs from its
    max."""
    is_announce = frame["sensor"].astype(str).isin(list(announce)).to_numpy()
    sub = pd.DataFrame({"device": frame["device"].astype(str).to_numpy()[is_announce],
                        "sensor": frame["sensor"].astype(str).to_numpy()[is_announce], "start": end[is_announce],
                        "mean": frame["mean"].to_numpy(dtype=np.float64)[is_announce],
                        "spread": (frame["max"].to_numpy(dtype=np.float64)
                                   - frame["min"].to_numpy(dtype=np.float64))[is_announce]})
    sub = sub.sort_values(["device", "sensor", "start"], kind="stable")
    previous = sub.groupby(["device", "sensor"], sort=False)["mean"].shift()
    changed = (previous.notna() & (sub["mean"] != previous)) | (sub["spread"] != 0)
    return sub.loc[changed, ["device", "start"]].sort_values("start", kind="stable", ignore_index=True)


def settling_rows(frame: pd.DataFrame, end: np.ndarray, announce: Sequence[str], window_ms: int,
                  settle: int) -> np.ndarray:
    """(rows,) bool: the row's window ends within ``settle`` windows of its device's latest announced change (the
    change's own window included)."""
    changes = announced_changes(frame, end, announce)
    if changes.empty or not len(frame):
        return np.zeros(len(frame), dtype=bool)
    rows = pd.DataFrame({"device": frame["device"].astype(str).to_numpy(), "end": end, "row": np.arange(len(frame))})
    rows = rows.sort_values("end", kind="stable")
    latest = pd.merge_asof(rows, changes.rename(columns={"start": "end_change"}), left_on="end",
                           right_on="end_change", by="device", direction="backward")
    out = np.zeros(len(frame), dtype=bool)
    out[latest["row"].to_numpy()] = (latest["end"] - latest["end_change"] < settle * window_ms).fillna(False).to_numpy()
    return out


def change_features(features: pd.DataFrame, window_ms: int, *, announce: Sequence[str] = ANNOUNCE_SENSORS,
                    context: int = CONTEXT_WINDOWS, settle: int = SETTLE_WINDOWS) -> pd.DataFrame:
    """``features`` (window features: device, sensor, window_end, n, mean, min, max, std) with ``mean_change`` and
    ``settling`` added (module docstring), in the same row order. Pure."""
    end = epoch_ms(features["window_end"])
    device = features["device"].astype(str).to_numpy()
    sensor = features["sensor"].astype(str).to_numpy()
    order = np.lexsort((end, sensor, device))
    change = np.empty(len(features))
    change[order] = baseline_change(features["mean"].to_numpy(dtype=np.float64)[order], device[order], sensor[order],
                                    end[order], window_ms, context)
    settling = settling_rows(features, end, announce, window_ms, settle)
    change[settling] = np.nan
    return features.assign(mean_change=change, settling=settling)


def model_features(windows: pd.DataFrame, names: Sequence[str], window_ms: int, *,
                   announce: Sequence[str] = ANNOUNCE_SENSORS, context: int = CONTEXT_WINDOWS,
                   settle: int = SETTLE_WINDOWS) -> pd.DataFrame:
    """:func:`features.window_features` of ``windows``, plus ``mean_change`` and ``settling`` (:func:`change_features`
    over all the rows given, context rows included) when ``names`` asks for ``mean_change``. Same row order."""
    feats = window_features(windows)
    if "mean_change" in names:
        feats = change_features(feats, window_ms, announce=announce, context=context, settle=settle)
    return feats


# ------------------------------------------------------------------------------------------ the detector
def _robust(x: np.ndarray) -> tuple[float, float]:
    """(median, robust scale) of the finite values of x (module docstring); (0, 1) for none."""
    x = x[np.isfinite(x)]
    if not len(x):
        return 0.0, 1.0
    center = float(np.median(x))
    dev = np.abs(x - center)
    return center, max(_MAD_TO_SD * float(np.median(dev)), _Q90_TO_SD * float(np.quantile(dev, 0.9)), _TINY)


def daily_share(change: np.ndarray, tod_sin: np.ndarray, tod_cos: np.ndarray) -> tuple[float, float]:
    """(a, b): the least-squares fit change ≈ c + a·tod_sin + b·tod_cos over the finite changes; (0, 0) with
    fewer than :data:`MIN_DAILY_FIT` of them."""
    ok = np.isfinite(change)
    if ok.sum() < MIN_DAILY_FIT:
        return 0.0, 0.0
    A = np.column_stack([np.ones(int(ok.sum())), tod_sin[ok], tod_cos[ok]])
    coef, *_ = np.linalg.lstsq(A, change[ok], rcond=None)
    return float(coef[1]), float(coef[2])


def fit_params(X: np.ndarray) -> np.ndarray:
    """(len(PARAMS),) :data:`PARAMS` fitted on X (windows, :data:`FEATURES`)."""
    X = np.asarray(X, dtype=np.float64)
    change, std, n, tod_sin, tod_cos = X.T
    a, b = daily_share(change, tod_sin, tod_cos)
    spread = std[(n >= 2) & np.isfinite(std)]
    moving = spread[spread > 0]
    floor = max(STD_FLOOR_SHARE * float(np.median(moving)), _TINY) if len(moving) else _TINY
    c_center, c_scale = _robust(change - a * tod_sin - b * tod_cos)
    s_center, s_scale = _robust(np.log(spread + floor))
    s_scale = max(s_scale, LOG_STD_SCALE_FLOOR)
    return np.array([a, b, c_center, c_scale, floor, s_center, s_scale])


def change_scores(X: np.ndarray, params: np.ndarray) -> np.ndarray:
    """(rows,) score of each row of X (rows, :data:`FEATURES`) under its own params (rows, :data:`PARAMS`): the
    larger of |z| of the change (its daily share removed) and of the log spread; a NaN change or n < 2 contributes
    0."""
    X = np.asarray(X, dtype=np.float64)
    change, std, n, tod_sin, tod_cos = X.T
    a, b, c_center, c_scale, floor, s_center, s_scale = params.T
    z_change = np.abs(change - a * tod_sin - b * tod_cos - c_center) / c_scale
    with np.errstate(invalid="ignore", divide="ignore"):
        z_spread = np.abs(np.log(np.maximum(std, 0.0) + floor) - s_center) / s_scale
    z_change = np.where(np.isnan(change), 0.0, z_change)
    z_spread = np.where((n >= 2) & np.isfinite(std), z_spread, 0.0)
    return np.maximum(z_change, z_spread)


class ChangeDetector:
    """change-z as a scikit-learn style detector (fit, decision_function = -score, score_samples), for training,
    calibration (:mod:`thresholds` clones it) and the reference computation of the engine's vectorised path."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}

    def set_params(self, **params: Any) -> ChangeDetector:
        if params:
            raise ValueError(f"change-z has no parameters, got {sorted(params)}")
        return self

    def fit(self, X: np.ndarray, y: Any = None) -> ChangeDetector:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURES):
            raise ValueError(f"change-z reads {len(FEATURES)} features {FEATURES}, got shape {X.shape}")
        self.params_ = fit_params(X)
        self.n_features_in_ = len(FEATURES)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Negated scores (higher is more normal), as scikit-learn's detectors."""
        X = np.asarray(X, dtype=np.float64)
        return -change_scores(X, np.broadcast_to(self.params_, (len(X), len(PARAMS))))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """+1 normal / -1 beyond 3 robust sd, for scikit-learn compatibility; alerts use calibrated thresholds."""
        return np.where(self.decision_function(X) < -3.0, -1, 1)
