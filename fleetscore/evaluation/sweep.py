"""Operating points: the detection figures of `metrics.detect` over a range of settings, so an operator can
choose one on their own data.

`sweep` is generic: the caller passes `alerts_at(point) -> alerts frame` (whatever alert rule is deployed).
The default, `shifted_episodes`, re-runs the episode rules (`fleetscore.alerts.episodes.update_alerts`) on the
scored windows with each model's thresholds raised by `point` (in score units): a window is anomalous when
score − point > threshold and strong when score − point > threshold_strong. Point 0 is the deployed setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fleetscore.alerts.episodes import HISTORY_COLUMNS, Persistence, high_bound, update_alerts, with_thresholds
from fleetscore.evaluation.metrics import DEFAULT_TOLERANCE_WINDOWS, Detection, detect

AlertsAt = Callable[[float], pd.DataFrame]
"""alerts_at(operating point) → alerts: device, sensor, first_window_end, last_window_end[, raised_window_end]."""
SWEEP_COLUMNS = ("point", "alerts", "true_alerts", "false_alerts", "events", "caught", "precision", "recall",
                 "false_per_1000_pair_days", "median_ttd_minutes")
PERSISTENCE_COLUMNS = ("persistence", *SWEEP_COLUMNS[1:])
PERSISTENCE_CHOICES = (Persistence(2, 3), Persistence(3, 3), Persistence(3, 4), Persistence(3, 5), Persistence(4, 4))
"""The ALERT_PERSISTENCE settings `fleetscore evaluate` compares by default, beside the deployed one (docs/DETECTION.md
measures these on the simulator)."""
SHARE_FACTORS = (16.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125)
"""Default points: the shifts that flag these multiples of the share of windows flagged at point 0."""
FALLBACK_SHARES = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
"""Default points' flagged shares when nothing is flagged at point 0."""
GAP_FRACTIONS = (0.125, 0.25, 0.5)
"""Default points between 0 and the smallest positive share-based shift, as fractions of it."""
_NO_ALERTS = pd.DataFrame()
_NO_HISTORY = pd.DataFrame({c: pd.Series(dtype=object) for c in HISTORY_COLUMNS})


@dataclass(frozen=True)
class EpisodeRules:
    """The episode rules' settings (`update_alerts`): window length (ms), persistence k/n, close-after windows."""

    window_ms: int
    persistence: Persistence
    close_after: int


