"""The vectorised engine against scikit-learn: random fleets (hypothesis), mixed fleets, failures, no-model rows."""

from __future__ import annotations

import math
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring_job import _kernels, engine
from scoring_job.contract import PREDICTION_COLUMNS
from scoring_job.pack import SVM_SHARD_BYTES, load_pack, write_pack

BACKENDS = ["numpy", "numba"] if _kernels.HAVE_NUMBA else ["numpy"]
T0 = pd.Timestamp("2026-11-23T00:05:00Z")


def frame(rows: dict[tuple[str, str], np.ndarray], names: list[str]) -> pd.DataFrame:
    """Feature rows for {(device, sensor): X (n, F)}, window_end every 5 minutes."""
    parts = []
    for (d, s), X in rows.items():
        parts.append(pd.DataFrame({
            "device": d, "sensor": s,
            "window_end": (T0 + pd.to_timedelta(np.arange(len(X)) * 5, unit="min")).as_unit("ms"),
            "n": np.arange(len(X), dtype=np.int64) + 1,
            **{name: X[:, j] for j, name in enumerate(names)},
        }))
    return pd.concat(parts, ignore_index=True)


def pack_of(models: dict, names: list[str], folder: str, shard_bytes: int = SVM_SHARD_BYTES):
    write_pack(models, folder, version="t1", features=names, shard_bytes=shard_bytes)
    return load_pack(folder)


def kernel_scale(est, X: np.ndarray) -> np.ndarray:
    """Per row: sum_j |coef_j K(x, s_j)| + |intercept| (the magnitude the decision value is a sum of)."""
    scaler, svm = (est[0], est[-1]) if hasattr(est, "steps") else (None, est)
    Xs = scaler.transform(X) if scaler is not None else X
    S, c = svm.support_vectors_, np.abs(svm.dual_coef_[0])
    if svm.kernel == "linear":
        K = np.abs(Xs @ S.T)
    else:
        K = np.exp(-svm._gamma * ((Xs[:, None, :] - S[None, :, :]) ** 2).sum(-1))
    return K @ c + abs(svm.intercept_[0])


