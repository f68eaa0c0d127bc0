"""Alert episodes (pure): one alert per run of anomalous windows of a device+sensor, updated while it lasts,
closed after it ends. The rules weigh evidence: a far-out window alerts at once, a marginal one needs company.

A window is *anomalous* when its score is above its model's ``threshold`` (the file's ``is_anomaly``) and
*strong* when it is also above ``threshold_strong`` (files without these columns: threshold 0, strong never). Between
the two lies its *high* bound, threshold + :data:`HIGH_SHARE` × (threshold_strong − threshold) (:func:`high_bound`).
An *episode* is a run of anomalous windows of one pair. :func:`update_alerts` walks a prediction file's scored
windows (status ``ok``) pair by pair, only those newer than the pair's latest alert's ``last_seen_window_end``
(so indexing a file again changes nothing):

- an anomalous window extends the pair's open alert (``last_window_end``, ``windows`` + 1, ``max_score``,
  ``severity``, ``model_version``, ``run_id``), or, with no open alert, opens a new one when it is strong, when
  it and the pair's window just before it both score above its high bound (two high windows in a row), or when it
  is the k-th anomalous window of the pair's last n (``ALERT_PERSISTENCE`` = "k/n"; earlier files' windows come
  from the ``anomalies`` table, so this works across files and runs; an earlier file's window is held against
  this window's high bound, as the table keeps scores, not thresholds). The new alert's
  ``first_window_end`` is the first anomalous window of those n (the evidence), ``windows`` their count,
  ``opened_by`` the rule (:data:`OPENING_RULES`: strong, two_high, persistence; the first that holds).
  "k/k" is the old ``ALERT_MIN_WINDOWS`` = k (k anomalous windows in a row); "1/1" alerts on every anomaly;
- a missing window (no score: no reading, no model, a failed model) counts as a normal one, for persistence
  as for closing: an alert needs evidence that was scored, and a silent sensor does not keep one open;
- a normal (or missing) window closes the open alert once its last anomalous window is
  ``ALERT_CLOSE_AFTER_WINDOWS`` windows behind. A later anomaly opens a new alert.
  When a run completes as succeeded, open alerts of pairs that had no window in it are closed the same way
  (:func:`close_stale`), so a sensor that stops reporting does not keep its alert open forever.

Files indexed out of order: when a pair's newer windows were indexed first and made no alert decision (no
alert past this file), its anomalous windows after this file (from the ``anomalies`` table) are walked again
after the file's own, as far as they are within reach of it (n − 1 or ``ALERT_CLOSE_AFTER_WINDOWS`` windows
apart), so persistence straddling the two files opens the same alert as in time order. An alert already
raised from newer windows is never re-keyed or retracted by an older file; that file's anomalies are stored.

``alert_id`` is ``"al-"`` + 16 hex digits of SHA-256 over (device, sensor, first_window_end): a replayed file can
never raise a duplicate. Severity (:mod:`fleetscore.alerts.severity`) never goes down within an episode: each
anomalous window is rated under the model that scored it and the alert keeps the highest rating.

Every new or visibly changed alert gets ``revision`` + 1; bookkeeping alone (``last_seen_window_end``,
``normal_after``) does not. Alerts are dicts with the columns of the SQL ``alerts`` table; times are epoch ms.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.alerts.severity import SeverityOf, worse

Alert = dict[str, Any]
Pair = tuple[str, str]

SCORED_WINDOW_COLUMNS = ("device", "sensor", "window_end", "score", "is_anomaly", "threshold", "threshold_strong",
                         "model_version", "run_id")
"""What :func:`update_alerts` reads of a file's scored windows (window_end int epoch ms; a missing `threshold`
is 0.0 and a missing or NaN `threshold_strong` +inf, as prediction files were before calibrated thresholds)."""
HISTORY_COLUMNS = ("device", "sensor", "window_end", "score", "model_version", "run_id")
"""The pairs' anomalous windows of other files (from the anomalies table), before and after this one."""
OPENING_RULES = ("strong", "two_high", "persistence")
"""What opened an alert (its ``opened_by``): a strong window, two high windows in a row, or the k-th anomalous
window of the pair's last n; the first that holds, in this order (:func:`opening_rule`)."""
HIGH_SHARE = 0.15
"""Where a window's high bound lies between its thresholds, as a share of threshold_strong − threshold: two windows
in a row above it open an alert at once. On the calibration's exponential tail (``scoring_job.thresholds``: the
strong threshold is 9 decades of rate beyond the threshold) 0.15 is about 1.35 decades, a rate near 5e-4 per window
at the default 1e-2. Measured on the varied simulator (`benchmarks/detection.py`, tuning seeds 101-106, 6,480
pair-days, change-z, 3/4; the shares replayed over the same scores): 0.15 catches 9 more faults (recall +0.019)
and raises no more false alerts (the benchmark run with it: 0.717 -> 0.736 at 3.5 false alerts per 1,000
pair-days); 0.1 +10 and +4 false, 0.06 +16 and +17, 0.02 +22 and +75. On the measurement seeds 1-3 (3,240
pair-days) +1 and +1. It catches what lasts a few windows but not three of four: a gross level shift on a sparse
sensor, whose next windows' baseline already holds the new level."""


