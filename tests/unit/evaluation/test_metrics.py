"""Detection quality: fault windows, episodes from window flags, alerts matched to events, event-level figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fleetscore.evaluation.metrics import (
    BY_RULE_COLUMNS,
    by_opening_rule,
    detect,
    episodes_from_flags,
    events_in_range,
    fault_windows,
    match_alerts,
    pair_days,
    time_to_detect,
)

W = 300_000  # 5-minute windows
T0 = 1_767_571_200_000  # 2026-01-05T00:00Z, a multiple of W


def _faults(*rows):
    return pd.DataFrame(rows, columns=["device", "sensor", "start", "end", "kind"])


def _alerts(*rows):
    return pd.DataFrame(rows, columns=["device", "sensor", "first_window_end", "last_window_end"])


def test_fault_windows_follow_tumbling_window_labels():
    faults = _faults(
        ("d1", "temp", T0 + 1, T0 + 2 * W, "spike"),  # (T0, T0+W] … exactly on the end of window 2
        ("d1", "temp", T0 + W, T0 + W + 10, "stuck"),  # on a window end: belongs to the window ending there
        ("d2", "rpm", T0 + 2 * W + 5, T0 + 2 * W + 6, "noise"),
    )
    got = fault_windows(faults, W)
    expected = pd.DataFrame({
        "device": ["d1", "d1", "d1", "d2"], "sensor": ["temp", "temp", "temp", "rpm"],
        "window_end": [T0 + W, T0 + 2 * W, T0 + 2 * W, T0 + 3 * W],
    }).astype({"device": "str", "sensor": "str"}).drop_duplicates()
    expected = expected.sort_values(["device", "sensor", "window_end"], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    assert fault_windows(faults.head(0), W).empty


def test_episodes_from_flags_with_gaps_normal_windows_and_several_pairs():
    w = lambda k: T0 + k * W  # noqa: E731
    rows = [
        # d1/temp: 1,2,3 anomalous; 4 normal; 5 anomalous; 6 missing; 7,8 anomalous
        ("d1", "temp", w(1), True), ("d1", "temp", w(2), True), ("d1", "temp", w(3), True),
        ("d1", "temp", w(4), False), ("d1", "temp", w(5), True),
        ("d1", "temp", w(7), True), ("d1", "temp", w(8), True),
        # d1/rpm: shares window ends with temp but is its own pair
        ("d1", "rpm", w(2), True), ("d1", "rpm", w(3), True), ("d1", "rpm", w(9), False),
        # d2/temp: nothing anomalous
        ("d2", "temp", w(1), False), ("d2", "temp", w(2), False),
        # d0/temp: a lone anomalous window, listed last to check the sort
        ("d0", "temp", w(6), True),
    ]
    flags = pd.DataFrame(rows, columns=["device", "sensor", "window_end", "is_anomaly"])
    flags = flags.sample(frac=1.0, random_state=1)  # any order in
    got = episodes_from_flags(flags, W)
    expected = pd.DataFrame({
        "device": ["d0", "d1", "d1", "d1", "d1"],
        "sensor": ["temp", "rpm", "temp", "temp", "temp"],
        "first_window_end": [w(6), w(2), w(1), w(5), w(7)],
        "last_window_end": [w(6), w(3), w(3), w(5), w(8)],
        "windows": [1, 2, 3, 1, 2],
    }).astype({"device": "str", "sensor": "str"})
    pd.testing.assert_frame_equal(got, expected)


def test_episodes_from_flags_empty_and_duplicates():
    empty = episodes_from_flags(pd.DataFrame({"device": ["d"], "sensor": ["s"], "window_end": [T0],
                                              "is_anomaly": [False]}), W)
    assert empty.empty and list(empty.columns) == ["device", "sensor", "first_window_end", "last_window_end",
                                                   "windows"]
    assert empty["first_window_end"].dtype == np.int64
    dup = pd.DataFrame({"device": ["d", "d", "d"], "sensor": ["s"] * 3, "window_end": [T0, T0, T0 + W],
                        "is_anomaly": [True, True, True]})
    got = episodes_from_flags(dup, W)
    assert got[["first_window_end", "last_window_end", "windows"]].values.tolist() == [[T0, T0 + W, 2]]


def test_an_overlapping_alert_is_true_and_finds_its_fault():
    faults = _faults(("d1", "temp", T0 + 10 * W + 1, T0 + 14 * W, "drift"))  # windows 11..14
    m = match_alerts(_alerts(("d1", "temp", T0 + 13 * W, T0 + 16 * W)), faults, W)
    assert (m.precision, m.recall, m.true_alerts, m.false_alerts, m.detected_faults, m.missed_faults) == (
        1.0, 1.0, 1, 0, 1, 0)
    assert m.alert_is_true.tolist() == [True] and m.fault_is_detected.tolist() == [True]
    assert m.f1 == 1.0


def test_tolerance_windows_widen_the_fault_on_both_sides():
    faults = _faults(("d1", "temp", T0 + 10 * W + 1, T0 + 14 * W, "spike"))  # windows 11..14
    just_after = _alerts(("d1", "temp", T0 + 15 * W, T0 + 16 * W))
    just_before = _alerts(("d1", "temp", T0 + 9 * W, T0 + 10 * W))
    two_after = _alerts(("d1", "temp", T0 + 16 * W, T0 + 17 * W))
    for alerts in (just_after, just_before):
        assert match_alerts(alerts, faults, W, tolerance_windows=1).recall == 1.0
        assert match_alerts(alerts, faults, W, tolerance_windows=0).recall == 0.0
    assert match_alerts(two_after, faults, W, tolerance_windows=1).precision == 0.0
    assert match_alerts(two_after, faults, W, tolerance_windows=2).precision == 1.0
    with pytest.raises(ValueError):
        match_alerts(two_after, faults, W, tolerance_windows=-1)


def test_an_alert_on_another_pair_does_not_count():
    faults = _faults(("d1", "temp", T0 + 1, T0 + 3 * W, "stuck"))
    alerts = _alerts(("d1", "rpm", T0 + W, T0 + 2 * W), ("d2", "temp", T0 + W, T0 + 2 * W))
    m = match_alerts(alerts, faults, W)
    assert (m.precision, m.recall, m.true_alerts, m.false_alerts, m.detected_faults, m.missed_faults) == (
        0.0, 0.0, 0, 2, 0, 1)
    assert m.f1 == 0.0


def test_mixed_alerts_and_faults_count_each_side_once():
    faults = _faults(
        ("d1", "temp", T0 + 1, T0 + 4 * W, "spike"),  # windows 1..4
        ("d1", "temp", T0 + 20 * W + 1, T0 + 22 * W, "drift"),  # windows 21..22: missed
        ("d2", "rpm", T0 + 5 * W + 1, T0 + 8 * W, "noise"),  # windows 6..8
    )
    alerts = _alerts(
        ("d1", "temp", T0 + 2 * W, T0 + 2 * W),  # true (fault 1)
        ("d1", "temp", T0 + 3 * W, T0 + 4 * W),  # true (fault 1 again)
        ("d2", "rpm", T0 + 8 * W, T0 + 30 * W),  # true (fault 3)
        ("d2", "rpm", T0 + 40 * W, T0 + 41 * W),  # false
    )
    m = match_alerts(alerts, faults, W)
    assert (m.true_alerts, m.false_alerts, m.detected_faults, m.missed_faults) == (3, 1, 2, 1)
    assert m.precision == pytest.approx(0.75) and m.recall == pytest.approx(2 / 3)
    assert m.alert_is_true.tolist() == [True, True, True, False]
    assert m.fault_is_detected.tolist() == [True, False, True]


def test_no_alerts_means_precision_one_and_recall_zero():
    faults = _faults(("d1", "temp", T0 + 1, T0 + 3 * W, "spike"))
    m = match_alerts(_alerts(), faults, W)
    assert (m.precision, m.recall, m.true_alerts, m.false_alerts, m.detected_faults, m.missed_faults) == (
        1.0, 0.0, 0, 0, 0, 1)
    assert not math.isnan(m.precision)
    none = match_alerts(_alerts(), faults.head(0), W)
    assert (none.precision, none.recall) == (1.0, 1.0)
    only_alerts = match_alerts(_alerts(("d1", "temp", T0, T0)), faults.head(0), W)
    assert (only_alerts.precision, only_alerts.recall, only_alerts.false_alerts) == (0.0, 1.0, 1)


def test_simulated_faults_are_found_by_an_oracle_detector():
    """End to end on simulated data: flag exactly the windows faults touch and everything is found."""
    from fleetscore.sim.simulate import simulate_fleet

    sim = simulate_fleet(devices=5, sensors=3, days=3, clean_days=1, fault_rate=1.0, seed=11)
    touched = fault_windows(sim.faults, W).assign(is_anomaly=True)
    episodes = episodes_from_flags(touched, W)
    m = match_alerts(episodes, sim.faults, W, tolerance_windows=0)
    assert len(sim.faults) > 5
    assert m.recall == 1.0 and m.precision == 1.0
    assert episodes["windows"].min() >= 3  # every fault spans several 5-minute windows


# ------------------------------------------------------------------------------------------ detect
def _events(*rows):
    return pd.DataFrame(rows, columns=["device", "sensor", "start", "end"])


def test_detect_counts_caught_and_missed_events_true_and_false_alerts():
    events = _events(
        ("d1", "temp", T0 + 10 * W + 60_000, T0 + 14 * W),  # windows 11..14: caught
        ("d1", "temp", T0 + 40 * W + 1, T0 + 42 * W),  # windows 41..42: missed
    )
    alerts = _alerts(
        ("d1", "temp", T0 + 12 * W, T0 + 15 * W),  # true: raised at its first window (no raised_window_end)
        ("d1", "temp", T0 + 80 * W, T0 + 81 * W),  # false
        ("d2", "temp", T0 + 41 * W, T0 + 41 * W),  # false: another pair
    )
    d = detect(alerts, events, window_ms=W, pair_days=2.0)
    assert (d.events, d.caught, d.alerts, d.true_alerts, d.false_alerts) == (2, 1, 3, 1, 2)
    assert d.recall == 0.5 and d.precision == pytest.approx(1 / 3)
    assert d.false_per_1000_pair_days == pytest.approx(2 * 1000 / 2.0)
    assert d.median_ttd_minutes == pytest.approx((12 * W - 10 * W - 60_000) / 60_000)  # 9 minutes
    assert d.as_dict()["median_ttd_minutes"] == pytest.approx(9.0)


def test_by_opening_rule_counts_each_rules_true_and_false_alerts_in_the_rules_order():
    events = _events(("d1", "temp", T0 + 10 * W + 1, T0 + 14 * W))  # windows 11..14
    alerts = _alerts(
        ("d1", "temp", T0 + 12 * W, T0 + 13 * W),  # true
        ("d1", "temp", T0 + 80 * W, T0 + 81 * W),  # false
        ("d1", "temp", T0 + 11 * W, T0 + 11 * W),  # true
        ("d2", "temp", T0 + 12 * W, T0 + 12 * W),  # false: another pair
        ("d1", "temp", T0 + 90 * W, T0 + 90 * W),  # false, opened before the rule was recorded
    ).assign(opened_by=["persistence", "persistence", "strong", "strong", None])
    table = by_opening_rule(alerts, events, window_ms=W, pair_days=4.0)
    assert list(table.columns) == list(BY_RULE_COLUMNS)
    assert table[["opened_by", "alerts", "true_alerts", "false_alerts"]].values.tolist() == [
        ["strong", 2, 1, 1], ["persistence", 2, 1, 1], ["unknown", 1, 0, 1]]
    assert table["precision"].tolist() == [0.5, 0.5, 0.0]
    assert table["false_per_1000_pair_days"].tolist() == [250.0, 250.0, 250.0]
    assert by_opening_rule(alerts.drop(columns="opened_by"), events, window_ms=W, pair_days=0.0)[
        ["opened_by", "alerts", "true_alerts"]].values.tolist() == [["unknown", 5, 2]]
    assert by_opening_rule(alerts.iloc[:0], events, window_ms=W, pair_days=4.0).empty


def test_detect_uses_the_raise_window_and_the_median_over_caught_events():
    start = T0 + 60_000  # one minute into window 1; windows 1..6
    events = _events(("d1", "temp", start, T0 + 6 * W), ("d2", "temp", start, T0 + 6 * W),
                     ("d3", "temp", start, T0 + 6 * W))
    alerts = pd.DataFrame({
        "device": ["d1", "d2", "d3", "d3"], "sensor": ["temp"] * 4,
        "first_window_end": [T0 + W, T0 + W, T0 + 5 * W, T0 + 2 * W],
        "last_window_end": [T0 + 6 * W, T0 + 6 * W, T0 + 6 * W, T0 + 3 * W],
        # d1 raised at its 3rd window, d2 at its 1st; d3: the earlier of its two alerts' raise windows
        "raised_window_end": [T0 + 3 * W, T0 + W, T0 + 5 * W, T0 + 3 * W],
    })
    ttd = time_to_detect(alerts, events, W)
    assert ttd.to_dict() == {0: 14.0, 1: 4.0, 2: 14.0}
    assert detect(alerts, events, window_ms=W, pair_days=1.0).median_ttd_minutes == 14.0


def test_an_alert_open_before_the_event_detects_it_at_the_events_first_window():
    events = _events(("d1", "temp", T0 + 10 * W + 120_000, T0 + 12 * W))  # first window ends T0 + 11 W
    alerts = pd.DataFrame({"device": ["d1"], "sensor": ["temp"], "first_window_end": [T0 + 2 * W],
                           "last_window_end": [T0 + 20 * W], "raised_window_end": [T0 + 3 * W]})
    assert time_to_detect(alerts, events, W).tolist() == [3.0]  # 11 W − (10 W + 2 min), never negative


def test_detect_tolerance_edge_after_the_event():
    events = _events(("d1", "temp", T0 + 10 * W + 1, T0 + 12 * W))  # windows 11..12
    late = _alerts(("d1", "temp", T0 + 14 * W, T0 + 15 * W))  # two windows after the last
    assert detect(late, events, window_ms=W, pair_days=1.0, tolerance_windows=1).recall == 0.0
    caught = detect(late, events, window_ms=W, pair_days=1.0, tolerance_windows=2)
    assert (caught.recall, caught.precision) == (1.0, 1.0)
    assert caught.median_ttd_minutes == pytest.approx((14 * W - 10 * W - 1) / 60_000)


def test_detect_without_alerts_events_or_exposure():
    events = _events(("d1", "temp", T0 + 1, T0 + W))
    nothing = detect(_alerts(), events, window_ms=W, pair_days=10.0)
    assert (nothing.precision, nothing.recall, nothing.false_per_1000_pair_days) == (1.0, 0.0, 0.0)
    assert math.isnan(nothing.median_ttd_minutes) and nothing.as_dict()["median_ttd_minutes"] is None
    no_exposure = detect(_alerts(("d1", "temp", T0, T0)), events.head(0), window_ms=W, pair_days=0.0)
    assert no_exposure.false_alerts == 1 and math.isnan(no_exposure.false_per_1000_pair_days)


def test_pair_days_and_events_in_range():
    day = 86_400_000
    assert pair_days(120, T0, T0 + 4 * day) == 480.0
    assert pair_days(3, T0, T0 + day // 2) == 1.5
    assert pair_days(5, T0 + day, T0) == 0.0
    events = _events(("a", "s", T0 - 2 * W, T0 - W),  # ends before the range: out
                     ("b", "s", T0 - W, T0 + 1),  # ends inside: in
                     ("c", "s", T0 + day, T0 + day + W),  # starts at the range's last window end: in
                     ("d", "s", T0 + day + 1, T0 + day + W))  # starts after: out
    assert events_in_range(events, T0, T0 + day)["device"].tolist() == ["b", "c"]