def by_key(out: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    return out[(out["device"] == key[0]) & (out["sensor"] == key[1])]


# ----------------------------------------------------------------------------------- random fleets vs sklearn
model_spec = st.fixed_dictionaries({
    "kernel": st.sampled_from(["rbf", "linear"]),
    "n_sv": st.integers(1, 300),
    "windows": st.integers(1, 300),
    "gamma": st.sampled_from(["scale", "auto", 0.02, 0.3, 3.0]),
    "nu": st.sampled_from([0.05, 0.1, 0.3, 0.6, 0.95]),
    "scaled": st.booleans(),
    "offset": st.sampled_from([0.0, 50.0, -1e3]),
})


def fit_model(spec: dict, F: int, rng: np.random.Generator):
    """An OCSVM with about spec['n_sv'] support vectors (n_train ~ n_sv / nu, at most 600 points)."""
    nu = max(spec["nu"], min(0.95, spec["n_sv"] / 600))
    n_train = 1 if spec["n_sv"] == 1 else int(min(600, max(2, math.ceil(spec["n_sv"] / nu))))
    scale = rng.uniform(0.1, 5.0, F)
    X = spec["offset"] + rng.standard_normal((n_train, F)) * scale
    svm = OneClassSVM(kernel=spec["kernel"], nu=nu, gamma=spec["gamma"])
    est = make_pipeline(StandardScaler(), svm) if spec["scaled"] else svm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    W = spec["windows"]
    T = spec["offset"] + rng.standard_normal((W, F)) * scale * rng.choice([0.5, 1.0, 2.0, 4.0], size=(W, 1))
    T[rng.random(W) < 0.05] *= 1e3  # a few far-away windows: every kernel value underflows
    return est, T


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(F=st.integers(1, 8), specs=st.lists(model_spec, min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1),
       shard_bytes=st.sampled_from([1, SVM_SHARD_BYTES]))  # 1: every model in its own shard
def test_engine_matches_sklearn_on_random_fleets(F, specs, seed, shard_bytes):
    rng = np.random.default_rng(seed)
    names = [f"f{k}" for k in range(F)]
    models, rows = {}, {}
    for i, spec in enumerate(specs):
        key = (f"dev-{i}", "s")
        models[key], rows[key] = fit_model(spec, F, rng)
        svm = models[key][-1] if hasattr(models[key], "steps") else models[key]
        n_sv = len(svm.support_vectors_)
        event(f"{spec['kernel']}, support vectors {'1' if n_sv == 1 else '2-50' if n_sv <= 50 else '51-300'}")
    feats = frame(rows, names)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, names, tmp, shard_bytes)
        for backend in BACKENDS:
            out64 = engine.score(feats, pack, run_id="r", dtype="float64", backend=backend).predictions
            out32, stats = engine.score(feats, pack, run_id="r", dtype="float32", backend=backend)
            assert (out64["status"] == "ok").all() and len(out64) == len(feats)
            c = engine.prepare(pack)
            for key, est in models.items():
                X = rows[key]
                got = -by_key(out64, key)["score"].to_numpy()
                ref = est.decision_function(X)
                tol = 1e-9 * np.abs(ref) + 1e-11 * kernel_scale(est, X) + 1e-300
                assert np.all(np.abs(got - ref) <= tol), (backend, key, np.max(np.abs(got - ref) - tol))
                labels = by_key(out64, key)["is_anomaly"].to_numpy()
                assert np.array_equal(labels, est.predict(X) == -1), (backend, key)
                labels32 = by_key(out32, key)["is_anomaly"].to_numpy()
                assert np.array_equal(labels32, labels), (backend, key, stats)
                # the float32 error bound holds for every row (rechecked rows carry float64 values)
                row = c.svm_row[pack.index_of(key)]
                if c.svm.is_rbf[row]:
                    diff = np.abs(by_key(out32, key)["score"].to_numpy() + got)
                    assert np.all(diff <= c.svm.bound32[row]), (backend, key, diff.max(), c.svm.bound32[row])


def test_float32_mode_rechecks_windows_near_zero_and_keeps_labels():
    rng = np.random.default_rng(5)
    names = ["mean", "min", "max", "std"]
    models, rows = {}, {}
    for i in range(6):
        X = rng.standard_normal((400, 4))
        models[(f"d{i}", "t")] = make_pipeline(StandardScaler(), OneClassSVM(nu=0.1, gamma="scale")).fit(X)
        rows[(f"d{i}", "t")] = np.vstack([X[:150], rng.standard_normal((150, 4)) * 1.5])  # many near the boundary
    feats = frame(rows, names)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, names, tmp)
        for backend in BACKENDS:
            out64 = engine.score(feats, pack, backend=backend).predictions
            out32, s32 = engine.score(feats, pack, dtype="float32", backend=backend)
            assert s32.rechecks > 0
            assert np.array_equal(out32["is_anomaly"].to_numpy(), out64["is_anomaly"].to_numpy())
            assert np.allclose(out32["score"], out64["score"], rtol=0, atol=1e-3)


