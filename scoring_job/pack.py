"""The model pack: one version of the whole fleet's models in one folder, loaded in a few reads.

Layout::

    <folder>/manifest.json     format, version, created, features, window length, the per-model table
                               (columnar: key, algorithm, training range and size, training score quantiles)
                               and the SHA-256 and size of every other file
    <folder>/svm-000.npz, svm-001.npz, ...
                               every one-class SVM (rbf, linear) as float64 arrays (no pickle), in shards of
                               consecutive SVMs of about 8 MiB each, so that a loader verifies them in parallel
    <folder>/detectors.skops   every other detector (one skops list), loaded with an explicit trusted list

change-z detectors (:mod:`change`) are eight numbers each, kept in the manifest's ``change`` section (no file).

``load_pack`` checks the manifest's own SHA-256 when given the digest pinned at activation (``models/CURRENT``, so
an edited manifest is refused: the manifest holds every other file's SHA-256), then its shape (every ``device`` and
``sensor`` an id as ingest accepts them, :data:`contract.ID_PATTERN`) before it opens any other file, verifies
every file's SHA-256 (the files are memory-mapped read-only and hashed on all cores while the per-model table is
checked), loads arrays with the rules of ``allow_pickle=False`` and skops with :data:`TRUSTED_TYPES` only;
anything else raises :class:`PackError`. Nothing from storage is ever unpickled. Pack files are immutable (every
writer replaces a file whole, by rename): the loaded arrays are views of the verified mapping, so a file
rewritten in place after loading is outside the guarantee, as for any open file.

The per-model table (``manifest["models"]``) is columnar, ``count`` rows sorted by (device, sensor), so that a
fleet of 10,000 models parses in a few milliseconds. ``device`` and ``sensor`` are lists of ``count`` strings;
every other field is either such a list or, when every model has the same value, that value once. Fields:
``algorithm`` ("change-z", "ocsvm-rbf", "ocsvm-linear", "isolation-forest", "lof", "elliptic-envelope" or the class
name), ``n_features`` (int or null), ``scaled`` (a StandardScaler in front), ``store`` ("svm" | "skops" | "change";
each store's models are numbered in table order), ``sv_count`` (0 but for SVMs), ``train_from``, ``train_until``
(ISO-8601 UTC or null), ``train_size`` (windows or null), ``score_quantiles``: null when unknown for every model, else
{"q50", "q90", "q95", "q99", "max"} each the base64 of ``count`` little-endian float64 (NaN where unknown;
score = -decision_function), and ``thresholds`` (format 3): {"threshold", "threshold_strong"} each the base64
of ``count`` little-endian float64: the model's calibrated alert thresholds on the score (a window is anomalous
when score > threshold; see :mod:`thresholds`). ``threshold`` is finite (0.0, the detector's own boundary,
when the pack was written without one); ``threshold_strong`` is finite or NaN (unknown: no window is strong).
Base64 keeps the values exact and parses about 50x faster than JSON numbers. A format-2 pack (no thresholds) is
refused: retrain (``fleetscore train --activate``).

The ``change`` section is null without change-z models, else {"models": their count, "version":
:data:`change.VERSION`, "announce_sensors": [names], "context_windows": int, "settle_windows": int, "params": {name:
base64 of ``models`` little-endian float64} for each of :data:`change.PARAMS`} (the change-z models in table order;
scales and the floor positive and finite, ``unchanged_max`` at least 0). A change section without ``version``
(written before the spread was one-sided and the scales balanced, or before the ``unchanged`` feature), or with
another version, is refused: retrain. A manifest without the key reads as null.

SVM arrays (float64, 1-D; each shard holds the next SVMs of the table, concatenated in table order; the
manifest's ``svm.shards`` lists the shards in order with their model counts and array sizes):

* ``sv``            support vectors in the scaled feature space, ``sv_count * n_features`` values per model
* ``dual_coef``     ``sv_count`` values per model
* ``scaler_mean``, ``scaler_scale``  ``n_features`` values per model (0 / 1 without a StandardScaler; applied
                    as ``(x - mean) / scale`` like scikit-learn)
* ``intercept``, ``gamma``  one per SVM (gamma is the fitted numeric ``_gamma``, 0 for the linear kernel).
  decision(x) = sum_j dual_coef_j * K(x_scaled, sv_j) + intercept.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import mmap
import operator
import os
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    from . import change
    from .contract import ID_PATTERN
    from .features import FEATURES
    from .thresholds import FOLDS, calibrate, out_of_fold_margins
except ImportError:  # imported as a top-level module: the Azure ML code snapshot is this folder alone
    import change
    from contract import ID_PATTERN
    from features import FEATURES
    from thresholds import FOLDS, calibrate, out_of_fold_margins

FORMAT = "fleetscore-model-pack"
FORMAT_VERSION = 3  # 1 kept every SVM in one svm.npz; 2 had no alert thresholds
MANIFEST = "manifest.json"
SKOPS_FILE = "detectors.skops"
SVM_SHARD_BYTES = 8 << 20  # target size of one SVM array file (a shard holds at least one SVM)
QUANTILES: tuple[tuple[str, float], ...] = (("q50", 0.5), ("q90", 0.9), ("q95", 0.95), ("q99", 0.99), ("max", 1.0))
SVM_ARRAYS = ("sv", "dual_coef", "scaler_mean", "scaler_scale", "intercept", "gamma")
SVM_KERNELS = ("rbf", "linear")
STORES = ("svm", "skops", "change")
TABLE_FIELDS = ("device", "sensor", "algorithm", "n_features", "scaled", "store", "sv_count",
                "train_from", "train_until", "train_size", "score_quantiles", "thresholds")
THRESHOLDS = ("threshold", "threshold_strong")
"""The per-model alert thresholds on the score (``manifest["models"]["thresholds"]``, table columns)."""

#: Every type a skops file in a pack may contain. Checked against the file's schema before loading and passed
#: to ``skops.io.loads(trusted=...)`` explicitly; a file naming any other type is refused.
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.NoneType",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.float64",
    "numpy.float32",
    "numpy.int64",
    "numpy.int32",
    "numpy.bool_",
    "numpy.random.mtrand.RandomState",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._lof.LocalOutlierFactor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.covariance._elliptic_envelope.EllipticEnvelope",
    "sklearn.svm._classes.OneClassSVM",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_IDS_RE = re.compile(rf"(?:{ID_PATTERN.pattern}\n)*")  # ids one per line: every key checked in one C-level match
_SHARD_RE = re.compile(r"^svm-[0-9]{3,6}\.npz$")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same models give the same shard bytes

Key = tuple[str, str]
Buffer = bytes | mmap.mmap  # a verified file's contents


class PackError(ValueError):
    """A model pack is missing, malformed, tampered with, or asks for an untrusted type."""


# --------------------------------------------------------------------------------------------- helpers
def _iso(ts: Any) -> str | None:
    if ts is None or (isinstance(ts, float) and np.isnan(ts)):
        return None
    t = pd.Timestamp(ts)
    if pd.isna(t):
        return None
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.isoformat().replace("+00:00", "Z")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def svm_shard_name(i: int) -> str:
    """File name of the i-th SVM shard (``svm-000.npz``, ...)."""
    return f"svm-{i:03d}.npz"


def score_quantiles(scores: np.ndarray) -> dict[str, float] | None:
    """Quantiles (q50, q90, q95, q99, max) of training scores (score = -decision_function); None if empty."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    qs = np.quantile(s, [q for _, q in QUANTILES])
    return {name: float(v) for (name, _), v in zip(QUANTILES, qs, strict=True)}


