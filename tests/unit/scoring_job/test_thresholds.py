"""Calibrated alert thresholds: out-of-fold over time blocks, from training windows only, stored in the pack and
compared against by the engine; a pack written before the thresholds (format 2) is refused."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.svm import OneClassSVM

from scoring_job import engine
from scoring_job.features import FEATURES
from scoring_job.pack import MANIFEST, PackError, load_pack, pack_from_estimators, write_pack
from scoring_job.thresholds import (
    calibrate,
    from_margin,
    out_of_fold_margins,
    svm_rho,
    tail_quantile,
    time_blocks,
    to_margin,
)
from scoring_job.train import fit_fleet, make_estimator


class Memory(OutlierMixin, BaseEstimator):
    """A detector that remembers its training rows: score = distance to the nearest one (0 for a seen row)."""

    def fit(self, X, y=None):
        self.seen_ = np.asarray(X, dtype=np.float64).copy()
        return self

    def decision_function(self, X):
        d = np.abs(np.asarray(X, dtype=np.float64)[:, None, 0] - self.seen_[None, :, 0]).min(axis=1)
        return -d


def windows(rng, pairs, n, start="2026-11-01T00:05Z", shift=0.0):
    parts = []
    for d, s in pairs:
        X = rng.normal([20.0 + shift, 18.0, 22.0, 1.0], [1.0, 1.0, 1.0, 0.1], size=(n, 4))
        parts.append(pd.DataFrame({"device": d, "sensor": s, "n": 12,
                                   "window_end": pd.date_range(start, periods=n, freq="5min"),
                                   **dict(zip(FEATURES, X.T, strict=True))}))
    return pd.concat(parts, ignore_index=True)


def test_time_blocks_are_contiguous_and_cover_every_window_once():
    blocks = time_blocks(23, 5)
    assert [len(b) for b in blocks] == [5, 5, 5, 4, 4]
    assert np.array_equal(np.concatenate(blocks), np.arange(23))
    assert all(np.array_equal(b, np.arange(b[0], b[-1] + 1)) for b in blocks)
    with pytest.raises(ValueError):
        time_blocks(3, 5)


def test_no_window_is_scored_by_a_model_that_saw_it():
    X = np.arange(50, dtype=np.float64)[:, None] * 1.5  # distinct rows, 1.5 apart
    oof = out_of_fold_margins(Memory(), X, folds=5)
    # every held-out row is at least one step from the rows its model saw (a block's edge: exactly one step);
    # an in-sample score would be 0
    assert oof.min() == 1.5
    inner = np.r_[11:19]  # rows of the second block away from its edges: their nearest seen row is further away
    assert (oof[inner] > 1.5).all()


def test_the_tail_is_conformal_when_resolved_and_extrapolated_not_the_max_when_not():
    s = np.random.default_rng(0).exponential(1.0, 999)
    assert tail_quantile(s, 0.01) == np.sort(s)[int(np.ceil(1000 * 0.99)) - 1]
    far = tail_quantile(s, 1e-4)  # finer than 999 windows resolve
    assert far > np.quantile(s, 0.999) and abs(far - np.log(1e4)) < 1.5  # the exponential's true quantile: 9.2
    outlier = s.copy()
    outlier[np.argmax(s)] = 1e6  # an unlabelled outlier in the training windows does not set the threshold
    assert tail_quantile(outlier, 1e-4) == pytest.approx(far)


def test_an_svm_threshold_stays_below_the_highest_score_it_can_give():
    X = np.random.default_rng(1).normal(size=(200, 4))
    svm = make_estimator("ocsvm-rbf").fit(X)
    rho = svm_rho(svm)
    assert rho == pytest.approx(-svm[-1].intercept_[0])
    far = -svm.decision_function(np.full((1, 4), 1e3))[0]
    assert far == pytest.approx(rho)  # every kernel value underflows: the score's supremum
    cal = calibrate(np.linspace(0, 40, 200), svm, false_rate=1e-9)  # margins far out in the tail
    assert cal["threshold"] <= cal["threshold_strong"] <= rho
    assert from_margin(float(to_margin(np.array([0.3 * rho]), rho)[0]), rho) == pytest.approx(0.3 * rho)
    assert svm_rho(Memory().fit(X)) is None


def test_thresholds_come_from_the_training_windows_alone():
    rng = np.random.default_rng(2)
    pairs = [("d-1", "temp"), ("d-2", "temp")]
    train = windows(rng, pairs, 120)
    fit = fit_fleet(train, n_jobs=1, false_rate=1e-3)
    # the reference: out-of-fold margins over 5 time blocks of the pair's training windows, the final model's rho
    for key, est in fit.models.items():
        rows = train[(train["device"] == key[0]) & (train["sensor"] == key[1])].sort_values("window_end")
        ref = calibrate(out_of_fold_margins(make_estimator(), rows[list(FEATURES)].to_numpy()), est, 1e-3)
        assert fit.training[key]["threshold"] == ref["threshold"]
        assert fit.training[key]["threshold_strong"] == ref["threshold_strong"]
        assert 0 < ref["threshold"] < ref["threshold_strong"] < svm_rho(est)
    calm = windows(np.random.default_rng(3), pairs, 30, start="2026-11-02T00:05Z")
    wild = windows(np.random.default_rng(4), pairs, 50, start="2026-11-03T00:05Z", shift=5.0)
    with tempfile.TemporaryDirectory() as tmp:
        write_pack(fit.models, tmp, version="t", training=fit.training)
        pack = load_pack(tmp)
        a = engine.score(calm, pack).predictions
        b = engine.score(wild, pack).predictions
    assert a["is_anomaly"].mean() < 0.2 < b["is_anomaly"].mean()
    for key in fit.models:
        for out in (a, b):
            mine = out[(out["device"] == key[0]) & (out["sensor"] == key[1])]
            assert (mine["threshold"] == fit.training[key]["threshold"]).all()
            assert (mine["threshold_strong"] == fit.training[key]["threshold_strong"]).all()
            assert np.array_equal(mine["is_anomaly"], mine["score"] > mine["threshold"])


def test_bring_your_own_estimators_get_out_of_fold_thresholds(tmp_path):
    rng = np.random.default_rng(5)
    train = windows(rng, [("d-1", "temp")], 100)
    est = OneClassSVM(nu=0.1).fit(train[list(FEATURES)].to_numpy())
    pack_from_estimators({("d-1", "temp"): est}, tmp_path, train_windows=train, version="byo")
    row = load_pack(tmp_path)[("d-1", "temp")]
    ref = calibrate(out_of_fold_margins(OneClassSVM(nu=0.1), train[list(FEATURES)].to_numpy()), est)
    assert row["threshold"] == ref["threshold"] and row["threshold_strong"] == ref["threshold_strong"]


def test_a_pack_without_training_records_keeps_the_detectors_own_boundary(tmp_path):
    X = np.random.default_rng(6).normal(size=(40, 4))
    write_pack({("d", "s"): OneClassSVM(nu=0.2).fit(X)}, tmp_path, version="bare")
    row = load_pack(tmp_path)[("d", "s")]
    assert row["threshold"] == 0.0 and np.isnan(row["threshold_strong"])


@pytest.mark.parametrize("old", [1, 2])
def test_a_pack_written_before_the_thresholds_is_refused_with_a_retrain_message(tmp_path, old):
    X = np.random.default_rng(7).normal(size=(40, 4))
    write_pack({("d", "s"): OneClassSVM(nu=0.2).fit(X)}, tmp_path, version="old")
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["format_version"] = old
    del m["models"]["thresholds"]  # what format 2 wrote
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PackError, match=r"no calibrated alert thresholds.*fleetscore train --activate"):
        load_pack(tmp_path)


@pytest.mark.parametrize("bad", ["missing", "infinite threshold", "NaN threshold", "infinite strong"])
def test_malformed_thresholds_are_refused(tmp_path, bad):
    import base64

    X = np.random.default_rng(8).normal(size=(40, 4))
    write_pack({("d", "s"): OneClassSVM(nu=0.2).fit(X)}, tmp_path, version="t")
    m = json.loads((tmp_path / MANIFEST).read_text())
    enc = base64.b64encode
    if bad == "missing":
        del m["models"]["thresholds"]
    else:
        field = "threshold_strong" if "strong" in bad else "threshold"
        m["models"]["thresholds"][field] = enc(np.array([np.nan if "NaN" in bad else np.inf]).tobytes()).decode()
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PackError, match="manifest.json"):
        load_pack(tmp_path)


def test_the_strong_threshold_is_never_below_a_margin_seen_twice_in_training():
    rng = np.random.default_rng(21)
    normal = np.abs(rng.normal(size=573))
    once = calibrate(np.concatenate([normal, [30.0]]))  # one far window: maybe an unlabelled outlier
    assert once["threshold_strong"] < 30.0
    twice = calibrate(np.concatenate([normal, [30.0, 30.0, 30.0]]))  # rare but recurring: something it does
    assert twice["threshold_strong"] >= 30.0 and twice["threshold"] < 4.0


def test_a_score_with_an_atom_over_its_upper_decile_still_gets_a_strong_threshold_above_it():
    rng = np.random.default_rng(22)
    margins = np.concatenate([rng.uniform(0.0, 1.6, 460), np.full(116, 1.645)])  # 20 % at one quantised value
    cal = calibrate(margins)
    assert cal["threshold"] == pytest.approx(1.645)
    assert cal["threshold_strong"] > cal["threshold"] + 1.0  # one window just above the atom is not "strong"
