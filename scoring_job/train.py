"""Training: one detector per (device, sensor) over that pair's window features, on all cores. Pure (no I/O).

``fit_fleet(features)`` returns a :class:`FitResult` whose ``models`` and ``training`` go straight into
``pack.write_pack(result.models, folder, training=result.training, features=...)``.

Algorithms (``params`` override the detector's parameters; ``{"scaler": False}`` drops the StandardScaler):

* ``change-z`` (default): the window against its pair's recent windows as robust z-scores (:mod:`change`; no
  parameters, features :data:`change.FEATURES`; :func:`fit_fleet` derives ``mean_change`` from the window features)
* ``ocsvm-rbf``: StandardScaler + OneClassSVM(kernel="rbf", nu=0.05, gamma="scale")
* ``ocsvm-linear``: StandardScaler + OneClassSVM(kernel="linear", nu=0.05)
* ``isolation-forest``: IsolationForest(n_estimators=100, contamination=0.05, random_state=0)
* ``lof``: StandardScaler + LocalOutlierFactor(novelty=True, n_neighbors=20, contamination=0.05)
* ``elliptic-envelope``: EllipticEnvelope(contamination=0.05, random_state=0)

The contamination of the last three is 0.05 (not scikit-learn's "auto"/0.1) so that every algorithm flags
about the same 5 % of its training windows as the default SVM's nu does.

Every pair also gets its calibrated alert thresholds (:mod:`thresholds`): out-of-fold scores of its training
windows over ``folds`` contiguous time blocks, then the conformal quantile at 1 - ``false_rate`` (and the strong
one); the pair's final model is fitted on all its windows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

try:
    from . import change
    from .features import FEATURES
    from .pack import training_info
    from .thresholds import FALSE_RATE, FOLDS, calibrate, out_of_fold_margins
except ImportError:  # imported as a top-level module (the Azure ML code snapshot)
    import change
    from features import FEATURES
    from pack import training_info
    from thresholds import FALSE_RATE, FOLDS, calibrate, out_of_fold_margins

Key = tuple[str, str]

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "change-z": {},
    "ocsvm-rbf": {"kernel": "rbf", "nu": 0.05, "gamma": "scale"},
    "ocsvm-linear": {"kernel": "linear", "nu": 0.05},
    "isolation-forest": {"n_estimators": 100, "contamination": 0.05, "random_state": 0},
    "lof": {"novelty": True, "n_neighbors": 20, "contamination": 0.05},
    "elliptic-envelope": {"contamination": 0.05, "random_state": 0},
}
_SCALED = {"change-z": False, "ocsvm-rbf": True, "ocsvm-linear": True, "isolation-forest": False, "lof": True,
           "elliptic-envelope": False}


def _detector_class(algorithm: str) -> type:
    from sklearn.covariance import EllipticEnvelope  # scikit-learn loads only to train: Core imports this module
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    return {"ocsvm-rbf": OneClassSVM, "ocsvm-linear": OneClassSVM, "isolation-forest": IsolationForest,
            "lof": LocalOutlierFactor, "elliptic-envelope": EllipticEnvelope}[algorithm]


def make_estimator(algorithm: str = "ocsvm-rbf", params: Mapping[str, Any] | None = None) -> Any:
    """An unfitted estimator of ``algorithm`` with ``params`` overriding the defaults (see module docstring)."""
    from sklearn.pipeline import make_pipeline  # scikit-learn loads only to train
    from sklearn.preprocessing import StandardScaler

    if algorithm not in DEFAULT_PARAMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(DEFAULT_PARAMS)}")
    if algorithm == "change-z":
        return change.ChangeDetector().set_params(**dict(params or {}))
    p = dict(params or {})
    scaler = bool(p.pop("scaler", _SCALED[algorithm]))
    kwargs = {**DEFAULT_PARAMS[algorithm], **p}
    if algorithm.startswith("ocsvm-") and kwargs.get("kernel") != algorithm.removeprefix("ocsvm-"):
        raise ValueError(f"{algorithm}: kernel must stay {algorithm.removeprefix('ocsvm-')!r}")
    if algorithm == "lof" and not kwargs.get("novelty"):
        raise ValueError("lof needs novelty=True to score new windows")
    det = _detector_class(algorithm)(**kwargs)
    return make_pipeline(StandardScaler(), det) if scaler else det


#: The algorithms :func:`make_estimator` builds.
ALGORITHMS: tuple[str, ...] = tuple(DEFAULT_PARAMS)


@dataclasses.dataclass
class FitResult:
    """``models``: {(device, sensor): fitted estimator}; ``skipped``: {(device, sensor): reason};
    ``training``: {(device, sensor): {"from", "until", "size", "score_quantiles", "threshold",
    "threshold_strong"}} (what write_pack records)."""

    models: dict[Key, Any]
    skipped: dict[Key, str]
    training: dict[Key, dict[str, Any]]
    algorithm: str = "ocsvm-rbf"
    features: tuple[str, ...] = FEATURES


Work = list[tuple[Key, np.ndarray, Any, Any]]
"""Pairs to fit: (key, X (windows, features) float64 in time order, first window_end, last window_end)."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How the alert thresholds are learned: the target false-alarm rate per window and the time blocks."""

    false_rate: float = FALSE_RATE
    folds: int = FOLDS


