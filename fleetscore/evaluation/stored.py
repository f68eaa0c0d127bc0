"""Evaluate what the deployment did: the alerts in SQL and the scored windows of the prediction files of the runs
in a range, against a user's labelled events (`fleetscore evaluate`, the report's evaluation section).

The range is the scored windows' (window_from, window_until] of the runs that overlap the asked range, clipped
to it. Pair-days = pairs with a scored window in the range × the range's days.

Memory follows the scored windows' numbers, not their strings: the prediction files are read one at a time into
a compact frame (ids as categoricals, the columns the rules read), and the sweep re-runs the episode rules
:data:`SWEEP_CHUNK_PAIRS` pairs at a time (pairs are independent under the rules), so a 10,000-device fleet's day
is not held as strings at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pandas.api.types import union_categoricals
from sqlalchemy.engine import Engine

from fleetscore import clock, db
from fleetscore.alerts.episodes import Persistence
from fleetscore.evaluation.metrics import (
    DEFAULT_TOLERANCE_WINDOWS,
    Detection,
    by_opening_rule,
    detect,
    events_in_range,
    pair_days,
)
from fleetscore.evaluation.sweep import (
    PERSISTENCE_CHOICES,
    AlertsAt,
    EpisodeRules,
    persistence_table,
    points_around,
    raise_windows,
    scored_only,
    shares_flagged,
    shift_scores,
    shifted_episodes,
    sweep,
)
from fleetscore.report.data import BlobLister, load_scored_windows, scored_files

EXTRA_COLUMNS = ("threshold", "threshold_strong", "model_version", "status")
"""Prediction-file columns read besides the report's: the thresholds the rules compare with, and what was scored."""
RULE_COLUMNS = ("device", "sensor", "window_end", "score", "threshold", "threshold_strong")
"""What the episode rules read of a scored window (`scored_only` adds the rest)."""
SWEEP_CHUNK_PAIRS = 2_000
"""Pairs whose windows the sweep turns into alerts at a time."""


class NothingScored(ValueError):
    """No run, or no scored window, in the range."""


@dataclass(frozen=True)
class Evaluation:
    """The deployed alerts' figures and the threshold sweep over one scored range (times epoch ms)."""

    from_ms: int
    until_ms: int
    runs: int
    pairs: int
    pair_days: float
    tolerance_windows: int
    deployed: Detection
    """The alerts in SQL that overlap the range."""
    by_rule: pd.DataFrame
    """The same alerts per rule that opened them (`metrics.BY_RULE_COLUMNS`, `metrics.by_opening_rule`)."""
    sweep: pd.DataFrame
    """`sweep.SWEEP_COLUMNS` + `flagged_share`, one row per threshold shift (score units), ascending."""
    by_persistence: pd.DataFrame
    """`sweep.PERSISTENCE_COLUMNS`, one row per ALERT_PERSISTENCE compared (thresholds as deployed)."""
    deployed_persistence: str
    """The ALERT_PERSISTENCE in force (`rules.persistence`), one of `by_persistence`'s rows."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON (times as ISO-8601, NaN as None)."""
        return {"from": clock.iso_exact(self.from_ms), "until": clock.iso_exact(self.until_ms), "runs": self.runs,
                "pairs": self.pairs, "pair_days": self.pair_days, "tolerance_windows": self.tolerance_windows,
                "deployed": self.deployed.as_dict(), "by_rule": _records(self.by_rule), "sweep": _records(self.sweep),
                "persistence": {"deployed": self.deployed_persistence, "table": _records(self.by_persistence)},
                "notes": self.notes}


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of `table` as plain dicts, NaN as None."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


