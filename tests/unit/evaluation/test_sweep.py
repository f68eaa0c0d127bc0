"""The threshold sweep: generic over the caller's rule; the default re-runs the episode rules with the thresholds
shifted; monotone on a simulated fleet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.alerts.episodes import Persistence, alert_id_for, update_alerts
from fleetscore.evaluation.metrics import events_in_range, pair_days
from fleetscore.evaluation.sweep import (
    PERSISTENCE_COLUMNS,
    SWEEP_COLUMNS,
    EpisodeRules,
    default_points,
    flagged_share,
    persistence_table,
    scored_only,
    shift_scores,
    shifted_episodes,
    sweep,
)
from fleetscore.ingest.windows import aggregate
from fleetscore.sim.simulate import simulate_fleet
from tests.helpers.fleet import NO_HISTORY

W = 300_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00Z
RULES = EpisodeRules(window_ms=W, persistence=Persistence(2, 3), close_after=3)


def _windows(device: str, sensor: str, scores: dict[int, float], count: int = 30, **columns) -> pd.DataFrame:
    """`count` scored windows (ends T0 + i W) of a pair, score −1 except `scores` {i: score}."""
    score = [scores.get(i, -1.0) for i in range(count)]
    frame = pd.DataFrame({"device": device, "sensor": sensor, "window_end": [T0 + i * W for i in range(count)],
                          "score": score, "status": "ok", "model_version": "v1", "run_id": "r1"})
    return frame.assign(**columns)


def test_sweep_calls_the_callers_rule_once_per_point_in_order():
    events = pd.DataFrame({"device": ["d"], "sensor": ["s"], "start": [T0 + 1], "end": [T0 + 2 * W]})
    hit = pd.DataFrame({"device": ["d"], "sensor": ["s"], "first_window_end": [T0 + W], "last_window_end": [T0 + W]})
    miss = hit.assign(first_window_end=T0 + 50 * W, last_window_end=T0 + 50 * W)
    asked = []

    def alerts_at(point: float) -> pd.DataFrame:
        asked.append(point)
        return {0.0: pd.concat([hit, miss]), 1.0: hit, 2.0: hit.head(0)}[point]

    table = sweep(alerts_at, [1.0, 0.0, 2.0], events, window_ms=W, pair_days=4.0)
    assert asked == [1.0, 0.0, 2.0] and list(table.columns) == list(SWEEP_COLUMNS)
    assert table["point"].tolist() == [1.0, 0.0, 2.0]
    assert table["alerts"].tolist() == [1, 2, 0] and table["recall"].tolist() == [1.0, 1.0, 0.0]
    assert table["precision"].tolist() == [1.0, 0.5, 1.0]
    assert table["false_per_1000_pair_days"].tolist() == [0.0, 250.0, 0.0]


def test_each_alert_is_raised_at_the_window_its_rule_held_on():
    # RULES: 2 of 3. Thresholds 0 and 5: the high bound is 0.75 (episodes.high_bound)
    scored = pd.concat([
        _windows("d1", "temp", {3: 0.5, 4: 10.0}, threshold=0.0, threshold_strong=5.0),  # strong at 4
        _windows("d2", "temp", {6: 1.0, 7: 1.0, 8: 1.0}, threshold=0.0, threshold_strong=5.0),  # two high: 7
        _windows("d3", "temp", {6: 0.5, 8: 0.5, 9: 1.0}, threshold=0.0, threshold_strong=5.0),  # 2 of 3: 8
    ])
    alerts = shifted_episodes(scored, EpisodeRules(window_ms=W, persistence=Persistence(3, 3), close_after=3))(0.0)
    raised = dict(zip(alerts["device"], alerts["raised_window_end"] - T0, strict=True))
    assert raised == {"d1": 4 * W, "d2": 7 * W}  # 3 of 3: d3 never holds it
    alerts = shifted_episodes(scored, RULES)(0.0)
    raised = dict(zip(alerts["device"], alerts["raised_window_end"] - T0, strict=True))
    assert raised == {"d1": 4 * W, "d2": 7 * W, "d3": 8 * W}
    first = dict(zip(alerts["device"], alerts["first_window_end"] - T0, strict=True))
    assert first == {"d1": 3 * W, "d2": 6 * W, "d3": 6 * W}


def _opened_at(frame: pd.DataFrame, rules: EpisodeRules) -> dict[str, int]:
    """{alert_id: the window end whose walk opened it}, from `update_alerts` itself: the alerts of each prefix of
    `frame` (windows up to an end), the first prefix an alert appears in naming its window."""
    opened: dict[str, int] = {}
    for end in np.unique(frame["window_end"].to_numpy()):
        update = update_alerts(frame[frame["window_end"] <= end], pd.DataFrame(), NO_HISTORY,
                               window_ms=rules.window_ms, persistence=rules.persistence,
                               close_after=rules.close_after, severity_of=lambda *_: "low", now=0)
        for alert in update.new:
            opened.setdefault(alert["alert_id"], int(end))
    return opened


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.sampled_from([None, -1.0, 0.5, 1.0, 6.0]), min_size=4, max_size=24),
       persistence=st.sampled_from([Persistence(2, 3), Persistence(3, 4), Persistence(3, 3)]),
       close_after=st.integers(1, 4))
def test_raise_windows_name_the_window_the_index_opened_each_alert_at(scores, persistence, close_after):
    # Thresholds 0 and 5: 0.5 is anomalous, 1.0 also above the high bound (0.75), 6.0 strong; None: no window.
    # The sweep's vectorised rule (`raise_windows`) and the index's walk (`update_alerts`) are two codings of the
    # same opening rule: on any sequence they must name the same window for every alert.
    rules = EpisodeRules(window_ms=W, persistence=persistence, close_after=close_after)
    present = {i: s for i, s in enumerate(scores) if s is not None}
    frame = _windows("d", "temp", present, count=len(scores), threshold=0.0, threshold_strong=5.0)
    frame = shift_scores(scored_only(frame[frame.index.isin(list(present))]), 0.0)
    alerts = shifted_episodes(frame, rules)(0.0)
    opened = _opened_at(frame, rules)
    assert len(alerts) == len(opened)
    for first, raised in zip(alerts["first_window_end"], alerts["raised_window_end"], strict=True):
        assert opened[alert_id_for("d", "temp", int(first))] == raised


def test_shifted_episodes_rerun_the_rules_with_the_thresholds_raised():
    # window 3 far out (strong: alerts at once); windows 10 and 12 marginal (2 of the last 3: raised at 12)
    scored = pd.concat([
        _windows("d1", "temp", {3: 10.0, 10: 0.5, 12: 0.5}, threshold=0.0, threshold_strong=5.0),
        _windows("d2", "temp", {5: 0.4}, threshold=0.2, threshold_strong=np.nan),  # lone marginal window: no alert
        _windows("d3", "temp", {5: np.nan, 6: 9.0, 7: 9.0}, status=["ok"] * 5 + ["error"] + ["ok"] * 24),
    ])  # d3: no threshold columns in its rows (NaN after the concat: 0 and never strong), a failed window
    at = shifted_episodes(scored, RULES)
    alerts = at(0.0).sort_values(["device", "first_window_end"], ignore_index=True)
    assert alerts[["device", "first_window_end", "last_window_end", "raised_window_end"]].values.tolist() == [
        ["d1", T0 + 3 * W, T0 + 3 * W, T0 + 3 * W],
        ["d1", T0 + 10 * W, T0 + 12 * W, T0 + 12 * W],
        ["d3", T0 + 6 * W, T0 + 7 * W, T0 + 7 * W],
    ]
    # raised by 1: the marginal windows are normal, the far one is still strong (9 > 5)
    assert at(1.0)[["device", "first_window_end"]].values.tolist() == [["d1", T0 + 3 * W], ["d3", T0 + 6 * W]]
    # raised by 6: window 3 is only marginal (4 > 0, not > 5) and alone; d3 still has 2 of 3
    assert at(6.0)[["device", "first_window_end"]].values.tolist() == [["d3", T0 + 6 * W]]
    assert at(20.0).empty and list(at(20.0).columns)[:4] == ["device", "sensor", "first_window_end",
                                                               "last_window_end"]
    # lowered by 1.5: every window of d1 (−1 + 1.5 > 0) is anomalous: one long episode from its first window
    low = at(-1.5)
    assert low[low["device"] == "d1"][["first_window_end", "last_window_end"]].values.tolist() == [
        [T0, T0 + 29 * W]]


def test_the_persistence_table_reruns_the_rules_with_each_k_of_n_in_order():
    # marginal windows: d1 at 10 and 12 (2 of 3, not 3 of 4), d2 at 20, 21, 23 (3 of 4, and 2 of 3 at 21)
    scored = pd.concat([_windows("d1", "temp", {10: 0.5, 12: 0.5}, threshold=0.0, threshold_strong=5.0),
                        _windows("d2", "temp", {20: 0.5, 21: 0.5, 23: 0.5}, threshold=0.0, threshold_strong=5.0)])
    events = pd.DataFrame({"device": ["d1", "d2"], "sensor": ["temp", "temp"],
                           "start": [T0 + 9 * W + 1, T0 + 19 * W + 1], "end": [T0 + 12 * W, T0 + 23 * W]})
    asked = []

    def alerts_with(rules: EpisodeRules) -> pd.DataFrame:
        asked.append(rules)
        return shifted_episodes(scored, rules)(0.0)

    choices = [Persistence(3, 4), Persistence(2, 3), Persistence(3, 3)]
    table = persistence_table(alerts_with, RULES, choices, events, pair_days=2.0)
    assert [r.persistence for r in asked] == choices and {(r.window_ms, r.close_after) for r in asked} == {(W, 3)}
    assert list(table.columns) == list(PERSISTENCE_COLUMNS)
    assert table[["persistence", "alerts", "caught", "events"]].values.tolist() == [
        ["3/4", 1, 1, 2], ["2/3", 2, 2, 2], ["3/3", 0, 0, 2]]
    assert table["recall"].tolist() == [0.5, 1.0, 0.0] and table["false_alerts"].tolist() == [0, 0, 0]


def test_default_points_bracket_the_deployed_setting():
    rng = np.random.default_rng(3)
    scored = _windows("d", "s", {}, count=2000).assign(score=rng.normal(-2.0, 1.0, 2000), threshold=0.0)
    points = default_points(scored)
    assert 0.0 in points and points == sorted(points) and points[0] < 0 < points[-1]
    shares = flagged_share(scored, points)
    assert shares == sorted(shares, reverse=True)
    at_zero = shares[points.index(0.0)]
    assert at_zero == pytest.approx((scored["score"] > 0).mean())
    assert shares[0] == pytest.approx(min(16 * at_zero, 1.0), rel=0.05)
    # between 0 and the first shift that halves the flagged share: 1/8, 1/4 and 1/2 of it
    half = min(p for p, sh in zip(points, shares, strict=True) if sh <= at_zero / 2 + 1e-3)
    assert [p for p in points if 0 < p < half] == pytest.approx([half / 8, half / 4, half / 2])
    nothing_flagged = scored.assign(score=-5.0 - rng.random(2000))
    assert default_points(nothing_flagged)[-1] == 0.0 and len(default_points(nothing_flagged)) == 7


def test_the_sweep_is_monotone_on_a_simulated_fleet():
    """A robust z-score per pair (median/MAD of its clean days) as the detector: raising the threshold flags fewer
    windows, never catches more events, and raises no more false alerts at the top than at the bottom."""
    sim = simulate_fleet(devices=12, sensors=3, days=3, clean_days=2, fault_rate=1.0, seed=21)
    windows = aggregate(sim.readings, W)
    windows["mean"] = windows["sum"] / windows["n"]
    clean = windows[windows["window_end"] <= sim.clean_until_ms]
    centre = clean.groupby(["device", "sensor"])["mean"].median().rename("centre")
    spread = clean.join(centre, on=["device", "sensor"]).assign(dev=lambda f: (f["mean"] - f["centre"]).abs())
    spread = spread.groupby(["device", "sensor"])["dev"].median().rename("mad")
    scored = windows[windows["window_end"] > sim.clean_until_ms].join(centre, on=["device", "sensor"])
    scored = scored.join(spread, on=["device", "sensor"])
    scored = scored.assign(score=(scored["mean"] - scored["centre"]).abs() / (1.4826 * scored["mad"] + 1e-9),
                           threshold=4.0, threshold_strong=12.0, status="ok", model_version="v", run_id="r")
    events = events_in_range(sim.faults, sim.clean_until_ms, sim.end_ms)
    points = sorted(set(default_points(scored)) | {-3.0, 30.0})
    table = sweep(shifted_episodes(scored, RULES), points, events, window_ms=W,
                  pair_days=pair_days(36, sim.clean_until_ms, sim.end_ms))
    assert len(events) >= 10
    recall = table["recall"].to_numpy()
    assert (np.diff(recall) <= 1e-12).all(), table
    assert (np.diff(flagged_share(scored, points)) <= 0).all()
    assert recall[0] > recall[-1] and table["alerts"].iloc[-1] < table["alerts"].iloc[0]
    assert table["false_alerts"].iloc[-1] <= table["false_alerts"].iloc[0]
