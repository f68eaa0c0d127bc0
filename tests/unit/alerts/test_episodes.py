"""Alert episodes as pure functions: ids, one alert per episode across files, gaps, the min-windows rule,
closing stale alerts."""

from __future__ import annotations

import pandas as pd

from fleetscore.alerts.episodes import alert_id_for, close_stale
from tests.helpers.fleet import (
    T0,
    W,
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
    assert not run_pure(series("d-1", "temp", T0, 4, {0, 2}), min_windows=2).visible
    (alert,) = run_pure(series("d-1", "temp", T0, 4, {1, 2}), min_windows=2).new
    assert (alert["first_window_end"], alert["windows"]) == (T0 + W, 2)
    history = pd.DataFrame({"device": ["d-1"], "sensor": ["temp"], "window_end": [T0 + 3 * W], "score": [0.9]})
    (alert,) = run_pure(series("d-1", "temp", T0 + 4 * W, 2, {0}), history=history, min_windows=2).new
    assert (alert["first_window_end"], alert["last_window_end"], alert["max_score"]) == (T0 + 3 * W, T0 + 4 * W, 0.9)


def test_close_stale_closes_open_alerts_of_pairs_without_windows():
    (alert,) = run_pure(series("d-1", "temp", T0, 1, {0})).new
    assert close_stale([alert], until=T0 + 2 * W, window_ms=W, close_after=3, now=5) == []
    (closed,) = close_stale([alert], until=T0 + 3 * W, window_ms=W, close_after=3, now=5)
    assert closed["status"] == "closed" and closed["revision"] == 2 and closed["last_seen_window_end"] == T0 + 3 * W
