"""Alert episodes as pure functions: ids, one alert per episode across files, gaps, the min-windows rule,
closing stale alerts."""

from __future__ import annotations

import pandas as pd

from fleetscore.alerts.episodes import HIGH_SHARE, alert_id_for, close_stale
from tests.helpers.fleet import (
    STRONG,
    T0,
    W,
    graded,
    run_pure,
    series,
)


def test_alert_id_is_deterministic_and_per_episode():
    assert alert_id_for("d-1", "temp", T0) == alert_id_for("d-1", "temp", T0)
    assert len(alert_id_for("d-1", "temp", T0)) == 19 and alert_id_for("d-1", "temp", T0).startswith("al-")
    assert len({alert_id_for("d-1", "temp", T0), alert_id_for("d-1", "temp", T0 + W),
                alert_id_for("d-1", "rh", T0), alert_id_for("d-2", "temp", T0)}) == 4


def test_an_episode_across_files_is_one_alert_and_closes_after_the_normal_windows():
    first = run_pure(series("d-1", "temp", T0, 4, {2, 3}))
    (alert,) = first.new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 2 * W, T0 + 3 * W, 2)
    assert alert["status"] == "open" and alert["revision"] == 1
    # the next file continues the episode, then 2 normal windows: still open
    second = run_pure(series("d-1", "temp", T0 + 4 * W, 3, {0}), latest=[alert], now=2)
    assert not second.new
    (same,) = second.changed
    assert same["alert_id"] == alert["alert_id"] and same["windows"] == 3 and same["revision"] == 2
    assert same["status"] == "open" and same["normal_after"] == 2 and same["last_seen_window_end"] == T0 + 6 * W
    # the third normal window closes it; a later anomaly opens a new alert
    third = run_pure(series("d-1", "temp", T0 + 7 * W, 4, {3}), latest=[same], now=3)
    (closed,) = third.changed
    assert closed["status"] == "closed" and closed["revision"] == 3 and closed["last_window_end"] == T0 + 4 * W
    (new,) = third.new
    assert new["alert_id"] != alert["alert_id"] and new["first_window_end"] == T0 + 10 * W
    # the same file again changes nothing
    assert not run_pure(series("d-1", "temp", T0 + 7 * W, 4, {3}), latest=[new]).visible


def test_a_gap_counts_as_normal_windows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    update = run_pure(series("d-1", "temp", T0 + 2 * W, 1, {0}), latest=[alert])  # one missing window
    assert not update.new and update.changed[0]["windows"] == 2
    alert = update.changed[0]
    later = run_pure(series("d-1", "temp", T0 + 6 * W, 1, {0}), latest=[alert])  # 3 missing windows
    (closed,) = later.changed
    assert closed["status"] == "closed" and closed["normal_after"] == 3 and closed["last_seen_window_end"] == T0 + 5 * W
    assert [a["first_window_end"] for a in later.new] == [T0 + 6 * W]


def test_min_windows_two_needs_consecutive_anomalies_even_across_files():
    assert not run_pure(series("d-1", "temp", T0, 4, {0, 2}), persistence=(2, 2)).visible
    (alert,) = run_pure(series("d-1", "temp", T0, 4, {1, 2}), persistence=(2, 2)).new
    assert (alert["first_window_end"], alert["windows"]) == (T0 + W, 2)
    history = pd.DataFrame({"device": ["d-1"], "sensor": ["temp"], "window_end": [T0 + 3 * W], "score": [0.9]})
    (alert,) = run_pure(series("d-1", "temp", T0 + 4 * W, 2, {0}), history=history, persistence=(2, 2)).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["max_score"]) == (T0 + 3 * W, T0 + 4 * W, 0.9)


def test_close_stale_closes_open_alerts_of_pairs_without_windows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    assert close_stale([alert], until=T0 + 2 * W, window_ms=W, close_after=3, now=5) == []
    (closed,) = close_stale([alert], until=T0 + 3 * W, window_ms=W, close_after=3, now=5)
    assert closed["status"] == "closed" and closed["revision"] == 2 and closed["last_seen_window_end"] == T0 + 3 * W


# ------------------------------------------------------------------------------------------ evidence rules
def history_of(*ends: int, score: float = 0.5) -> pd.DataFrame:
    """Earlier files' anomalous windows of (d-1, temp) at these window ends, as the anomalies table gives them."""
    return pd.DataFrame({"device": "d-1", "sensor": "temp", "window_end": list(ends), "score": score,
                         "model_version": "v1", "run_id": "run-x"})


def test_one_strong_window_alerts_at_once():
    (alert,) = run_pure(graded(T0, 4, strong={2}), persistence=(2, 3)).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 2 * W, T0 + 2 * W, 1)
    assert alert["max_score"] == STRONG
    assert alert["opened_by"] == "strong"


