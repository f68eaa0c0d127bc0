"""The change-z detector: each window against its own pair's recent windows, as robust z-scores (pure numpy/pandas).

A sensor's level moves for many normal reasons that a model of absolute values has to learn one by one (daily and
weekly cycles, trends, slow wander, a new operating point): a window is judged instead by how it *changes* from the
windows just before it, and by its spread.

Features (:func:`change_features`, over window features sorted or not; times epoch ms or UTC datetimes):

* ``mean_change``: the window's mean minus the median of the pair's means in the :data:`CONTEXT_WINDOWS` windows
  before it (windows ending in [end - C·W, end - W]); NaN when none of them has a reading, and NaN while *settling*;
* ``unchanged``: how many windows in a row, this one included and back at most :data:`CONTEXT_WINDOWS` windows, held
  this window's one value (:func:`unchanged_windows`; 0 when its readings differ). A sensor stuck on its last value
  repeats it window after window, which a coarse or on-change sensor also does now and then: the detector compares
  the count with the most the pair showed in training;
* ``settling``: the window lies within :data:`SETTLE_WINDOWS` windows after an *announced change* of its device: a
  window of one of the device's announce sensors (:data:`ANNOUNCE_SENSORS`, e.g. a setpoint) whose mean differs
  from that sensor's previous window or whose readings differ within it. A new setpoint moves the sensors it
  controls to a new level: that is not a fault, and the recent windows are a baseline again once they have settled.

The detector (:class:`ChangeDetector`, ``MODEL_ALGORITHM=change-z``) fits eight numbers per pair on its training
windows (settling ones and those without a baseline left out): the daily cycle's share of ``mean_change`` (a
least-squares fit of it on the sine and cosine of the time of day: a daily cycle makes the recent past lag the
present by an amount that depends on the hour, which this removes), the median and scale of what remains, a floor
for the spread (:data:`STD_FLOOR_SHARE` of the median std of the windows whose readings differ: a sensor that reports
only changes, or a coarse one, has mostly windows of no spread, and a floor of 0 would make any change look
infinitely far from them), the median and scale of log(std + floor), and the most ``unchanged`` windows the pair
showed. The score of a window is the larger of two z-scores, or :data:`STUCK_SCORE` when its ``unchanged`` count is
well beyond the pair's most (:data:`UNCHANGED_FACTOR`, :data:`UNCHANGED_EXTRA`):

* the change's: |mean_change - daily share - median| / scale; a window without a baseline (no reading in the context)
  contributes none;
* the spread's, counted *above* its median only: max(log(std + floor) - median, 0) / scale; a window with fewer than
  2 readings contributes none. A narrower spread than usual is no fault on its own (a stuck sensor is what
  ``unchanged`` finds), while a coarse or on-change sensor often has windows of no spread at all.

Each scale is *balanced* (:func:`balanced_scale`): set so that :data:`BALANCE_SHARE` of the pair's training windows
score above :data:`BALANCE_Z` on it, so the two z-scores reach the calibrated threshold equally often. With robust
scales alone, whichever z-score had the heavier tail set the pair's threshold and hid the other: a coarse sensor's
windows of no spread, far below its usual log spread, set thresholds of 7-10 that no 3-6 σ step could reach.
Measured on the varied simulator (``benchmarks/detection.py``, ``ALERT_FALSE_RATE`` 0.01): tuning seeds 101-103,
recall 0.627 at 2.2 false alerts per 1,000 pair-days with two-sided robust z-scores, 0.708 at 3.1 with these (at rate
0.02: 0.682 and 0.780, both at 9.0); measurement seeds 1-3, 0.652 and 0.681, both at 2.8. When a deviation's
share quantile is 0 (a sensor whose spread or change barely ever moves) the robust scale stays: the larger of
1.4826·MAD and the 90th percentile of |x - median| / 1.645 (equal for a normal sample; the second does not collapse
on quantised or mostly-constant sensors, whose MAD is 0), for the spread at least :data:`LOG_STD_SCALE_FLOOR`.

The scoring job needs :data:`CONTEXT_WINDOWS` windows of each pair before a run's first window for the baseline, and
:data:`LOOKBACK_WINDOWS` of the announce sensors for changes announced before it (the export carries them as context
rows, not scored: ``pack.lookback``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

try:
    from . import _kernels
    from .features import TIME_FEATURES, epoch_ms, window_features, window_mean
except ImportError:  # the Azure ML code snapshot: this folder is the working directory, not a package
    import _kernels
    from features import TIME_FEATURES, epoch_ms, window_features, window_mean

CONTEXT_WINDOWS = 6
"""Windows before a window that form its baseline (30 minutes at 5-minute windows)."""
SETTLE_WINDOWS = 18
"""Windows after an announced change (its own included) that are not judged (90 minutes at 5-minute windows)."""
LOOKBACK_WINDOWS = CONTEXT_WINDOWS + SETTLE_WINDOWS
"""Windows before a run's first window that its scoring reads (baselines and changes announced before it)."""
ANNOUNCE_SENSORS: tuple[str, ...] = ("setpoint",)
"""Sensors whose change announces a normal level change of their device's other sensors (default)."""
FEATURES: tuple[str, ...] = ("mean_change", "std", "n", "tod_sin", "tod_cos", "unchanged")
"""What the change-z detector reads, in this order (``n``: readings in the window; the time of day as in
:func:`features.time_features`; ``unchanged`` as :func:`unchanged_windows`)."""
PARAMS: tuple[str, ...] = ("daily_sin", "daily_cos", "change_center", "change_scale", "std_floor", "log_std_center",
                           "log_std_scale", "unchanged_max")
