"""The model pack: one version of the whole fleet's models in one folder, loaded in three reads.

Layout::

    <folder>/manifest.json     format, version, created, features, window length, the per-model table
                               (columnar: key, algorithm, training range and size, training score quantiles)
                               and the SHA-256 and size of every other file
    <folder>/svm.npz           every one-class SVM (rbf, linear) as concatenated float64 arrays (no pickle)
    <folder>/detectors.skops   every other detector (one skops list), loaded with an explicit trusted list

``load_pack`` checks the manifest's shape and every checksum before it parses any array, loads arrays with
``allow_pickle=False`` and skops with :data:`TRUSTED_TYPES` only; anything else raises :class:`PackError`.
Nothing from storage is ever unpickled.

The per-model table (``manifest["models"]``) is columnar (one JSON list per field, ``count`` rows, sorted by
(device, sensor)) so that a fleet of 10,000 models parses in milliseconds. Fields: ``device``, ``sensor``,
``algorithm`` ("ocsvm-rbf", "ocsvm-linear", "isolation-forest", "lof", "elliptic-envelope" or the class name),
``n_features`` (int or null), ``scaled`` (a StandardScaler in front), ``store`` ("svm" | "skops"), ``index`` (row
among the SVMs, in table order, or position in the skops list), ``sv_count`` (0 for skops), ``train_from``,
``train_until`` (ISO-8601 UTC or null), ``train_size`` (windows or null) and ``score_quantiles`` ({"q50": [...],
"q90": [...], "q95": [...], "q99": [...], "max": [...]}, null where unknown; score = -decision_function).

SVM arrays (float64, 1-D, SVM models concatenated in table order; offsets are cumulative sums of the table):

* ``sv``            support vectors in the scaled feature space, ``sv_count * n_features`` values per model
* ``dual_coef``     ``sv_count`` values per model
* ``scaler_mean``, ``scaler_scale``  ``n_features`` values per model (0 / 1 without a StandardScaler; applied
                    as ``(x - mean) / scale`` like scikit-learn)
* ``intercept``, ``gamma``  one per SVM (gamma is the fitted numeric ``_gamma``, 0 for the linear kernel).
  decision(x) = sum_j dual_coef_j * K(x_scaled, sv_j) + intercept.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import operator
import os
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    from .features import FEATURES
except ImportError:  # imported as a top-level module: the Azure ML code snapshot is this folder alone
    from features import FEATURES

FORMAT = "fleetscore-model-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SVM_FILE = "svm.npz"
SKOPS_FILE = "detectors.skops"
QUANTILES: tuple[tuple[str, float], ...] = (("q50", 0.5), ("q90", 0.9), ("q95", 0.95), ("q99", 0.99), ("max", 1.0))
SVM_ARRAYS = ("sv", "dual_coef", "scaler_mean", "scaler_scale", "intercept", "gamma")
SVM_KERNELS = ("rbf", "linear")
STORES = ("svm", "skops")
TABLE_FIELDS = ("device", "sensor", "algorithm", "n_features", "scaled", "store", "index", "sv_count",
                "train_from", "train_until", "train_size", "score_quantiles")

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
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same models give the same svm.npz bytes

Key = tuple[str, str]


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
    from sklearn.pipeline import Pipeline
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
    """The pack's algorithm name of an estimator ("ocsvm-rbf", "isolation-forest", ...)."""
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
def write_pack(
    models: Mapping[Key, Any],
    folder: str | os.PathLike[str],
    *,
    version: str | None = None,
    features: Sequence[str] = FEATURES,
    window_minutes: int = 5,
    training: Mapping[Key, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write fitted detectors as one pack into ``folder``; return the manifest.

    ``models``: {(device, sensor): fitted estimator}: a OneClassSVM (rbf or linear; stored as arrays), an
    IsolationForest, LocalOutlierFactor(novelty=True), EllipticEnvelope or other OneClassSVM (stored with skops),
    each bare or behind a StandardScaler in a Pipeline. ``training``: per key ``from``/``until`` (timestamps),
    ``size`` (windows) and ``score_quantiles`` (see :func:`score_quantiles`); missing keys mean unknown.
    """
    from sklearn.utils.validation import check_is_fitted

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{folder / MANIFEST} exists; a pack version is immutable")
    features = [str(f) for f in features]
    if not features:
        raise ValueError("features must not be empty")
    training = training or {}
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)

    keys = sorted(((str(k[0]), str(k[1])), k) for k in models)
    if len({k for k, _ in keys}) != len(keys):
        raise ValueError("two models map to the same (device, sensor) once turned into strings")
    table: dict[str, list[Any]] = {f: [] for f in TABLE_FIELDS if f != "score_quantiles"}
    quantiles: dict[str, list[float | None]] = {name: [] for name, _ in QUANTILES}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SVM_ARRAYS}
    others: list[Any] = []

    for (device, sensor), original_key in keys:
        est = models[original_key]
        scaler, det = split_pipeline(est)
        check_is_fitted(det)
        if not hasattr(est, "decision_function"):
            raise ValueError(f"{(device, sensor)}: {type(det).__name__} has no decision_function "
                             "(LocalOutlierFactor needs novelty=True)")
        table["device"].append(device)
        table["sensor"].append(sensor)
        table["algorithm"].append(algorithm_name(est))
        table["scaled"].append(scaler is not None)
        if is_fast_svm(est):
            sv = np.ascontiguousarray(det.support_vectors_, dtype=np.float64)
            coef = np.ascontiguousarray(det.dual_coef_, dtype=np.float64).reshape(-1)
            n_sv, n_feat = sv.shape
            if coef.shape != (n_sv,) or n_sv < 1:
                raise ValueError(f"{(device, sensor)}: dual_coef_ {det.dual_coef_.shape} vs support vectors {sv.shape}")
            mean, scale = np.zeros(n_feat), np.ones(n_feat)
            if scaler is not None:
                if scaler.with_mean:
                    mean = np.asarray(scaler.mean_, dtype=np.float64)
                if scaler.with_std:
                    scale = np.asarray(scaler.scale_, dtype=np.float64)
            parts["sv"].append(sv.reshape(-1))
            parts["dual_coef"].append(coef)
            parts["scaler_mean"].append(mean)
            parts["scaler_scale"].append(scale)
            parts["intercept"].append(np.asarray([det.intercept_[0]], dtype=np.float64))
            parts["gamma"].append(np.asarray([det._gamma if det.kernel == "rbf" else 0.0], dtype=np.float64))
            table["store"].append("svm")
            table["index"].append(len(parts["intercept"]) - 1)
            table["sv_count"].append(int(n_sv))
            table["n_features"].append(int(n_feat))
        else:
            n_feat = getattr(est, "n_features_in_", None)
            if n_feat is None:
                n_feat = getattr(det, "n_features_in_", None)
            table["store"].append("skops")
            table["index"].append(len(others))
            table["sv_count"].append(0)
            table["n_features"].append(int(n_feat) if n_feat is not None else None)
            others.append(est)
        t = training.get(original_key) or training.get((device, sensor)) or {}
        table["train_from"].append(_iso(t.get("from")))
        table["train_until"].append(_iso(t.get("until")))
        table["train_size"].append(int(t["size"]) if t.get("size") is not None else None)
        q = t.get("score_quantiles") or {}
        for name, _ in QUANTILES:
            v = q.get(name)
            quantiles[name].append(float(v) if v is not None and np.isfinite(v) else None)

    files: dict[str, dict[str, Any]] = {}
    svm_meta: dict[str, Any] | None = None
    if parts["intercept"]:
        arrays = {k: np.concatenate(v).astype(np.float64, copy=False) for k, v in parts.items()}
        data = _npz_bytes(arrays)
        _atomic_write(folder / SVM_FILE, data)
        files[SVM_FILE] = {"sha256": _sha256(data), "bytes": len(data)}
        svm_meta = {"file": SVM_FILE, "models": len(parts["intercept"]),
                    "arrays": {k: [int(v.shape[0])] for k, v in arrays.items()}}
    skops_meta: dict[str, Any] | None = None
    if others:
        import skops.io as sio

        data = sio.dumps(others)
        _check_skops_types(data, SKOPS_FILE)  # never write a file we would refuse to load
        _atomic_write(folder / SKOPS_FILE, data)
        files[SKOPS_FILE] = {"sha256": _sha256(data), "bytes": len(data)}
        skops_meta = {"file": SKOPS_FILE, "models": len(others)}

    if version is None:
        digest = hashlib.sha256("".join(f["sha256"] for f in files.values()).encode()).hexdigest()[:8]
        version = created.strftime("%Y%m%dT%H%M%SZ") + "-" + digest
    if not _NAME_RE.match(version):
        raise ValueError(f"pack version {version!r} must match {_NAME_RE.pattern}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": created.isoformat().replace("+00:00", "Z"),
        "features": features,
        "window_minutes": int(window_minutes),
        "files": files,
        "svm": svm_meta,
        "skops": skops_meta,
        "models": {"count": len(keys), **table, "score_quantiles": quantiles},
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
    """Per key: `training_info` over its rows of ``train_windows`` with finite features (as training uses)."""
    out: dict[Key, dict[str, Any]] = {}
    groups = train_windows.groupby(["device", "sensor"], sort=False, observed=True).indices
    for key, est in models.items():
        idx = groups.get((str(key[0]), str(key[1])))
        if idx is None or len(idx) == 0:
            continue
        rows = train_windows.iloc[idx]
        X = rows[list(features)].to_numpy(dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        ends = rows["window_end"][finite]
        out[key] = training_info(est, X[finite], ends.min(), ends.max())
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
    training range, size and score quantiles are computed from its rows (severity needs the quantiles).
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

    def __init__(self, manifest: dict[str, Any], svm: dict[str, np.ndarray] | None, others: list[Any]):
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.features: tuple[str, ...] = tuple(manifest["features"])
        self.window_minutes: int = manifest["window_minutes"]
        self.svm_arrays: dict[str, np.ndarray] = svm or {}
        self.others: list[Any] = others
        t = manifest["models"]
        n = t["count"]
        self.table: dict[str, np.ndarray] = {
            "device": np.asarray(t["device"], dtype=object),
            "sensor": np.asarray(t["sensor"], dtype=object),
            "algorithm": np.asarray(t["algorithm"], dtype=object),
            "n_features": np.asarray([-1 if v is None else v for v in t["n_features"]], dtype=np.int64),
            "scaled": np.asarray(t["scaled"], dtype=bool),
            "is_svm": np.asarray(t["store"], dtype=object) == "svm",
            "index": np.asarray(t["index"], dtype=np.int64),
            "sv_count": np.asarray(t["sv_count"], dtype=np.int64),
        }
        svm_rows = self.table["is_svm"]
        nf_svm = np.where(svm_rows, self.table["n_features"], 0)
        sv_count = self.table["sv_count"]
        # offsets into the concatenated SVM arrays (cumulative over table order; 0 for skops rows)
        self.table["sv_offset"] = np.concatenate([[0], np.cumsum(sv_count * nf_svm)[:-1]]).astype(np.int64)
        self.table["coef_offset"] = np.concatenate([[0], np.cumsum(sv_count)[:-1]]).astype(np.int64)
        self.table["feature_offset"] = np.concatenate([[0], np.cumsum(nf_svm)[:-1]]).astype(np.int64)
        if n == 0:
            for k in ("sv_offset", "coef_offset", "feature_offset"):
                self.table[k] = np.zeros(0, dtype=np.int64)
        self._index: dict[Key, int] | None = None
        self.cache: dict[str, Any] = {}  # the engine's derived structures (built on first use)

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
        i = self.index[key]
        t = self.manifest["models"]
        row = {f: t[f][i] for f in TABLE_FIELDS if f != "score_quantiles"}
        q = {name: t["score_quantiles"][name][i] for name, _ in QUANTILES}
        row["score_quantiles"] = None if all(v is None for v in q.values()) else q
        return row

    def keys(self) -> list[Key]:
        """Model keys (device, sensor), sorted."""
        return list(zip(self.table["device"].tolist(), self.table["sensor"].tolist(), strict=True))

    def index_of(self, key: Key) -> int:
        """Row of a model in the table; KeyError when the pack has none for ``key``."""
        return self.index[key]

    def model(self, key: Key) -> Any:
        """The model for ``key``: an :class:`SvmModel` (array-stored SVMs) or the loaded scikit-learn estimator."""
        i = self.index[key]
        t = self.table
        if not t["is_svm"][i]:
            return self.others[int(t["index"][i])]
        f, n, row = int(t["n_features"][i]), int(t["sv_count"][i]), int(t["index"][i])
        so, co, fo = int(t["sv_offset"][i]), int(t["coef_offset"][i]), int(t["feature_offset"][i])
        arr = self.svm_arrays
        return SvmModel(
            kernel=str(t["algorithm"][i]).removeprefix("ocsvm-"),
            sv=arr["sv"][so : so + n * f].reshape(n, f),
            dual_coef=arr["dual_coef"][co : co + n],
            intercept=float(arr["intercept"][row]),
            gamma=float(arr["gamma"][row]),
            scaler_mean=arr["scaler_mean"][fo : fo + f],
            scaler_scale=arr["scaler_scale"][fo : fo + f],
        )

    def training_table(self) -> pd.DataFrame:
        """One row per model: device, sensor, algorithm, train_from, train_until, train_size, score_<q>."""
        t = self.manifest["models"]
        return pd.DataFrame({
            "device": t["device"], "sensor": t["sensor"], "algorithm": t["algorithm"],
            "train_from": pd.to_datetime(pd.Series(t["train_from"], dtype=object), utc=True),
            "train_until": pd.to_datetime(pd.Series(t["train_until"], dtype=object), utc=True),
            "train_size": pd.array(t["train_size"], dtype="Int64"),
            **{f"score_{name}": np.asarray([np.nan if v is None else v for v in t["score_quantiles"][name]],
                                           dtype=np.float64) for name, _ in QUANTILES},
        })

    def __repr__(self) -> str:
        return f"ModelPack(version={self.version!r}, models={len(self)}, features={self.features})"


def _fail(msg: str) -> PackError:
    return PackError(f"{MANIFEST}: {msg}")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _types(values: list[Any]) -> set[type]:
    return set(map(type, values))


def _check_manifest(m: Any) -> None:
    """Validate the manifest's shape (types, names, counts, sizes) before anything else is read."""
    if not isinstance(m, dict):
        raise _fail("not a JSON object")
    if m.get("format") != FORMAT:
        raise _fail(f"'format' must be {FORMAT!r}")
    for k, typ in (("format_version", int), ("version", str), ("created", str), ("features", list),
                   ("window_minutes", int), ("files", dict), ("models", dict)):
        v = m.get(k)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise _fail(f"field {k!r} missing or not {typ.__name__}")
    if m["format_version"] != FORMAT_VERSION:
        raise _fail(f"unsupported format_version {m['format_version']!r}")
    if not _NAME_RE.match(m["version"]):
        raise _fail(f"bad version {m['version']!r}")
    if not m["features"] or not all(isinstance(f, str) and f for f in m["features"]):
        raise _fail("features must be a non-empty list of strings")
    if m["window_minutes"] < 1:
        raise _fail("window_minutes must be positive")
    for name, meta in m["files"].items():
        if name not in (SVM_FILE, SKOPS_FILE):
            raise _fail(f"unexpected file {name!r}")
        if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str)
                or not _SHA_RE.match(meta["sha256"]) or not _is_int(meta.get("bytes")) or meta["bytes"] < 0):
            raise _fail(f"file {name!r} needs a sha256 and a byte size")
    svm, sk = m.get("svm"), m.get("skops")
    if (svm is None) != (SVM_FILE not in m["files"]) or (sk is None) != (SKOPS_FILE not in m["files"]):
        raise _fail("'svm'/'skops' sections do not match 'files'")
    if svm is not None:
        if (not isinstance(svm, dict) or not _is_int(svm.get("models")) or svm["models"] < 1
                or not isinstance(svm.get("arrays"), dict) or set(svm["arrays"]) != set(SVM_ARRAYS)):
            raise _fail("malformed 'svm' section")
        for k, shape in svm["arrays"].items():
            if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0]) and shape[0] >= 0):
                raise _fail(f"bad shape for svm array {k!r}")
    if sk is not None and (not isinstance(sk, dict) or not _is_int(sk.get("models")) or sk["models"] < 1):
        raise _fail("malformed 'skops' section")

    t = m["models"]
    n = t.get("count")
    if not _is_int(n) or n < 0:
        raise _fail("models.count must be a non-negative integer")
    if set(t) != {*TABLE_FIELDS, "count"}:
        raise _fail(f"models must hold exactly {sorted({*TABLE_FIELDS, 'count'})}")
    for f in TABLE_FIELDS:
        if f == "score_quantiles":
            q = t[f]
            if not isinstance(q, dict) or set(q) != {name for name, _ in QUANTILES}:
                raise _fail(f"models.score_quantiles must hold {[name for name, _ in QUANTILES]}")
            for name, col in q.items():
                if not isinstance(col, list) or len(col) != n or not _types(col) <= {int, float, type(None)}:
                    raise _fail(f"models.score_quantiles.{name} must be {n} numbers or nulls")
        elif not isinstance(t[f], list) or len(t[f]) != n:
            raise _fail(f"models.{f} must be a list of {n} values")
    for f in ("device", "sensor", "algorithm"):
        if not _types(t[f]) <= {str} or "" in t[f]:
            raise _fail(f"models.{f} must be non-empty strings")
    for f in ("train_from", "train_until"):
        if not _types(t[f]) <= {str, type(None)}:
            raise _fail(f"models.{f} must be ISO-8601 strings or nulls")
    if not _types(t["scaled"]) <= {bool}:
        raise _fail("models.scaled must be booleans")
    if not set(t["store"]) <= set(STORES):
        raise _fail(f"models.store must be one of {STORES}")
    for f in ("index", "sv_count"):
        if not _types(t[f]) <= {int} or (n and min(t[f]) < 0):
            raise _fail(f"models.{f} must be non-negative integers")
    sizes = [v for v in t["train_size"] if v is not None]
    if not _types(sizes) <= {int} or (sizes and min(sizes) < 0):
        raise _fail("models.train_size must be non-negative integers or nulls")
    nfs = [v for v in t["n_features"] if v is not None]
    if not _types(nfs) <= {int} or (nfs and not 1 <= min(nfs) <= max(nfs) <= 4096):
        raise _fail("models.n_features must be positive integers or nulls")
    keys = list(zip(t["device"], t["sensor"], strict=True))
    if not all(map(operator.lt, keys, keys[1:])):
        raise _fail("models must be sorted by (device, sensor) without duplicates")

    store = np.asarray(t["store"], dtype=object)
    index = np.asarray(t["index"], dtype=np.int64)
    is_svm = store == "svm"
    n_svm, n_sk = int(is_svm.sum()), int((~is_svm).sum())
    if n_svm != (svm["models"] if svm else 0) or n_sk != (sk["models"] if sk else 0):
        raise _fail("model counts per store do not match the 'svm'/'skops' sections")
    if not np.array_equal(index[is_svm], np.arange(n_svm)) or not np.array_equal(
            np.sort(index[~is_svm]), np.arange(n_sk)):
        raise _fail("models.index must number each store's models 0..n-1 (SVMs in table order)")
    if n_svm:
        algos = np.asarray(t["algorithm"], dtype=object)[is_svm]
        if not np.isin(algos, ["ocsvm-rbf", "ocsvm-linear"]).all():
            raise _fail("only ocsvm-rbf / ocsvm-linear models can be stored as SVM arrays")
        nf = np.asarray([-1 if v is None else v for v in t["n_features"]], dtype=np.int64)[is_svm]
        cnt = np.asarray(t["sv_count"], dtype=np.int64)[is_svm]
        if (nf < 1).any() or (cnt < 1).any():
            raise _fail("SVM models need n_features >= 1 and sv_count >= 1")
        sizes = {"sv": int((nf * cnt).sum()), "dual_coef": int(cnt.sum()), "scaler_mean": int(nf.sum()),
                 "scaler_scale": int(nf.sum()), "intercept": n_svm, "gamma": n_svm}
        for k, size in sizes.items():
            if svm["arrays"][k] != [size]:
                raise _fail(f"svm array {k!r} is declared {svm['arrays'][k]}, the table needs [{size}]")


