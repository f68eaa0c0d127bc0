"""The varied scenario: deterministic per seed; weekly and daily cycles; setpoint changes that are normal and
announced; faults of the stated sizes; gaps, quantisation, irregular and intermittent sampling; unlabelled
training outliers; and the classic scenario byte for byte as before."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fleetscore.cli.main import app
from fleetscore.clock import DAY_MS
from fleetscore.sim import faults as fault_module
from fleetscore.sim import signals
from fleetscore.sim.simulate import SCENARIOS, read_faults, simulate_fleet, write_simulation

VARIED = dict(devices=8, sensors=4, days=7, clean_days=4, scenario="varied")
KEYS = ["device", "sensor", "ts"]


@pytest.fixture(scope="module")
def fleets():
    """A varied fleet with many faults and the same fleet without them."""
    return simulate_fleet(seed=11, fault_rate=1.0, **VARIED), simulate_fleet(seed=11, fault_rate=0, **VARIED)


def _digest(sim) -> str:
    m = hashlib.sha256()
    r = sim.readings
    for column in ("device", "sensor"):
        m.update("\n".join(r[column].astype(str)).encode())
    m.update(r["ts"].to_numpy(np.int64).tobytes())
    m.update(r["value"].to_numpy(np.float64).tobytes())
    m.update(sim.faults.to_csv(index=False).encode())
    return m.hexdigest()


@pytest.mark.parametrize(("kwargs", "digest"), [
    (dict(devices=6, sensors=4, days=3, clean_days=1, seed=7, fault_rate=1.5),
     "fa9fe21011a6f6fc9bc69aa0dcb41733611a901d7660a8623572a764375e8a36"),
    (dict(devices=20, sensors=3, days=4, seed=3, fault_rate=0.5),
     "a13610cc7ec413a2d96c531fb33ba114bbf6bbccde7ce315eebcf2a95f1e4712"),
])
def test_classic_scenario_is_unchanged_and_the_default(kwargs, digest):
    """Digests computed from the simulator before the varied scenario existed (commit 372d930)."""
    sim = simulate_fleet(**kwargs)
    assert _digest(sim) == digest
    assert _digest(simulate_fleet(scenario="classic", **kwargs)) == digest
    assert sim.scenario == "classic" and sim.changes.empty and sim.outliers.empty


def test_varied_is_deterministic_per_seed(fleets):
    sim, _ = fleets
    again = simulate_fleet(seed=11, fault_rate=1.0, **VARIED)
    for name in ("readings", "faults", "changes", "outliers", "gaps", "fault_details", "pairs"):
        pd.testing.assert_frame_equal(getattr(sim, name), getattr(again, name))
    other = simulate_fleet(seed=12, fault_rate=1.0, **VARIED)
    assert _digest(other) != _digest(sim)
    assert not sim.pairs["level"].equals(other.pairs["level"])


def test_varied_defaults_and_shape():
    sim = simulate_fleet(devices=2, sensors=3, scenario="varied")
    assert sim.end_ms - sim.start_ms == 7 * DAY_MS and sim.clean_until_ms - sim.start_ms == 4 * DAY_MS
    assert (sim.end_ms - sim.clean_until_ms) / DAY_MS >= 3  # at least 3 faulty days by default
    r = sim.readings
    assert list(r.columns) == ["device", "sensor", "ts", "value"] and r["ts"].dtype == np.int64
    assert sorted(r["sensor"].unique()) == sorted(["temp", "humidity", "pressure", "setpoint"])
    assert (np.diff(r["ts"].to_numpy()) >= 0).all() and not r.duplicated(KEYS).any()
    assert np.isfinite(r["value"]).all()
    assert set(SCENARIOS) == {"classic", "varied"}
    with pytest.raises(ValueError, match="scenario"):
        simulate_fleet(devices=1, sensors=1, days=1, scenario="hard")


def _harmonics(r: pd.DataFrame, start_ms: int) -> np.ndarray:
    """Least squares of a pair's readings on [1, t, daily cos/sin, weekly cos/sin]: (daily amp, weekly amp,
    weekly peak hour after Monday 00:00)."""
    t_h = (r["ts"].to_numpy() - start_ms) / 3_600_000.0
    week_h = ((r["ts"].to_numpy() - 4 * DAY_MS) % (7 * DAY_MS)) / 3_600_000.0
    day = 2 * np.pi * (r["ts"].to_numpy() % DAY_MS) / DAY_MS
    week = 2 * np.pi * week_h / 168.0
    x = np.column_stack([np.ones_like(t_h), t_h, np.cos(day), np.sin(day), np.cos(week), np.sin(week)])
    coef = np.linalg.lstsq(x, r["value"].to_numpy(), rcond=None)[0]
    peak = (np.degrees(np.arctan2(coef[5], coef[4])) % 360) / 360 * 168.0
    return np.array([np.hypot(coef[2], coef[3]), np.hypot(coef[4], coef[5]), peak])


def test_weekly_and_daily_cycles_are_visible_with_their_drawn_amplitude_and_phase():
    sim = simulate_fleet(devices=10, sensors=3, days=14, clean_days=14, seed=5, scenario="varied")
    pairs = sim.pairs[(~sim.pairs["setpoint"]) & (sim.pairs["gain"] == 0) & (sim.pairs["mode"] == "regular")]
    strong = pairs[pairs["weekly_amp"] > 3 * pairs["sigma"]]
    assert len(strong) >= 5
    for row in strong.itertuples():
        r = sim.readings[(sim.readings["device"] == row.device) & (sim.readings["sensor"] == row.sensor)]
        daily, weekly, peak = _harmonics(r, sim.start_ms)
        assert weekly == pytest.approx(row.weekly_amp, rel=0.1, abs=row.sigma), row
        assert min(abs(peak - row.weekly_peak_hour), 168 - abs(peak - row.weekly_peak_hour)) < 6, row
        assert daily == pytest.approx(row.daily_amp, rel=0.1, abs=row.sigma), row
    # amplitudes and phases differ between devices of one sensor
    temp = sim.pairs[sim.pairs["sensor"] == "temp"]
    assert temp["weekly_peak_hour"].std() > 20 and temp["daily_peak_hour"].std() > 0.5


def _expected_setpoint_shift(sim, row, ts: np.ndarray) -> np.ndarray:
    """The level change the setpoint changes put on one pair at readings `ts`, per the module's model."""
    nominal = sim.start_ms + (ts - sim.start_ms) // sim.interval_ms * sim.interval_ms
    mine = sim.changes[(sim.changes["device"] == row.device) & (sim.changes["sensor"] == row.sensor)]
    total = np.zeros(len(ts))
    for change in mine.itertuples():
        after = nominal >= change.start
        total[after] += change.shift * -np.expm1(-(nominal[after] - change.start) / (row.lag_minutes * 60_000))
    return total


