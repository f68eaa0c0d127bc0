"""The one time module: each ISO form callers rely on, and ms parsing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from fleetscore.clock import iso_array, iso_exact, iso_offset, iso_seconds, now_ms, to_datetime, to_ms

WHOLE = 1_795_428_300_000  # 2026-11-23T10:05:00Z
WITH_MS = WHOLE + 123


def test_iso_ms_matches_numpy():
    ts = np.random.default_rng(0).integers(0, 4_000_000_000_000, 5_000)
    expected = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms", timezone="UTC")
    assert (iso_array(ts).astype("U24") == expected).all()
    assert iso_array([1_767_571_200_005]).astype("U24")[0] == "2026-01-05T00:00:00.005Z"
    assert iso_array([]).size == 0


def test_each_iso_form():
    assert iso_seconds(WHOLE) == iso_seconds(WITH_MS) == "2026-11-23T10:05:00Z"
    assert iso_exact(WHOLE) == "2026-11-23T10:05:00Z" and iso_exact(WITH_MS) == "2026-11-23T10:05:00.123Z"
    assert iso_offset(WHOLE) == "2026-11-23T10:05:00.000+00:00"
    assert iso_offset(WITH_MS) == "2026-11-23T10:05:00.123+00:00"


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, pd.NaT])
def test_a_missing_time_formats_as_the_callers_choice(missing):
    assert iso_seconds(missing, missing="-") == "-"
    assert iso_exact(missing, missing="") == "" and iso_exact(missing) is None
    assert iso_offset(missing, missing="never") == "never"


def test_iso_matches_the_float_conversion_it_replaced():
    for ms in np.random.default_rng(1).integers(0, 4_000_000_000_000, 2_000).tolist():
        dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        assert iso_seconds(ms) == dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert iso_offset(ms) == dt.isoformat(timespec="milliseconds")
        assert to_ms(dt) == ms and to_datetime(ms) == dt


def test_to_ms_accepts_datetimes_strings_and_ints():
    assert to_ms("2026-11-23T10:05:00Z") == to_ms("2026-11-23T10:05") == WHOLE  # naive means UTC
    assert to_ms(datetime(2026, 11, 23, 11, 5, tzinfo=timezone(timedelta(hours=1)))) == WHOLE
    assert to_ms(pd.Timestamp("2026-11-23T10:05:00.123456789Z")) == WITH_MS
    assert to_ms(np.int64(WHOLE)) == to_ms(WHOLE) == WHOLE
    assert to_ms(datetime(2026, 11, 23, 10, 5, 0, 123_600, tzinfo=timezone.utc)) == WITH_MS + 1  # nearest ms


def test_now_ms_is_the_wall_clock():
    before = datetime.now(timezone.utc)
    assert abs(to_datetime(now_ms()) - before) < timedelta(seconds=5)
