"""change-z: its features against a row-by-row reference, the detector's robust fit, and the pack + engine path
against the detector itself (exact), with settling and baseline-less windows."""

from __future__ import annotations

import base64
import itertools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring_job import _kernels, change, engine
from scoring_job.contract import CONTEXT_COLUMN
from scoring_job.features import time_features, window_features
from scoring_job.pack import Lookback, PackError, load_pack, lookback, write_pack
from scoring_job.score import partition_features
from scoring_job.thresholds import calibrate, out_of_fold_margins
from scoring_job.train import fit_fleet

W = 300_000
T0 = 1_795_000_000_000 // W * W


def windows(rng: np.random.Generator, pairs: dict[tuple[str, str], int], *, drop: float = 0.1) -> pd.DataFrame:
    """Window features of `pairs` ({(device, sensor): windows}) on a 5-minute grid from T0, a share `drop` of the
    windows missing (gaps), rows shuffled."""
    parts = []
    for (d, s), count in pairs.items():
        ends = T0 + W * np.arange(1, count + 1)
        ends = ends[rng.random(count) >= drop]
        mean = 20.0 + np.cumsum(rng.normal(0, 0.2, len(ends)))
        std = np.abs(rng.normal(1.0, 0.2, len(ends)))
        tod = time_features(ends)
        parts.append(pd.DataFrame({"device": d, "sensor": s, "window_end": ends, "n": 5, "mean": mean,
                                   "min": mean - 2 * std, "max": mean + 2 * std, "std": std,
                                   "tod_sin": tod["tod_sin"], "tod_cos": tod["tod_cos"]}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)


def reference_change(frame: pd.DataFrame, context: int) -> np.ndarray:
    """Row by row: mean minus the median of the same pair's means ending in [end - context·W, end - W]."""
    out = np.full(len(frame), np.nan)
    for i, row in enumerate(frame.itertuples()):
        same = frame[(frame["device"] == row.device) & (frame["sensor"] == row.sensor)
                     & (frame["window_end"] < row.window_end) & (frame["window_end"] >= row.window_end - context * W)]
        if same["mean"].notna().any():  # windows without a mean (no reading) are no baseline
            out[i] = row.mean - float(np.nanmedian(same["mean"]))
    return out


def test_mean_change_is_the_mean_minus_the_median_of_the_pairs_recent_windows():
    rng = np.random.default_rng(5)
    frame = windows(rng, {("d-1", "temp"): 60, ("d-1", "rpm"): 60, ("d-2", "temp"): 40})
    frame.loc[rng.choice(len(frame), 5, replace=False), "mean"] = np.nan  # windows without a mean
    out = change.change_features(frame, W, announce=())
    assert list(out.index) == list(frame.index) and not out["settling"].any()
    np.testing.assert_allclose(out["mean_change"], reference_change(frame, change.CONTEXT_WINDOWS), rtol=0,
                               atol=1e-12)
    first = frame.groupby(["device", "sensor"])["window_end"].transform("min") == frame["window_end"]
    assert out.loc[first, "mean_change"].isna().all()  # no baseline yet


def test_an_announced_change_settles_its_device_and_only_its_device():
    rng = np.random.default_rng(6)
    frame = windows(rng, {("d-1", "temp"): 60, ("d-1", "setpoint"): 60, ("d-2", "temp"): 60,
                          ("d-2", "setpoint"): 60}, drop=0.0)
    sp = frame["sensor"] == "setpoint"
    frame.loc[sp, ["mean", "min", "max", "std"]] = [70.0, 70.0, 70.0, 0.0]
    step = T0 + 20 * W  # d-1's setpoint steps to 80 in the window ending here (readings of both levels)
    d1 = sp & (frame["device"] == "d-1")
    frame.loc[d1 & (frame["window_end"] > step), ["mean", "min", "max"]] = 80.0
    frame.loc[d1 & (frame["window_end"] == step), ["mean", "min", "max", "std"]] = [75.0, 70.0, 80.0, 5.0]
    out = change.change_features(frame, W, settle=4)
    settling = out.loc[out["settling"]]
    assert set(settling["device"]) == {"d-1"} and set(settling["sensor"]) == {"temp", "setpoint"}
    # the step's window (min != max) and the next, whose mean differs from the step window's: 4 windows each
    assert sorted(set(settling["window_end"])) == [step + k * W for k in range(5)]
    assert settling["mean_change"].isna().all()
    assert out.loc[~out["settling"] & (out["window_end"] > T0 + 7 * W), "mean_change"].notna().all()
    quiet = change.change_features(frame, W, announce=())
    assert not quiet["settling"].any()


def test_the_detector_fits_robust_centres_and_scales_that_do_not_collapse_on_quantised_sensors():
    rng = np.random.default_rng(7)
    n = 500
    phase = rng.uniform(0, 2 * np.pi, n)
    X = np.column_stack([rng.normal(0.5, 2.0, n), np.abs(rng.normal(1.0, 0.3, n)), np.full(n, 5.0), np.sin(phase),
                         np.cos(phase), np.zeros(n)])
    det = change.ChangeDetector().fit(X)
    a, b, c_center, c_scale, floor, s_center, s_scale, unchanged_max = det.params_
    assert abs(a) < 0.4 and abs(b) < 0.4  # no daily share in a change without one
    assert c_center == pytest.approx(0.5, abs=0.3) and c_scale == pytest.approx(2.0, rel=0.15)
    assert floor == pytest.approx(0.1 * np.median(X[:, 1])) and unchanged_max == 0
    # a quantised sensor: most changes exactly 0, its MAD is 0, its robust scale is not
    Q = X.copy()
    Q[:, 0] = np.where(rng.random(n) < 0.7, 0.0, rng.choice([-1.0, 1.0], n))
    assert change.ChangeDetector().fit(Q).params_[3] > 0.3
    at = [np.sin(1.0), np.cos(1.0)]
    scores = -det.decision_function(np.array([[0.5, 1.0, 5, *at, 0], [20.0, 1.0, 5, *at, 0], [0.5, 5.0, 5, *at, 0],
                                              [0.5, 0.0, 5, *at, 1], [np.nan, 1.0, 5, *at, 0],
                                              [0.5, 0.0, 1, *at, 1]]))
    assert scores[0] < 1 and scores[1] > 8  # a jump of 10 robust sd
    assert scores[2] > 5  # five times the usual spread
    assert scores[3] < 1  # no spread at all is no evidence on its own: a stuck sensor is the unchanged count's
    assert scores[4] < 1 and scores[5] < 1  # no baseline: no change evidence; one reading: no spread evidence


def test_a_coarse_sensors_windows_of_no_spread_do_not_raise_its_threshold_above_a_4_sd_step():
    rng = np.random.default_rng(21)
    n = 576  # two days of 5-minute windows
    phase = rng.uniform(0, 2 * np.pi, n)
    quiet = rng.random(n) < 0.05  # one window in 20 shows one value: no spread, far below its usual one
    X = np.column_stack([rng.normal(0.0, 1.0, n), np.where(quiet, 0.0, np.abs(rng.normal(1.0, 0.3, n))),
                         np.full(n, 3.0), np.sin(phase), np.cos(phase), np.zeros(n)])
    det = change.ChangeDetector().fit(X)
    threshold = calibrate(out_of_fold_margins(change.ChangeDetector(), X), det, 0.01)["threshold"]
    step = np.array([[4.0, 1.0, 3.0, np.sin(1.0), np.cos(1.0), 0.0]])  # the mean 4 sd from its recent past
    assert -det.decision_function(step)[0] > threshold
    assert np.mean(-det.decision_function(X) > threshold) < 0.02  # and the pair's own windows stay below it


def test_each_z_score_is_scaled_so_that_the_same_share_of_training_windows_passes_one_level():
    rng = np.random.default_rng(22)
    n = 2000
    X = np.column_stack([rng.standard_t(3, n), np.abs(rng.normal(1.0, 0.1, n)), np.full(n, 5.0), np.zeros(n),
                         np.ones(n), np.zeros(n)])  # a heavy-tailed change beside a tight spread
    params = change.ChangeDetector().fit(X).params_
    dev_change, dev_spread = change.deviations(X, params)
    for dev, scale in ((dev_change, params[3]), (dev_spread, params[6])):
        assert np.mean(dev / scale > change.BALANCE_Z) == pytest.approx(change.BALANCE_SHARE, abs=0.002)


def test_the_daily_cycles_share_of_the_change_is_removed_before_judging_it():
    rng = np.random.default_rng(11)
    n = 576  # two days of 5-minute windows
    ends = T0 + W * np.arange(1, n + 1)
    tod = time_features(ends)
    lag = 3.0 * np.sin(2 * np.pi * (ends % 86_400_000) / 86_400_000 - 0.7)  # what a daily cycle adds to a change
    X = np.column_stack([lag + rng.normal(0, 0.5, n), np.full(n, 1.0), np.full(n, 5.0), tod["tod_sin"],
                         tod["tod_cos"], np.zeros(n)])
    det = change.ChangeDetector().fit(X)
    assert det.params_[0] == pytest.approx(3.0 * np.cos(0.7), abs=0.1)  # a·sin + b·cos = 3 sin(φ - 0.7)
    assert det.params_[1] == pytest.approx(-3.0 * np.sin(0.7), abs=0.1)
    assert det.params_[3] == pytest.approx(0.5, rel=0.15)  # the noise's scale, not the cycle's
    assert np.quantile(-det.decision_function(X), 0.99) < 3.5


def test_unchanged_counts_the_windows_in_a_row_that_held_this_windows_value_within_the_context():
    # one pair: 1,1 | 1..1.5 (differs) | 2,2 | a missing window | 2 | then 9 windows of 3
    low = np.array([1, 1, 1, 2, 2, 2] + [3] * 9, dtype=np.float64)
    high = low.copy()
    high[2] = 1.5
    end = T0 + W * np.array([1, 2, 3, 4, 5, 7] + list(range(8, 17)))
    got = change.unchanged_windows(low, high, np.zeros(len(low), dtype=np.int64), end, W, context=6)
    # the gap does not break a run; the count never reaches past the context (6 windows before: 7 at most)
    assert got.tolist() == [1, 2, 0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 7, 7]
    other = change.unchanged_windows(low[:2], high[:2], np.array([0, 1]), end[:2], W, context=6)
    assert other.tolist() == [1, 1]  # another pair's window is never counted
    assert change.unchanged_windows(np.array([np.nan]), np.array([np.nan]), np.zeros(1, np.int64), end[:1], W,
                                    6).tolist() == [0]


def test_a_sensor_stuck_longer_than_its_training_ever_held_a_value_is_anomalous_at_once():
    rng = np.random.default_rng(5)
    n = 400
    X = np.column_stack([rng.normal(0, 1, n), np.abs(rng.normal(1, 0.2, n)), np.full(n, 5.0), np.zeros(n),
                         np.ones(n), rng.choice([0.0, 1.0], n, p=[0.9, 0.1])])
    det = change.ChangeDetector().fit(X)
    assert det.params_[change.PARAMS.index("unchanged_max")] == 1  # held a value for one window now and then
    at = [0.0, 1.0]
    # the same quiet window, counted 1..7 windows unchanged: beyond 2 * 1 + 2 it is stuck, whatever its other z
    rows = np.array([[0.0, 1.0, 5, *at, k] for k in range(8)])
    scores = -det.decision_function(rows)
    assert (scores[:5] < 3).all() and (scores[5:] == change.STUCK_SCORE).all()
    # a pair that held values for 3 windows in training (a coarse sensor) is never called stuck by the count
    X[:10, 5] = 3.0
    coarse = change.ChangeDetector().fit(X)
    assert (-coarse.decision_function(rows) < change.STUCK_SCORE).all()


def _fleet(rng: np.random.Generator) -> pd.DataFrame:
    frame = windows(rng, {("d-1", "temp"): 300, ("d-1", "setpoint"): 300, ("d-2", "temp"): 300}, drop=0.05)
    sp = frame["sensor"] == "setpoint"
    frame.loc[sp, ["mean", "min", "max", "std"]] = [70.0, 70.0, 70.0, 0.0]
    frame.loc[sp & (frame["window_end"] > T0 + 250 * W), ["mean", "min", "max"]] = 90.0
    return frame


def test_pack_and_engine_score_exactly_as_the_detector_with_settling_and_missing_baselines():
    rng = np.random.default_rng(8)
    frame = change.change_features(_fleet(rng), W)
    train = frame[frame["window_end"] <= T0 + 200 * W]
    fit = fit_fleet(train, algorithm="change-z", feature_names=change.FEATURES, n_jobs=1, window_ms=W)
    assert sorted(fit.models) == [("d-1", "setpoint"), ("d-1", "temp"), ("d-2", "temp")]
    test = frame[frame["window_end"] > T0 + 200 * W].copy()
    test.loc[test.index[:3], "mean_change"] = np.nan  # windows without a baseline
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_pack(fit.models, tmp, version="cz", features=change.FEATURES, training=fit.training)
        pack = load_pack(tmp)
    assert manifest["change"]["models"] == 3 and manifest["files"] == {}
    assert lookback(manifest) == Lookback(windows=6, announce=("setpoint",), announce_windows=24)
    assert pack.announce_sensors == change.ANNOUNCE_SENSORS
    as_scored = test.assign(window_end=pd.to_datetime(test["window_end"], unit="ms", utc=True))  # as the job has it
    out, stats = engine.score(as_scored, pack, run_id="r")
    assert stats.change_models == 3 and stats.settling_windows == int(test["settling"].sum()) > 0
    assert (out["status"] == "settling").sum() == stats.settling_windows
    assert out.loc[out["status"] == "settling", "score"].isna().all()
    ok = out[out["status"] == "ok"]
    assert len(ok) + stats.settling_windows == len(test)  # a NaN change is scored, not an error
    for key, model in fit.models.items():
        mine = ok[(ok["device"] == key[0]) & (ok["sensor"] == key[1])]
        rows = test.set_index(["device", "sensor", "window_end"]).loc[
            [(key[0], key[1], int(t)) for t in mine["window_end"].dt.as_unit("ms").array.asi8]]
        expected = -model.decision_function(rows[list(change.FEATURES)].to_numpy())
        np.testing.assert_array_equal(mine["score"].to_numpy(), expected)
        np.testing.assert_array_equal(pack.model(key).params_, model.params_)
        assert (mine["threshold"] == fit.training[key]["threshold"]).all()


def test_fit_fleet_derives_the_change_features_and_refuses_others_for_change_z():
    rng = np.random.default_rng(9)
    frame = _fleet(rng)
    fit = fit_fleet(frame, algorithm="change-z", feature_names=change.FEATURES, n_jobs=1, window_ms=W)
    derived = change.change_features(frame, W)
    usable = derived["mean_change"].notna()
    temp = (derived["device"] == "d-1") & (derived["sensor"] == "temp")
    assert fit.training[("d-1", "temp")]["size"] == int((usable & temp).sum())  # settling windows left out
    with pytest.raises(ValueError, match="change-z reads"):
        fit_fleet(frame, algorithm="change-z", feature_names=("mean", "std"), n_jobs=1)
    with pytest.raises(ValueError, match="no parameters"):
        fit_fleet(frame, algorithm="change-z", params={"nu": 0.1}, feature_names=change.FEATURES, n_jobs=1)


def test_the_row_median_is_numpys_nanmedian_exactly():
    rng = np.random.default_rng(12)
    for trial in range(300):
        rows, k = int(rng.integers(0, 40)), int(rng.integers(1, 9))
        values = rng.standard_normal((rows, k)) * 10.0 ** float(rng.integers(-5, 300))  # sums may overflow
        values[rng.random((rows, k)) < rng.random()] = np.nan
        if trial % 3 == 0:
            values = np.round(values)  # ties
        if rows and trial % 5 == 0:
            values[0, 0], values[-1, -1] = np.inf, -np.inf
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows, overflowing sums
            expected = np.nanmedian(values, axis=1) if rows else np.zeros(0)
        np.testing.assert_array_equal(change.nanmedian_rows(values), expected)


def _random_pairs(rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, pair codes sorted, window ends): up to 400 rows of up to 6 pairs, each pair's window ends ascending
    with gaps and a few repeated."""
    rows = int(rng.integers(0, 400))
    pair = np.sort(rng.integers(0, 6, rows))
    end = np.zeros(rows, dtype=np.int64)
    for p in np.unique(pair):
        at = pair == p
        end[at] = T0 + W * np.cumsum(rng.choice([0, 1, 1, 1, 2, 5, 9], int(at.sum())))
    return rows, pair, end


def test_the_numba_baseline_and_the_numpy_one_give_the_same_numbers():
    if not _kernels.HAVE_NUMBA:
        pytest.fail("numba is a dependency of the dev install; the baseline kernel must be tested")
    rng = np.random.default_rng(14)
    for trial in range(60):
        rows, pair, end = _random_pairs(rng)
        mean = rng.normal(0, 1, rows) * 10.0 ** float(rng.integers(-3, 200))
        mean[rng.random(rows) < 0.1] = np.nan
        mean[rng.random(rows) < 0.2] = 1.5  # ties
        needed = rng.random(rows) < 0.7 if trial % 2 else None
        context = int(rng.integers(1, 9))
        with np.errstate(all="ignore"):
            expected = change.baseline_change_numpy(mean, pair, end, W, context, needed)
            got = change.baseline_change(mean, pair, end, W, context, needed)
        np.testing.assert_array_equal(got, expected)


def test_the_numba_unchanged_count_and_the_numpy_one_give_the_same_numbers():
    if not _kernels.HAVE_NUMBA:
        pytest.fail("numba is a dependency of the dev install; the unchanged kernel must be tested")
    rng = np.random.default_rng(15)
    for _ in range(60):
        rows, pair, end = _random_pairs(rng)
        low = rng.choice([1.0, 2.0, np.nan, -0.0, 0.0], rows)  # few values: long runs, signed zeros, no reading
        high = np.where(rng.random(rows) < 0.8, low, low + 0.5)
        context = int(rng.integers(1, 9))
        expected = change.unchanged_windows_numpy(low, high, pair, end, W, context)
        np.testing.assert_array_equal(change.unchanged_windows(low, high, pair, end, W, context), expected)


def test_the_baseline_of_six_windows_is_their_median_in_every_order():
    """The kernel sorts a full baseline (six windows) with a sorting network: every order of six values, with and
    without ties, gives numpy's median."""
    if not _kernels.HAVE_NUMBA:
        pytest.fail("numba is a dependency of the dev install; the baseline kernel must be tested")
    orders = np.array(list(itertools.permutations(range(6))), dtype=np.float64)
    for values in (np.array([-3.0, 0.5, 1.0, 2.0, 7.0, np.inf]), np.array([1.0, 1.0, 2.0, 2.0, 2.0, -np.inf])):
        history = values[orders.astype(int)]  # (720, 6): each order, then the window judged
        mean = np.column_stack([history, np.full(len(history), 10.0)]).ravel()
        pair = np.repeat(np.arange(len(history)), 7)
        end = np.tile(T0 + W * np.arange(7), len(history))
        got = change.baseline_change(mean, pair, end, W, 6)[6::7]
        np.testing.assert_array_equal(got, 10.0 - np.median(values))
        np.testing.assert_array_equal(got, change.baseline_change_numpy(mean, pair, end, W, 6)[6::7])


def test_pair_codes_are_equal_exactly_for_equal_pairs_whatever_the_column_type():
    frame = pd.DataFrame({"device": ["a", "ab", "a", "ab", "b", None], "sensor": ["bc", "c", "bc", "bc", "c", "c"]})
    expected = frame.fillna("<none>").groupby(["device", "sensor"], sort=False).ngroup().to_numpy()
    for cast in (lambda c: c, lambda c: c.astype("category"), lambda c: c.astype("string[pyarrow]")):
        codes = change.pair_codes(frame.assign(device=cast(frame["device"]), sensor=cast(frame["sensor"])))
        same = codes[:, None] == codes[None, :]
        np.testing.assert_array_equal(same, expected[:, None] == expected[None, :])


def _aggregates(features: pd.DataFrame, context: int) -> pd.DataFrame:
    """Window features (sorted by pair and time) as a partition's rows: aggregates, categorical keys, datetimes,
    each pair's first `context` windows marked as context rows."""
    n = features["n"].to_numpy(dtype=np.float64)
    first = features.groupby(["device", "sensor"]).cumcount().to_numpy() < context
    return pd.DataFrame({"device": features["device"].astype("category"),
                         "sensor": features["sensor"].astype("category"),
                         "window_end": pd.to_datetime(features["window_end"], unit="ms", utc=True).dt.as_unit("ms"),
                         "n": features["n"].astype(np.int64), "sum": features["mean"] * n,
                         "sumsq": features["std"] ** 2 * (n - 1) + features["mean"] ** 2 * n,
                         "min": features["min"], "max": features["max"], CONTEXT_COLUMN: first})


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_partitions_features_are_those_of_every_row_then_the_context_rows_dropped(shuffled):
    """The scoring job derives the change only for the rows it scores, and only the time features the pack reads:
    the same numbers as deriving everything over the whole partition (context rows included) and dropping the
    context rows after, in any row order; settling comes from a change announced in the context rows."""
    rng = np.random.default_rng(13)
    frame = _fleet(rng)
    fit = fit_fleet(change.change_features(frame, W), algorithm="change-z", feature_names=change.FEATURES, n_jobs=1,
                    window_ms=W)
    with tempfile.TemporaryDirectory() as tmp:
        write_pack(fit.models, tmp, version="cz", features=change.FEATURES, training=fit.training)
        pack = load_pack(tmp)
    ordered = frame.sort_values(["device", "sensor", "window_end"], ignore_index=True)
    part = _aggregates(ordered, context=248)  # the setpoint steps after its 250th window: just after the context
    if shuffled:
        part = part.sample(frac=1.0, random_state=3).reset_index(drop=True)
    got = partition_features(part, pack)
    every = change.change_features(window_features(part.drop(columns=CONTEXT_COLUMN)), W)
    expected = every[~part[CONTEXT_COLUMN].to_numpy()].reset_index(drop=True)
    assert got["settling"].any() and got["mean_change"].notna().any()
    assert list(got.columns) == [c for c in expected.columns if c not in ("dow_sin", "dow_cos")]
    pd.testing.assert_frame_equal(got, expected[got.columns], check_exact=True)


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode()


@pytest.mark.parametrize("edit, message", [
    (lambda ch: ch["params"].update(change_scale=_b64([1.0, 0.0, 1.0])), "positive scales"),
    (lambda ch: ch["params"].update(std_floor=_b64([1.0, np.inf, 1.0])), "finite"),
    (lambda ch: ch.update(models=2), "model counts"),
    (lambda ch: ch.pop("announce_sensors"), "malformed 'change'"),
    (lambda ch: ch.update(context_windows=0), "malformed 'change'"),
    (lambda ch: ch.update(version="2"), "malformed 'change'"),
    (lambda ch: ch["params"].update(unchanged_max=_b64([-1.0] * ch["models"])), "unchanged_max >= 0"),
    (lambda ch: ch.update(version=3), r"version 3 of the score.*reads version 2.*retrain"),
])
def test_a_malformed_change_section_or_another_version_is_refused(edit, message):
    rng = np.random.default_rng(10)
    fit = fit_fleet(_fleet(rng), algorithm="change-z", feature_names=change.FEATURES, n_jobs=1, window_ms=W)
    with tempfile.TemporaryDirectory() as tmp:
        write_pack(fit.models, tmp, version="cz", features=change.FEATURES, training=fit.training)
        path = Path(tmp) / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest["change"])
        path.write_text(json.dumps(manifest))
        with pytest.raises(PackError, match=message):
            load_pack(tmp)


def test_a_change_z_pack_written_before_the_current_score_is_refused_with_a_retrain_message(tmp_path):
    fit = fit_fleet(change.change_features(_fleet(np.random.default_rng(17)), W), algorithm="change-z",
                    feature_names=change.FEATURES, n_jobs=1, window_ms=W)
    write_pack(fit.models, tmp_path, version="cz", features=change.FEATURES, training=fit.training)
    path = tmp_path / "manifest.json"
    version_1 = json.loads(path.read_text())
    assert version_1["change"]["version"] == change.VERSION
    load_pack(tmp_path)
    del version_1["change"]["version"]  # what a pack held before: its thresholds fit the two-sided spread
    before_unchanged = json.loads(json.dumps(version_1))
    del before_unchanged["change"]["params"]["unchanged_max"]  # and before the unchanged count
    for old in (version_1, before_unchanged):
        path.write_text(json.dumps(old))
        with pytest.raises(PackError, match=r"before version 2 of the score.*fleetscore train --activate"):
            load_pack(tmp_path)