def split_pipeline(est: Any) -> tuple[Any | None, Any]:
    """(StandardScaler or None, final detector) of a detector or a Pipeline([StandardScaler, detector])."""
    from sklearn.pipeline import Pipeline  # scikit-learn loads only to write a pack: Core imports this module
    from sklearn.preprocessing import StandardScaler

    if isinstance(est, Pipeline):
        steps = [s for _, s in est.steps if s is not None and s != "passthrough"]
        if len(steps) == 1:
            return None, steps[0]
        if len(steps) == 2 and type(steps[0]) is StandardScaler:
            return steps[0], steps[1]
        raise ValueError(f"unsupported pipeline {[type(s).__name__ for s in steps]}: "
                         "use [StandardScaler, detector] or [detector]")
    return None, est


def algorithm_name(est: Any) -> str:
    """The pack's algorithm name of an estimator ("change-z", "ocsvm-rbf", "isolation-forest", ...)."""
    if isinstance(est, change.ChangeDetector):
        return "change-z"
    _, det = split_pipeline(est)
    name = type(det).__name__
    if name == "OneClassSVM":
        return f"ocsvm-{det.kernel}"
    return {
        "IsolationForest": "isolation-forest",
        "LocalOutlierFactor": "lof",
        "EllipticEnvelope": "elliptic-envelope",
    }.get(name, name)


def is_fast_svm(est: Any) -> bool:
    """True for a OneClassSVM (rbf or linear kernel), bare or behind a StandardScaler: stored as arrays."""
    _, det = split_pipeline(est)
    return type(det).__name__ == "OneClassSVM" and det.kernel in SVM_KERNELS


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (what ``np.savez`` writes) with fixed zip timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE), member.getvalue())
    return buf.getvalue()


def _one_or_all(values: list[Any]) -> Any:
    """A table column as the manifest stores it: the single value when every model has the same, else the list."""
    if values and all(v == values[0] and type(v) is type(values[0]) for v in values):
        return values[0]
    return values


def _float64_base64(values: Sequence[float | None]) -> str:
    """Base64 of the values as little-endian float64 (None as NaN): exact, and parsed 50x faster than JSON
    numbers."""
    arr = np.array([np.nan if v is None else v for v in values], dtype="<f8")
    return base64.b64encode(arr.tobytes()).decode("ascii")


def _shard_bounds(sizes: Sequence[int], target: int) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) ranges of items whose sizes add up to about ``target`` each (at least one item)."""
    bounds, lo, acc = [], 0, 0
    for i, size in enumerate(sizes):
        if acc and acc + size > target:
            bounds.append((lo, i))
            lo, acc = i, 0
        acc += size
    if lo < len(sizes):
        bounds.append((lo, len(sizes)))
    return bounds


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------ write
@dataclasses.dataclass
class _PackContents:
    """A pack being assembled, model by model in table order: the per-model table's columns, the SVMs' arrays
    (one list per name of :data:`SVM_ARRAYS`, one entry per SVM) and the detectors stored with skops."""

    table: dict[str, list[Any]] = dataclasses.field(
        default_factory=lambda: {f: [] for f in TABLE_FIELDS if f not in ("score_quantiles", "thresholds")})
    quantiles: dict[str, list[float | None]] = dataclasses.field(
        default_factory=lambda: {name: [] for name, _ in QUANTILES})
    thresholds: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {k: [] for k in THRESHOLDS})
    svm_parts: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=lambda: {k: [] for k in SVM_ARRAYS})
    others: list[Any] = dataclasses.field(default_factory=list)
    change_params: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, key: Key, est: Any, training: Mapping[str, Any]) -> None:
        """One fitted model's table row, its arrays (array-stored SVMs) or its place in the skops list."""
        is_change = isinstance(est, change.ChangeDetector)
        if is_change and not hasattr(est, "params_"):
            raise ValueError(f"{key}: the change-z detector is not fitted")
        scaler, det = (None, est) if is_change else _fitted_detector(key, est)
        row = self.table
        row["device"].append(key[0])
        row["sensor"].append(key[1])
        row["algorithm"].append(algorithm_name(est))
        row["scaled"].append(scaler is not None)
        if is_change:
            self.change_params.append(np.asarray(est.params_, dtype=np.float64))
            row["store"].append("change")
            row["sv_count"].append(0)
            row["n_features"].append(len(change.FEATURES))
        elif is_fast_svm(est):
            arrays = _svm_model_arrays(key, scaler, det)
            for name, values in arrays.items():
                self.svm_parts[name].append(values)
            row["store"].append("svm")
            row["sv_count"].append(len(arrays["dual_coef"]))
            row["n_features"].append(len(arrays["scaler_mean"]))
        else:
            n_feat = getattr(est, "n_features_in_", None)
            if n_feat is None:
                n_feat = getattr(det, "n_features_in_", None)
            row["store"].append("skops")
            row["sv_count"].append(0)
            row["n_features"].append(int(n_feat) if n_feat is not None else None)
            self.others.append(est)
        self._add_training(training)

    def _add_training(self, record: Mapping[str, Any]) -> None:
        self.table["train_from"].append(_iso(record.get("from")))
        self.table["train_until"].append(_iso(record.get("until")))
        self.table["train_size"].append(int(record["size"]) if record.get("size") is not None else None)
        q = record.get("score_quantiles") or {}
        for name, _ in QUANTILES:
            v = q.get(name)
            self.quantiles[name].append(float(v) if v is not None and np.isfinite(v) else None)
        t, strong = record.get("threshold"), record.get("threshold_strong")
        self.thresholds["threshold"].append(float(t) if t is not None and np.isfinite(t) else 0.0)
        self.thresholds["threshold_strong"].append(float(strong) if strong is not None and np.isfinite(strong)
                                                   else np.nan)

    def manifest_table(self) -> dict[str, Any]:
        """The manifest's ``models`` section (see the module docstring)."""
        table = dict(self.table)
        return {"count": len(table["device"]), "device": table.pop("device"), "sensor": table.pop("sensor"),
                **{f: _one_or_all(values) for f, values in table.items()},
                "score_quantiles": None if all(v is None for col in self.quantiles.values() for v in col)
                else {name: _float64_base64(col) for name, col in self.quantiles.items()},
                "thresholds": {k: _float64_base64(col) for k, col in self.thresholds.items()}}


    def change_section(self, announce: Sequence[str]) -> dict[str, Any] | None:
        """The manifest's ``change`` section (see the module docstring), None without change-z models."""
        if not self.change_params:
            return None
        params = np.vstack(self.change_params)
        return {"models": len(params), "version": change.VERSION, "announce_sensors": [str(a) for a in announce],
                "context_windows": change.CONTEXT_WINDOWS, "settle_windows": change.SETTLE_WINDOWS,
                "params": {name: _float64_base64(params[:, i].tolist()) for i, name in enumerate(change.PARAMS)}}


def _fitted_detector(key: Key, est: Any) -> tuple[Any | None, Any]:
    """(scaler or None, detector) of a fitted estimator the pack can score; raises for any other."""
    from sklearn.utils.validation import check_is_fitted  # scikit-learn is loaded only to write a pack

    scaler, det = split_pipeline(est)
    check_is_fitted(det)
    if not hasattr(est, "decision_function"):
        raise ValueError(f"{key}: {type(det).__name__} has no decision_function "
                         "(LocalOutlierFactor needs novelty=True)")
    return scaler, det


