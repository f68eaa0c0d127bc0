"""Detection quality: alerts against labelled events (injected faults or a user's labels), pure functions over
DataFrames.

Windows are Azure Stream Analytics tumbling windows (start, end], labelled by their end, so a reading at
`ts` belongs to the window ending `ceil(ts / W) · W` (`fleetscore.ingest.windows.window_end`). All times are int64
epoch milliseconds UTC. An *event* (a fault) is a row device, sensor, start, end (its first and last affected
reading's times).

- `fault_windows`: the windows each event touches.
- `episodes_from_flags`: runs of consecutive anomalous windows of a pair (what an alert covers).
- `match_alerts`: precision and recall of alerts against events, with a tolerance of a few windows.
- `detect`: `match_alerts` plus false alerts per 1,000 pair-days and the median time to detect.
- `by_opening_rule`: the alerts' true and false counts per rule that opened them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fleetscore.alerts.episodes import OPENING_RULES
from fleetscore.ingest.windows import window_end


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def _fault_spans(faults: pd.DataFrame, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last window end each fault touches (its first and last affected reading's windows)."""
    first = window_end(faults["start"].to_numpy(dtype=np.int64), window_ms)
    last = window_end(faults["end"].to_numpy(dtype=np.int64), window_ms)
    if (last < first).any():
        raise ValueError("faults: a fault ends before it starts")
    return first, last


