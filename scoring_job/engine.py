"""The vectorised scoring engine: a whole partition of windows against the fleet's model pack in one call.

``score(features, pack)`` returns one prediction row per feature row, in the prediction-file schema, sorted by
(device, sensor, window_end):

* one-class SVMs stored as arrays (rbf and linear, with or without a StandardScaler) take the fast path: with
  numba, a fused kernel per model (see ``_kernels``); without it, numpy: models grouped by support-vector count
  and rows per model (both padded up to a small step), one batched kernel expansion per group
  (``X @ S'^T + A + B``, ``exp``, ``@ coef``), in chunks of at most ``CHUNK_BYTES`` of temporaries;
* every other detector (skops) through its own ``decision_function``, one call per model;
* a model that cannot be scored (wrong feature count, a detector raising) marks only its rows
  ``status="error"`` with the reason; windows whose pair has no model come back ``status="no_model"``.

``score`` is the negated decision function (higher = more anomalous) and ``is_anomaly`` is ``score > 0``:
scikit-learn's ``predict == -1``. libsvm's predict calls a decision value of exactly 0 an outlier (the other
detectors call it an inlier), so a one-class SVM's exact 0 is reported as the smallest positive score
(5e-324) to keep both statements true.

float64 decision values match scikit-learn's ``decision_function`` to ~1e-13 of the kernel-sum magnitude
(tests assert 1e-9 relative + 1e-11 absolute of sum |coef| + |intercept|). ``dtype="float32"`` runs the RBF
bulk in float32 and recomputes in float64 every window whose float32 decision value is within a rigorous
per-model error bound of 0 (:func:`float32_bound`), so its labels are those of the float64 path.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("fleetscore.engine")

try:
    from . import _kernels
    from .contract import WINDOW_STATUSES
    from .pack import ModelPack
except ImportError:  # imported as a top-level module: the Azure ML code snapshot is this folder alone
    import _kernels
    from contract import WINDOW_STATUSES
    from pack import ModelPack

DTYPES = ("float64", "float32")
BACKENDS = ("auto", "numba", "numpy")
#: Bound on the numpy path's per-chunk temporaries (the (models, rows, support vectors) kernel block and the
#: gathered rows); a few MB keep each pass over the block in cache.
CHUNK_BYTES = 4 * 2**20
#: With backend "auto", use the compiled kernel only for at least this many kernel evaluations (below it the
#: numpy path is as quick as a cold kernel compile would be).
NUMBA_MIN_EVALS = int(os.environ.get("FLEETSCORE_NUMBA_MIN_EVALS", "2000000"))

_U32 = 2.0**-24


def _gamma_n(n: np.ndarray | float, u: float = _U32) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    return n * u / (1.0 - n * u)


# ------------------------------------------------------------------------------------- pack preparation
def _concat(shards: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """One SVM array over every shard, as a new writable array."""
    return np.concatenate([shard[name] for shard in shards])


def _per_feature(flat: np.ndarray, F: np.ndarray, fw: int, pad: float) -> np.ndarray:
    """(models, fw) from per-model runs of F values (a scaler's mean or scale), padded with ``pad``."""
    out = np.full((len(F), fw), pad)
    out[np.arange(fw)[None, :] < F[:, None]] = flat
    return out


def _support_vectors(flat: np.ndarray, F: np.ndarray, svc: np.ndarray, fw: int) -> np.ndarray:
    """(sum svc, fw) support vectors of consecutive models with F features and svc vectors each, stored flat
    (row-major per model), zero-padded to fw features; a view when every model has fw features."""
    n_sv = int(svc.sum())
    if F.min() == fw:
        return flat.reshape(n_sv, fw)
    out = np.zeros((n_sv, fw))
    out[np.arange(fw)[None, :] < np.repeat(F, svc)[:, None]] = flat
    return out


def prepare(pack: ModelPack) -> dict[str, Any]:
    """The engine's per-pack arrays (built once per process, kept in ``pack.cache``)."""
    c = pack.cache.get("engine")
    if c is not None:
        return c
    t = pack.table
    svm_table_rows = np.flatnonzero(t["is_svm"])
    n_svm = len(svm_table_rows)
    c = {"n_svm": n_svm, "svm_row": np.full(len(pack), -1, dtype=np.int64)}
    c["svm_row"][svm_table_rows] = t["index"][svm_table_rows]
    if n_svm == 0:
        pack.cache["engine"] = c
        return c
    shards = pack.svm_shards
    order = np.argsort(t["index"][svm_table_rows], kind="stable")
    rows = svm_table_rows[order]  # table rows of SVM 0..n_svm-1
    F = t["n_features"][rows]
    svc = t["sv_count"][rows]
    sv0 = t["coef_offset"][rows]
    rbf = t["algorithm"][rows] == "ocsvm-rbf"
    scaled = t["scaled"][rows]
    fw = max(_kernels.FPAD, int(F.max()))
    gamma = _concat(shards, "gamma")
    intercept = _concat(shards, "intercept")
    coef = _concat(shards, "dual_coef")
    mean = _per_feature(_concat(shards, "scaler_mean"), F, fw, 0.0)
    scale = _per_feature(_concat(shards, "scaler_scale"), F, fw, 1.0)

    n_sv = int(svc.sum())
    owner = np.repeat(np.arange(n_svm), svc)
    g2 = np.where(rbf, 2.0 * gamma, 0.0)
    unscaled_rbf = rbf & ~scaled
    center = np.zeros((n_svm, fw))
    svp = np.empty((n_sv, fw))  # s' = 2 g (s - c) for RBF models, the support vectors themselves for linear ones
    sq = np.empty(n_sv)
    m0 = r0 = 0
    for shard in shards:  # shard by shard: the support vectors are never copied whole
        m1 = m0 + len(shard["intercept"])
        r1 = r0 + int(svc[m0:m1].sum())
        sv = _support_vectors(shard["sv"], F[m0:m1], svc[m0:m1], fw)
        own = owner[r0:r1]
        if unscaled_rbf[m0:m1].any():  # translate raw feature spaces to the SVs' mean (RBF is shift-invariant)
            part = np.add.reduceat(sv, sv0[m0:m1] - r0, axis=0) / svc[m0:m1, None]
            center[m0:m1] = np.where(unscaled_rbf[m0:m1, None], part, 0.0)
            d = sv - center[own]
        else:
            d = sv
        np.multiply(d, g2[own, None], out=svp[r0:r1])
        linear = ~rbf[own]
        if linear.any():
            svp[r0:r1][linear] = d[linear]
        sq[r0:r1] = np.einsum("ij,ij->i", d, d)
        m0, r0 = m1, r1
    bsv = np.multiply(sq, -0.5 * g2[owner])  # B = -g |s - c|^2
    smax2 = np.maximum.reduceat(sq, sv0)
    sumc = np.add.reduceat(np.abs(coef), sv0)

    c.update(rows=rows, F=F, svc=svc, sv0=sv0, rbf=rbf, fw=fw, gamma=gamma, intercept=intercept, mean=mean,
             scale=scale, center=center, svp=svp, bsv=bsv, coef=coef, sumc=sumc, smax2=smax2)
    c["bound32"] = float32_bound(c)
    pack.cache["engine"] = c
    return c


def float32_bound(c: dict[str, Any]) -> np.ndarray:
    """Per RBF model: a bound on |float32 decision - exact decision|, valid for any input row.

    In float32 the kernel argument t = A + B + sum_k x'_k s'_k (A, B, x', s' rounded once from float64, then
    F+1 additions) has |error| <= gamma_{F+3} * (|A| + |B| + sum |x'_k s'_k|) <= gamma_{F+3} * g (|x'| + |s|)^2
    (Cauchy-Schwarz; x', s centred). With D = |x' - s| we have |x'| + |s| <= 2|s| + D, so
    K * g (|x'|+|s|)^2 <= 8 g |s|^2 + 2 g D^2 exp(-g D^2) <= 8 g S^2 + 2/e with S = max_j |s_j|: each kernel
    value is off by at most gamma_{F+3} (8 g S^2 + 1) + 5u (exp <= 4u, coefficient rounding u). Summing
    n_sv terms in float32 adds gamma_{n_sv+1} * sum |coef|. The bound is twice the total (second-order terms),
    plus 1e-30 for the clamped tail of exp.
    """
    F = np.maximum(c["F"], _kernels.FPAD).astype(np.float64)
    per_k = _gamma_n(F + 3) * (8.0 * c["gamma"] * c["smax2"] + 1.0) + 5 * _U32
    return 2.0 * (c["sumc"] * (per_k + _gamma_n(c["svc"] + 1)) + 1e-30)


def _f32_arrays(c: dict[str, Any]) -> dict[str, np.ndarray]:
    if "svp32" not in c:
        c["svp32"] = c["svp"].astype(np.float32)
        c["bsv32"] = c["bsv"].astype(np.float32)
        c["coef32"] = c["coef"].astype(np.float32)
    return c


# -------------------------------------------------------------------------------------------- SVM paths
#: The fused kernel works on blocks of at most this many rows of one model (its scratch stays in cache).
KERNEL_MAX_ROWS = 4096


def _split_ranges(r0s: np.ndarray, ns: np.ndarray, q: np.ndarray, cap: np.ndarray | int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ranges longer than ``cap`` (per range or one value) cut into consecutive pieces of at most ``cap``."""
    cap = np.broadcast_to(np.asarray(cap, dtype=np.int64), ns.shape)
    pieces = -(-ns // cap)
    if len(ns) == 0 or pieces.max() <= 1:
        return r0s, ns, q
    rep = np.repeat(np.arange(len(ns)), pieces)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    start = r0s[rep] + k * cap[rep]
    return start, np.minimum(cap[rep], r0s[rep] + ns[rep] - start), q[rep]


def _numpy_buckets(c: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """The numpy path's per-model support-vector blocks, padded to a multiple of 8 support vectors and grouped
    by that size: ``S[b][pos]`` is a model's (fw + 2, b) block [s'; 1; B] (RBF) or [s; 0; 0] (linear) and
    ``coef[b][pos]`` its padded coefficients (0 on padding). Built on first use, per dtype."""
    key = f"numpy_buckets_{np.dtype(dtype).name}"
    if key in c:
        return c[key]
    fw, svc, sv0 = c["fw"], c["svc"], c["sv0"]
    sb = (svc + 7) // 8 * 8
    pos = np.zeros(len(svc), dtype=np.int64)
    S: dict[int, np.ndarray] = {}
    coef: dict[int, np.ndarray] = {}
    for b in np.unique(sb):
        members = np.flatnonzero(sb == b)
        pos[members] = np.arange(len(members))
        js = np.arange(int(b))
        valid = js[None, :] < svc[members, None]
        jdx = np.where(valid, sv0[members, None] + js[None, :], 0)
        rbf = c["rbf"][members, None, None]
        block = np.zeros((len(members), int(b), fw + 2))
        block[..., :fw] = c["svp"][jdx]
        block[..., fw + 1] = np.where(rbf[..., 0], c["bsv"][jdx], 0.0)
        block[~valid] = 0.0
        block[..., fw] = np.where(rbf[..., 0], 1.0, 0.0)  # padding too: exp(A + 0) <= 1, times a 0 coefficient
        S[int(b)] = np.ascontiguousarray(block.transpose(0, 2, 1), dtype=dtype)
        coef[int(b)] = np.where(valid, c["coef"][jdx], 0.0).astype(dtype)
    c[key] = {"sb": sb, "pos": pos, "S": S, "coef": coef}
    return c[key]


def _svm_numpy(cols: Sequence[np.ndarray], r0s: np.ndarray, ns: np.ndarray, q: np.ndarray, c: dict[str, Any],
               dtype: np.dtype, out: np.ndarray) -> None:
    """Decision values of SVMs q (rows of the SVM arrays) for row ranges [r0, r0+n) into ``out`` (numpy path).

    Models are grouped by padded support-vector count and padded row count; per chunk of a group one batched
    matmul gives every kernel argument ([x', 0, A, 1] . [s', 1, B] = A + B + x'.s' for RBF; x . s for linear),
    then ``exp`` in place and one batched matrix-vector product with the coefficients."""
    if len(q) == 0:
        return
    nb = _numpy_buckets(c, dtype)
    # a model's rows in pieces small enough that one piece's kernel block fits the chunk budget
    r0s, ns, q = _split_ranges(r0s, ns, q, np.maximum(16, CHUNK_BYTES // (64 * (c["svc"][q] + 7))))
    sb = nb["sb"][q]
    wb = np.where(ns <= 16, ns, (ns + 7) // 8 * 8)
    rbf = c["rbf"][q]
    key = (sb.astype(np.int64) << 32) | (wb.astype(np.int64) << 1) | rbf.astype(np.int64)
    item = np.dtype(dtype).itemsize
    with np.errstate(over="ignore", invalid="ignore"):  # |x| beyond float32/64: handled as "no contribution"
        for k in np.unique(key):
            _numpy_group(cols, r0s, ns, q, c, dtype, out, nb, np.flatnonzero(key == k), sb, wb, rbf, item)


def _numpy_group(cols: Sequence[np.ndarray], r0s: np.ndarray, ns: np.ndarray, q: np.ndarray, c: dict[str, Any],
                 dtype: np.dtype, out: np.ndarray, nb: dict[str, Any], sel: np.ndarray, sb: np.ndarray,
                 wb: np.ndarray, rbf: np.ndarray, item: int) -> None:
    """One group of :func:`_svm_numpy` (same padded support-vector and row counts, same kernel), in chunks."""
    F, fw = len(cols), c["fw"]
    S, W, is_rbf = int(sb[sel[0]]), int(wb[sel[0]]), bool(rbf[sel[0]])
    # temporaries per model: the (W, S) kernel block plus the gathered rows and support vectors
    step = max(1, CHUNK_BYTES // (W * S * item + 8 * (W + S) * (fw + 4)))
    for lo in range(0, len(sel), step):
        m = sel[lo:lo + step]
        qm = q[m]
        w = np.arange(W)
        valid = w[None, :] < ns[m, None]
        idx = np.where(valid, r0s[m, None] + w[None, :], 0)
        X = np.zeros((len(m), W, fw + 2))
        for f, col in enumerate(cols):  # the same operations as StandardScaler.transform, then the centre
            X[..., f] = (col[idx] - c["mean"][qm, None, f]) / c["scale"][qm, None, f]
        if is_rbf:
            X[..., :F] -= c["center"][qm, None, :F]
            g = c["gamma"][qm]
            A = -g[:, None] * np.einsum("mwf,mwf->mw", X[..., :F], X[..., :F])
            bad = ~np.isfinite(A) | ~np.isfinite(X).all(axis=-1)
            if bad.any():  # |x| beyond float range: no kernel contribution (exp -> 0)
                X[bad] = 0.0
                A[bad] = -np.inf
            A[g == 0] = 0.0
            X[..., fw], X[..., fw + 1] = A, 1.0
        if dtype == np.float32:
            X = X.astype(np.float32)
            if is_rbf:
                bad32 = ~np.isfinite(X).all(axis=-1)
                X[bad32] = 0.0
                X[bad32, fw] = -np.inf
                X[bad32, fw + 1] = 1.0
        T = np.matmul(X, nb["S"][S][nb["pos"][qm]])  # (M, W, S)
        if is_rbf:
            np.exp(T, out=T)
        coef = nb["coef"][S][nb["pos"][qm]]
        dec = np.matmul(T, coef[:, :, None])[:, :, 0].astype(np.float64) + c["intercept"][qm, None]
        out[idx[valid]] = dec[valid]


def _use_numba(backend: str, evals: int) -> bool:
    if backend == "numpy" or not _kernels.HAVE_NUMBA:
        if backend == "numba":
            raise RuntimeError("backend='numba' but numba is not available (or FLEETSCORE_NUMBA=0)")
        return False
    return backend == "numba" or evals >= NUMBA_MIN_EVALS


def _svm_decisions(cols: Sequence[np.ndarray], r0s: np.ndarray, ns: np.ndarray, q: np.ndarray,
                   c: dict[str, Any], dtype: np.dtype, backend: str, out: np.ndarray) -> int:
    """Decision values (float64 into ``out``) of the SVMs q over their row ranges, in ``dtype``. Returns the
    rows the fused float32 kernel rechecked in float64 itself, or -1 when float32 rows still need the recheck."""
    F = len(cols)
    rbf = c["rbf"][q]
    lin = ~rbf
    if lin.any():  # linear kernels: no exp, always float64 (cheap; no recheck needed)
        _svm_numpy(cols, r0s[lin], ns[lin], q[lin], c, np.dtype(np.float64), out)
    if not rbf.any():
        return 0
    r0s, ns, q = r0s[rbf], ns[rbf], q[rbf]
    evals = int((ns * c["svc"][q]).sum())
    if F <= _kernels.FPAD and _use_numba(backend, evals):
        r0s, ns, q = _split_ranges(r0s, ns, q, KERNEL_MAX_ROWS)
        tup = tuple(np.ascontiguousarray(col, dtype=np.float64) for col in cols)
        args = (tup, F, r0s.astype(np.int64), ns.astype(np.int64), q.astype(np.int64), c["mean"], c["scale"],
                c["center"], c["gamma"], c["intercept"], c["sv0"], c["svc"])
        if dtype == np.float32:
            f = _f32_arrays(c)
            return int(_kernels.rbf_f32(*args, f["svp32"], f["bsv32"], f["coef32"], c["bound32"], c["svp"], c["bsv"],
                                        c["coef"], out))
        _kernels.rbf_f64(*args, c["svp"], c["bsv"], c["coef"], out)
        return 0
    # the numpy path (also for models with more than FPAD features: the fused kernel is written for FPAD)
    _svm_numpy(cols, r0s, ns, q, c, dtype, out)
    return -1 if dtype == np.float32 else 0


def _svm_scores(cols: Sequence[np.ndarray], r0s: np.ndarray, ns: np.ndarray, q: np.ndarray, c: dict[str, Any],
                dtype: str, backend: str, out: np.ndarray) -> int:
    """Fast-path decision values into ``out``; in float32 mode, rows whose value is not clearly away from 0
    (beyond :func:`float32_bound`, NaN included) are recomputed in float64. Returns the number rechecked."""
    if dtype == "float64":
        _svm_decisions(cols, r0s, ns, q, c, np.dtype(np.float64), backend, out)
        return 0
    done = _svm_decisions(cols, r0s, ns, q, c, np.dtype(np.float32), backend, out)
    if done >= 0:  # the fused kernel rechecked its near-zero rows itself
        return done
    rbf = c["rbf"][q]
    rq, rs, rn = q[rbf], r0s[rbf], ns[rbf]
    if len(rq) == 0:
        return 0
    owner = np.repeat(np.arange(len(rq)), rn)
    first = np.cumsum(rn) - rn
    rows = np.arange(int(rn.sum())) - first[owner] + rs[owner]
    flag = ~(np.abs(out[rows]) > c["bound32"][rq][owner])
    if not flag.any():
        return 0
    check, who = rows[flag], owner[flag]  # ascending rows, each model's rows contiguous
    run_start = np.concatenate([[0], np.flatnonzero(np.diff(who) != 0) + 1]).astype(np.int64)
    run_len = np.diff(np.concatenate([run_start, [len(check)]])).astype(np.int64)
    dec = np.empty(len(check))
    _svm_decisions([col[check] for col in cols], run_start, run_len, rq[who[run_start]], c,
                   np.dtype(np.float64), backend, dec)
    out[check] = dec
    return len(check)


# ------------------------------------------------------------------------------------------- the engine
def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(codes, categories as str) of a key column; code -1 for missing."""
    arr = col.array
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy(dtype=object).tolist()
        return np.asarray(col.cat.codes), cats if all(type(v) is str for v in cats) else [str(v) for v in cats]
    pa_arr = getattr(arr, "_pa_array", None)
    if pa_arr is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(pa_arr).combine_chunks() if isinstance(pa_arr, pa.ChunkedArray) else \
            pc.dictionary_encode(pa_arr)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        codes = np.where(np.isnan(codes), -1, codes).astype(np.int64) if codes.dtype.kind == "f" else \
            codes.astype(np.int64)
        return codes, [str(v) for v in enc.dictionary.to_pylist()]
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), [str(v) for v in uniques]