HIGH = 0.1 + HIGH_SHARE * (4.0 - 0.1)
"""A `graded` window's high bound."""


def with_scores(rows: list[dict], scores: dict[int, float]) -> list[dict]:
    """`graded` rows with the windows at these indexes scoring these scores."""
    for i, score in scores.items():
        rows[i]["score"] = score
    return rows


def test_two_high_windows_in_a_row_alert_at_once():
    above, below = HIGH + 0.05, HIGH - 0.05  # both anomalous, neither strong
    (alert,) = run_pure(with_scores(graded(T0, 6), {1: above, 2: above}), persistence=(3, 4)).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + W, T0 + 2 * W, 2)
    assert alert["opened_by"] == "two_high"
    for scores in ({1: above, 3: above},  # not in a row
                   {1: above, 2: below}, {1: below, 2: above}):  # one of the two below the bound
        assert not run_pure(with_scores(graded(T0, 6), scores), persistence=(3, 4)).visible, scores
    # a missing window between two high ones: not in a row
    rows = [r for i, r in enumerate(with_scores(graded(T0, 6), {1: above, 3: above})) if i != 2]
    assert not run_pure(rows, persistence=(3, 4)).visible


def test_two_high_windows_in_a_row_straddle_files_by_the_later_windows_bound():
    # the previous file ended with a high window (T0 + 5W); the anomalies table keeps its score only
    (alert,) = run_pure(with_scores(graded(T0 + 6 * W, 3), {0: HIGH + 0.05}), history=history_of(T0 + 5 * W,
                        score=HIGH + 0.01), persistence=(3, 4)).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 5 * W, T0 + 6 * W, 2)
    assert not run_pure(with_scores(graded(T0 + 6 * W, 3), {0: HIGH + 0.05}),
                        history=history_of(T0 + 5 * W, score=HIGH - 0.01), persistence=(3, 4)).visible


def test_without_a_strong_threshold_no_window_is_high():
    rows = with_scores(graded(T0, 4), {1: 1e9, 2: 1e9})
    for row in rows:
        row["threshold_strong"] = float("nan")
    assert not run_pure(rows, persistence=(3, 4)).visible
    assert not run_pure(series("d-1", "temp", T0, 4, {1, 2}, score=1e9), persistence=(3, 4)).visible


def test_one_marginal_window_does_not_alert_and_k_of_n_do():
    assert not run_pure(graded(T0, 6, marginal={1}), persistence=(2, 3)).visible
    assert not run_pure(graded(T0, 8, marginal={1, 4}), persistence=(2, 3)).visible  # 3 windows apart: not 2 of 3
    (alert,) = run_pure(graded(T0, 6, marginal={1, 3}), persistence=(2, 3)).new  # not in a row, but 2 of 3
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + W, T0 + 3 * W, 2)
    assert alert["opened_by"] == "persistence"


def test_an_alert_names_the_first_rule_that_opened_it_strong_before_two_high_before_persistence():
    # a strong window after a high one: two high in a row and 2 of 3 hold too; strong is named
    (alert,) = run_pure(with_scores(graded(T0, 6), {1: HIGH + 0.05, 2: STRONG}), persistence=(2, 3)).new
    assert (alert["opened_by"], alert["first_window_end"], alert["windows"]) == ("strong", T0 + W, 2)
    # two high windows in a row that are also 2 of 3: two_high
    (alert,) = run_pure(with_scores(graded(T0, 6), {1: HIGH + 0.05, 2: HIGH + 0.05}), persistence=(2, 3)).new
    assert alert["opened_by"] == "two_high"
    # the rule is the opening's: windows that extend the alert later change nothing
    (alert,) = run_pure(with_scores(graded(T0, 8, marginal={1, 2}), {4: STRONG}), persistence=(2, 3)).new
    assert (alert["opened_by"], alert["windows"], alert["max_score"]) == ("persistence", 3, STRONG)


def test_a_score_above_zero_but_below_the_threshold_is_normal():
    rows = graded(T0, 4, marginal={0, 1, 2})
    for row in rows:
        row["threshold"] = 1.0  # 0.5 > 0 (today's rule) but below this model's threshold
    assert not run_pure(rows, persistence=(1, 1)).visible


def test_a_marginal_window_before_a_strong_one_is_part_of_its_alert():
    (alert,) = run_pure(graded(T0, 5, marginal={1}, strong={2}), persistence=(3, 3)).new
    assert (alert["first_window_end"], alert["windows"], alert["max_score"]) == (T0 + W, 2, STRONG)


def test_files_without_thresholds_keep_todays_rule():
    rows = series("d-1", "temp", T0, 4, {1})  # no threshold columns: threshold 0, never strong
    assert run_pure(rows, persistence=(1, 1)).new
    assert not run_pure(rows, persistence=(2, 3)).visible
    assert not run_pure(series("d-1", "temp", T0, 4, {1}, score=1e9), persistence=(2, 2)).visible