def test_calibrated_thresholds_label_rows_exactly_as_the_sklearn_reference_in_both_dtypes():
    """Each row carries its model's thresholds; is_anomaly is the scikit-learn score above the threshold, and the
    float32 path rechecks rows near either threshold so its labels (and strong labels) are the float64 ones."""
    rng = np.random.default_rng(9)
    names = ["mean", "min", "max", "std"]
    models, rows, training = {}, {}, {}
    for i in range(5):
        X = rng.standard_normal((300, 4))
        key = (f"d{i}", "t")
        models[key] = make_pipeline(StandardScaler(), OneClassSVM(nu=0.1, gamma="scale")).fit(X)
        rows[key] = rng.standard_normal((200, 4)) * 1.6
        ref = -models[key].decision_function(rows[key])
        # thresholds at scores some rows sit on to float precision: the float32 bulk alone could flip their labels
        t, strong = np.sort(ref)[120] + 1e-9, np.sort(ref)[180] - 1e-9
        training[key] = {"threshold": t, "threshold_strong": strong}
    feats = frame(rows, names)
    with tempfile.TemporaryDirectory() as tmp:
        write_pack(models, tmp, version="thr", features=names, training=training)
        pack = load_pack(tmp)
        for backend in BACKENDS:
            out64 = engine.score(feats, pack, backend=backend).predictions
            out32, s32 = engine.score(feats, pack, dtype="float32", backend=backend)
            assert s32.rechecks > 0
            for key, est in models.items():
                mine = by_key(out64, key)
                ref = -est.decision_function(rows[key])
                assert (mine["threshold"] == training[key]["threshold"]).all()
                assert (mine["threshold_strong"] == training[key]["threshold_strong"]).all()
                assert np.array_equal(mine["is_anomaly"], ref > training[key]["threshold"]), backend
                assert np.array_equal(mine["score"] > mine["threshold_strong"], ref > training[key]["threshold_strong"])
            assert np.array_equal(out32["is_anomaly"], out64["is_anomaly"]), backend
            strong32, strong64 = (o["score"] > o["threshold_strong"] for o in (out32, out64))
            assert np.array_equal(strong32, strong64), backend


def test_numba_kernel_and_numpy_path_agree():
    if not _kernels.HAVE_NUMBA:
        pytest.fail("numba is a dependency of the dev install; the fused kernel must be tested")
    rng = np.random.default_rng(9)
    names = ["mean", "min", "max", "std"]
    models = {(f"d{i:02d}", s): make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(
        rng.standard_normal((300, 4)) * (i + 1)) for i in range(12) for s in ("a", "b")}
    rows = {k: rng.standard_normal((int(rng.integers(1, 40)), 4)) * 3 for k in models}
    feats = frame(rows, names)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, names, tmp)
        a = engine.score(feats, pack, backend="numba").predictions
        b = engine.score(feats, pack, backend="numpy").predictions
    assert np.allclose(a["score"], b["score"], rtol=1e-12, atol=1e-12)
    assert np.array_equal(a["is_anomaly"].to_numpy(), b["is_anomaly"].to_numpy())


def test_kernel_exp_accuracy():
    if not _kernels.HAVE_NUMBA:
        pytest.fail("numba is a dependency of the dev install; the fused kernel must be tested")
    x = np.concatenate([-np.random.default_rng(0).random(200_000) * 708.0, [0.0, -1e-300, -0.5, -700.0]])
    out = np.empty_like(x)
    _kernels.vexp64(x, out)
    ref = np.exp(x)
    assert np.max(np.abs(out - ref) / np.spacing(ref)) <= 4  # ulps (numpy's exp itself is within 1)
    x32 = (-np.random.default_rng(1).random(200_000) * 87.0).astype(np.float32)
    o32 = np.empty_like(x32)
    _kernels.vexp32(x32, o32)
    ref32 = np.exp(x32.astype(np.float64))
    assert np.max(np.abs(o32 - ref32) / ref32) <= 4 * 2.0**-24
    far = np.array([-1e300, -np.inf, -800.0])
    _kernels.vexp64(far, o := np.empty(3))
    assert np.all((o >= 0) & (o < 1e-300))