def _rank(cats: list[str]) -> np.ndarray:
    r = np.empty(len(cats), dtype=np.int64)
    r[np.argsort(np.asarray(cats, dtype=object), kind="stable")] = np.arange(len(cats))
    return r


def _window_ms(col: pd.Series) -> pd.Series:
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        col = pd.to_datetime(col, utc=True)
    if str(col.dt.tz) != "UTC":
        col = col.dt.tz_convert("UTC")
    if col.dt.unit != "ms":
        col = col.dt.as_unit("ms")
    return col


def _key_index(pack: ModelPack, column: str) -> pd.Index:
    """The pack's device or sensor column as an object Index (cached: pandas would otherwise infer a string
    dtype and convert all 10,000 keys on every call)."""
    key = f"key_index_{column}"
    if key not in pack.cache:
        pack.cache[key] = pd.Index(pack.table[column], dtype=object)
    return pack.cache[key]


def _categorical(codes: np.ndarray, cats: Sequence[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(pd.Index(list(cats), dtype=object)),
                                     validate=False)


def score(features: pd.DataFrame, pack: ModelPack, run_id: str = "", dtype: str = "float64", *,
          backend: str = "auto", stats: dict[str, Any] | None = None) -> pd.DataFrame:
    """Score feature rows against a model pack; see the module docstring.

    ``features``: columns device, sensor, window_end (UTC), n and the pack's features (``pack.features``;
    default mean, min, max, std). Extra columns are ignored. ``backend``: "auto" (numba when installed and the
    batch is large enough), "numba" or "numpy". ``stats``, when given, receives counts (models, rechecks, ...).
    Returns columns :data:`contract.PREDICTION_COLUMNS`; model_version, run_id, status and error are Categoricals
    of strings.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    feat = list(pack.features)
    missing = [k for k in ("device", "sensor", "window_end", "n", *feat) if k not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")
    c = prepare(pack)
    N = len(features)

    dcodes, dcats = _codes(features["device"])
    scodes, scats = _codes(features["sensor"])
    we = _window_ms(features["window_end"])
    we_i = we.array.asi8 if N else np.zeros(0, dtype=np.int64)
    drank = _rank(dcats) if dcats else np.zeros(1, dtype=np.int64)
    srank = _rank(scats) if scats else np.zeros(1, dtype=np.int64)
    nsr = len(scats) + 1

    def pair_of(d: np.ndarray, s: np.ndarray) -> np.ndarray:  # (device, sensor) rank; missing keys sort last
        d, s = d.astype(np.int64), s.astype(np.int64)
        return np.where((d >= 0) & (s >= 0), drank[np.maximum(d, 0)] * nsr + srank[np.maximum(s, 0)],
                        (len(dcats) + 1) * nsr)

    # runs of equal (device, sensor) codes; the input is sorted when the runs' keys strictly increase and
    # window_end does not decrease inside a run (what the export writes) - then no row is moved
    order = None
    if N > 1:
        change = (dcodes[1:] != dcodes[:-1]) | (scodes[1:] != scodes[:-1])
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        run_pair = pair_of(dcodes[starts], scodes[starts])
        if not ((np.diff(run_pair) > 0).all() and ((np.diff(we_i) >= 0) | change).all()):
            order = np.lexsort((we_i, pair_of(dcodes, scodes)))
            ps = pair_of(dcodes, scodes)[order]
            starts = np.concatenate([[0], np.flatnonzero(np.diff(ps) != 0) + 1]).astype(np.int64)
    else:
        starts = np.zeros(min(N, 1), dtype=np.int64)

    def take(a: Any) -> Any:
        return a if order is None else a[order]

    counts = np.diff(np.concatenate([starts, [N]])).astype(np.int64)
    G = len(starts)
    first = starts if order is None else order[starts]
    gd, gs = dcodes[first].astype(np.int64), scodes[first].astype(np.int64)

    # one model (pack table row) per run: the pack's keys as (device, sensor) category codes, then a lookup
    model = np.full(G, -1, dtype=np.int64)
    if len(pack) and dcats and scats:
        di = pd.Index(dcats, dtype=object).get_indexer(_key_index(pack, "device"))
        si = pd.Index(scats, dtype=object).get_indexer(_key_index(pack, "sensor"))
        known = np.flatnonzero((di >= 0) & (si >= 0))
        pack_key = di[known] * len(scats) + si[known]
        by_key = np.argsort(pack_key, kind="stable")
        pack_key, known = pack_key[by_key], known[by_key]
        want = np.where((gd >= 0) & (gs >= 0), gd * len(scats) + gs, -1)
        at = np.minimum(np.searchsorted(pack_key, want), max(len(pack_key) - 1, 0))
        if len(pack_key):
            model = np.where((want >= 0) & (pack_key[at] == want), known[at], -1).astype(np.int64)

    cols = [take(features[f].to_numpy(dtype=np.float64, copy=False)) for f in feat]
    finite = None
    if N and not all(np.isfinite(col.min()) and np.isfinite(col.max()) for col in cols):  # NaN/inf propagate
        finite = np.ones(N, dtype=bool)
        for col in cols:
            finite &= np.isfinite(col)
        cols = [np.where(finite, col, 0.0) for col in cols]

    dec = np.full(N, -np.nan)  # negated below: unscored rows get a plain NaN (no sign bit)
    status = np.zeros(N, dtype=np.int8)  # codes into WINDOW_STATUSES: 0 ok, 1 no_model, 2 error
    errors: list[str] = []
    err_code: np.ndarray | None = None
    failures: dict[tuple[str, str], str] = {}
    not_ok = 0  # rows whose status is not "ok" (so far)

    def mark_error(rows: Any, reason: str) -> None:
        nonlocal err_code
        if err_code is None:
            err_code = np.full(N, -1, dtype=np.int32)
        if reason not in errors:
            errors.append(reason)
        status[rows] = 2
        err_code[rows] = errors.index(reason)

    def fail(g: int, reason: str) -> None:
        nonlocal not_ok
        failures[(dcats[gd[g]], scats[gs[g]])] = reason
        rows = slice(starts[g], starts[g] + counts[g])
        not_ok += int((status[rows] == 0).sum())
        mark_error(rows, reason)

    t = pack.table if len(pack) else {k: np.zeros(1, dtype=np.int64) for k in ("n_features", "is_svm", "index")}
    F = len(feat)
    has = model >= 0
    safe = np.maximum(model, 0)
    for g in np.flatnonzero(~has):
        status[starts[g]:starts[g] + counts[g]] = 1
        not_ok += int(counts[g])
    nf = np.where(has, t["n_features"][safe], -1)
    wrong = has & (nf >= 0) & (nf != F)
    for g in np.flatnonzero(wrong):
        fail(int(g), f"model expects {nf[g]} features, the pack provides {F} ({', '.join(feat)})")
    ok = has & ~wrong
    svm_g = np.flatnonzero(ok & t["is_svm"][safe])
    other_g = np.flatnonzero(ok & ~t["is_svm"][safe])

    rechecks = 0
    if len(svm_g):
        try:
            rechecks = _svm_scores(cols, starts[svm_g], counts[svm_g], c["svm_row"][model[svm_g]], c, dtype,
                                   backend, dec)
        except Exception as exc:  # noqa: BLE001 - retry one model at a time so a bad model fails only its own rows
            log.warning("batched SVM scoring failed (%s: %s); scoring %d model(s) one at a time", type(exc).__name__,
                        exc, len(svm_g))
            for g in svm_g:
                try:
                    _svm_scores(cols, starts[[g]], counts[[g]], c["svm_row"][model[[g]]], c, "float64", "numpy",
                                dec)
                except Exception as exc:  # noqa: BLE001
                    fail(int(g), f"{type(exc).__name__}: {exc}")

    for g in other_g:
        est = pack.others[int(t["index"][model[g]])]
        sl = slice(starts[g], starts[g] + counts[g])
        X = np.column_stack([col[sl] for col in cols])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                Xin = pd.DataFrame(X, columns=feat) if hasattr(est, "feature_names_in_") else X
                d = np.asarray(est.decision_function(Xin), dtype=np.float64).reshape(-1)
            if d.shape != (counts[g],):
                raise ValueError(f"decision_function returned {d.shape[0]} values for {counts[g]} rows")
            dec[sl] = d
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded, the others are scored
            fail(int(g), f"{type(exc).__name__}: {exc}")

    if finite is not None:
        bad = ~finite & (status == 0)
        not_ok += int(bad.sum())
        mark_error(bad, "non-finite feature values")
    zero = np.flatnonzero(dec == 0.0)
    if len(zero):  # libsvm: an exact 0 is an outlier (sum > 0 ? 1 : -1)
        g_of = np.searchsorted(starts, zero, side="right") - 1
        algo = pack.table["algorithm"][np.maximum(model[g_of], 0)] if len(pack) else np.zeros(0, dtype=object)
        svm_zero = zero[[str(a).startswith("ocsvm-") for a in algo]]
        dec[svm_zero] = -np.nextafter(0.0, 1.0)
    sc = np.negative(dec, out=dec)
    if int(np.count_nonzero(np.isnan(sc))) != not_ok:  # a scored row came out NaN (e.g. from a skops model)
        nan_dec = (status == 0) & np.isnan(sc)
        mark_error(nan_dec, "non-finite decision value")
    if not_ok:
        sc[status != 0] = np.nan
    if err_code is None:
        err_code = np.full(N, -1, dtype=np.int8)

    def col_of(name: str) -> Any:
        s = features[name]
        if order is None:
            return s.array
        return s.array.take(order)

    data = {
        "device": col_of("device"),
        "sensor": col_of("sensor"),
        "window_end": we.array if order is None else we.array.take(order),
        "n": take(features["n"].to_numpy(dtype=np.int64)),
        **{k: (take(features[k].to_numpy(dtype=np.float64)) if k in features.columns else np.full(N, np.nan))
           for k in ("mean", "min", "max", "std")},
        "score": sc,
        "is_anomaly": sc > 0,
        "model_version": _categorical(np.zeros(N, dtype=np.int8), [pack.version]),
        "run_id": _categorical(np.zeros(N, dtype=np.int8), [str(run_id)]),
        "status": _categorical(status, WINDOW_STATUSES),
        "error": _categorical(err_code, errors),
    }
    if stats is not None:
        stats.update(rows=N, models=int(has.sum()), svm_models=len(svm_g), other_models=len(other_g),
                     no_model_windows=int((status == 1).sum()), failures=failures, rechecks=rechecks,
                     sorted_input=order is None)
    return pd.DataFrame(data, copy=False)