def test_persistence_across_files_uses_the_earlier_files_anomalies():
    # the previous file ended with one marginal window (T0 + 5W); this file's first window is the second of 3
    (alert,) = run_pure(graded(T0 + 6 * W, 4, marginal={0}), history=history_of(T0 + 5 * W, score=0.7),
                        persistence=(2, 3)).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["windows"]) == (T0 + 5 * W, T0 + 6 * W, 2)
    assert alert["max_score"] == 0.7 and alert["alert_id"] == alert_id_for("d-1", "temp", T0 + 5 * W)
    # too far back to count
    assert not run_pure(graded(T0 + 6 * W, 4, marginal={0}), history=history_of(T0 + 3 * W),
                        persistence=(2, 3)).visible


def test_gaps_count_as_not_anomalous():
    rows = [r for i, r in enumerate(graded(T0, 5, marginal={0, 2})) if i != 1]  # window 1 missing
    (alert,) = run_pure(rows, persistence=(2, 3)).new  # 2 of 3 with the gap between: still 2 of 3
    assert alert["first_window_end"] == T0
    rows = [r for i, r in enumerate(graded(T0, 5, marginal={0, 3})) if i not in (1, 2)]  # 2 missing windows
    assert not run_pure(rows, persistence=(2, 3)).visible  # the missing windows are not evidence
    rows = [r for i, r in enumerate(graded(T0, 3, marginal={0, 1})) if i != 1]  # the missing one is not counted
    assert not run_pure(rows, persistence=(2, 2)).visible


def test_windows_of_a_closed_alert_are_not_evidence_again():
    (alert,) = run_pure(graded(T0, 1, strong={0}), persistence=(2, 3)).new
    closed = run_pure(graded(T0 + W, 3), latest=[alert], persistence=(2, 3)).changed[0]
    assert closed["status"] == "closed" and closed["last_seen_window_end"] == T0 + 3 * W
    # T0 was the closed alert's: a marginal window at T0 + 4W is alone among its 3
    assert not run_pure(graded(T0 + 4 * W, 2, marginal={0}), latest=[closed], history=history_of(T0),
                        persistence=(2, 3)).visible


def test_windows_of_an_alert_closed_in_the_same_file_are_not_evidence_again():
    # closes after 1 normal window; 2 of 3. The strong window 0's alert closes on window 1; window 2 is marginal
    # and alone among its 3 once window 0 is the closed alert's: no second alert (it would reuse window 0's id)
    update = run_pure(graded(T0, 4, strong={0}, marginal={2}), persistence=(2, 3), close_after=1)
    assert [(a["first_window_end"], a["status"]) for a in update.new] == [(T0, "closed")]
    # two marginal windows after it do open one, from its own first window
    update = run_pure(graded(T0, 5, strong={0}, marginal={2, 3}), persistence=(2, 3), close_after=1)
    assert [a["first_window_end"] for a in update.new] == [T0, T0 + 2 * W]
    assert len({a["alert_id"] for a in update.new}) == 2


def test_an_older_file_indexed_late_opens_the_alert_time_order_opens():
    older, newer = graded(T0, 6, marginal={5}), graded(T0 + 6 * W, 6, marginal={0})
    in_order = run_pure(older, persistence=(2, 3)).new + run_pure(newer, history=history_of(T0 + 5 * W),
                                                                   persistence=(2, 3)).new
    # the newer file first: one marginal window, no alert; then the older one, with the newer's anomaly stored
    assert not run_pure(newer, persistence=(2, 3)).visible
    late = run_pure(older, history=history_of(T0 + 6 * W), persistence=(2, 3)).new
    keys = ("alert_id", "first_window_end", "last_window_end", "windows", "max_score")
    assert [tuple(a[k] for k in keys) for a in late] == [tuple(a[k] for k in keys) for a in in_order]
    assert late[0]["first_window_end"] == T0 + 5 * W
    # time order closed it on the newer file's normal windows, which the anomalies table does not hold: open
    # until the next file or the run's completion closes it (bookkeeping only)
    assert (in_order[0]["status"], late[0]["status"]) == ("closed", "open")


def test_a_late_file_closes_the_alert_it_opens_where_a_newer_anomaly_shows_the_gap():
    older = graded(T0, 6, marginal={4, 5})
    (alert,) = run_pure(older, history=history_of(T0 + 11 * W), persistence=(2, 3)).new
    assert alert["status"] == "closed" and alert["last_window_end"] == T0 + 5 * W
    assert (alert["last_seen_window_end"], alert["normal_after"]) == (T0 + 8 * W, 3)