def test_chunks_and_row_blocks_give_the_same_values(monkeypatch):
    rng = np.random.default_rng(2)
    names = ["mean", "min", "max", "std"]
    models = {(f"d{i}", "t"): OneClassSVM(nu=0.2, gamma=0.5).fit(rng.standard_normal((100, 4))) for i in range(7)}
    rows = {k: rng.standard_normal((20 + 37 * i, 4)) for i, k in enumerate(models)}
    feats = frame(rows, names)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, names, tmp)
        whole = {b: engine.score(feats, pack, backend=b).predictions["score"].to_numpy() for b in BACKENDS}
        monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # one model per chunk, 16 rows per piece
        monkeypatch.setattr(engine, "KERNEL_MAX_ROWS", 8)  # 8-row blocks in the fused kernel
        pieces = {b: engine.score(feats, pack, backend=b).predictions["score"].to_numpy() for b in BACKENDS}
    ref = np.concatenate([-models[k].decision_function(rows[k]) for k in sorted(models)])
    for b in BACKENDS:
        np.testing.assert_allclose(whole[b], ref, rtol=1e-12, atol=1e-13)
        if b == "numba":  # each row's sum is computed the same way whatever the blocks
            np.testing.assert_array_equal(pieces[b], whole[b])
        else:  # BLAS may round differently for other matrix shapes
            np.testing.assert_allclose(pieces[b], whole[b], rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------------------- mixed fleets, failures
NAMES = ["mean", "min", "max", "std"]


def mixed_fleet(rng):
    X = rng.normal([20.0, 18.0, 22.0, 1.0], [1.0, 1.0, 1.0, 0.2], size=(300, 4))
    return {
        ("a-01", "temp"): make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(X),
        ("a-02", "temp"): OneClassSVM(kernel="linear", nu=0.1).fit(X - X.mean(0)),
        ("a-03", "temp"): make_pipeline(StandardScaler(), OneClassSVM(kernel="linear", nu=0.2)).fit(X),
        ("b-01", "hum"): IsolationForest(n_estimators=25, random_state=0).fit(X),
        ("b-02", "hum"): make_pipeline(StandardScaler(), LocalOutlierFactor(novelty=True, n_neighbors=15)).fit(X),
        ("b-03", "hum"): EllipticEnvelope(random_state=0).fit(X),
        ("b-04", "hum"): OneClassSVM(kernel="poly", degree=2, nu=0.1).fit(X),  # not fast-path: stored with skops
    }, X


def test_a_fleet_mixing_svms_and_skops_detectors():
    rng = np.random.default_rng(11)
    models, X = mixed_fleet(rng)
    rows = {k: np.vstack([X[:20] + rng.normal(0, 0.5, (20, 4)), X[:3] + 8.0]) for k in models}
    feats = frame(rows, NAMES).sample(frac=1.0, random_state=1)  # any row order in, sorted out
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, NAMES, tmp)
        for backend in BACKENDS:
            out, stats = engine.score(feats, pack, run_id="run-7", backend=backend)
            assert list(out.columns) == list(PREDICTION_COLUMNS)
            assert len(out) == len(feats) and (out["status"] == "ok").all() and out["error"].isna().all()
            keys = list(zip(out["device"], out["sensor"], out["window_end"], strict=True))
            assert keys == sorted(keys)
            assert stats.svm_models == 3 and stats.other_models == 4 and stats.failures == {}
            for key, est in models.items():
                got = by_key(out, key)
                ref = est.decision_function(rows[key])
                assert np.allclose(-got["score"].to_numpy(), ref, rtol=1e-9, atol=1e-10), key
                assert np.array_equal(got["is_anomaly"].to_numpy(), est.predict(rows[key]) == -1), key
                assert np.array_equal(got["mean"].to_numpy(), rows[key][:, 0])
                assert (got["model_version"] == "t1").all() and (got["run_id"] == "run-7").all()
            assert out["is_anomaly"].sum() >= 3 * len(models)  # the +8 windows are flagged by every model
    assert out["window_end"].dtype == "datetime64[ms, UTC]" and out["n"].dtype == np.int64
    assert out["score"].dtype == np.float64 and out["is_anomaly"].dtype == bool


def test_a_broken_model_fails_only_its_own_rows():
    rng = np.random.default_rng(12)
    models, X = mixed_fleet(rng)
    models[("c-01", "temp")] = OneClassSVM(nu=0.1).fit(X[:, :3])  # 3 features in a 4-feature pack
    models[("c-02", "temp")] = IsolationForest(n_estimators=5, random_state=0).fit(X[:, :2])  # skops, 2 features
    rows = {k: X[:10] for k in models}
    feats = frame(rows, NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, NAMES, tmp)
        out, stats = engine.score(feats, pack)
    bad = out["device"].isin(["c-01", "c-02"])
    assert (out.loc[bad, "status"] == "error").all() and out.loc[bad, "score"].isna().all()
    assert not out.loc[bad, "is_anomaly"].any()
    assert set(stats.failures) == {("c-01", "temp"), ("c-02", "temp")}
    assert "expects 3 features" in stats.failures[("c-01", "temp")]
    assert "expects 3 features" in by_key(out, ("c-01", "temp"))["error"].iloc[0]
    assert "2 features" in stats.failures[("c-02", "temp")]
    assert (out.loc[~bad, "status"] == "ok").all() and out.loc[~bad, "score"].notna().all()