def evaluate_stored(engine: Engine, store: BlobLister, events: pd.DataFrame, rules: EpisodeRules, *,
                    from_ms: int | None = None, until_ms: int | None = None, points: list[float] | None = None,
                    persistence: list[Persistence] | None = None,
                    tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> Evaluation:
    """The deployed alerts, a threshold sweep (`points`, default `sweep.default_points`) and the rules re-run with
    each persistence k/n of `persistence` (default `sweep.PERSISTENCE_CHOICES`; the deployed one always) against
    `events` (device, sensor, start, end) over the scored range within [from_ms, until_ms]. Raises
    `NothingScored`."""
    notes: list[str] = []
    lo, hi, run_ids = scored_range(engine, from_ms, until_ms)
    scored = compact_scored(store, run_ids, lo, hi, notes)
    if scored.empty:
        raise _nothing_scored(run_ids, lo, hi)
    pairs = int(scored["pair"].iloc[-1]) + 1
    exposure = pair_days(pairs, lo, hi)
    events = events_in_range(events, lo, hi)
    deployed = load_alerts(engine, lo, hi)
    found = _deployed_detection(deployed, _with_strings(_of_pairs(scored, deployed)), events, rules, exposure,
                                tolerance_windows)
    margin = (scored["score"] - scored["threshold"]).to_numpy(dtype=np.float64)
    points = sorted(set(points)) if points is not None else points_around(margin)
    deployed_at = functools.cache(chunked_episodes(scored, rules))  # the sweep's point 0 is the deployed k/n's row
    table = sweep(deployed_at, points, events, window_ms=rules.window_ms, pair_days=exposure,
                  tolerance_windows=tolerance_windows)
    table["flagged_share"] = shares_flagged(margin, points)
    by_rule = by_opening_rule(deployed, events, window_ms=rules.window_ms, pair_days=exposure,
                              tolerance_windows=tolerance_windows)
    choices = persistence_choices(persistence, rules.persistence)
    by_persistence = persistence_table(lambda r: (deployed_at if r == rules else chunked_episodes(scored, r))(0.0),
                                       rules, choices, events, pair_days=exposure, tolerance_windows=tolerance_windows)
    return Evaluation(from_ms=lo, until_ms=hi, runs=len(run_ids), pairs=pairs, pair_days=exposure,
                      tolerance_windows=tolerance_windows, deployed=found, by_rule=by_rule, sweep=table,
                      by_persistence=by_persistence, deployed_persistence=str(rules.persistence), notes=notes)


def persistence_choices(asked: list[Persistence] | None, deployed: Persistence) -> list[Persistence]:
    """`asked` (default `PERSISTENCE_CHOICES`) without repeats, in order, with `deployed` added when missing."""
    return list(dict.fromkeys([*(PERSISTENCE_CHOICES if asked is None else asked), deployed]))


def evaluate_deployed(engine: Engine, store: BlobLister, events: pd.DataFrame, rules: EpisodeRules, *,
                      tolerance_windows: int = DEFAULT_TOLERANCE_WINDOWS) -> Detection:
    """`evaluate_stored(...).deployed` over every scored window, without the sweep: the alerted pairs' scored windows
    are loaded (each alert's raising window) and the other pairs only counted, a prediction file at a time, so
    memory follows the alerted pairs, not the fleet (the 10,000-device demo: 14.4 M scored windows, 11 GB loaded
    whole). Raises `NothingScored`."""
    lo, hi, run_ids = scored_range(engine, None, None)
    notes: list[str] = []
    pairs: set[tuple[str, str]] = set()
    for frame in scored_files(store, run_ids, EXTRA_COLUMNS, notes):
        scored = _scored_in(frame, lo, hi)
        pairs.update(zip(scored["device"].astype(str), scored["sensor"].astype(str), strict=True))
    if not pairs:
        raise _nothing_scored(run_ids, lo, hi)
    deployed = load_alerts(engine, lo, hi)
    alerted = sorted(set(zip(deployed["device"], deployed["sensor"], strict=True)))
    scored = _scored_in(load_scored_windows(store, run_ids, EXTRA_COLUMNS, notes, pairs=alerted)[0], lo, hi)
    return _deployed_detection(deployed, scored, events_in_range(events, lo, hi), rules, pair_days(len(pairs), lo, hi),
                               tolerance_windows)


def compact_scored(store: BlobLister, run_ids: list[str], lo: int, hi: int, notes: list[str]) -> pd.DataFrame:
    """The windows a model scored in (lo, hi] of the prediction files of `run_ids`, read a file at a time:
    `RULE_COLUMNS` (device and sensor categorical) plus `pair`, a 0-based int code per pair; sorted by pair and
    window_end. A window scored again (a re-run) keeps the row of the file read last, as `load_scored_windows`."""
    frames = []
    for order, frame in enumerate(scored_files(store, run_ids, EXTRA_COLUMNS, notes)):
        kept = _scored_in(frame, lo, hi)
        if not kept.empty:
            kept = kept[list(RULE_COLUMNS)].astype({"device": "category", "sensor": "category"})
            frames.append(kept.assign(_order=np.int32(order)))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("device", "sensor") else np.float64)
                             for c in RULE_COLUMNS}).assign(pair=pd.Series(dtype=np.int64))
    device, sensor = (union_categoricals([f[c] for f in frames]) for c in ("device", "sensor"))
    end = np.concatenate([f["window_end"].to_numpy(dtype=np.int64) for f in frames])
    key = device.codes.astype(np.int64) * len(sensor.categories) + sensor.codes
    rows = np.lexsort((np.concatenate([f["_order"].to_numpy() for f in frames]), end, key))
    last = np.ones(len(rows), dtype=bool)  # per (pair, window_end), the row of the file read last
    last[:-1] = (key[rows[1:]] != key[rows[:-1]]) | (end[rows[1:]] != end[rows[:-1]])
    rows = rows[last]
    pair = np.concatenate([[0], np.cumsum(key[rows[1:]] != key[rows[:-1]])]) if len(rows) else rows
    values = {c: np.concatenate([f[c].to_numpy(dtype=np.float64) for f in frames])[rows] for c in RULE_COLUMNS[3:]}
    return pd.DataFrame({"device": device[rows], "sensor": sensor[rows], "window_end": end[rows], **values,
                         "pair": pair.astype(np.int64)})