@dataclass(frozen=True)
class Persistence:
    """Marginal evidence needed to open an alert: `k` anomalous windows among a pair's last `n` (1 <= k <= n)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"persistence needs 1 <= k <= n, got {self.k}/{self.n}")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def opening_rule(strong: bool, two_high: bool, persistent: bool) -> str | None:
    """The rule that opens an alert at a window (one of :data:`OPENING_RULES`, the first that holds in its order), or
    None when none does."""
    for rule, holds in zip(OPENING_RULES, (strong, two_high, persistent), strict=True):
        if holds:
            return rule
    return None


def alert_id_for(device: str, sensor: str, first_window_end: int) -> str:
    """Deterministic id of the episode of (device, sensor) that starts at `first_window_end` (epoch ms)."""
    digest = hashlib.sha256(f"{device}\x1f{sensor}\x1f{int(first_window_end)}".encode()).hexdigest()
    return "al-" + digest[:16]


@dataclass
class AlertUpdate:
    """What one file (or one run's completion) does to the alerts table."""

    new: list[Alert] = field(default_factory=list)
    """Alerts to insert (revision 1)."""
    changed: list[Alert] = field(default_factory=list)
    """Existing alerts with a visible change (revision already increased)."""
    bookkeeping: list[Alert] = field(default_factory=list)
    """Existing alerts whose last_seen_window_end / normal_after moved, nothing else."""

    @property
    def visible(self) -> list[Alert]:
        return self.new + self.changed


@dataclass(frozen=True)
class _Rules:
    window_ms: int
    persistence: Persistence
    close_after: int
    severity_of: SeverityOf
    now: int


@dataclass(frozen=True)
class _Window:
    """One scored window of a pair; `is_anomaly` only with a finite score, `strong` only when anomalous."""

    end: int
    score: float
    is_anomaly: bool
    strong: bool
    model_version: str | None
    run_id: str | None
    high: float = math.inf
    """The window's high bound (:func:`high_bound`; +inf for an earlier file's window: not stored)."""


def _clean(record: Mapping[str, Any]) -> Alert:
    """A row of the alerts table as plain Python values (numpy scalars unwrapped, NaN ids as None)."""
    out = {}
    for k, v in record.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v) and k in ("model_version", "run_id", "delivery_error"):
            v = None
        out[k] = v
    return out


def _close(alert: Alert, *, last_seen: int, normal_after: int, now: int) -> None:
    alert.update(status="closed", last_seen_window_end=int(last_seen), normal_after=int(normal_after), updated_at=now)