def _svm_model_arrays(key: Key, scaler: Any | None, det: Any) -> dict[str, np.ndarray]:
    """One fitted OneClassSVM (rbf or linear) as the 1-D float64 arrays of :data:`SVM_ARRAYS`."""
    sv = np.ascontiguousarray(det.support_vectors_, dtype=np.float64)
    coef = np.ascontiguousarray(det.dual_coef_, dtype=np.float64).reshape(-1)
    n_sv, n_feat = sv.shape
    if coef.shape != (n_sv,) or n_sv < 1:
        raise ValueError(f"{key}: dual_coef_ {det.dual_coef_.shape} vs support vectors {sv.shape}")
    mean, scale = np.zeros(n_feat), np.ones(n_feat)
    if scaler is not None:
        if scaler.with_mean:
            mean = np.asarray(scaler.mean_, dtype=np.float64)
        if scaler.with_std:
            scale = np.asarray(scaler.scale_, dtype=np.float64)
    return {"sv": sv.reshape(-1), "dual_coef": coef, "scaler_mean": mean, "scaler_scale": scale,
            "intercept": np.asarray([det.intercept_[0]], dtype=np.float64),
            "gamma": np.asarray([det._gamma if det.kernel == "rbf" else 0.0], dtype=np.float64)}


def _write_svm_shards(folder: Path, parts: Mapping[str, list[np.ndarray]], shard_bytes: int,
                      files: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Write the SVMs' arrays as shards of about ``shard_bytes`` each, record them in ``files``; return the
    manifest's ``svm`` section (None without SVMs)."""
    n_svm = len(parts["intercept"])
    if not n_svm:
        return None
    shards = []
    sizes = [8 * sum(len(parts[k][i]) for k in SVM_ARRAYS) for i in range(n_svm)]
    for lo, hi in _shard_bounds(sizes, shard_bytes):
        name = svm_shard_name(len(shards))
        arrays = {k: np.concatenate(v[lo:hi]).astype(np.float64, copy=False) for k, v in parts.items()}
        files[name] = _write_file(folder / name, _npz_bytes(arrays))
        shards.append({"file": name, "models": hi - lo, "arrays": {k: [int(v.shape[0])] for k, v in arrays.items()}})
    return {"models": n_svm, "shards": shards}


def _write_skops(folder: Path, others: list[Any], files: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Write the other detectors as one skops list, record it in ``files``; return the manifest's ``skops``
    section (None without such detectors)."""
    if not others:
        return None
    import skops.io as sio  # loaded only for packs that hold skops detectors

    data = sio.dumps(others)
    _check_skops_types(data, SKOPS_FILE)  # never write a file we would refuse to load
    files[SKOPS_FILE] = _write_file(folder / SKOPS_FILE, data)
    return {"file": SKOPS_FILE, "models": len(others)}


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` atomically; its manifest entry (SHA-256 and size)."""
    _atomic_write(path, data)
    return {"sha256": _sha256(data), "bytes": len(data)}


def _sorted_keys(models: Mapping[Key, Any]) -> list[tuple[Key, Any]]:
    """((device, sensor) as strings, the caller's key) pairs, sorted; refuses keys equal once stringified."""
    keys = sorted(((str(k[0]), str(k[1])), k) for k in models)
    if len({k for k, _ in keys}) != len(keys):
        raise ValueError("two models map to the same (device, sensor) once turned into strings")
    bad = [k for k, _ in keys if not (ID_PATTERN.fullmatch(k[0]) and ID_PATTERN.fullmatch(k[1]))]
    if bad:  # never write a pack that load_pack refuses
        raise ValueError(f"model key {bad[0]!r} is not a (device, sensor) of ids: 1-64 characters of [A-Za-z0-9._:-]")
    return keys


def _pack_version(version: str | None, created: _dt.datetime, files: Mapping[str, Mapping[str, Any]]) -> str:
    """The given version, checked, or ``<created>-<hash of the files' SHA-256s>``."""
    if version is None:
        digest = hashlib.sha256("".join(f["sha256"] for f in files.values()).encode()).hexdigest()[:8]
        version = created.strftime("%Y%m%dT%H%M%SZ") + "-" + digest
    if not _NAME_RE.match(version):
        raise ValueError(f"pack version {version!r} must match {_NAME_RE.pattern}")
    return version


def write_pack(
    models: Mapping[Key, Any],
    folder: str | os.PathLike[str],
    *,
    version: str | None = None,
    features: Sequence[str] = FEATURES,
    window_minutes: int = 5,
    training: Mapping[Key, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    shard_bytes: int = SVM_SHARD_BYTES,
    announce: Sequence[str] = change.ANNOUNCE_SENSORS,
) -> dict[str, Any]:
    """Write fitted detectors as one pack into ``folder``; return the manifest.

    ``models``: {(device, sensor): fitted estimator}: a OneClassSVM (rbf or linear; stored as arrays), an
    IsolationForest, LocalOutlierFactor(novelty=True), EllipticEnvelope or other OneClassSVM (stored with skops),
    each bare or behind a StandardScaler in a Pipeline. ``training``: per key ``from``/``until`` (timestamps),
    ``size`` (windows), ``score_quantiles`` (see :func:`score_quantiles`), ``threshold`` and
    ``threshold_strong`` (see :mod:`thresholds`); missing keys mean unknown (threshold 0.0, strong NaN).
    ``shard_bytes``: target size of one SVM array file (consecutive SVMs are grouped until it is reached).
    ``announce``: the sensors whose changes the change-z models were fitted to treat as announced (recorded with
    them, so that scoring treats them the same way).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{folder / MANIFEST} exists; a pack version is immutable")
    features = [str(f) for f in features]
    if not features:
        raise ValueError("features must not be empty")
    training = training or {}
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)

    contents = _PackContents()
    for key, original_key in _sorted_keys(models):
        contents.add(key, models[original_key], training.get(original_key) or training.get(key) or {})
    files: dict[str, dict[str, Any]] = {}
    svm_section = _write_svm_shards(folder, contents.svm_parts, shard_bytes, files)
    skops_section = _write_skops(folder, contents.others, files)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": _pack_version(version, created, files),
        "created": created.isoformat().replace("+00:00", "Z"),
        "features": features,
        "window_minutes": int(window_minutes),
        "files": files,
        "svm": svm_section,
        "skops": skops_section,
        "change": contents.change_section(announce),
        "models": contents.manifest_table(),
    }
    _atomic_write(folder / MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
    return manifest


def training_info(est: Any, X: np.ndarray, t_from: Any, t_until: Any) -> dict[str, Any]:
    """What the manifest records of one model's training: window_end range, size (windows) and the quantiles
    of its training scores (negated decision function), which alert severity is measured against."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fitted with/without feature names
        scores = -np.asarray(est.decision_function(X), dtype=np.float64) if len(X) else np.empty(0)
    return {"from": t_from, "until": t_until, "size": int(len(X)), "score_quantiles": score_quantiles(scores)}


def training_summary(
    models: Mapping[Key, Any], train_windows: pd.DataFrame, features: Sequence[str] = FEATURES
) -> dict[Key, dict[str, Any]]:
    """Per key: `training_info` over its rows of ``train_windows`` with finite features (as training uses), and
    the alert thresholds from out-of-fold scores of unfitted clones of the estimator over time blocks of those
    rows (when it has at least ``FOLDS`` of them)."""
    out: dict[Key, dict[str, Any]] = {}
    groups = train_windows.groupby(["device", "sensor"], sort=False, observed=True).indices
    for key, est in models.items():
        idx = groups.get((str(key[0]), str(key[1])))
        if idx is None or len(idx) == 0:
            continue
        rows = train_windows.iloc[idx]
        rows = rows.iloc[np.argsort(rows["window_end"].to_numpy(), kind="stable")]
        X = rows[list(features)].to_numpy(dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        ends = rows["window_end"][finite]
        out[key] = training_info(est, X[finite], ends.min(), ends.max())
        if finite.sum() >= FOLDS:
            out[key].update(calibrate(out_of_fold_margins(est, X[finite]), est))
    return out


def pack_from_estimators(
    models: Mapping[Key, Any],
    folder: str | os.PathLike[str],
    train_windows: pd.DataFrame | None = None,
    *,
    version: str | None = None,
    features: Sequence[str] = FEATURES,
    window_minutes: int = 5,
) -> dict[str, Any]:
    """Bring your own fitted scikit-learn detectors: write ``{(device, sensor): estimator}`` as a pack in one call.

    When ``train_windows`` (feature rows: device, sensor, window_end and ``features``) is given, each model's
    training range, size, score quantiles and alert thresholds are computed from its rows (severity needs the
    quantiles; without rows a model's threshold is 0.0, the detector's own boundary).
    """
    training = training_summary(models, train_windows, features) if train_windows is not None else None
    return write_pack(models, folder, version=version, features=features,
                      window_minutes=window_minutes, training=training)


# ------------------------------------------------------------------------------------------------- load
@dataclasses.dataclass(frozen=True)
class SvmModel:
    """One one-class SVM as arrays: decision(x) = sum(dual_coef * K((x - mean) / scale, sv)) + intercept."""

    kernel: str
    sv: np.ndarray  # (n_sv, n_features), scaled space
    dual_coef: np.ndarray  # (n_sv,)
    intercept: float
    gamma: float
    scaler_mean: np.ndarray  # (n_features,)
    scaler_scale: np.ndarray  # (n_features,)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Reference (unbatched, libsvm-order) decision values for X (n, n_features), float64."""
        Xs = (np.asarray(X, dtype=np.float64) - self.scaler_mean) / self.scaler_scale
        if self.kernel == "linear":
            K = Xs @ self.sv.T
        else:
            K = np.exp(-self.gamma * ((Xs[:, None, :] - self.sv[None, :, :]) ** 2).sum(-1))
        return K @ self.dual_coef + self.intercept


class ModelPack:
    """A loaded, verified model pack.

    ``pack[(device, sensor)]`` is the model's table row as a dict; ``pack.model(key)`` the model itself;
    ``pack.table`` the columnar table as numpy arrays (what the engine uses); ``pack.training_table()`` a
    DataFrame of training ranges and score quantiles (what alert severity uses).
    """

    def __init__(self, manifest: dict[str, Any], table: dict[str, np.ndarray],
                 svm_shards: list[dict[str, np.ndarray]], others: list[Any]):
        """From a checked manifest, its table (:func:`_check_manifest`), the SVM shards' arrays (in shard order)
        and the skops detectors; use :func:`load_pack`."""
        self.manifest = _without_model_columns(manifest)
        self.version: str = manifest["version"]
        self.features: tuple[str, ...] = tuple(manifest["features"])
        self.window_minutes: int = manifest["window_minutes"]
        self.svm_shards = svm_shards
        self.others: list[Any] = others
        self.table = table
        ch = manifest.get("change")
        #: (change-z models, len(change.PARAMS)) float64 in table order, and what their features need
        self.change_params: np.ndarray | None = table.pop("change_params")  # checked with the table
        self.announce_sensors: tuple[str, ...] = tuple(ch["announce_sensors"]) if ch else ()
        self.context_windows: int = ch["context_windows"] if ch else change.CONTEXT_WINDOWS
        self.settle_windows: int = ch["settle_windows"] if ch else change.SETTLE_WINDOWS
        nf_svm = np.where(table["is_svm"], table["n_features"], 0)
        sv_count = table["sv_count"]
        # offsets into the concatenated SVM arrays (cumulative over table order; 0 for skops rows)
        for name, size in (("sv_offset", sv_count * nf_svm), ("coef_offset", sv_count), ("feature_offset", nf_svm)):
            offset = np.zeros(len(size), dtype=np.int64)
            np.cumsum(size[:-1], out=offset[1:])
            table[name] = offset
        # per shard: its first SVM and where its arrays start in the SVMs' concatenation (what the offsets count)
        self._shard_start = {name: np.cumsum([0] + [len(sh[name]) for sh in svm_shards[:-1]], dtype=np.int64)
                             for name in ("intercept", "sv", "dual_coef", "scaler_mean")}
        self._index: dict[Key, int] | None = None
        self.cache: dict[str, Any] = {}  # the engine's derived structures (built on first use)
        self.manifest_sha256: str | None = None  # the SHA-256 of manifest.json (set by load_pack)

    @property
    def index(self) -> dict[Key, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(zip(self.table["device"], self.table["sensor"], strict=True))}
        return self._index

    def __len__(self) -> int:
        return int(self.manifest["models"]["count"])

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __getitem__(self, key: Key) -> dict[str, Any]:
        """The model's table row: device, sensor, algorithm, n_features, scaled, store, index, sv_count,
        train_from, train_until, train_size, threshold, threshold_strong and score_quantiles ({name: value};
        None when unknown)."""
        i = self.index[key]
        t = self.table
        row: dict[str, Any] = {f: t[f][i].item() if isinstance(t[f][i], np.generic) else t[f][i]
                               for f in (*TABLE_FIELDS[:-2], *THRESHOLDS, "index")}
        for f in ("n_features", "train_size"):
            row[f] = None if row[f] < 0 else row[f]
        q = {name: float(t[f"score_{name}"][i]) for name, _ in QUANTILES}
        row["score_quantiles"] = None if all(np.isnan(v) for v in q.values()) else {
            name: None if np.isnan(v) else v for name, v in q.items()}
        return row

    def keys(self) -> list[Key]:
        """Model keys (device, sensor), sorted."""
        return list(zip(self.table["device"].tolist(), self.table["sensor"].tolist(), strict=True))

    def index_of(self, key: Key) -> int:
        """Row of a model in the table; KeyError when the pack has none for ``key``."""
        return self.index[key]

    def model(self, key: Key) -> Any:
        """The model for ``key``: an :class:`SvmModel` (array-stored SVMs), a fitted :class:`change.ChangeDetector`
        or the loaded scikit-learn estimator."""
        i = self.index[key]
        t = self.table
        if t["is_change"][i]:
            det = change.ChangeDetector()
            det.params_, det.n_features_in_ = self.change_params[int(t["index"][i])].copy(), len(change.FEATURES)
            return det
        if not t["is_svm"][i]:
            return self.others[int(t["index"][i])]
        f, n, row = int(t["n_features"][i]), int(t["sv_count"][i]), int(t["index"][i])
        s = int(np.searchsorted(self._shard_start["intercept"], row, side="right")) - 1
        shard, start = self.svm_shards[s], {name: int(v[s]) for name, v in self._shard_start.items()}
        so, co = int(t["sv_offset"][i]) - start["sv"], int(t["coef_offset"][i]) - start["dual_coef"]
        fo, row = int(t["feature_offset"][i]) - start["scaler_mean"], row - start["intercept"]
        return SvmModel(
            kernel=str(t["algorithm"][i]).removeprefix("ocsvm-"),
            sv=shard["sv"][so : so + n * f].reshape(n, f),
            dual_coef=shard["dual_coef"][co : co + n],
            intercept=float(shard["intercept"][row]),
            gamma=float(shard["gamma"][row]),
            scaler_mean=shard["scaler_mean"][fo : fo + f],
            scaler_scale=shard["scaler_scale"][fo : fo + f],
        )

    def training_table(self) -> pd.DataFrame:
        """One row per model: device, sensor, algorithm, train_from, train_until, train_size, score_<q>,
        threshold, threshold_strong."""
        return _training_frame(self.table)

    def __repr__(self) -> str:
        return f"ModelPack(version={self.version!r}, models={len(self)}, features={self.features})"


def _training_frame(t: Mapping[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({
        "device": t["device"], "sensor": t["sensor"], "algorithm": t["algorithm"],
        "train_from": pd.to_datetime(pd.Series(t["train_from"], dtype=object), utc=True),
        "train_until": pd.to_datetime(pd.Series(t["train_until"], dtype=object), utc=True),
        "train_size": pd.array(np.where(t["train_size"] < 0, None, t["train_size"]), dtype="Int64"),
        **{f"score_{name}": t[f"score_{name}"] for name, _ in QUANTILES},
        **{k: t[k] for k in THRESHOLDS},
    })


@dataclasses.dataclass(frozen=True)
class Lookback:
    """What a run's export sends along before its range, as context rows (read for features, never scored):
    every pair's ``windows`` windows before it, and the ``announce`` sensors' ``announce_windows`` (more: a change
    they announced that long before still settles their device's windows in the range)."""

    windows: int = 0
    announce: tuple[str, ...] = ()
    announce_windows: int = 0


def lookback(manifest: Any) -> Lookback:
    """The context a pack's features read (none without change-z models): every pair's ``context_windows``
    (the baseline), the announce sensors' ``context_windows + settle_windows``."""
    ch = manifest.get("change") if isinstance(manifest, dict) else None
    if not isinstance(ch, dict):
        return Lookback()
    return Lookback(windows=int(ch["context_windows"]), announce=tuple(ch["announce_sensors"]),
                    announce_windows=int(ch["context_windows"]) + int(ch["settle_windows"]))


def manifest_training_table(manifest: Any) -> pd.DataFrame:
    """:meth:`ModelPack.training_table` from a manifest alone (checked as :func:`load_pack` checks it, no array
    file read): what alert severity needs without loading the models."""
    _check_header(manifest)
    return _training_frame(_check_manifest(manifest))


def _fail(msg: str) -> PackError:
    return PackError(f"{MANIFEST}: {msg}")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _types(values: list[Any]) -> set[type]:
    return set(map(type, values))


def _strings(values: list[Any]) -> bool:
    """True when every value is a non-empty str (``str.join`` refuses anything else, in C)."""
    try:
        "".join(values)
    except TypeError:
        return False
    return "" not in values


def _ints(values: list[Any], nullable: bool = False) -> np.ndarray | None:
    """Non-negative ints as int64 (None as -1 when ``nullable``), or None if any value is not an int (bools
    included), is negative or does not fit in int64."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    nulls = values.count(None) if nullable else 0
    if nulls:
        values = [-1 if v is None else v for v in values]
    if not _types(values) <= {int}:
        return None
    out = np.array(values)
    if out.dtype != np.int64 or out.ndim != 1 or int((out < 0).sum()) != nulls:
        return None
    return out


def _check_header(m: Any) -> None:
    """Validate the manifest's top-level fields and its file list (names, checksums, sizes): run before any
    other file of the pack is opened."""
    if not isinstance(m, dict):
        raise _fail("not a JSON object")
    if m.get("format") != FORMAT:
        raise _fail(f"'format' must be {FORMAT!r}")
    for k, typ in (("format_version", int), ("version", str), ("created", str), ("features", list),
                   ("window_minutes", int), ("files", dict), ("models", dict)):
        v = m.get(k)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise _fail(f"field {k!r} missing or not {typ.__name__}")
    if m["format_version"] in (1, 2):
        raise _fail(f"format_version {m['format_version']} has no calibrated alert thresholds; this code reads "
                    f"format {FORMAT_VERSION}: retrain the fleet (`fleetscore train --activate`) or write the pack "
                    "again with pack_from_estimators")
    if m["format_version"] != FORMAT_VERSION:
        raise _fail(f"unsupported format_version {m['format_version']!r} (this code reads {FORMAT_VERSION}; "
                    "write the pack again with this version's `fleetscore train` or pack_from_estimators)")
    if not _NAME_RE.match(m["version"]):
        raise _fail(f"bad version {m['version']!r}")
    if not m["features"] or not all(isinstance(f, str) and f for f in m["features"]):
        raise _fail("features must be a non-empty list of strings")
    if m["window_minutes"] < 1:
        raise _fail("window_minutes must be positive")
    for name, meta in m["files"].items():
        if name != SKOPS_FILE and not _SHARD_RE.match(name):
            raise _fail(f"unexpected file {name!r}")
        if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str)
                or not _SHA_RE.match(meta["sha256"]) or not _is_int(meta.get("bytes")) or meta["bytes"] < 0):
            raise _fail(f"file {name!r} needs a sha256 and a byte size")


def _check_manifest(m: dict[str, Any]) -> dict[str, np.ndarray]:
    """Validate the per-model table and the 'svm'/'skops' sections against it (after :func:`_check_header`);
    return the table as arrays of ``count``: the fields (n_features and train_size -1 where null, quantiles as
    ``score_<name>`` float64), plus ``is_svm``, ``is_change`` and ``index`` (position in the model's store), and
    ``change_params``: the change-z models' (models, len(change.PARAMS)) parameters, or None without any."""
    svm, sk = _check_sections(m)
    table = _table_columns(m["models"])
    is_svm, is_change, index = _store_numbers(table, svm, sk, m.get("change"))
    if is_svm.any():
        _check_svm_rows(table, is_svm, svm["shards"])
    return {**table, "is_svm": is_svm, "is_change": is_change, "index": index,
            "change_params": _check_change_section(m.get("change"), table)}


def _without_model_columns(m: dict[str, Any]) -> dict[str, Any]:
    """The manifest less what a loaded pack holds as its table: the per-model columns and the change-z parameters
    (at a million models ~90 MB per process that loads the pack)."""
    out = {**m, "models": {"count": m["models"]["count"]}}
    if isinstance(m.get("change"), dict):
        out["change"] = {k: v for k, v in m["change"].items() if k != "params"}
    return out


def _check_sections(m: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The manifest's 'svm' and 'skops' sections, checked against its file list."""
    svm, sk = m.get("svm"), m.get("skops")
    shard_files = {name for name in m["files"] if name != SKOPS_FILE}
    if (sk is None) != (SKOPS_FILE not in m["files"]) or (svm is None) != (not shard_files):
        raise _fail("'svm'/'skops' sections do not match 'files'")
    if svm is not None:
        _check_svm_section(svm, shard_files)
    if sk is not None and (not isinstance(sk, dict) or not _is_int(sk.get("models")) or sk["models"] < 1):
        raise _fail("malformed 'skops' section")
    return svm, sk


def _check_svm_section(svm: Any, shard_files: set[str]) -> None:
    """The 'svm' section: a model count and every shard file once, in name order, with its arrays' sizes."""
    shards = svm.get("shards") if isinstance(svm, dict) else None
    if (not isinstance(shards, list) or not _is_int(svm.get("models")) or svm["models"] < 1 or not shards
            or not all(isinstance(sh, dict) and set(sh) == {"file", "models", "arrays"} for sh in shards)):
        raise _fail("malformed 'svm' section")
    if [sh["file"] for sh in shards] != sorted(shard_files) or len(shards) != len(shard_files):
        raise _fail("'svm.shards' must list every svm-NNN.npz file once, in name order")
    for sh in shards:
        if not _is_int(sh["models"]) or sh["models"] < 1 or not isinstance(sh["arrays"], dict) or set(
                sh["arrays"]) != set(SVM_ARRAYS):
            raise _fail(f"malformed shard {sh['file']!r}")
        for k, shape in sh["arrays"].items():
            if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0]) and shape[0] >= 0):
                raise _fail(f"bad shape for array {k!r} of {sh['file']!r}")
    if sum(sh["models"] for sh in shards) != svm["models"]:
        raise _fail("the shards' model counts do not add up to svm.models")


def _table_columns(t: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-model table (``manifest["models"]``) as checked arrays of ``count``, sorted by (device, sensor)."""
    n = t.get("count")
    if not _is_int(n) or n < 0:
        raise _fail("models.count must be a non-negative integer")
    if set(t) != {*TABLE_FIELDS, "count"}:
        raise _fail(f"models must hold exactly {sorted({*TABLE_FIELDS, 'count'})}")
    table = {
        "device": _str_column(t, "device", n, per_model=True),
        "sensor": _shared_strings(_str_column(t, "sensor", n, per_model=True)),
        "algorithm": _str_column(t, "algorithm", n),
        "store": _str_column(t, "store", n),
        "n_features": _int_column(t, "n_features", n, nullable=True),
        "scaled": _bool_column(t, "scaled", n),
        "sv_count": _int_column(t, "sv_count", n),
        "train_from": _str_column(t, "train_from", n, nullable=True),
        "train_until": _str_column(t, "train_until", n, nullable=True),
        "train_size": _int_column(t, "train_size", n, nullable=True),
        **_quantile_columns(t["score_quantiles"], n),
        **_threshold_columns(t["thresholds"], n),
    }
    nf = table["n_features"]
    if ((nf == 0) | (nf > 4096)).any():
        raise _fail("models.n_features must be positive integers (at most 4096) or nulls")
    _check_ids(t["device"], "models.device")
    _check_ids(t["sensor"], "models.sensor")
    keys = list(zip(t["device"], t["sensor"], strict=True))
    if not all(map(operator.lt, keys, keys[1:])):
        raise _fail("models must be sorted by (device, sensor) without duplicates")
    return table


def _check_ids(values: list[str], label: str) -> None:
    """Every value a device/sensor id (:data:`contract.ID_PATTERN`, what ingest accepts): a key such as
    ``../../x`` can name no pair the fleet sends, so a pack holding one is refused, not silently unused."""
    lines = "\n".join(values) + "\n"
    if not values or (lines.count("\n") == len(values) and _IDS_RE.fullmatch(lines)):
        return
    bad = next(v for v in values if not ID_PATTERN.fullmatch(v))
    shown = bad if len(bad) <= 80 else bad[:77] + "..."
    raise _fail(f"{label} {shown!r} is not a device/sensor id (1-64 characters of [A-Za-z0-9._:-])")


def _store_numbers(table: Mapping[str, np.ndarray], svm: dict[str, Any] | None, sk: dict[str, Any] | None,
                   ch: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_svm, is_change, index): whether each model is an array-stored SVM or a change-z model, and its number in
    its store (each store numbered in table order), checked against the sections' model counts."""
    store = table["store"]
    if not np.isin(store, STORES).all():
        raise _fail(f"models.store must be one of {STORES}")
    index = np.empty(len(store), dtype=np.int64)
    for name, section in (("svm", svm), ("skops", sk), ("change", ch)):
        mine = store == name
        if int(mine.sum()) != (section["models"] if section else 0):
            raise _fail("model counts per store do not match the 'svm'/'skops'/'change' sections")
        index[mine] = np.arange(int(mine.sum()))
    return store == "svm", store == "change", index


def _check_change_section(ch: Any, table: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The 'change' section's parameters as a (models, len(change.PARAMS)) float64 array (None without one); the
    change-z rows' algorithm and feature count."""
    if ch is None:
        return None
    keys = {"models", "version", "announce_sensors", "context_windows", "settle_windows", "params"}
    if isinstance(ch, dict) and "version" not in ch:
        raise _fail(f"its change-z models were written before version {change.VERSION} of the score (the spread "
                    "counted above its usual level only, balanced scales), and their thresholds were calibrated "
                    "for the earlier one: retrain the fleet (`fleetscore train --activate`)")
    if isinstance(ch, dict) and _is_int(ch["version"]) and ch["version"] != change.VERSION:
        raise _fail(f"its change-z models are version {ch['version']} of the score and this fleetscore reads version "
                    f"{change.VERSION}: retrain the fleet with this version (`fleetscore train --activate`)")
    if (not isinstance(ch, dict) or set(ch) != keys or not _is_int(ch["version"]) or not _is_int(ch["models"])
            or ch["models"] < 1
            or not isinstance(ch["announce_sensors"], list) or not _strings(ch["announce_sensors"])
            or not all(ID_PATTERN.fullmatch(a) for a in ch["announce_sensors"])
            or not all(_is_int(ch[k]) and 1 <= ch[k] <= 10_000 for k in ("context_windows", "settle_windows"))
            or not isinstance(ch["params"], dict) or set(ch["params"]) != set(change.PARAMS)):
        raise _fail("malformed 'change' section")
    params = np.column_stack([_base64_float64(ch["params"][k], ch["models"], f"change.params.{k}")
                              for k in change.PARAMS])
    positive = [change.PARAMS.index(k) for k in ("change_scale", "std_floor", "log_std_scale")]
    if (not np.isfinite(params).all() or (params[:, positive] <= 0).any()
            or (params[:, change.PARAMS.index("unchanged_max")] < 0).any()):
        raise _fail("change.params must be finite, with positive scales and floor and unchanged_max >= 0")
    rows = table["store"] == "change"
    if (table["algorithm"][rows] != "change-z").any() or (table["n_features"][rows] != len(change.FEATURES)).any():
        raise _fail(f"change-z models must have algorithm 'change-z' and {len(change.FEATURES)} features")
    return params


def _check_svm_rows(table: Mapping[str, np.ndarray], is_svm: np.ndarray, shards: list[dict[str, Any]]) -> None:
    """The SVM models' rows: their algorithm, and the array sizes each shard must hold for its models."""
    if not np.isin(table["algorithm"][is_svm], ["ocsvm-rbf", "ocsvm-linear"]).all():
        raise _fail("only ocsvm-rbf / ocsvm-linear models can be stored as SVM arrays")
    nf_svm, cnt = table["n_features"][is_svm], table["sv_count"][is_svm]
    if (nf_svm < 1).any() or (cnt < 1).any():
        raise _fail("SVM models need n_features >= 1 and sv_count >= 1")
    bounds = np.cumsum([0] + [sh["models"] for sh in shards])
    for sh, lo, hi in zip(shards, bounds[:-1], bounds[1:], strict=True):
        f, c = nf_svm[lo:hi], cnt[lo:hi]
        sizes = {"sv": int(f @ c), "dual_coef": int(c.sum()), "scaler_mean": int(f.sum()),
                 "scaler_scale": int(f.sum()), "intercept": int(hi - lo), "gamma": int(hi - lo)}
        for k, size in sizes.items():
            if sh["arrays"][k] != [size]:
                raise _fail(f"array {k!r} of {sh['file']!r} is declared {sh['arrays'][k]}, the table needs [{size}]")


def _column(t: dict[str, Any], f: str, n: int, per_model: bool) -> tuple[list[Any] | None, Any]:
    """(the list, None) when field ``f`` holds one value per model, (None, the value) when it holds one value
    for all models (never for ``per_model`` fields)."""
    v = t[f]
    if type(v) is list:
        if len(v) != n:
            raise _fail(f"models.{f} must be a list of {n} values" + ("" if per_model else " or one value"))
        return v, None
    if per_model:
        raise _fail(f"models.{f} must be a list of {n} values")
    return None, v


def _str_column(t: dict[str, Any], f: str, n: int, *, nullable: bool = False, per_model: bool = False
                ) -> np.ndarray:
    """A column of non-empty strings (None allowed when ``nullable``) as an object array of ``n``."""
    col, one = _column(t, f, n, per_model)
    if col is None:
        if not ((type(one) is str and one) or (nullable and one is None)):
            raise _fail(f"models.{f} must be a non-empty string" + (" or null" if nullable else ""))
        return np.broadcast_to(np.array(one, dtype=object), n)  # read-only, no copy
    nulls = col.count(None) if nullable else 0
    if nulls < n and not _strings(col if not nulls else [v for v in col if v is not None]):
        raise _fail(f"models.{f} must be non-empty strings" + (" or nulls" if nullable else ""))
    return np.array(col, dtype=object)


def _shared_strings(column: np.ndarray) -> np.ndarray:
    """An object column with one str object per distinct value (JSON gives every occurrence its own: a sensor
    name a million times is ~50 MB, once it is a few bytes)."""
    first: dict[str, str] = {}
    return np.array([first.setdefault(v, v) for v in column], dtype=object)


def _int_column(t: dict[str, Any], f: str, n: int, *, nullable: bool = False) -> np.ndarray:
    """A column of non-negative ints (None allowed when ``nullable``, stored as -1) as int64 of ``n``."""
    col, one = _column(t, f, n, False)
    if col is None:
        ok = (_is_int(one) and 0 <= one < 2**63) or (nullable and one is None)
        out = np.full(n, -1 if one is None else one, dtype=np.int64) if ok else None
    else:
        out = _ints(col, nullable)
    if out is None:
        raise _fail(f"models.{f} must be non-negative integers" + (" or nulls" if nullable else ""))
    return out


def _bool_column(t: dict[str, Any], f: str, n: int) -> np.ndarray:
    col, one = _column(t, f, n, False)
    if col is None:
        if type(one) is not bool:
            raise _fail(f"models.{f} must be booleans")
        return np.full(n, one, dtype=bool)
    out = np.array(col) if col else np.zeros(0, dtype=bool)
    if out.dtype != bool or out.ndim != 1:
        raise _fail(f"models.{f} must be booleans")
    return out


def _quantile_columns(q: Any, n: int) -> dict[str, np.ndarray]:
    """``score_<name>`` float64 columns (NaN where unknown) from the manifest's score_quantiles: null (unknown
    for every model) or {name: base64 of ``n`` little-endian float64}."""
    names = [name for name, _ in QUANTILES]
    if q is None:
        return {f"score_{name}": np.full(n, np.nan) for name in names}
    if not isinstance(q, dict) or set(q) != set(names):
        raise _fail(f"models.score_quantiles must be null or hold {names}")
    out = {}
    for name in names:
        try:
            if type(q[name]) is not str:
                raise TypeError("not a string")
            raw = base64.b64decode(q[name], validate=True)
        except (TypeError, ValueError) as exc:
            raise _fail(f"models.score_quantiles.{name} must be base64 of {n} float64 ({exc})") from None
        if len(raw) != 8 * n:
            raise _fail(f"models.score_quantiles.{name} holds {len(raw)} bytes, {n} float64 need {8 * n}")
        col = np.frombuffer(raw, dtype="<f8")
        if np.isinf(col).any():
            raise _fail(f"models.score_quantiles.{name} must be finite or NaN")
        out[f"score_{name}"] = col
    return out


def _base64_float64(value: Any, n: int, label: str) -> np.ndarray:
    """``n`` little-endian float64 from a base64 string (``label`` names the field in errors)."""
    try:
        if type(value) is not str:
            raise TypeError("not a string")
        raw = base64.b64decode(value, validate=True)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{label} must be base64 of {n} float64 ({exc})") from None
    if len(raw) != 8 * n:
        raise _fail(f"{label} holds {len(raw)} bytes, {n} float64 need {8 * n}")
    return np.frombuffer(raw, dtype="<f8")


def _threshold_columns(t: Any, n: int) -> dict[str, np.ndarray]:
    """The :data:`THRESHOLDS` float64 columns from the manifest's ``thresholds``: {name: base64 of ``n``
    little-endian float64}; ``threshold`` finite, ``threshold_strong`` finite or NaN."""
    if not isinstance(t, dict) or set(t) != set(THRESHOLDS):
        raise _fail(f"models.thresholds must hold {list(THRESHOLDS)}")
    out = {k: _base64_float64(t[k], n, f"models.thresholds.{k}") for k in THRESHOLDS}
    if not np.isfinite(out["threshold"]).all():
        raise _fail("models.thresholds.threshold must be finite")
    if np.isinf(out["threshold_strong"]).any():
        raise _fail("models.thresholds.threshold_strong must be finite or NaN")
    return out


def _npz_float64(data: Buffer, label: str) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz of 1-D little-endian float64 arrays, as read-only views of ``data``
    (``label`` names the file in errors).

    Called on bytes whose SHA-256 was verified. Only the .npy headers are parsed (numpy's literal-only header
    parser); any other dtype (object arrays, i.e. pickles, included), shape, order or compression is refused,
    so nothing is ever unpickled - the same guarantee as ``np.load(allow_pickle=False)`` without copying the
    arrays or re-checking the zip CRCs the SHA-256 already covers."""
    fmt = np.lib.format
    try:
        members = _zip_members(data, label)
        out: dict[str, np.ndarray] = {}
        for name, (method, start, size) in members.items():
            if not name.endswith(".npy") or method != zipfile.ZIP_STORED or name[:-4] in out:
                raise PackError(f"{label}: member {name!r} is not a stored .npy array")
            hdr = io.BytesIO(bytes(data[start:start + min(size, 1 << 16)]))
            version = fmt.read_magic(hdr)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(hdr)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(hdr)
            else:
                raise PackError(f"{label}: unsupported .npy version {version} in {name!r}")
            if dtype != np.dtype("<f8") or len(shape) != 1 or fortran:
                raise PackError(f"{label}: {name!r} is {dtype}{shape}; only 1-D float64 arrays are accepted")
            offset = start + hdr.tell()
            if offset + shape[0] * 8 != start + size:
                raise PackError(f"{label}: {name!r} has the wrong size for {shape}")
            out[name[:-4]] = np.frombuffer(data, dtype="<f8", count=shape[0], offset=offset)
        return out
    except PackError:
        raise
    except Exception as exc:  # a malformed zip or .npy header
        raise PackError(f"{label}: not a readable .npz of float64 arrays ({exc})") from exc


def _zip_members(data: Buffer, label: str) -> dict[str, tuple[int, int, int]]:
    """{name: (compression method, data offset, size)} from a zip's central directory, without copying data
    (no zip64: a pack's array file stays far below 4 GiB)."""
    eocd = bytes(data[-(22 + 65535):]).rfind(b"PK\x05\x06")
    if eocd < 0:
        raise PackError(f"{label}: no zip end-of-directory record")
    eocd += max(0, len(data) - (22 + 65535))
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    if count == 0xFFFF or cd_offset == 0xFFFFFFFF or cd_offset + cd_size > eocd:
        raise PackError(f"{label}: zip64 or a damaged central directory")
    members: dict[str, tuple[int, int, int]] = {}
    pos = cd_offset
    for _ in range(count):
        sig = struct.unpack_from("<I", data, pos)[0]
        method = struct.unpack_from("<H", data, pos + 10)[0]
        comp, size, n_name, n_extra, n_comment = struct.unpack_from("<IIHHH", data, pos + 20)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        if sig != 0x02014B50 or comp != size:
            raise PackError(f"{label}: bad central directory entry")
        name = bytes(data[pos + 46:pos + 46 + n_name]).decode("utf-8")
        if struct.unpack_from("<I", data, local)[0] != 0x04034B50:
            raise PackError(f"{label}: bad local header for {name!r}")
        l_name, l_extra = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + l_name + l_extra
        if start + size > cd_offset:
            raise PackError(f"{label}: member {name!r} overruns the archive")
        members[name] = (method, start, size)
        pos += 46 + n_name + n_extra + n_comment
    return members


def _schema_types(schema: Any) -> set[str]:
    out: set[str] = set()
    stack = [schema]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "__class__" in o:
                out.add(f"{o.get('__module__', '')}.{o['__class__']}")
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return out


def _check_skops_types(data: bytes, name: str) -> None:
    """Refuse a skops file naming any type outside :data:`TRUSTED_TYPES` (read from its schema, not loaded)."""
    import skops.io as sio  # loaded only for packs that hold skops detectors

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            schema = json.loads(z.read("schema.json"))
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # any parse failure is a bad pack
        raise PackError(f"{name}: not a readable skops file ({exc})") from exc
    bad = sorted((_schema_types(schema) | untrusted) - set(TRUSTED_TYPES))
    if bad:
        raise PackError(f"{name}: untrusted types {bad}")


def _map_verified(folder: Path, name: str, meta: Mapping[str, Any]) -> Buffer:
    """The file mapped read-only, after its size and SHA-256 were checked against the manifest (runs in a
    worker thread: hashlib releases the GIL, so files hash in parallel)."""
    path = folder / name
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data: Buffer = b""
            if size == meta["bytes"] and size:
                try:
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except OSError:  # a filesystem that cannot map files: read it instead
                    data = f.read()
    except FileNotFoundError:
        raise PackError(f"{name}: missing from pack {folder}") from None
    except OSError as exc:
        raise PackError(f"{name}: cannot be read ({exc})") from exc
    if size != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise PackError(f"{name}: SHA-256 or size mismatch (file tampered with or manifest wrong)")
    return data


def _verify_files(folder: Path, manifest: dict[str, Any]) -> tuple[dict[str, Buffer], dict[str, np.ndarray]]:
    """Every file of the pack, verified on a thread per core while this thread checks the per-model table;
    returns ({name: verified bytes}, the table). Raises the manifest's error first, then the first bad file's."""
    names = list(manifest["files"])
    workers = max(1, min(len(names), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="pack-verify") as pool:
        futures = [pool.submit(_map_verified, folder, name, manifest["files"][name]) for name in names]
        try:
            table = _check_manifest(manifest)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return {name: fut.result() for name, fut in zip(names, futures, strict=True)}, table


def manifest_sha256(raw: bytes) -> str:
    """The digest that pins a pack: the SHA-256 (64 lowercase hex digits) of its ``manifest.json`` bytes, which
    hold the SHA-256 of every other file."""
    return hashlib.sha256(raw).hexdigest()


def parse_manifest(raw: bytes, expected_sha256: str | None = None) -> dict[str, Any]:
    """A manifest from its bytes, its header checked (:func:`_check_header`); with ``expected_sha256`` (the digest
    pinned when the pack was activated) the bytes must have that SHA-256 first, so an edited manifest is refused."""
    if expected_sha256 is not None:
        if not isinstance(expected_sha256, str) or not _SHA_RE.match(expected_sha256):
            raise PackError(f"{MANIFEST}: the expected SHA-256 {expected_sha256!r} is not 64 lowercase hex digits")
        actual = manifest_sha256(raw)
        if actual != expected_sha256:
            raise PackError(f"{MANIFEST}: SHA-256 {actual} is not the {expected_sha256} pinned when the pack was "
                            "activated (the manifest was edited after activation)")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{MANIFEST}: not valid JSON ({exc})") from exc
    _check_header(manifest)
    return manifest


def verify_manifest(raw: bytes, expected_sha256: str | None = None) -> dict[str, Any]:
    """The manifest from its bytes, checked as :func:`load_pack` checks it before opening any array file: the
    pinned digest, the header, the per-model table (keys included) and its sections. What a run checks where it
    starts, from the manifest alone."""
    manifest = parse_manifest(raw, expected_sha256)
    _check_manifest(manifest)
    return manifest


def _read_manifest(folder: Path, expected_sha256: str | None = None) -> tuple[dict[str, Any], str]:
    """The pack's manifest (:func:`parse_manifest`) and its SHA-256."""
    try:
        raw = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise PackError(f"{MANIFEST}: missing from pack {folder}") from None
    except OSError as exc:
        raise PackError(f"{MANIFEST}: cannot be read ({exc})") from exc
    return parse_manifest(raw, expected_sha256), manifest_sha256(raw)


def _svm_shard(data: Buffer, shard: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A verified shard file's arrays, checked against its manifest entry: the arrays of :data:`SVM_ARRAYS` with
    the declared sizes, finite scalers and intercepts, non-zero scales and non-negative gammas."""
    name = shard["file"]
    arrays = _npz_float64(data, name)
    if sorted(arrays) != sorted(SVM_ARRAYS):
        raise PackError(f"{name}: arrays {sorted(arrays)} != {sorted(SVM_ARRAYS)}")
    for k, a in arrays.items():
        if [a.shape[0]] != shard["arrays"][k]:
            raise PackError(f"{name}: array {k!r} has {a.shape[0]} values, the manifest says {shard['arrays'][k]}")
    if not all(np.isfinite(arrays[k]).all() for k in ("scaler_mean", "scaler_scale", "intercept", "gamma")):
        raise PackError(f"{name}: arrays hold non-finite values")
    if (arrays["scaler_scale"] == 0).any() or (arrays["gamma"] < 0).any():
        raise PackError(f"{name}: zero scaler scale or negative gamma")
    return arrays


def _skops_detectors(data: bytes, count: int) -> list[Any]:
    """The verified skops file's ``count`` detectors, loaded with :data:`TRUSTED_TYPES` only."""
    import skops.io as sio  # loaded only for packs that hold skops detectors

    _check_skops_types(data, SKOPS_FILE)
    try:
        others = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise PackError(f"{SKOPS_FILE}: cannot be loaded ({exc})") from exc
    if not isinstance(others, list) or len(others) != count:
        raise PackError(f"{SKOPS_FILE}: expected a list of {count} detectors")
    if not all(hasattr(est, "decision_function") for est in others):
        raise PackError(f"{SKOPS_FILE}: every detector needs a decision_function")
    return others


def load_pack(folder: str | os.PathLike[str], expected_sha256: str | None = None) -> ModelPack:
    """Load and verify a pack folder: the manifest's own SHA-256 when ``expected_sha256`` is given (the digest
    ``models/CURRENT`` pinned), manifest shape, every file's SHA-256, array shapes, trusted types only."""
    folder = Path(folder)
    manifest, digest = _read_manifest(folder, expected_sha256)
    blobs, table = _verify_files(folder, manifest)
    shards = [_svm_shard(blobs[sh["file"]], sh) for sh in (manifest["svm"] or {}).get("shards", [])]
    others = _skops_detectors(bytes(blobs[SKOPS_FILE]), manifest["skops"]["models"]) if SKOPS_FILE in blobs else []
    pack = ModelPack(manifest, table, shards, others)
    pack.manifest_sha256 = digest
    return pack