def chunked_episodes(scored: pd.DataFrame, rules: EpisodeRules, chunk_pairs: int | None = None) -> AlertsAt:
    """`shifted_episodes` over `compact_scored` rows, `chunk_pairs` pairs (default `SWEEP_CHUNK_PAIRS`) at a time:
    the same alerts, with only one chunk's windows as strings at once."""
    per = chunk_pairs or SWEEP_CHUNK_PAIRS
    pair = scored["pair"].to_numpy(dtype=np.int64)
    cuts = np.searchsorted(pair, np.arange(0, (int(pair[-1]) + 1) if len(pair) else 0, per))
    bounds = list(zip(cuts, [*cuts[1:], len(pair)], strict=True))

    def alerts_at(shift: float) -> pd.DataFrame:
        parts = [shifted_episodes(_with_strings(scored.iloc[a:b]), rules)(shift) for a, b in bounds]
        return pd.concat(parts, ignore_index=True) if parts else shifted_episodes(_with_strings(scored), rules)(shift)

    return alerts_at


def _of_pairs(scored: pd.DataFrame, alerts: pd.DataFrame) -> pd.DataFrame:
    """The rows of `scored` (`compact_scored`) whose pair has an alert in `alerts` (ids compared as strings once
    per pair, not per row)."""
    pairs = scored.drop_duplicates("pair")
    keys = pd.MultiIndex.from_arrays([pairs["device"].astype(str), pairs["sensor"].astype(str)])
    alerted = pairs["pair"][keys.isin(pd.MultiIndex.from_frame(alerts[["device", "sensor"]].astype(str)))]
    return scored[scored["pair"].isin(alerted)]


def _with_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """`compact_scored` rows with device and sensor as plain strings, as the episode rules key pairs."""
    return frame.drop(columns="pair").astype({"device": str, "sensor": str})


def _scored_in(frame: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """The windows of `frame` (prediction-file rows) a model scored (`scored_only`) that end in (lo, hi]."""
    return scored_only(frame[(frame["window_end"] > lo) & (frame["window_end"] <= hi)])


def _nothing_scored(run_ids: list[str], lo: int, hi: int) -> NothingScored:
    return NothingScored(f"no scored window in the prediction files of the {len(run_ids)} run(s) in "
                         f"({clock.iso_exact(lo)}, {clock.iso_exact(hi)}]")


def _deployed_detection(deployed: pd.DataFrame, scored: pd.DataFrame, events: pd.DataFrame, rules: EpisodeRules,
                        exposure: float, tolerance_windows: int) -> Detection:
    """The alerts `deployed` (`load_alerts`), each raised at the window `raise_windows` finds in `scored` (their pairs'
    windows at least), against `events` over `exposure` pair-days."""
    deployed = deployed.assign(raised_window_end=raise_windows(deployed, shift_scores(scored, 0.0), rules))
    return detect(deployed, events, window_ms=rules.window_ms, pair_days=exposure, tolerance_windows=tolerance_windows)


def scored_range(engine: Engine, from_ms: int | None, until_ms: int | None) -> tuple[int, int, list[str]]:
    """(lo, hi, run ids): the window range (lo, hi] the runs overlapping [from_ms, until_ms] scored, clipped to
    it, and those runs. Raises `NothingScored` when there is none."""
    r = db.runs.c
    query = sa.select(r.run_id, r.window_from, r.window_until).where(r.window_from.is_not(None),
                                                                      r.window_until.is_not(None))
    if from_ms is not None:
        query = query.where(r.window_until > from_ms)
    if until_ms is not None:
        query = query.where(r.window_from < until_ms)
    with engine.connect() as conn:
        runs = conn.execute(query.order_by(r.window_from)).all()
    if not runs:
        raise NothingScored("no run scored windows in the range" if from_ms is not None or until_ms is not None
                            else "no run has scored windows yet")
    lo = min(int(row.window_from) for row in runs)
    hi = max(int(row.window_until) for row in runs)
    lo = lo if from_ms is None else max(lo, int(from_ms))
    hi = hi if until_ms is None else min(hi, int(until_ms))
    return lo, hi, [str(row.run_id) for row in runs]


def load_alerts(engine: Engine, lo: int, hi: int) -> pd.DataFrame:
    """The alerts whose window span overlaps (lo, hi]: device, sensor, first_window_end, last_window_end, status,
    opened_by."""
    a = db.alerts.c
    query = (sa.select(a.device, a.sensor, a.first_window_end, a.last_window_end, a.status, a.opened_by)
             .where(a.last_window_end > lo, a.first_window_end <= hi)
             .order_by(a.device, a.sensor, a.first_window_end))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["device", "sensor", "first_window_end", "last_window_end", "status",
                                        "opened_by"])
    return frame.astype({"first_window_end": np.int64, "last_window_end": np.int64})
