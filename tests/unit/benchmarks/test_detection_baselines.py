"""The detection benchmark's reference rows, whose figures docs/DETECTION.md's argument about the bar rests on: the
reference's flags turned into alerts (one per reading, or merged runs), and the same count of flags per pair at
random positions (`(c) at random`)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.helpers import REPO

W = 300_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00Z, a multiple of W


@pytest.fixture(scope="module")
def detection():
    spec = importlib.util.spec_from_file_location("detection_benchmark", REPO / "benchmarks" / "detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sim(readings_per_pair: dict[tuple[str, str], int], clean: int = 10):
    """Readings a minute apart per pair: `clean` of them up to the clean-until time, the rest after it."""
    rows = [(d, s, T0 + i * 60_000) for (d, s), count in readings_per_pair.items() for i in range(clean + count)]
    readings = pd.DataFrame(rows, columns=["device", "sensor", "ts"]).assign(value=1.0)
    return SimpleNamespace(readings=readings, clean_until_ms=T0 + (clean - 1) * 60_000)


def _flags(sim, hot: dict[tuple[str, str], list[int]]) -> pd.DataFrame:
    """The reference's flags: these positions among each pair's faulty-range readings."""
    r = sim.readings[sim.readings["ts"] > sim.clean_until_ms]
    parts = []
    for (device, sensor), positions in hot.items():
        ts = r[(r["device"] == device) & (r["sensor"] == sensor)]["ts"].to_numpy()
        parts.append(pd.DataFrame({"device": device, "sensor": sensor, "ts": ts[positions], "position": positions}))
    return pd.concat(parts, ignore_index=True)


def test_chance_flags_put_as_many_flags_per_pair_at_distinct_random_readings_of_the_faulty_range(detection):
    sim = _sim({("d-1", "temp"): 50, ("d-1", "rpm"): 40, ("d-2", "temp"): 30})
    flags = _flags(sim, {("d-1", "temp"): [0, 1, 2, 7], ("d-2", "temp"): list(range(12))})
    chance = detection.chance_flags(flags, sim, seed=1)
    assert chance.groupby(["device", "sensor"]).size().to_dict() == {("d-1", "temp"): 4, ("d-2", "temp"): 12}
    faulty = sim.readings[sim.readings["ts"] > sim.clean_until_ms]
    for (device, sensor), got in chance.groupby(["device", "sensor"]):
        own = set(faulty[(faulty["device"] == device) & (faulty["sensor"] == sensor)]["ts"])
        assert set(got["ts"]) <= own and got["ts"].is_unique and got["ts"].is_monotonic_increasing
    again, other = detection.chance_flags(flags, sim, seed=1), detection.chance_flags(flags, sim, seed=2)
    assert again.equals(chance) and not other["ts"].equals(chance["ts"])


def test_chance_flags_spread_over_the_range_not_where_the_reference_flagged(detection):
    sim = _sim({("d-1", "temp"): 1000})
    flags = _flags(sim, {("d-1", "temp"): list(range(100))})  # the reference flagged the first 100 readings
    positions = np.searchsorted(np.sort(sim.readings["ts"].to_numpy()), detection.chance_flags(flags, sim, 3)["ts"])
    positions -= 10  # the clean readings before
    assert positions.min() >= 0 and (positions >= 100).mean() > 0.8  # uniform over 1,000: ~90 % beyond the first 100


def test_reference_alerts_are_one_per_flag_or_one_per_run_of_consecutive_flags(detection):
    sim = _sim({("d-1", "temp"): 30, ("d-2", "temp"): 30})
    flags = _flags(sim, {("d-1", "temp"): [0, 1, 2, 10], ("d-2", "temp"): [3]})
    each = detection.reference_alerts(flags, W, merged=False)
    assert len(each) == 5 and (each["first_window_end"] == each["last_window_end"]).all()
    merged = detection.reference_alerts(flags, W, merged=True)
    assert merged[["device", "sensor"]].values.tolist() == [["d-1", "temp"], ["d-1", "temp"], ["d-2", "temp"]]
    first_run = flags.iloc[:3]["ts"].to_numpy()
    assert merged.loc[0, "first_window_end"] == -(-first_run[0] // W) * W
    assert merged.loc[0, "last_window_end"] == -(-first_run[-1] // W) * W
    assert (merged["raised_window_end"] == merged["first_window_end"]).all()