def test_setpoint_changes_are_announced_in_the_data_and_are_not_faults(fleets, monkeypatch):
    sim, _ = fleets
    changes = sim.changes
    assert len(changes) > 5 and set(changes["kind"]) == {"setpoint"}
    assert (changes["start"] < sim.clean_until_ms).any() and (changes["start"] > sim.clean_until_ms).any()
    assert "setpoint" not in set(sim.faults["sensor"]) and "setpoint" not in set(sim.faults["kind"])
    steps = changes[changes["sensor"] == "setpoint"]
    r = sim.readings
    for change in steps.itertuples():  # the setpoint sensor steps at the change, exactly
        sp = r[(r["device"] == change.device) & (r["sensor"] == "setpoint")]
        before = sp[sp["ts"] < change.start]["value"]
        after = sp[(sp["ts"] > change.start) & (sp["ts"] < change.start + 30 * 60_000)]["value"]
        if len(before) and len(after):
            assert before.iloc[-1] == change.setpoint_from and (after == change.setpoint_to).all()
    # the controlled sensors move to the new level with their lag and stay there: compare with no changes
    monkeypatch.setattr(signals, "SETPOINT_CHANGES_PER_DAY", 0.0)
    still = simulate_fleet(seed=11, fault_rate=1.0, **VARIED)
    assert still.changes.empty
    both = r.merge(still.readings, on=KEYS, suffixes=("", "_still"))
    moved = sim.pairs[sim.pairs["gain"] != 0]
    assert len(moved) > 3
    checked = 0
    for row in moved.itertuples():
        mine = both[(both["device"] == row.device) & (both["sensor"] == row.sensor)]
        outside = ~_inside(mine, pd.concat([sim.faults, sim.outliers])) & _unclipped(mine, row)
        expected = _expected_setpoint_shift(sim, row, mine["ts"].to_numpy())
        error = (mine["value"] - mine["value_still"] - expected)[outside]
        assert (error.abs() <= 1.01 * row.resolution + 1e-9).all(), row
        checked += int((expected != 0).sum())
    assert checked > 500