def sweep(alerts_at: AlertsAt, points: Iterable[float], events: pd.DataFrame, *, window_ms: int, pair_days: float,
          tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> pd.DataFrame:
    """One row per operating point (in the given order): SWEEP_COLUMNS, from `detect(alerts_at(point), events)`."""
    rows = []
    for point in points:
        found = detect(alerts_at(point), events, window_ms=window_ms, pair_days=pair_days,
                       tolerance_windows=tolerance_windows)
        rows.append({"point": float(point), **_figures(found)})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def persistence_table(alerts_with: Callable[[EpisodeRules], pd.DataFrame], rules: EpisodeRules,
                      choices: Iterable[Persistence], events: pd.DataFrame, *, pair_days: float,
                      tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> pd.DataFrame:
    """One row per persistence k/n in `choices` (in that order): PERSISTENCE_COLUMNS, from the alerts
    `alerts_with(rules with that persistence)` raises (e.g. `shifted_episodes(scored, r)(0.0)`: the thresholds as
    deployed)."""
    rows = []
    for persistence in choices:
        found = detect(alerts_with(replace(rules, persistence=persistence)), events, window_ms=rules.window_ms,
                       pair_days=pair_days, tolerance_windows=tolerance_windows)
        rows.append({"persistence": str(persistence), **_figures(found)})
    return pd.DataFrame(rows, columns=list(PERSISTENCE_COLUMNS))


def _figures(found: Detection) -> dict[str, float | int]:
    """A table row's figures (SWEEP_COLUMNS after the point) of `found`."""
    return {name: getattr(found, name) for name in SWEEP_COLUMNS[1:]}


# ------------------------------------------------------------------------------------------ the default rule
def scored_only(scored: pd.DataFrame) -> pd.DataFrame:
    """The windows a model scored (status ok when the column is there, a finite score), with float `threshold`
    and `threshold_strong` columns (0 and +inf when the files predate calibrated thresholds)."""
    frame = scored
    if "status" in frame.columns:
        frame = frame[frame["status"].astype(str) == "ok"]
    frame = frame[np.isfinite(pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=np.float64))]
    out = with_thresholds(frame)
    out["threshold"] = out["threshold"].fillna(0.0)
    for column in ("model_version", "run_id"):
        if column not in out.columns:
            out[column] = None
    return out.reset_index(drop=True)


def margins(scored: pd.DataFrame) -> np.ndarray:
    """score − threshold of each scored window (`scored_only` rows), float64."""
    frame = scored_only(scored)
    return (frame["score"] - frame["threshold"]).to_numpy(dtype=np.float64)


def flagged_share(scored: pd.DataFrame, points: Iterable[float]) -> list[float]:
    """Per point, the share of scored windows anomalous at that shift (score − point > threshold), 0..1."""
    return shares_flagged(margins(scored), points)


def shares_flagged(m: np.ndarray, points: Iterable[float]) -> list[float]:
    """`flagged_share` of the scored windows' margins `m` (`margins`), (windows,)."""
    return [float((m > p).mean()) if len(m) else 0.0 for p in points]


def default_points(scored: pd.DataFrame) -> list[float]:
    """Shifts around the deployed setting (0): those that flag SHARE_FACTORS times the windows flagged at 0
    (FALLBACK_SHARES of them when none is), and GAP_FRACTIONS of the smallest positive one (normal windows'
    margins often end far below the faults', leaving a gap the shares jump over); ascending, 0 included."""
    return points_around(margins(scored))


def points_around(m: np.ndarray) -> list[float]:
    """`default_points` of the scored windows' margins `m` (`margins`), (windows,)."""
    if not len(m):
        return [0.0]
    share = float((m > 0).mean())
    shares = [f * share for f in SHARE_FACTORS if 0 < f * share < 1] if share > 0 else list(FALLBACK_SHARES)
    points = {0.0} | {float(np.quantile(m, 1.0 - s)) for s in shares if s != share}
    first_up = min((p for p in points if p > 0), default=None)
    if first_up is not None:
        points |= {first_up * f for f in GAP_FRACTIONS}
    return sorted(points)


def shifted_episodes(scored: pd.DataFrame, rules: EpisodeRules) -> AlertsAt:
    """`alerts_at(shift)`: the alerts `update_alerts` raises over all of `scored` in one pass (no earlier alert)
    with every threshold raised by `shift`; each alert with the window that raised it (`raise_windows`)."""
    base = scored_only(scored)

    def alerts_at(shift: float) -> pd.DataFrame:
        frame = shift_scores(base, shift)
        update = update_alerts(frame, _NO_ALERTS, _NO_HISTORY, window_ms=rules.window_ms,
                               persistence=rules.persistence, close_after=rules.close_after,
                               severity_of=_unrated, now=0)
        alerts = pd.DataFrame(update.new, columns=["device", "sensor", "first_window_end", "last_window_end"])
        alerts = alerts.astype({"first_window_end": "int64", "last_window_end": "int64"})
        return alerts.assign(raised_window_end=raise_windows(alerts, frame, rules))

    return alerts_at


def shift_scores(base: pd.DataFrame, shift: float) -> pd.DataFrame:
    """`scored_only` rows with score − shift and is_anomaly recomputed against the (unchanged) threshold."""
    score = base["score"].to_numpy(dtype=np.float64) - float(shift)
    return base.assign(score=score, is_anomaly=score > base["threshold"].to_numpy(dtype=np.float64))


def raise_windows(alerts: pd.DataFrame, windows: pd.DataFrame, rules: EpisodeRules) -> np.ndarray:
    """Per alert, the window end whose scoring raised it under the documented rule: the first window from its
    first_window_end on that is anomalous and strong, the second of two high windows in a row, or the k-th anomalous
    one of the last n windows, counting only the alert's own windows (from its first_window_end: an earlier
    alert's are no evidence for it); clipped to its last window; its first window when the rule never holds in its
    span. int64 epoch ms.

    `windows`: device, sensor, window_end, score, is_anomaly, threshold, threshold_strong (as `shift_scores` gives)."""
    out = alerts["first_window_end"].to_numpy(dtype=np.int64).copy()
    if alerts.empty:
        return out
    hot = windows[windows["is_anomaly"].astype(bool)]
    pairs = {(str(d), str(s)): tuple(rows[c].to_numpy(dtype=t) for c, t in (
        ("window_end", np.int64), ("score", np.float64), ("threshold", np.float64), ("threshold_strong", np.float64)))
        for (d, s), rows in hot.drop_duplicates(["device", "sensor", "window_end"])
        .sort_values("window_end").groupby(["device", "sensor"], sort=False)}
    for i, (device, sensor, first, last) in enumerate(zip(alerts["device"], alerts["sensor"],
                                                          alerts["first_window_end"], alerts["last_window_end"],
                                                          strict=True)):
        columns = pairs.get((str(device), str(sensor)))
        if columns is None:
            continue
        span = slice(int(np.searchsorted(columns[0], int(first))),
                     int(np.searchsorted(columns[0], int(last), side="right")))
        opens = _opening_windows(*(c[span] for c in columns), rules)
        if len(opens):
            out[i] = opens[0]
    return out


def _opening_windows(ends: np.ndarray, scores: np.ndarray, threshold: np.ndarray, strong: np.ndarray,
                     rules: EpisodeRules) -> np.ndarray:
    """The window ends among one pair's anomalous windows (ends sorted, none repeated; scores and thresholds row
    for row) at which the opening rule holds with these windows as the only evidence: strong; the second of two
    windows in a row whose scores are both above the second one's high bound (``episodes.high_bound``); or k of the
    last n windows (a missing window counts as normal)."""
    k, n, w = rules.persistence.k, rules.persistence.n, rules.window_ms
    in_last_n = np.arange(len(ends)) - np.searchsorted(ends, ends - n * w, side="right") + 1
    high = high_bound(threshold, strong)
    two_high = np.zeros(len(ends), dtype=bool)
    two_high[1:] = (ends[1:] - ends[:-1] == w) & (scores[1:] > high[1:]) & (scores[:-1] > high[1:])
    return ends[(scores > strong) | two_high | (in_last_n >= k)]


def _unrated(model_version: str | None, device: str, sensor: str, score: float) -> str:
    """Severity is not evaluated here."""
    return "low"