def _npz_float64(data: bytes | bytearray) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz of 1-D little-endian float64 arrays, as read-only views of ``data``.

    Called on bytes whose SHA-256 was verified. Only the .npy headers are parsed (numpy's literal-only header
    parser); any other dtype (object arrays, i.e. pickles, included), shape, order or compression is refused,
    so nothing is ever unpickled - the same guarantee as ``np.load(allow_pickle=False)`` without copying the
    arrays or re-checking the zip CRCs the SHA-256 already covers."""
    fmt = np.lib.format
    try:
        members = _zip_members(data)
        out: dict[str, np.ndarray] = {}
        for name, (method, start, size) in members.items():
            if not name.endswith(".npy") or method != zipfile.ZIP_STORED or name[:-4] in out:
                raise PackError(f"{SVM_FILE}: member {name!r} is not a stored .npy array")
            hdr = io.BytesIO(bytes(data[start:start + min(size, 1 << 16)]))
            version = fmt.read_magic(hdr)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(hdr)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(hdr)
            else:
                raise PackError(f"{SVM_FILE}: unsupported .npy version {version} in {name!r}")
            if dtype != np.dtype("<f8") or len(shape) != 1 or fortran:
                raise PackError(f"{SVM_FILE}: {name!r} is {dtype}{shape}; only 1-D float64 arrays are accepted")
            offset = start + hdr.tell()
            if offset + shape[0] * 8 != start + size:
                raise PackError(f"{SVM_FILE}: {name!r} has the wrong size for {shape}")
            out[name[:-4]] = np.frombuffer(data, dtype="<f8", count=shape[0], offset=offset)
        return out
    except PackError:
        raise
    except Exception as exc:  # a malformed zip or .npy header
        raise PackError(f"{SVM_FILE}: not a readable .npz of float64 arrays ({exc})") from exc


def _zip_members(data: bytes | bytearray) -> dict[str, tuple[int, int, int]]:
    """{name: (compression method, data offset, size)} from a zip's central directory, without copying data
    (no zip64: a pack's array file stays far below 4 GiB)."""
    eocd = bytes(data[-(22 + 65535):]).rfind(b"PK\x05\x06")
    if eocd < 0:
        raise PackError(f"{SVM_FILE}: no zip end-of-directory record")
    eocd += max(0, len(data) - (22 + 65535))
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    if count == 0xFFFF or cd_offset == 0xFFFFFFFF or cd_offset + cd_size > eocd:
        raise PackError(f"{SVM_FILE}: zip64 or a damaged central directory")
    members: dict[str, tuple[int, int, int]] = {}
    pos = cd_offset
    for _ in range(count):
        sig = struct.unpack_from("<I", data, pos)[0]
        method = struct.unpack_from("<H", data, pos + 10)[0]
        comp, size, n_name, n_extra, n_comment = struct.unpack_from("<IIHHH", data, pos + 20)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        if sig != 0x02014B50 or comp != size:
            raise PackError(f"{SVM_FILE}: bad central directory entry")
        name = bytes(data[pos + 46:pos + 46 + n_name]).decode("utf-8")
        if struct.unpack_from("<I", data, local)[0] != 0x04034B50:
            raise PackError(f"{SVM_FILE}: bad local header for {name!r}")
        l_name, l_extra = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + l_name + l_extra
        if start + size > cd_offset:
            raise PackError(f"{SVM_FILE}: member {name!r} overruns the archive")
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
    import skops.io as sio

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            schema = json.loads(z.read("schema.json"))
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # any parse failure is a bad pack
        raise PackError(f"{name}: not a readable skops file ({exc})") from exc
    bad = sorted((_schema_types(schema) | untrusted) - set(TRUSTED_TYPES))
    if bad:
        raise PackError(f"{name}: untrusted types {bad}")


def _read_verified(folder: Path, name: str, meta: Mapping[str, Any]) -> bytearray:
    """The file's bytes, read once into private memory and hashed chunk by chunk while in cache."""
    path = folder / name
    size = meta["bytes"]
    buf = bytearray(size)
    view = memoryview(buf)
    digest = hashlib.sha256()
    try:
        with path.open("rb", buffering=0) as f:
            got = 0
            while got < size:
                n = f.readinto(view[got:got + (1 << 20)])
                if not n:
                    break
                digest.update(view[got:got + n])
                got += n
            extra = f.read(1)
    except FileNotFoundError:
        raise PackError(f"{name}: missing from pack {folder}") from None
    except OSError as exc:
        raise PackError(f"{name}: cannot be read ({exc})") from exc
    if got != size or extra or digest.hexdigest() != meta["sha256"]:
        raise PackError(f"{name}: SHA-256 or size mismatch (file tampered with or manifest wrong)")
    return buf


def load_pack(folder: str | os.PathLike[str]) -> ModelPack:
    """Load and verify a pack folder: manifest shape, every SHA-256, array shapes, trusted types only."""
    folder = Path(folder)
    try:
        raw = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise PackError(f"{MANIFEST}: missing from pack {folder}") from None
    except OSError as exc:
        raise PackError(f"{MANIFEST}: cannot be read ({exc})") from exc
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{MANIFEST}: not valid JSON ({exc})") from exc
    _check_manifest(manifest)
    blobs = {name: _read_verified(folder, name, meta) for name, meta in manifest["files"].items()}

    svm: dict[str, np.ndarray] | None = None
    if SVM_FILE in blobs:
        svm = _npz_float64(blobs[SVM_FILE])
        declared = manifest["svm"]["arrays"]
        if sorted(svm) != sorted(SVM_ARRAYS):
            raise PackError(f"{SVM_FILE}: arrays {sorted(svm)} != {sorted(SVM_ARRAYS)}")
        for k, a in svm.items():
            if [a.shape[0]] != declared[k]:
                raise PackError(f"{SVM_FILE}: array {k!r} has {a.shape[0]} values, the manifest says {declared[k]}")
        if not all(np.isfinite(svm[k]).all() for k in ("scaler_mean", "scaler_scale", "intercept", "gamma")):
            raise PackError(f"{SVM_FILE}: arrays hold non-finite values")
        if (svm["scaler_scale"] == 0).any() or (svm["gamma"] < 0).any():
            raise PackError(f"{SVM_FILE}: zero scaler scale or negative gamma")

    others: list[Any] = []
    if SKOPS_FILE in blobs:
        import skops.io as sio

        _check_skops_types(bytes(blobs[SKOPS_FILE]), SKOPS_FILE)
        try:
            others = sio.loads(bytes(blobs[SKOPS_FILE]), trusted=list(TRUSTED_TYPES))
        except Exception as exc:
            raise PackError(f"{SKOPS_FILE}: cannot be loaded ({exc})") from exc
        if not isinstance(others, list) or len(others) != manifest["skops"]["models"]:
            raise PackError(f"{SKOPS_FILE}: expected a list of {manifest['skops']['models']} detectors")
        if not all(hasattr(est, "decision_function") for est in others):
            raise PackError(f"{SKOPS_FILE}: every detector needs a decision_function")
    return ModelPack(manifest, svm, others)