def _unclipped(readings: pd.DataFrame, pair) -> np.ndarray:
    """Whether each reading of `pair` lies strictly inside the sensor's physical range (not clipped)."""
    return ((readings["value"] > pair.low) & (readings["value"] < pair.high)).to_numpy()


def _inside(readings: pd.DataFrame, spans: pd.DataFrame) -> np.ndarray:
    """Whether each reading falls in one of `spans` (device, sensor, start, end) of its pair."""
    inside = np.zeros(len(readings), dtype=bool)
    for span in spans.itertuples():
        inside |= ((readings["device"] == span.device) & (readings["sensor"] == span.sensor)
                   & readings["ts"].between(span.start, span.end)).to_numpy()
    return inside


def test_faults_span_every_kind_and_the_stated_sizes(fleets):
    sim, clean = fleets
    f, details = sim.faults, sim.fault_details
    assert list(f.columns) == ["device", "sensor", "start", "end", "kind"]
    pd.testing.assert_frame_equal(details[list(f.columns)], f)
    assert set(f["kind"]) == set(fault_module.KINDS)
    assert (f["start"] > sim.clean_until_ms).all() and (f["end"] < sim.end_ms).all()
    sized = details[details["kind"] != "stuck"]
    assert sized["magnitude"].between(2.0, 15.0).all()
    assert details.loc[details["kind"] == "stuck", "magnitude"].isna().all()
    assert (sized["magnitude"] < 3).sum() >= 5 and (sized["magnitude"] > 6).sum() >= 5  # subtle and gross
    both = sim.readings.merge(clean.readings, on=KEYS, suffixes=("", "_clean"))
    pairs = sim.pairs.set_index(["device", "sensor"])
    for row in details.itertuples():
        span = both[(both["device"] == row.device) & (both["sensor"] == row.sensor)
                    & both["ts"].between(row.start, row.end)]
        pair = pairs.loc[(row.device, row.sensor)]
        span = span[_unclipped(span, pair) & _unclipped(span.assign(value=span["value_clean"]), pair)]
        diff = (span["value"] - span["value_clean"]).to_numpy()
        res = pair["resolution"] * 1.01
        size = row.magnitude * row.sigma
        if row.kind in ("spike", "level_shift"):
            assert np.abs(np.abs(diff) - size).max() <= res + 1e-9, row
        elif row.kind in ("drift", "oscillation"):
            assert np.abs(diff).max() <= size + res and np.abs(diff).max() >= 0.3 * size - res, row
        elif row.kind == "noise":
            assert np.abs(diff).max() > 0.5 * size - res, row
        else:
            assert span["value"].nunique() == 1, row
    outside = ~_inside(both, f)
    np.testing.assert_array_equal(both.loc[outside, "value"], both.loc[outside, "value_clean"])