def _fit_batch(template: Any, batch: Work, calibration: Calibration = Calibration()
               ) -> list[tuple[Key, Any, Any]]:
    """(key, fitted estimator, its :func:`pack.training_info` with its thresholds) per pair, or (key, None, why
    the fit failed)."""
    from sklearn.base import clone  # scikit-learn loads only to train: Core imports this module

    out = []
    for key, X, t_from, t_until in batch:
        try:
            oof = out_of_fold_margins(template, X, calibration.folds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. convergence or duplicate-point warnings on flat sensors
                est = clone(template).fit(X)
            info = training_info(est, X, t_from, t_until)
            out.append((key, est, {**info, **calibrate(oof, est, calibration.false_rate)}))
        except Exception as exc:  # noqa: BLE001 - one pair failing must not stop the fleet
            out.append((key, None, f"fit failed: {type(exc).__name__}: {exc}"))
    return out


def _pairs_to_fit(features: pd.DataFrame, names: list[str], min_windows: int) -> tuple[Work, dict[Key, str]]:
    """(the pairs with at least ``min_windows`` windows whose features are all finite, the skipped pairs with
    the reason), in (device, sensor) order."""
    X_all = features[names].to_numpy(dtype=np.float64, na_value=np.nan)
    usable = np.isfinite(X_all).all(axis=1)
    ends = features["window_end"]
    groups = features.groupby(["device", "sensor"], sort=True, observed=True).indices
    skipped: dict[Key, str] = {}
    work: Work = []
    for (device, sensor), rows in groups.items():
        key = (str(device), str(sensor))
        rows = rows[usable[rows]]
        if len(rows) < min_windows:
            skipped[key] = f"{len(rows)} usable windows < min_windows={min_windows}"
            continue
        w = ends.iloc[rows]
        rows = rows[np.argsort(w.to_numpy(), kind="stable")]  # time order: the folds are contiguous time blocks
        work.append((key, X_all[rows], w.min(), w.max()))
    return work, skipped


def _worker_count(n_jobs: int | None, pairs: int) -> int:
    """Processes for ``n_jobs`` (joblib's convention: -1 all cores, -2 all but one, None/0/1 one), at most one
    per pair."""
    n_workers = 1 if n_jobs in (None, 0, 1) else (n_jobs if n_jobs > 0 else max(1, _cpu_count() + 1 + n_jobs))
    return min(n_workers, pairs)


def _fit_all(template: Any, work: Work, n_jobs: int | None, progress: Callable[[int, int], None] | None,
             calibration: Calibration = Calibration()) -> list[list[tuple[Key, Any, Any]]]:
    """Fit every pair of ``work`` in batches on ``n_jobs`` processes, calling ``progress(done, total)`` as
    batches finish; every batch's :func:`_fit_batch` result, in the order they finished."""
    from sklearn.utils.parallel import Parallel, delayed  # scikit-learn loads only to train

    total = len(work)
    if progress is not None:
        progress(0, total)
    if not total:
        return []
    n_workers = _worker_count(n_jobs, total)
    size = max(1, min(64, math.ceil(total / (n_workers * 8))))
    batches = [work[i:i + size] for i in range(0, total, size)]
    if n_workers == 1:
        results = (_fit_batch(template, b, calibration) for b in batches)
    else:
        results = Parallel(n_jobs=n_workers, return_as="generator_unordered")(
            delayed(_fit_batch)(template, b, calibration) for b in batches)
    done, finished = 0, []
    for res in results:
        finished.append(res)
        done += len(res)
        if progress is not None:
            progress(done, total)
    return finished


def fit_fleet(
    features: pd.DataFrame,
    algorithm: str = "ocsvm-rbf",
    params: Mapping[str, Any] | None = None,
    feature_names: Sequence[str] = FEATURES,
    min_windows: int = 48,
    n_jobs: int | None = -1,
    progress: Callable[[int, int], None] | None = None,
    false_rate: float = FALSE_RATE,
    folds: int = FOLDS,
    window_ms: int = 300_000,
    announce: Sequence[str] = change.ANNOUNCE_SENSORS,
) -> FitResult:
    """Fit one detector per (device, sensor) of ``features`` (columns device, sensor, window_end and
    ``feature_names``). Rows with a non-finite feature are left out; pairs with fewer than ``min_windows`` usable
    windows are skipped with the reason. Each pair's alert thresholds come from out-of-fold scores over ``folds``
    contiguous time blocks at the target ``false_rate`` per window (see :mod:`thresholds`). Runs on ``n_jobs``
    processes (-1: all cores) and calls ``progress(done, total)`` as pairs finish. ``mean_change`` (and the settling
    windows, left out as non-finite) is derived from the window features when asked for and absent, with windows of
    ``window_ms`` and the ``announce`` sensors (:func:`change.change_features`)."""
    template = make_estimator(algorithm, params)
    names = [str(f) for f in feature_names]
    if algorithm == "change-z" and tuple(names) != change.FEATURES:
        raise ValueError(f"change-z reads the features {','.join(change.FEATURES)}, got {','.join(names)}")
    if "mean_change" in names and "mean_change" not in features.columns:
        features = change.change_features(features, window_ms, announce=announce)
    missing = [c for c in ("device", "sensor", "window_end", *names) if c not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")
    if min_windows < 1:
        raise ValueError("min_windows must be >= 1")
    if not 0 < false_rate < 1 or folds < 2 or min_windows < folds:
        raise ValueError(f"need 0 < false_rate < 1 and 2 <= folds <= min_windows (false_rate={false_rate}, "
                         f"folds={folds}, min_windows={min_windows})")
    work, skipped = _pairs_to_fit(features, names, min_windows)
    models: dict[Key, Any] = {}
    training: dict[Key, dict[str, Any]] = {}
    for batch in _fit_all(template, work, n_jobs, progress, Calibration(false_rate, folds)):
        for key, est, info in batch:
            if est is None:
                skipped[key] = info
            else:
                models[key] = est
                training[key] = info
    order = sorted(models)
    return FitResult(models={k: models[k] for k in order}, skipped=dict(sorted(skipped.items())),
                     training={k: training[k] for k in order}, algorithm=algorithm, features=tuple(names))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