"""A fitted detector's numbers, in this order (what the model pack stores per model)."""
MIN_DAILY_FIT = 20
"""Windows with a change that the daily share is fitted on at least (else it is taken as none)."""
STD_FLOOR_SHARE = 0.1
"""The spread's floor, as a share of the pair's median window std over windows with 2 readings or more that differ."""
LOG_STD_SCALE_FLOOR = 0.25
"""The log spread's robust scale (kept when the balanced one is 0, :func:`balanced_scale`) is at least this: a window
std of a few readings varies by ~1/sqrt(2(n - 1)) in log terms (0.35 at 5 readings), and a quantised sensor whose
windows nearly all show the same std (two readings one step apart) would otherwise get a scale of almost nothing and
call every other window far out."""
UNCHANGED_FACTOR, UNCHANGED_EXTRA = 2, 2
"""A window is stuck when its ``unchanged`` count exceeds UNCHANGED_FACTOR · (the most the pair showed in training)
+ UNCHANGED_EXTRA: 3 windows in a row for a pair never constant in training, 5 for one constant now and then, never
for a pair that held a value for 3 windows or more (a coarse or on-change sensor; the count reaches
``CONTEXT_WINDOWS + 1`` at most). Measured on the varied simulator (tuning seeds 101-103, 3,240 pair-days): as an
alert rule on its own it alerted on 30 faults and raised no false alert, one window less (2·max + 1) raised 6; as part
of the score it takes the library's recall there from 0.581 to 0.627 at the same 2.2 false alerts per 1,000
pair-days."""
BALANCE_SHARE = 0.02
"""The share of a pair's training windows that score above :data:`BALANCE_Z` on each z-score (:func:`balanced_scale`);
0.05, 0.01 and 0.005 measured within the noise of it (tuning seeds), and 0.02 is 11 windows of 2 days of training."""
BALANCE_Z = 2.326
"""What |z| a normal sample exceeds with probability :data:`BALANCE_SHARE`: a balanced scale is about the sd for
normal deviations."""
VERSION = 2
"""The change-z score's version, stored in the pack's ``change`` section: 2 counts the spread above its median only
and balances the scales; packs of version 1 (no ``version``: spread two-sided, robust scales) are refused, retrain."""
STUCK_SCORE = 1000.0
"""The score of a stuck window: beyond any calibrated threshold (a sensor repeating one value longer than it ever did in
training is a fault on its own, not a matter of degree)."""
_MAD_TO_SD = 1.4826
_Q90_TO_SD = 1.0 / 1.645
_TINY = 1e-12