def test_training_days_hold_unlabelled_outliers(fleets):
    sim, clean = fleets
    o = sim.outliers
    assert len(o) >= 2 and set(o["kind"]) == {"outlier"}
    assert (o["end"] < sim.clean_until_ms).all() and o["magnitude"].abs().between(4, 12).all()
    assert not o.merge(sim.faults, on=["device", "sensor", "start"]).shape[0]
    # the fault-free twin has them too: they are part of the normal (training) data, not of the faults
    pd.testing.assert_frame_equal(o, clean.outliers)
    r = sim.readings
    row = o.iloc[0]
    span = r[(r["device"] == row.device) & (r["sensor"] == row.sensor) & r["ts"].between(row.start, row.end)]
    sigma = sim.pairs.set_index(["device", "sensor"]).loc[(row.device, row.sensor), "sigma"]
    level = r[(r["device"] == row.device) & (r["sensor"] == row.sensor)
              & r["ts"].between(row.start - 15 * 60_000, row.start - 1)]["value"].median()
    assert abs(span["value"].median() - level) > 2 * sigma


def test_gaps_of_minutes_to_hours_leave_no_readings(fleets):
    sim, _ = fleets
    gaps, r = sim.gaps, sim.readings
    assert {"outage", "dropout"} <= set(gaps["kind"])
    minutes = (gaps["end"] - gaps["start"]) / 60_000
    assert minutes.min() <= 30 and minutes.max() >= 120
    for gap in gaps.itertuples():
        pair = r[(r["device"] == gap.device) & (r["sensor"] == gap.sensor)]
        assert not pair["ts"].between(gap.start, gap.end - 1).any(), gap
    longest = r.groupby(["device", "sensor"])["ts"].apply(lambda ts: np.diff(ts.to_numpy()).max())
    assert (longest >= 60 * 60_000).sum() >= 3


def test_values_lie_on_each_pairs_resolution_grid_some_coarse(fleets):
    sim, _ = fleets
    res = sim.readings.merge(sim.pairs[["device", "sensor", "resolution"]], on=["device", "sensor"])
    steps = res["value"] / res["resolution"]
    assert np.abs(steps - np.round(steps)).max() < 1e-6
    measured = sim.pairs[~sim.pairs["setpoint"]]
    coarse = measured[measured["resolution"] >= 0.5 * measured["sigma"]]
    assert len(coarse) >= 4
    for row in coarse.head(4).itertuples():  # a coarse sensor repeats few distinct values
        v = sim.readings[(sim.readings["device"] == row.device) & (sim.readings["sensor"] == row.sensor)]["value"]
        assert v.diff().abs().replace(0, np.nan).min() >= row.resolution * 0.999


def test_sampling_is_irregular_per_device_and_some_sensors_intermittent(fleets):
    sim, _ = fleets
    r = sim.readings
    temp = r[r["sensor"] == "temp"]
    intervals = temp.groupby("device")["ts"].apply(lambda ts: np.diff(ts.to_numpy()))
    medians = {round(float(np.median(i)) / 60_000) for i in intervals}
    assert len(medians) >= 2  # devices report at different cadences
    for i in intervals:
        assert np.std(i) > 1_000 and (i % 60_000 != 0).mean() > 0.5  # not a fixed clock
    counts = r.groupby(["device", "sensor"]).size().rename("n").reset_index().merge(sim.pairs, on=["device",
                                                                                                   "sensor"])
    counts["share"] = counts["n"] * counts["cadence_seconds"] * 1000 / (sim.end_ms - sim.start_ms)
    by_mode = counts.groupby("mode")["share"].median()
    assert by_mode["regular"] > 0.85
    assert by_mode["sparse"] < 0.6 and by_mode["on_change"] < 0.6


def test_noise_is_heavy_tailed():
    sim = simulate_fleet(devices=10, sensors=3, days=3, clean_days=3, seed=3, scenario="varied")
    p = sim.pairs
    pairs = p[(~p["setpoint"]) & (p["mode"] == "regular") & (p["resolution"] < 0.1 * p["sigma"]) & (p["df"] < 5)]
    assert len(pairs) >= 2
    z = []
    for row in pairs.itertuples():
        v = sim.readings[(sim.readings["device"] == row.device) & (sim.readings["sensor"] == row.sensor)]
        d = np.diff(v["value"].to_numpy())
        z.append((d - np.median(d)) / d.std())
    z = np.concatenate(z)
    assert np.mean(z**4) > 4.5  # a normal has 3