def _text(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


# ------------------------------------------------------------------------------------------ one file
def update_alerts(windows: pd.DataFrame, latest: pd.DataFrame, history: pd.DataFrame, *, window_ms: int,
                  persistence: Persistence, close_after: int, severity_of: SeverityOf, now: int) -> AlertUpdate:
    """The alert changes one file's scored windows make (pure).

    - `windows`: the file's scored rows (status ok), :data:`SCORED_WINDOW_COLUMNS` (thresholds optional).
    - `latest`: per pair at most one alert row (columns of the alerts table): its open alert, else its most
      recent closed one. Windows up to its `last_seen_window_end` are skipped.
    - `history`: the pairs' anomalous windows of other files (:data:`HISTORY_COLUMNS`) from the anomalies
      table: those before a pair's first window here are the persistence look-back (n − 1 windows suffice),
      those after its last window here are walked after it (files out of order); rows in between are ignored.
    """
    return _update(windows, latest, history, _Rules(window_ms=window_ms, persistence=persistence,
                                                    close_after=close_after, severity_of=severity_of, now=now))


def _update(windows: pd.DataFrame, latest: pd.DataFrame, history: pd.DataFrame | None, rules: _Rules, *,
            every_pair: bool = False) -> AlertUpdate:
    """:func:`update_alerts`. Only the pairs with an anomalous window in the file or in their history, or an open
    alert, are walked (a walk of any other pair changes nothing: no alert to follow, no window to open one); they are
    found, and their rows, latest alerts and history picked, with vectorised selections. `every_pair` walks every
    pair of the file (the reference the fast path is tested against)."""
    out = AlertUpdate()
    if windows.empty:
        return out
    pairs = pd.MultiIndex.from_arrays([windows["device"].astype(str), windows["sensor"].astype(str)])
    keep = (np.ones(len(windows), dtype=bool) if every_pair else
            pairs.isin(pairs[windows["is_anomaly"].to_numpy(dtype=bool)].unique()) | pairs.isin(_open_pairs(latest))
            | pairs.isin(_history_pairs(history)))
    if not keep.any():
        return out
    state = _latest_by_pair(_of_pairs(latest, pairs[keep].unique()))
    frame = _candidate_windows(windows.loc[keep], state)
    history_by_pair = _history_by_pair(_of_pairs(history, pairs[keep].unique()))
    columns = _WindowColumns.of(frame)
    for pair, lo, hi in columns.pairs():
        walk = _PairWalk.start(pair, columns.ends[lo], columns.ends[hi - 1], state.get(pair),
                               history_by_pair.get(pair, []))
        for window in columns.windows(lo, hi, walk.seen):
            walk.step(window, rules)
        walk.walk_later(rules)
        walk.report(out, rules.now)
    return out


def _open_pairs(latest: pd.DataFrame) -> list[Pair]:
    """The pairs with an open alert in `latest`."""
    if latest.empty:
        return []
    is_open = (latest["status"] == "open").to_numpy(dtype=bool)
    return list(zip(latest["device"].astype(str)[is_open], latest["sensor"].astype(str)[is_open], strict=True))


def _history_pairs(history: pd.DataFrame | None) -> pd.MultiIndex | list[Pair]:
    """The pairs with an anomalous window of another file in `history` (a later file's windows may open an alert
    when this file is walked before them)."""
    if history is None or history.empty:
        return []
    return pd.MultiIndex.from_arrays([history["device"].astype(str), history["sensor"].astype(str)]).unique()


def _of_pairs(frame: pd.DataFrame | None, pairs: pd.MultiIndex) -> pd.DataFrame | None:
    """The rows of `frame` (device, sensor columns) whose pair is one of `pairs` (string ids)."""
    if frame is None or frame.empty:
        return frame
    keys = pd.MultiIndex.from_arrays([frame["device"].astype(str), frame["sensor"].astype(str)])
    return frame.loc[keys.isin(pairs)]


def _latest_by_pair(latest: pd.DataFrame) -> dict[Pair, Alert]:
    """Per pair the alert to go on from: its open alert, else its closed alert seen last."""
    state: dict[Pair, Alert] = {}
    for rec in latest.to_dict("records") if not latest.empty else []:
        key = (str(rec["device"]), str(rec["sensor"]))
        prev = state.get(key)
        if prev is None or rec["status"] == "open" or (
                prev["status"] != "open" and rec["last_seen_window_end"] > prev["last_seen_window_end"]):
            state[key] = _clean(rec)
    return state


def _candidate_windows(windows: pd.DataFrame, state: Mapping[Pair, Alert]) -> pd.DataFrame:
    """The windows to walk (the caller picked their pairs), one per (pair, window_end) (the last), sorted by pair and
    time; ids as strings."""
    frame = with_thresholds(windows)[list(SCORED_WINDOW_COLUMNS)]
    frame = frame.assign(device=frame["device"].astype(str), sensor=frame["sensor"].astype(str))
    frame = frame.sort_values(["device", "sensor", "window_end"], kind="stable")
    return frame.drop_duplicates(["device", "sensor", "window_end"], keep="last")


def high_bound(threshold: np.ndarray, threshold_strong: np.ndarray) -> np.ndarray:
    """(windows,) the high bound of each window: threshold + :data:`HIGH_SHARE` × (threshold_strong − threshold);
    +inf where the strong threshold is +inf (never strong, so never high), NaN where a threshold is NaN (never
    high)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isposinf(threshold_strong), np.inf, threshold + HIGH_SHARE * (threshold_strong - threshold))


def with_thresholds(windows: pd.DataFrame) -> pd.DataFrame:
    """`windows` with float `threshold` and `threshold_strong` columns: missing ones (prediction files written
    before calibrated thresholds) as 0.0 and +inf, NaN strong thresholds as +inf (never strong)."""
    out = windows.copy()
    if "threshold" not in out.columns:
        out["threshold"] = 0.0
    strong = out["threshold_strong"] if "threshold_strong" in out.columns else pd.Series(np.inf, index=out.index)
    out["threshold_strong"] = pd.to_numeric(strong, errors="coerce").astype(np.float64).fillna(np.inf)
    out["threshold"] = pd.to_numeric(out["threshold"], errors="coerce").astype(np.float64)
    return out


def _history_by_pair(history: pd.DataFrame | None) -> dict[Pair, list[_Window]]:
    """{pair: anomalous windows of other files in time order} (none of them strong: only scores are stored)."""
    by_pair: dict[Pair, list[_Window]] = {}
    if history is None or history.empty:
        return by_pair
    ordered = history.sort_values("window_end", kind="stable")
    missing = pd.Series([None] * len(ordered), index=ordered.index, dtype=object)  # ids are optional
    for d, s, w, sc, mv, rid in zip(ordered["device"], ordered["sensor"], ordered["window_end"], ordered["score"],
                                    ordered.get("model_version", missing), ordered.get("run_id", missing),
                                    strict=True):
        by_pair.setdefault((str(d), str(s)), []).append(
            _Window(int(w), float(sc), True, False, _text(mv), _text(rid)))
    return by_pair


@dataclass(frozen=True)
class _WindowColumns:
    """The candidate windows (sorted by pair and time) as numpy columns, sliced per pair without pandas."""

    device: np.ndarray
    sensor: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    anomalous: np.ndarray
    strong: np.ndarray
    high: np.ndarray
    model_version: np.ndarray
    run_id: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _WindowColumns:
        scores = frame["score"].to_numpy(dtype=np.float64)
        anomalous = frame["is_anomaly"].to_numpy(dtype=bool) & np.isfinite(scores)
        strong_at = frame["threshold_strong"].to_numpy(dtype=np.float64)
        strong = anomalous & (scores > strong_at)
        high = high_bound(frame["threshold"].to_numpy(dtype=np.float64), strong_at)
        return cls(frame["device"].to_numpy(dtype=object), frame["sensor"].to_numpy(dtype=object),
                   frame["window_end"].to_numpy(dtype=np.int64), scores, anomalous, strong, high,
                   frame["model_version"].to_numpy(dtype=object), frame["run_id"].to_numpy(dtype=object))

    def pairs(self) -> Iterator[tuple[Pair, int, int]]:
        """(pair, first row, end row) of each pair, in order."""
        n = len(self.ends)
        if not n:
            return
        starts = np.ones(n, dtype=bool)
        starts[1:] = (self.device[1:] != self.device[:-1]) | (self.sensor[1:] != self.sensor[:-1])
        bounds = [*np.flatnonzero(starts).tolist(), n]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            yield (str(self.device[lo]), str(self.sensor[lo])), lo, hi

    def windows(self, lo: int, hi: int, seen: int | None) -> Iterator[_Window]:
        """The pair's windows (rows lo..hi) after `seen` (all when None), in time order."""
        for i in range(lo, hi):
            end = int(self.ends[i])
            if seen is not None and end <= seen:
                continue
            yield _Window(end, float(self.scores[i]), bool(self.anomalous[i]), bool(self.strong[i]),
                          _text(self.model_version[i]), _text(self.run_id[i]), float(self.high[i]))


# ------------------------------------------------------------------------------------------ one pair
@dataclass
class _PairWalk:
    """One pair's state while its windows of a file are walked in time order."""

    device: str
    sensor: str
    seen: int | None
    """Windows up to this end were handled: by earlier files, or by an alert this walk closed; none of them is
    evidence again (None: no alert yet)."""
    anomalous: dict[int, float]
    """window_end → score of the pair's anomalous windows after `seen` (earlier files', then this file's)."""
    later: list[_Window]
    """The pair's anomalous windows of other files after its last window here, after `seen` (out of order)."""
    existing: Alert | None
    """The pair's open alert before this file (a copy, changed in place)."""
    current: Alert | None
    """The open alert being worked on: `existing` or one opened here."""
    created: list[Alert] = field(default_factory=list)
    visible: bool = False
    """`existing` changed visibly."""
    touched: bool = False
    """`existing`'s bookkeeping moved."""

    @classmethod
    def start(cls, pair: Pair, first_here: int, last_here: int, state: Alert | None,
              history: list[_Window]) -> _PairWalk:
        """The walk of `pair` over this file's windows from `first_here` to `last_here` (window ends, ms)."""
        seen = int(state["last_seen_window_end"]) if state is not None else None
        first_here, last_here = int(first_here), int(last_here)
        fresh = [w for w in history if seen is None or w.end > seen]
        anomalous = {w.end: w.score for w in fresh if w.end < first_here}
        later = [w for w in fresh if w.end > last_here]
        existing = dict(state) if state is not None and state["status"] == "open" else None
        return cls(*pair, seen=seen, anomalous=anomalous, later=later, existing=existing, current=existing)

    def step(self, window: _Window, rules: _Rules) -> None:
        """Apply one window: to the open alert if there is one; an anomaly it does not take may open one."""
        if window.is_anomaly:
            self.anomalous[window.end] = window.score
        if self.current is not None and self._follow_open_alert(self.current, window, rules):
            return
        if window.is_anomaly:
            self._open_if_due(window, rules)

    def walk_later(self, rules: _Rules) -> None:
        """Walk the newer files' anomalous windows after this file's, while they are within reach of the last
        anomalous window walked (beyond, this file cannot change what those files decided)."""
        reach = max(rules.persistence.n - 1, rules.close_after) * rules.window_ms
        last = max(self.anomalous, default=None)
        if self.current is not None:
            last = max(last or 0, int(self.current["last_window_end"]))
        for window in self.later:
            if last is None or window.end - last > reach:
                self._close_before(window, rules)
                return
            self.step(window, rules)
            last = window.end

    def _close_before(self, window: _Window, rules: _Rules) -> None:
        """An alert still open when a newer file's anomaly is out of reach closed in between (the windows
        between were normal or missing): closed where time order closed it, `close_after` windows after its end."""
        alert = self.current
        if alert is None:
            return
        last_seen = int(alert["last_window_end"]) + rules.close_after * rules.window_ms
        if last_seen >= window.end:
            return
        self._close_current(last_seen, rules.close_after, rules)

    def _follow_open_alert(self, alert: Alert, window: _Window, rules: _Rules) -> bool:
        """Extend the open `alert`, count a normal window on it, or close it. True when the window is used up
        (the alert is still open), False when it closed the alert."""
        gap = (window.end - int(alert["last_window_end"])) // rules.window_ms - 1  # in between: normal or missing
        if window.is_anomaly and gap < rules.close_after:
            alert.update(last_window_end=window.end, last_seen_window_end=window.end,
                         windows=int(alert["windows"]) + 1, max_score=max(float(alert["max_score"]), window.score),
                         model_version=window.model_version, run_id=window.run_id, normal_after=0,
                         updated_at=rules.now, severity=worse(alert["severity"], rules.severity_of(
                             window.model_version, self.device, self.sensor, window.score)))
            self.visible = self.visible or alert is self.existing
            return True
        normals = gap if window.is_anomaly else gap + 1
        if normals < rules.close_after:  # still open: bookkeeping only
            alert.update(last_seen_window_end=window.end, normal_after=normals)
            self.touched = self.touched or alert is self.existing
            return True
        self._close_current(window.end - rules.window_ms if window.is_anomaly else window.end, normals, rules)
        return False

    def _close_current(self, last_seen: int, normals: int, rules: _Rules) -> None:
        """Close the open alert, seen up to `last_seen`: its windows are no evidence for the next alert, as an
        earlier file's closed alert's are not (`seen`); else a window just after it would reopen it under the
        same alert_id."""
        alert = self.current
        _close(alert, last_seen=last_seen, normal_after=normals, now=rules.now)
        self.visible = self.visible or alert is self.existing
        self.seen = last_seen if self.seen is None else max(self.seen, last_seen)
        self.current = None

    def _open_if_due(self, window: _Window, rules: _Rules) -> None:
        """Open an alert when `window` is strong, the second of two high windows in a row (both scores above its
        high bound), or the k-th anomalous window of the pair's last n."""
        evidence = self._evidence(window.end, rules)
        two_high = window.score > window.high and evidence.get(window.end - rules.window_ms, -math.inf) > window.high
        opened_by = opening_rule(window.strong, two_high, len(evidence) >= rules.persistence.k)
        if opened_by is None:
            return
        start = min(evidence)
        top = max(evidence.values())
        self.current = {
            "alert_id": alert_id_for(self.device, self.sensor, start), "device": self.device, "sensor": self.sensor,
            "status": "open", "first_window_end": start, "last_window_end": window.end,
            "last_seen_window_end": window.end, "normal_after": 0, "windows": len(evidence), "max_score": top,
            "severity": rules.severity_of(window.model_version, self.device, self.sensor, top),
            "opened_by": opened_by, "model_version": window.model_version, "run_id": window.run_id,
            "raised_at": rules.now, "updated_at": rules.now, "revision": 1, "delivered_revision": 0,
            "delivery_attempts": 0, "delivery_error": None,
        }
        self.created.append(self.current)

    def _evidence(self, end: int, rules: _Rules) -> dict[int, float]:
        """{window_end: score} of the anomalous windows among the n ending at `end`, none at or before `seen`
        (a missing window is not anomalous)."""
        lo = end - (rules.persistence.n - 1) * rules.window_ms
        if self.seen is not None:
            lo = max(lo, self.seen + 1)
        return {w: s for w, s in self.anomalous.items() if lo <= w <= end}

    def report(self, out: AlertUpdate, now: int) -> None:
        """Add what the walk did to `out`: the existing alert (changed or bookkeeping) and the new ones."""
        if self.existing is not None:
            if self.visible:
                self.existing["revision"] = int(self.existing["revision"]) + 1
                self.existing["updated_at"] = now
                out.changed.append(self.existing)
            elif self.touched:
                out.bookkeeping.append(self.existing)
        out.new.extend(self.created)


# ------------------------------------------------------------------------------------------ a completed run
def close_stale(open_alerts: Iterable[Mapping[str, Any]], *, until: int, window_ms: int, close_after: int,
                now: int) -> list[Alert]:
    """Open alerts whose pair had no scored window up to `until` (the end of a completed run's range) for
    `close_after` windows after their last anomaly: closed (the missing windows count as normal)."""
    closed = []
    for rec in open_alerts:
        rec = _clean(rec)
        if rec["status"] != "open" or int(rec["last_seen_window_end"]) >= until:
            continue
        normals = (until - int(rec["last_window_end"])) // window_ms
        if normals >= close_after:
            _close(rec, last_seen=until, normal_after=normals, now=now)
            rec["revision"] = int(rec["revision"]) + 1
            closed.append(rec)
    return closed