def test_windows_without_a_model_are_flagged_not_dropped():
    rng = np.random.default_rng(13)
    models, X = mixed_fleet(rng)
    rows = {**{k: X[:5] for k in models}, ("zz-unknown", "temp"): X[:4], ("a-01", "pressure"): X[:2]}
    feats = frame(rows, NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, NAMES, tmp)
        out, stats = engine.score(feats, pack)
    none = out["status"] == "no_model"
    assert none.sum() == 6 and stats.no_model_windows == 6
    assert set(zip(out.loc[none, "device"], out.loc[none, "sensor"], strict=True)) == {
        ("zz-unknown", "temp"), ("a-01", "pressure")}
    assert out.loc[none, "score"].isna().all() and not out.loc[none, "is_anomaly"].any()
    assert out.loc[none, "error"].isna().all() and (out.loc[~none, "status"] == "ok").all()


def test_non_finite_features_mark_only_those_rows():
    rng = np.random.default_rng(14)
    models, X = mixed_fleet(rng)
    T = X[:6].copy()
    T[2, 1] = np.nan
    T[4, 3] = np.inf
    feats = frame({k: T for k in models}, NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        out = engine.score(feats, pack_of(models, NAMES, tmp)).predictions
    err = out["status"] == "error"
    assert err.sum() == 2 * len(models)
    assert set(out.loc[err, "error"]) == {"non-finite feature values"}
    assert out.loc[~err, "score"].notna().all()


def test_string_and_categorical_keys_and_empty_input_give_the_same_result():
    rng = np.random.default_rng(15)
    models, X = mixed_fleet(rng)
    feats = frame({k: X[:7] for k in models}, NAMES)
    cat = feats.assign(device=feats["device"].astype("category"), sensor=feats["sensor"].astype("category"))
    obj = feats.assign(device=feats["device"].astype(object), sensor=feats["sensor"].astype(object))
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, NAMES, tmp)
        a, b, c = (engine.score(f, pack).predictions for f in (feats, cat, obj))
        empty = engine.score(feats.iloc[:0], pack).predictions
    for other in (b, c):
        assert np.array_equal(a["score"].to_numpy(), other["score"].to_numpy(), equal_nan=True)
        assert list(a["device"].astype(str)) == list(other["device"].astype(str))
    assert list(empty.columns) == list(PREDICTION_COLUMNS) and len(empty) == 0


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(16)
    models, X = mixed_fleet(rng)
    feats = frame({k: X[:3] for k in models}, NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_of(models, NAMES, tmp)
        with pytest.raises(ValueError, match="dtype"):
            engine.score(feats, pack, dtype="float16")
        with pytest.raises(ValueError, match="lack columns"):
            engine.score(feats.drop(columns=["std"]), pack)


def test_support_vectors_and_scaler_rows_are_padded_per_model():
    """Models with fewer features than the widest are zero-padded (scale: one-padded), row by row."""
    F, svc = np.array([2, 4, 1]), np.array([3, 1, 2])
    flat = np.arange(float((F * svc).sum())) + 1
    sv = engine._support_vectors(flat, F, svc, 4)
    want, pos = np.zeros((6, 4)), 0
    for f, n, r0 in zip(F, svc, [0, 3, 4], strict=True):
        want[r0:r0 + n, :f] = flat[pos:pos + f * n].reshape(n, f)
        pos += f * n
    np.testing.assert_array_equal(sv, want)
    scale = engine._per_feature(np.arange(7.0) + 1, F, 4, 1.0)
    np.testing.assert_array_equal(scale, [[1, 2, 1, 1], [3, 4, 5, 6], [7, 1, 1, 1]])