def test_files_and_cli_carry_the_scenario(tmp_path):
    sim = simulate_fleet(devices=3, sensors=2, days=3, clean_days=2, seed=2, fault_rate=2.0, scenario="varied")
    readings, faults = write_simulation(sim, tmp_path / "fleet.parquet")
    pd.testing.assert_frame_equal(read_faults(faults), sim.faults)
    changes = pd.read_csv(tmp_path / "fleet.changes.csv")
    assert len(changes) == len(sim.changes) and changes["start"].str.endswith("Z").all()
    result = CliRunner().invoke(app, ["simulate", "--scenario", "varied", "--devices", "2", "--sensors", "2",
                                      "--days", "2", "--clean-days", "1", "--out", str(tmp_path / "cli.csv")])
    assert result.exit_code == 0, result.output
    header = (tmp_path / "cli.csv").read_text().splitlines()[0]
    assert header == "device,sensor,ts,value" and "setpoint" in (tmp_path / "cli.csv").read_text()
    bad = CliRunner().invoke(app, ["simulate", "--scenario", "hard", "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code != 0


def test_without_the_normal_course_the_same_fleet_keeps_its_level_noise_sampling_and_faults():
    """`normal_course=False` (the detection benchmark's --without-course ablation) takes out exactly the normal
    course: what differs from the full fleet is smooth (the same noise draws), what is left is level + noise."""
    kwargs = dict(devices=6, sensors=4, days=3, clean_days=2, seed=9, fault_rate=1.0, scenario="varied")
    full, flat = simulate_fleet(**kwargs), simulate_fleet(normal_course=False, **kwargs)
    pd.testing.assert_frame_equal(flat.pairs, full.pairs)
    # the setpoints step as before, and no sensor follows them
    steps = full.changes[full.changes["sensor"] == "setpoint"].reset_index(drop=True)
    assert len(steps) and len(full.changes) > len(steps)
    pd.testing.assert_frame_equal(flat.changes, steps)
    # sampling and faults are the seed's (an on-change sensor's readings follow its values, so not those)
    p = full.pairs
    changing = p[p["mode"] == "on_change"]
    on_change = set(zip(changing["device"], changing["sensor"], strict=True))

    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        keep = [(d, s) not in on_change for d, s in zip(frame["device"], frame["sensor"], strict=True)]
        return frame[keep].reset_index(drop=True)

    pd.testing.assert_frame_equal(kept(flat.readings)[KEYS], kept(full.readings)[KEYS])
    assert len(kept(full.faults)) >= 5
    pd.testing.assert_frame_equal(kept(flat.faults), kept(full.faults))
    fine = p[(~p["setpoint"]) & (p["mode"] == "regular") & (p["resolution"] < 0.05 * p["sigma"])]
    assert len(fine) >= 3
    both = full.readings.merge(flat.readings, on=KEYS, suffixes=("", "_flat"))
    course_range = []
    for row in fine.itertuples():
        mine = both[(both["device"] == row.device) & (both["sensor"] == row.sensor)]
        mine = mine[~_inside(mine, pd.concat([full.faults, full.outliers])) & _unclipped(mine, row)]
        course = (mine["value"] - mine["value_flat"]).to_numpy()
        assert np.diff(course).std() < 0.3 * row.noise_sd, row  # the noise is the same: only smooth parts differ
        assert (mine["value_flat"] - row.level).std() == pytest.approx(row.noise_sd, rel=0.25), row
        assert abs((mine["value_flat"] - row.level).median()) < 0.2 * row.noise_sd, row
        course_range.append(np.ptp(course) / row.sigma)
    assert max(course_range) > 5  # cycles and wander were there, and are gone
    with pytest.raises(ValueError, match="varied"):
        simulate_fleet(devices=2, sensors=2, days=2, clean_days=1, normal_course=False)