def fault_windows(faults: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Every (device, sensor, window_end) a fault touches, one row each (duplicates across faults dropped),
    sorted. A fault from `start` to `end` touches the windows ending ceil(start/W)·W … ceil(end/W)·W."""
    _check_columns(faults, ("device", "sensor", "start", "end"), "faults")
    first, last = _fault_spans(faults, window_ms)
    counts = (last - first) // window_ms + 1
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    out = pd.DataFrame({
        "device": np.repeat(faults["device"].to_numpy(dtype=object), counts),
        "sensor": np.repeat(faults["sensor"].to_numpy(dtype=object), counts),
        "window_end": np.repeat(first, counts) + offsets * window_ms,
    })
    out = out.astype({"device": "str", "sensor": "str"})
    return out.drop_duplicates().sort_values(["device", "sensor", "window_end"], ignore_index=True)


def episodes_from_flags(flags: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Episodes: maximal runs of anomalous windows of one pair whose ends are exactly `window_ms` apart.

    `flags` has device, sensor, window_end (int epoch ms) and is_anomaly (bool), in any order. A normal
    window *or a missing one* (no row, e.g. no readings) between two anomalous windows ends an episode.
    Returns device, sensor, first_window_end, last_window_end, windows (the count of anomalous windows),
    sorted by device, sensor, first_window_end.
    """
    _check_columns(flags, ("device", "sensor", "window_end", "is_anomaly"), "flags")
    hot = flags.loc[flags["is_anomaly"].astype(bool), ["device", "sensor", "window_end"]]
    hot = hot.drop_duplicates().sort_values(["device", "sensor", "window_end"], ignore_index=True)
    if hot.empty:
        return pd.DataFrame({"device": pd.Series(dtype="str"), "sensor": pd.Series(dtype="str"),
                             "first_window_end": pd.Series(dtype="int64"),
                             "last_window_end": pd.Series(dtype="int64"), "windows": pd.Series(dtype="int64")})
    ends = hot["window_end"].to_numpy(dtype=np.int64)
    device = hot["device"].to_numpy(dtype=object)
    sensor = hot["sensor"].to_numpy(dtype=object)
    new = np.ones(len(hot), dtype=bool)
    new[1:] = (device[1:] != device[:-1]) | (sensor[1:] != sensor[:-1]) | (ends[1:] - ends[:-1] != window_ms)
    starts = np.flatnonzero(new)
    stops = np.append(starts[1:], len(hot)) - 1
    return pd.DataFrame({
        "device": pd.Series(device[starts], dtype="str"),
        "sensor": pd.Series(sensor[starts], dtype="str"),
        "first_window_end": ends[starts],
        "last_window_end": ends[stops],
        "windows": (stops - starts + 1).astype(np.int64),
    })


@dataclass(frozen=True)
class Match:
    """Alerts vs faults. Counts, the two rates, and per-row flags in the inputs' row order.

    precision = true_alerts / alerts, 1.0 when there are no alerts (nothing claimed, nothing wrong);
    recall = detected_faults / faults, 1.0 when there are no faults (nothing to find). Neither is ever NaN,
    so a report or a threshold check never has to special-case them.
    """

    precision: float
    recall: float
    true_alerts: int
    false_alerts: int
    detected_faults: int
    missed_faults: int
    alert_is_true: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    fault_is_detected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 0.0 if total == 0 else 2 * self.precision * self.recall / total


ALERT_COLUMNS = ("device", "sensor", "first_window_end", "last_window_end")
"""What an alert needs to be matched; `raised_window_end` (the window whose scoring raised it) is optional."""
EVENT_COLUMNS = ("device", "sensor", "start", "end")
"""What a labelled event (a fault) needs."""
DEFAULT_TOLERANCE_WINDOWS = 1
"""Windows an event is widened by on each side when matching (a label is rarely exact to the window)."""


def _overlaps(alerts: pd.DataFrame, faults: pd.DataFrame, window_ms: int, tolerance_windows: int) -> pd.DataFrame:
    """Every (alert row, fault row) pair that overlaps: a_row, f_row (positions in the inputs), a_first, a_last
    (the alert's window span), f_first, f_last (the fault's widened window span), epoch ms."""
    if tolerance_windows < 0:
        raise ValueError("tolerance_windows must be ≥ 0")
    _check_columns(alerts, ALERT_COLUMNS, "alerts")
    _check_columns(faults, EVENT_COLUMNS, "faults")
    columns = ["a_row", "f_row", "a_first", "a_last", "f_first", "f_last"]
    if not (len(alerts) and len(faults)):
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
    first, last = _fault_spans(faults, window_ms)
    pad = tolerance_windows * window_ms
    left = pd.DataFrame({
        "device": alerts["device"].astype(str).to_numpy(), "sensor": alerts["sensor"].astype(str).to_numpy(),
        "a_first": alerts["first_window_end"].to_numpy(dtype=np.int64),
        "a_last": alerts["last_window_end"].to_numpy(dtype=np.int64), "a_row": np.arange(len(alerts)),
    })
    right = pd.DataFrame({
        "device": faults["device"].astype(str).to_numpy(), "sensor": faults["sensor"].astype(str).to_numpy(),
        "f_first": first - pad, "f_last": last + pad, "f_row": np.arange(len(faults)),
    })
    pairs = left.merge(right, on=["device", "sensor"], how="inner")
    hit = pairs[(pairs["a_first"] <= pairs["f_last"]) & (pairs["a_last"] >= pairs["f_first"])]
    return hit[columns].reset_index(drop=True)


def match_alerts(alerts: pd.DataFrame, faults: pd.DataFrame, window_ms: int,
                 tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> Match:
    """Match alerts (device, sensor, first_window_end, last_window_end) to faults (device, sensor, start, end).

    An alert is true when its window span [first, last] overlaps, for the same device and sensor, the
    windows its fault touches widened by `tolerance_windows` windows on each side; a fault is detected
    when at least one alert overlaps it that way. One alert may cover several faults and one fault may
    be covered by several alerts.
    """
    hit = _overlaps(alerts, faults, window_ms, tolerance_windows)
    alert_true = np.zeros(len(alerts), dtype=bool)
    fault_found = np.zeros(len(faults), dtype=bool)
    alert_true[hit["a_row"].to_numpy()] = True
    fault_found[hit["f_row"].to_numpy()] = True
    true_alerts, detected = int(alert_true.sum()), int(fault_found.sum())
    return Match(
        precision=true_alerts / len(alerts) if len(alerts) else 1.0,
        recall=detected / len(faults) if len(faults) else 1.0,
        true_alerts=true_alerts, false_alerts=len(alerts) - true_alerts,
        detected_faults=detected, missed_faults=len(faults) - detected,
        alert_is_true=alert_true, fault_is_detected=fault_found,
    )


# ------------------------------------------------------------------------------------------ event-level figures
DAY_MS = 86_400_000


def pair_days(pairs: int, from_ms: int, until_ms: int) -> float:
    """Pairs scored × days scored: the exposure false alerts are counted against (≥ 0)."""
    return max(int(pairs), 0) * max(int(until_ms) - int(from_ms), 0) / DAY_MS


def events_in_range(events: pd.DataFrame, from_ms: int, until_ms: int) -> pd.DataFrame:
    """The events that touch a scored window of (from_ms, until_ms] (window ends, epoch ms): the others could
    not have been detected there."""
    _check_columns(events, EVENT_COLUMNS, "events")
    start = events["start"].to_numpy(dtype=np.int64)
    end = events["end"].to_numpy(dtype=np.int64)
    return events[(end > int(from_ms)) & (start <= int(until_ms))].reset_index(drop=True)


@dataclass(frozen=True)
class Detection:
    """Event-level detection figures of one set of alerts against labelled events.

    precision = true alerts / alerts (1.0 without alerts); recall = caught events / events (1.0 without
    events); `false_per_1000_pair_days` = false alerts · 1000 / pair-days (NaN when pair_days is 0);
    `median_ttd_minutes`: over the caught events, the median of (the first window end at which a matching
    alert had been raised, and not before the event's first window) − the event's start, minutes (NaN when
    nothing is caught).
    """

    events: int
    caught: int
    alerts: int
    true_alerts: int
    false_alerts: int
    precision: float
    recall: float
    pair_days: float
    false_per_1000_pair_days: float
    median_ttd_minutes: float

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain values for JSON (NaN as None)."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in self.__dict__.items()}


def detect(alerts: pd.DataFrame, events: pd.DataFrame, *, window_ms: int, pair_days: float,
           tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> Detection:
    """Event-level recall, precision, false alerts per 1,000 pair-days and median time to detect.

    `alerts`: device, sensor, first_window_end, last_window_end, and optionally raised_window_end (the window
    end whose scoring raised it; first_window_end when absent). `events`: device, sensor, start, end (epoch ms).
    Matching is `match_alerts`' (overlap with the event's windows widened by `tolerance_windows`).
    """
    match = match_alerts(alerts, events, window_ms, tolerance_windows)
    false_rate = match.false_alerts * 1000.0 / pair_days if pair_days > 0 else float("nan")
    return Detection(
        events=len(events), caught=match.detected_faults, alerts=len(alerts), true_alerts=match.true_alerts,
        false_alerts=match.false_alerts, precision=match.precision, recall=match.recall,
        pair_days=float(pair_days), false_per_1000_pair_days=false_rate,
        median_ttd_minutes=_median_ttd_minutes(alerts, events, window_ms, tolerance_windows))


def time_to_detect(alerts: pd.DataFrame, events: pd.DataFrame, window_ms: int,
                   tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> pd.Series:
    """Per caught event (indexed by its row position in `events`), minutes from its start to its detection:
    the earliest, over the alerts matching it, of max(the alert's raise window end, the event's first window
    end). An alert open before the event began detects it at its first window."""
    hit = _overlaps(alerts, events, window_ms, tolerance_windows)
    if hit.empty:
        return pd.Series(dtype=float)
    raised_col = "raised_window_end" if "raised_window_end" in alerts.columns else "first_window_end"
    raised = alerts[raised_col].to_numpy(dtype=np.int64)[hit["a_row"].to_numpy()]
    event_first, _ = _fault_spans(events, window_ms)
    rows = hit["f_row"].to_numpy()
    detected_at = np.maximum(raised, event_first[rows])
    start = events["start"].to_numpy(dtype=np.int64)[rows]
    minutes = pd.Series((detected_at - start) / 60_000.0, index=rows)
    return minutes.groupby(level=0).min()


def _median_ttd_minutes(alerts: pd.DataFrame, events: pd.DataFrame, window_ms: int, tolerance_windows: int) -> float:
    ttd = time_to_detect(alerts, events, window_ms, tolerance_windows)
    return float(ttd.median()) if len(ttd) else float("nan")


BY_RULE_COLUMNS = ("opened_by", "alerts", "true_alerts", "false_alerts", "precision", "false_per_1000_pair_days")
"""What :func:`by_opening_rule` gives per rule."""
UNKNOWN_RULE = "unknown"
"""The `opened_by` of alerts that do not say (opened before the rule was recorded)."""


def by_opening_rule(alerts: pd.DataFrame, events: pd.DataFrame, *, window_ms: int, pair_days: float,
                    tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> pd.DataFrame:
    """`BY_RULE_COLUMNS`, one row per opening rule that opened at least one of `alerts` (`match_alerts`' columns plus
    `opened_by`; missing as `UNKNOWN_RULE`), in `OPENING_RULES` order: how many alerts it opened, how many of them
    match an event, and its false alerts per 1,000 pair-days (NaN when pair_days is 0). Which rule the false alerts
    come from says which setting to change (`ALERT_PERSISTENCE` for `persistence`)."""
    true = match_alerts(alerts, events, window_ms, tolerance_windows).alert_is_true
    rule = alerts["opened_by"] if "opened_by" in alerts.columns else pd.Series(None, index=alerts.index, dtype=object)
    frame = pd.DataFrame({"opened_by": rule.fillna(UNKNOWN_RULE).astype(str).to_numpy(), "true": true})
    table = frame.groupby("opened_by", sort=False)["true"].agg(alerts="size", true_alerts="sum").reset_index()
    table["true_alerts"] = table["true_alerts"].astype(np.int64)
    table["false_alerts"] = table["alerts"] - table["true_alerts"]
    table["precision"] = table["true_alerts"] / table["alerts"]
    table["false_per_1000_pair_days"] = table["false_alerts"] * 1000.0 / pair_days if pair_days > 0 else np.nan
    order = {name: i for i, name in enumerate((*OPENING_RULES, UNKNOWN_RULE))}
    table = table.sort_values("opened_by", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
    return table[list(BY_RULE_COLUMNS)].reset_index(drop=True)
