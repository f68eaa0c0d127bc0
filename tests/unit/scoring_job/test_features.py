import numpy as np
import pandas as pd

from scoring_job.features import TIME_FEATURES, time_features

MONDAY = pd.Timestamp("2026-11-30T00:00:00Z").value // 1_000_000  # a Monday, 00:00 UTC, epoch ms
HOUR = 3_600_000


def test_time_features_place_a_window_end_in_its_day_and_week():
    ends = np.array([MONDAY, MONDAY + 6 * HOUR, MONDAY + 12 * HOUR, MONDAY + 3 * 24 * HOUR + 12 * HOUR])
    got = time_features(ends)
    assert list(got) == list(TIME_FEATURES)
    np.testing.assert_allclose(got["tod_sin"], [0.0, 1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(got["tod_cos"], [1.0, 0.0, -1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(got["dow_sin"], [0.0, np.sin(np.pi / 14), np.sin(np.pi / 7), 0.0], atol=1e-12)
    np.testing.assert_allclose(got["dow_cos"], [1.0, np.cos(np.pi / 14), np.cos(np.pi / 7), -1.0], atol=1e-12)


def test_time_features_are_each_rows_own_phase_when_ends_repeat_or_not():
    rng = np.random.default_rng(5)
    repeated = np.repeat(MONDAY + 300_000 * rng.integers(-5_000, 5_000, 40), 30)
    for ends in (repeated, MONDAY + rng.integers(-10**11, 10**11, 1_000), repeated[:0]):
        got = time_features(ends)
        day = 2.0 * np.pi / 86_400_000 * (ends % 86_400_000).astype(np.float64)
        week = 2.0 * np.pi / (7 * 86_400_000) * ((ends - 4 * 86_400_000) % (7 * 86_400_000)).astype(np.float64)
        for name, expected in zip(TIME_FEATURES, (np.sin(day), np.cos(day), np.sin(week), np.cos(week)),
                                  strict=True):
            np.testing.assert_array_equal(got[name], expected)
    assert list(time_features(repeated, ("tod_cos",))) == ["tod_cos"]