def pair_codes(frame: pd.DataFrame, columns: Sequence[str] = ("device", "sensor")) -> np.ndarray:
    """(rows,) int64: one code per distinct combination of ``columns`` (equal codes ⇔ equal values; the codes' order
    says nothing). Categorical columns (a partition's, :func:`score.read_partition`) use their category codes; others
    are factorized. No string is copied."""
    code = np.zeros(len(frame), dtype=np.int64)
    for name in columns:
        col = frame[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes, size = col.cat.codes.to_numpy(dtype=np.int64), len(col.cat.categories)
        else:
            codes, uniques = pd.factorize(col)
            codes, size = codes.astype(np.int64, copy=False), len(uniques)
        code = code * (size + 1) + codes  # NaN ids code as -1: their own value, as before
    return code


def nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """(rows,) the median of each row's non-NaN values of ``values`` (rows, k), NaN for a row without one: the same
    numbers as ``np.nanmedian(values, axis=1)`` (the middle value, or half the sum of the two middle ones), by one
    sort of the rows (NaN sorts last) instead of a masked array per row."""
    rows, k = values.shape
    if not rows or not k:
        return np.full(rows, np.nan)
    ordered = np.sort(values, axis=1).ravel()
    count = k - np.isnan(values).sum(axis=1)
    first = np.arange(0, rows * k, k)  # each row's first value in ``ordered``
    low = ordered[first + np.maximum(count - 1, 0) // 2]
    high = ordered[first + np.minimum(count // 2, k - 1)]
    with np.errstate(invalid="ignore", over="ignore"):
        middle = np.where(count % 2 == 1, low, (low + high) / 2.0)
    return np.where(count > 0, middle, np.nan)


def baseline_change(mean: np.ndarray, pair: np.ndarray, end: np.ndarray, window_ms: int, context: int,
                    needed: np.ndarray | None = None) -> np.ndarray:
    """(rows,) mean minus the median of the earlier means of the same pair (equal ``pair`` codes, e.g. from
    :func:`pair_codes`) ending within ``context`` windows before it; rows sorted by (pair, end), ``end`` epoch ms.
    NaN where no earlier mean is in reach, and where ``needed`` (rows,) bool, when given, is false. A numba kernel
    when numba is there (``_kernels.baseline_change``), else :func:`baseline_change_numpy`: the same numbers."""
    if not _kernels.HAVE_NUMBA:
        return baseline_change_numpy(mean, pair, end, window_ms, context, needed)
    rows = np.arange(len(mean)) if needed is None else np.flatnonzero(needed)
    out = np.full(len(mean), np.nan)
    _kernels.baseline_change(np.ascontiguousarray(mean, dtype=np.float64), np.ascontiguousarray(pair, dtype=np.int64),
                             np.ascontiguousarray(end, dtype=np.int64), rows, int(context), int(context * window_ms),
                             out)
    return out


def baseline_change_numpy(mean: np.ndarray, pair: np.ndarray, end: np.ndarray, window_ms: int, context: int,
                          needed: np.ndarray | None = None) -> np.ndarray:
    """:func:`baseline_change` in numpy: each row's earlier means as a (rows, context) array and
    :func:`nanmedian_rows` of it."""
    rows = np.arange(len(mean)) if needed is None else np.flatnonzero(needed)
    earlier = np.full((len(rows), context), np.nan)
    for j, before, reach in _rows_before(rows, pair, end, window_ms, context):
        earlier[:, j - 1] = np.where(reach, mean[before], np.nan)
    out = np.full(len(mean), np.nan)
    out[rows] = mean[rows] - nanmedian_rows(earlier)
    return out


def unchanged_windows(low: np.ndarray, high: np.ndarray, pair: np.ndarray, end: np.ndarray, window_ms: int,
                      context: int) -> np.ndarray:
    """(rows,) float64: how many windows in a row, this one included, held one value, the same as this window's (min ==
    max == this window's min): 0 for a window whose readings differ (or that has none), else 1 plus each earlier
    window of the same pair, back to the first that differs, among those ending within ``context`` windows before it
    (so at most ``context + 1``: what a partition's context rows show, whatever the run). Rows sorted by (pair, end);
    ``low``/``high`` (rows,) the windows' min and max, ``end`` epoch ms. A numba kernel when numba is there
    (``_kernels.unchanged_windows``), else :func:`unchanged_windows_numpy`: the same numbers."""
    if not _kernels.HAVE_NUMBA:
        return unchanged_windows_numpy(low, high, pair, end, window_ms, context)
    out = np.empty(len(low))
    _kernels.unchanged_windows(np.ascontiguousarray(low, dtype=np.float64),
                               np.ascontiguousarray(high, dtype=np.float64),
                               np.ascontiguousarray(pair, dtype=np.int64), np.ascontiguousarray(end, dtype=np.int64),
                               int(context), int(context * window_ms), out)
    return out


def unchanged_windows_numpy(low: np.ndarray, high: np.ndarray, pair: np.ndarray, end: np.ndarray, window_ms: int,
                            context: int) -> np.ndarray:
    """:func:`unchanged_windows` in numpy: one pass over the rows per window back."""
    held = (low == high) & np.isfinite(low)
    count = held.astype(np.float64)
    alive = held.copy()
    for _, before, reach in _rows_before(np.arange(len(low)), pair, end, window_ms, context):
        alive &= reach & held[before] & (low[before] == low)
        count += alive
    return count


def _rows_before(rows: np.ndarray, pair: np.ndarray, end: np.ndarray, window_ms: int,
                 context: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For j = 1..``context``: (j, the row j rows before each of ``rows`` (clipped at 0), whether that row is the
    same pair's and ends within ``context`` windows before it), each (len(rows),); rows sorted by (pair, end)."""
    own_pair, oldest = pair[rows], end[rows] - context * window_ms
    for j in range(1, context + 1):
        before = np.maximum(rows - j, 0)
        yield j, before, (rows >= j) & (pair[before] == own_pair) & (end[before] >= oldest)


def announced_changes(frame: pd.DataFrame, end: np.ndarray, mean: np.ndarray, announce: Sequence[str],
                      device: np.ndarray | None = None) -> pd.DataFrame:
    """The announced changes (columns device: the device's code in ``device``, by default :func:`pair_codes` of the
    device column; start: the window end of the change, epoch ms), sorted by start: windows of an announce sensor
    whose mean (in ``mean``, (rows,)) differs from its previous window's or whose min differs from its max."""
    device = pair_codes(frame, ("device",)) if device is None else device
    is_announce = frame["sensor"].isin(list(announce)).to_numpy(dtype=bool)
    sub = pd.DataFrame({"device": device[is_announce], "sensor": pair_codes(frame)[is_announce],
                        "start": end[is_announce], "mean": mean[is_announce],
                        "spread": (frame["max"].to_numpy(dtype=np.float64)
                                   - frame["min"].to_numpy(dtype=np.float64))[is_announce]})
    sub = sub.sort_values(["device", "sensor", "start"], kind="stable")
    previous = sub.groupby(["device", "sensor"], sort=False)["mean"].shift()
    changed = (previous.notna() & (sub["mean"] != previous)) | (sub["spread"] != 0)
    return sub.loc[changed, ["device", "start"]].sort_values("start", kind="stable", ignore_index=True)


def _may_hold(column: pd.Series, values: Sequence[str]) -> bool:
    """False when ``column`` holds none of ``values`` (a categorical's categories say so without a scan)."""
    if not values:
        return False
    if isinstance(column.dtype, pd.CategoricalDtype):
        return bool(column.cat.categories.isin(list(values)).any())
    return bool(column.isin(list(values)).any())


def settling_rows(frame: pd.DataFrame, end: np.ndarray, mean: np.ndarray, announce: Sequence[str], window_ms: int,
                  settle: int) -> np.ndarray:
    """(rows,) bool: the row's window ends within ``settle`` windows of its device's latest announced change (the
    change's own window included)."""
    if not len(frame) or not _may_hold(frame["sensor"], announce):
        return np.zeros(len(frame), dtype=bool)
    device = pair_codes(frame, ("device",))
    changes = announced_changes(frame, end, mean, announce, device)
    if changes.empty:
        return np.zeros(len(frame), dtype=bool)
    rows = pd.DataFrame({"device": device, "end": end, "row": np.arange(len(frame))})
    rows = rows.sort_values("end", kind="stable")
    latest = pd.merge_asof(rows, changes.rename(columns={"start": "end_change"}), left_on="end",
                           right_on="end_change", by="device", direction="backward")
    out = np.zeros(len(frame), dtype=bool)
    out[latest["row"].to_numpy()] = (latest["end"] - latest["end_change"] < settle * window_ms).fillna(False).to_numpy()
    return out


def change_columns(frame: pd.DataFrame, mean: np.ndarray, window_ms: int, *, announce: Sequence[str] = ANNOUNCE_SENSORS,
                   context: int = CONTEXT_WINDOWS, settle: int = SETTLE_WINDOWS,
                   needed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean_change, settling, unchanged), each (rows,), of ``frame`` (device, sensor, window_end, min, max; rows in
    any order) whose windows' means are ``mean`` (rows,) (module docstring); ``needed`` (rows,) bool, when given, the
    rows whose ``mean_change`` is wanted (NaN in the others: a partition's context rows are read, never scored)."""
    end = epoch_ms(frame["window_end"])
    pair = pair_codes(frame)
    low, high = frame["min"].to_numpy(dtype=np.float64), frame["max"].to_numpy(dtype=np.float64)
    if len(pair) < 2 or ((np.diff(pair) > 0) | ((np.diff(pair) == 0) & (np.diff(end) > 0))).all():
        change = baseline_change(mean, pair, end, window_ms, context, needed)  # already in (pair, end) order
        unchanged = unchanged_windows(low, high, pair, end, window_ms, context)
    else:
        order = np.lexsort((end, pair))
        change, unchanged = np.empty(len(frame)), np.empty(len(frame))
        change[order] = baseline_change(mean[order], pair[order], end[order], window_ms, context,
                                        None if needed is None else needed[order])
        unchanged[order] = unchanged_windows(low[order], high[order], pair[order], end[order], window_ms, context)
    settling = settling_rows(frame, end, mean, announce, window_ms, settle)
    change[settling] = np.nan
    return change, settling, unchanged


def change_features(features: pd.DataFrame, window_ms: int, *, announce: Sequence[str] = ANNOUNCE_SENSORS,
                    context: int = CONTEXT_WINDOWS, settle: int = SETTLE_WINDOWS) -> pd.DataFrame:
    """``features`` (window features: device, sensor, window_end, n, mean, min, max, std) with ``mean_change`` and
    ``settling`` and ``unchanged`` added (:func:`change_columns`), in the same row order. Pure."""
    change, settling, unchanged = change_columns(features, features["mean"].to_numpy(dtype=np.float64), window_ms,
                                                 announce=announce, context=context, settle=settle)
    return features.assign(mean_change=change, settling=settling, unchanged=unchanged)


def model_features(windows: pd.DataFrame, names: Sequence[str], window_ms: int, *,
                   announce: Sequence[str] = ANNOUNCE_SENSORS, context: int = CONTEXT_WINDOWS,
                   settle: int = SETTLE_WINDOWS, calendar: Sequence[str] = TIME_FEATURES,
                   rows: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`features.window_features` of ``windows`` (with the time features in ``calendar``), plus ``mean_change``,
    ``settling`` and ``unchanged`` (:func:`change_columns`, over all the rows given, context rows included) when
    ``names`` asks for ``mean_change`` or ``unchanged``; of the rows where ``rows`` (len(windows),) bool is true when
    given (their index kept), else of every row. Row order kept."""
    feats = window_features(windows if rows is None else windows[rows], calendar)
    if "mean_change" in names or "unchanged" in names:
        change, settling, unchanged = change_columns(windows, window_mean(windows), window_ms, announce=announce,
                                                     context=context, settle=settle, needed=rows)
        feats["mean_change"] = change if rows is None else change[rows]
        feats["settling"] = settling if rows is None else settling[rows]
        feats["unchanged"] = unchanged if rows is None else unchanged[rows]
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


def balanced_scale(deviation: np.ndarray, fallback: float) -> float:
    """The scale that puts :data:`BALANCE_SHARE` of the finite ``deviation`` (windows,) (>= 0, in the z-score's units
    times its scale) above :data:`BALANCE_Z`; ``fallback`` when that quantile is 0 or there is no deviation."""
    deviation = deviation[np.isfinite(deviation)]
    top = float(np.quantile(deviation, 1.0 - BALANCE_SHARE)) if len(deviation) else 0.0
    return top / BALANCE_Z if top > 0 else fallback


def deviations(X: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(change, spread) deviations of each row of X (rows, :data:`FEATURES`) under params ((rows, :data:`PARAMS`), or
    one model's (:data:`PARAMS`,)) before they are divided by their scales, each (rows,), NaN where the window gives
    none: the change's |mean_change - daily share - median|, the spread's max(log(std + floor) - median, 0) (n >= 2
    only)."""
    change, std, n, tod_sin, tod_cos, _ = np.asarray(X, dtype=np.float64).T
    a, b, c_center, _, floor, s_center, _, _ = np.asarray(params, dtype=np.float64).T
    dev_change = np.abs(change - a * tod_sin - b * tod_cos - c_center)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev_spread = np.maximum(np.log(np.maximum(std, 0.0) + floor) - s_center, 0.0)
    return dev_change, np.where((n >= 2) & np.isfinite(std), dev_spread, np.nan)


def fit_params(X: np.ndarray) -> np.ndarray:
    """(len(PARAMS),) :data:`PARAMS` fitted on X (windows, :data:`FEATURES`)."""
    X = np.asarray(X, dtype=np.float64)
    change, std, n, tod_sin, tod_cos, unchanged = X.T
    a, b = daily_share(change, tod_sin, tod_cos)
    spread = std[(n >= 2) & np.isfinite(std)]
    moving = spread[spread > 0]
    floor = max(STD_FLOOR_SHARE * float(np.median(moving)), _TINY) if len(moving) else _TINY
    c_center, c_scale = _robust(change - a * tod_sin - b * tod_cos)
    s_center, s_scale = _robust(np.log(spread + floor))
    held = unchanged[np.isfinite(unchanged)]
    params = np.array([a, b, c_center, c_scale, floor, s_center, max(s_scale, LOG_STD_SCALE_FLOOR),
                       float(held.max()) if len(held) else 0.0])
    for deviation, scale in zip(deviations(X, params), (PARAMS.index("change_scale"), PARAMS.index("log_std_scale")),
                                strict=True):
        params[scale] = max(balanced_scale(deviation, params[scale]), _TINY)
    return params


def stuck_windows(unchanged: np.ndarray, unchanged_max: np.ndarray | float) -> np.ndarray:
    """(rows,) bool: the windows whose ``unchanged`` count (rows,) is beyond :data:`UNCHANGED_FACTOR` · the most the
    pair showed in training (``unchanged_max``, per row or one) + :data:`UNCHANGED_EXTRA`."""
    return unchanged > UNCHANGED_FACTOR * unchanged_max + UNCHANGED_EXTRA


def change_scores(X: np.ndarray, params: np.ndarray) -> np.ndarray:
    """(rows,) score of each row of X (rows, :data:`FEATURES`) under its own params (rows, :data:`PARAMS`): the
    larger of the change's and the spread's z-score (:func:`deviations` over their scales; a window that gives none
    contributes 0); :data:`STUCK_SCORE` for a stuck window (``unchanged`` above :data:`UNCHANGED_FACTOR` ·
    ``unchanged_max`` + :data:`UNCHANGED_EXTRA`)."""
    X = np.asarray(X, dtype=np.float64)
    dev_change, dev_spread = deviations(X, params)
    _, _, _, c_scale, _, _, s_scale, unchanged_max = params.T
    z_change = np.where(np.isnan(dev_change), 0.0, dev_change / c_scale)
    z_spread = np.where(np.isnan(dev_spread), 0.0, dev_spread / s_scale)
    stuck = stuck_windows(X[:, FEATURES.index("unchanged")], unchanged_max)
    return np.where(stuck, STUCK_SCORE, np.maximum(z_change, z_spread))


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
