"""The vectorised scoring engine: a whole partition of windows against the fleet's model pack in one call.

``score(features, pack)`` returns a :class:`Scored`: one prediction row per feature row, in the prediction-file
schema, sorted by (device, sensor, window_end), and the call's :class:`ScoreStats`:

* one-class SVMs stored as arrays (rbf and linear, with or without a StandardScaler) take the fast path: with
  numba, a fused kernel per model (see ``_kernels``); without it, numpy: models grouped by support-vector count
  and rows per model (both padded up to a small step), one batched kernel expansion per group
  (``X @ S'^T + A + B``, ``exp``, ``@ coef``), in chunks of at most ``CHUNK_BYTES`` of temporaries;
* change-z models (:mod:`change`) in one vectorised pass over all their rows, from the pack's parameters (a
  window without a baseline has a NaN ``mean_change``: no evidence, not an error);
* every other detector (skops) through its own ``decision_function``, one call per model;
* rows whose ``settling`` column is true (an announced change of the device, :func:`change.change_features`) come
  back ``status="settling"`` with no score;
* a model that cannot be scored (wrong feature count, a detector raising) marks only its rows
  ``status="error"`` with the reason; windows whose pair has no model come back ``status="no_model"``.

``score`` is the negated decision function (higher = more anomalous); ``threshold`` and ``threshold_strong`` are
the row's model's calibrated alert thresholds from the pack (NaN for a row without a score), and ``is_anomaly``
is ``score > threshold``. With a threshold of 0 (a pack written without calibration) that is scikit-learn's
``predict == -1``: libsvm's predict calls a decision value of exactly 0 an outlier (the other detectors call it
an inlier), so a one-class SVM's exact 0 is reported as the smallest positive score (5e-324) to keep both
statements true.

float64 decision values match scikit-learn's ``decision_function`` to ~1e-13 of the kernel-sum magnitude
(tests assert 1e-9 relative + 1e-11 absolute of sum |coef| + |intercept|). ``dtype="float32"`` runs the RBF
bulk in float32 and recomputes in float64 every window whose float32 decision value is within a rigorous
per-model error bound of the model's negated thresholds (:func:`float32_bound`), so its labels (against
``threshold`` and ``threshold_strong``) are those of the float64 path.

Notation (as in ``_kernels``): per SVM with support vectors s_j, centre c and ``gamma`` g, x' = x - c (x in the
scaled feature space), A = -g |x'|^2, s' = 2 g (s - c), B = -g |s - c|^2, so -g |x - s|^2 = A + B + x'.s'.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("fleetscore.engine")

try:
    from . import _kernels, change
    from .contract import WINDOW_STATUSES
    from .pack import ModelPack
except ImportError:  # imported as a top-level module: the Azure ML code snapshot is this folder alone
    import _kernels
    import change
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
#: The fused kernel works on blocks of at most this many rows of one model (its scratch stays in cache).
KERNEL_MAX_ROWS = 4096

_U32 = 2.0**-24  # float32 unit roundoff
_OK, _NO_MODEL, _ERROR, _SETTLING = (WINDOW_STATUSES.index(s) for s in ("ok", "no_model", "error", "settling"))

Key = tuple[str, str]


def _gamma_n(n: np.ndarray | float, u: float = _U32) -> np.ndarray:
    """The rounding-error factor gamma_n = n u / (1 - n u) of n floating-point operations."""
    n = np.asarray(n, dtype=np.float64)
    return n * u / (1.0 - n * u)


# ------------------------------------------------------------------------------------- pack preparation
@dataclasses.dataclass(frozen=True)
class _NumpyBlocks:
    """The numpy path's support-vector blocks for one dtype: each model padded to a multiple of 8 support
    vectors (padding has coefficient 0) and grouped with the models of the same padded count."""

    padded_count: np.ndarray  # (n_svm,) int64: the model's padded support-vector count b
    position: np.ndarray  # (n_svm,) int64: the model's position in its group
    vectors: dict[int, np.ndarray]  # b -> (models, width + 2, b): [s'; 1; B] (RBF) or [s; 0; 0] (linear)
    coef: dict[int, np.ndarray]  # b -> (models, b): the dual coefficients, 0 on padding


@dataclasses.dataclass(eq=False)
class SvmArrays:
    """Every array-stored SVM of a pack, in SVM order, padded to one feature width ``width``: what the numpy
    path and the fused kernels read. Per-SVM arrays have n_svm rows; per-support-vector arrays hold every
    SVM's vectors one after the other (n_sv rows in all)."""

    n_features: np.ndarray  # (n_svm,) int64: features the model was fitted on
    sv_count: np.ndarray  # (n_svm,) int64: its support vectors
    sv_start: np.ndarray  # (n_svm,) int64: its first row in the per-support-vector arrays
    is_rbf: np.ndarray  # (n_svm,) bool: rbf kernel (else linear)
    width: int  # padded feature count: the widest model's, at least _kernels.FPAD
    gamma: np.ndarray  # (n_svm,) float64; 0 for the linear kernel
    intercept: np.ndarray  # (n_svm,) float64
    scaler_mean: np.ndarray  # (n_svm, width) float64, padded with 0
    scaler_scale: np.ndarray  # (n_svm, width) float64, padded with 1
    center: np.ndarray  # (n_svm, width) float64: c, the support vectors' mean for unscaled RBF models, else 0
    sv_prime: np.ndarray  # (n_sv, width) float64: s' = 2 g (s - c) for RBF models, s for linear ones
    sv_bias: np.ndarray  # (n_sv,) float64: B = -g |s - c|^2 (-0 for linear models)
    dual_coef: np.ndarray  # (n_sv,) float64
    coef_abs_sum: np.ndarray  # (n_svm,) float64: sum |dual_coef|
    sv_sq_max: np.ndarray  # (n_svm,) float64: max_j |s_j - c|^2
    near: np.ndarray  # (n_svm,) float64: -threshold, the decision value the labels turn at (float32 rechecks)
    near_strong: np.ndarray  # (n_svm,) float64: -threshold_strong (-threshold where unknown)
    bound32: np.ndarray = dataclasses.field(init=False)  # (n_svm,) float64: :func:`float32_bound`
    numpy_blocks: dict[str, _NumpyBlocks] = dataclasses.field(default_factory=dict, repr=False)  # per dtype

    def __post_init__(self) -> None:
        self.bound32 = float32_bound(self)

    @functools.cached_property
    def float32(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sv_prime, sv_bias, dual_coef) in float32, for the fused float32 kernel (built on first use)."""
        return (self.sv_prime.astype(np.float32), self.sv_bias.astype(np.float32),
                self.dual_coef.astype(np.float32))


@dataclasses.dataclass(eq=False)
class PreparedPack:
    """The engine's per-pack arrays: built once per process by :func:`prepare`, kept in ``pack.cache``."""

    svm_row: np.ndarray  # (models,) int64: each pack-table row's SVM number, -1 for a skops detector
    svm: SvmArrays | None  # None when the pack holds no array-stored SVM


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


def prepare(pack: ModelPack) -> PreparedPack:
    """The engine's per-pack arrays (built once per process, kept in ``pack.cache``)."""
    prepared = pack.cache.get("engine")
    if prepared is None:
        prepared = pack.cache["engine"] = _prepare(pack)
    return prepared


def _prepare(pack: ModelPack) -> PreparedPack:
    table = pack.table
    svm_table_rows = np.flatnonzero(table["is_svm"])
    svm_row = np.full(len(pack), -1, dtype=np.int64)
    svm_row[svm_table_rows] = table["index"][svm_table_rows]
    if len(svm_table_rows) == 0:
        return PreparedPack(svm_row, None)
    by_number = np.argsort(table["index"][svm_table_rows], kind="stable")
    return PreparedPack(svm_row, _svm_arrays(pack, svm_table_rows[by_number]))


def _svm_arrays(pack: ModelPack, rows: np.ndarray) -> SvmArrays:
    """The :class:`SvmArrays` of the SVMs at pack-table ``rows`` (SVM 0, 1, ... in that order)."""
    table, shards = pack.table, pack.svm_shards
    n_features, sv_count, sv_start = table["n_features"][rows], table["sv_count"][rows], table["coef_offset"][rows]
    is_rbf = table["algorithm"][rows] == "ocsvm-rbf"
    width = max(_kernels.FPAD, int(n_features.max()))
    gamma = _concat(shards, "gamma")
    coef = _concat(shards, "dual_coef")
    two_gamma = np.where(is_rbf, 2.0 * gamma, 0.0)
    center, sv_prime, sq_norm = _expand_support_vectors(shards, n_features, sv_count, sv_start, width, two_gamma,
                                                        is_rbf, is_rbf & ~table["scaled"][rows])
    owner = np.repeat(np.arange(len(rows)), sv_count)
    return SvmArrays(
        n_features=n_features, sv_count=sv_count, sv_start=sv_start, is_rbf=is_rbf, width=width, gamma=gamma,
        intercept=_concat(shards, "intercept"),
        scaler_mean=_per_feature(_concat(shards, "scaler_mean"), n_features, width, 0.0),
        scaler_scale=_per_feature(_concat(shards, "scaler_scale"), n_features, width, 1.0),
        center=center, sv_prime=sv_prime,
        sv_bias=np.multiply(sq_norm, -0.5 * two_gamma[owner]),  # B = -g |s - c|^2
        dual_coef=coef, coef_abs_sum=np.add.reduceat(np.abs(coef), sv_start),
        sv_sq_max=np.maximum.reduceat(sq_norm, sv_start),
        near=-table["threshold"][rows],
        near_strong=-np.where(np.isnan(table["threshold_strong"][rows]), table["threshold"][rows],
                              table["threshold_strong"][rows]),
    )


def _expand_support_vectors(shards: list[dict[str, np.ndarray]], n_features: np.ndarray, sv_count: np.ndarray,
                            sv_start: np.ndarray, width: int, two_gamma: np.ndarray, is_rbf: np.ndarray,
                            centred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center (n_svm, width), s' (n_sv, width), |s - c|^2 (n_sv,)), shard by shard: the support vectors are
    never copied whole. ``centred`` models (unscaled RBF) are moved to their support vectors' mean, so the
    expansion of |x - s|^2 does not cancel in a raw feature space (RBF is shift-invariant)."""
    n_sv = int(sv_count.sum())
    owner = np.repeat(np.arange(len(sv_count)), sv_count)
    center = np.zeros((len(sv_count), width))
    sv_prime = np.empty((n_sv, width))
    sq_norm = np.empty(n_sv)
    m0 = r0 = 0  # the shard's first SVM and first support vector
    for shard in shards:
        m1 = m0 + len(shard["intercept"])
        r1 = r0 + int(sv_count[m0:m1].sum())
        sv = _support_vectors(shard["sv"], n_features[m0:m1], sv_count[m0:m1], width)
        own = owner[r0:r1]
        if centred[m0:m1].any():
            mean = np.add.reduceat(sv, sv_start[m0:m1] - r0, axis=0) / sv_count[m0:m1, None]
            center[m0:m1] = np.where(centred[m0:m1, None], mean, 0.0)
            d = sv - center[own]
        else:
            d = sv
        np.multiply(d, two_gamma[own, None], out=sv_prime[r0:r1])
        linear = ~is_rbf[own]
        if linear.any():
            sv_prime[r0:r1][linear] = d[linear]
        sq_norm[r0:r1] = np.einsum("ij,ij->i", d, d)
        m0, r0 = m1, r1
    return center, sv_prime, sq_norm


def float32_bound(svm: SvmArrays) -> np.ndarray:
    """Per RBF model: a bound on |float32 decision - exact decision|, valid for any input row.

    In float32 the kernel argument t = A + B + sum_k x'_k s'_k (A, B, x', s' rounded once from float64, then
    F+1 additions) has |error| <= gamma_{F+3} * (|A| + |B| + sum |x'_k s'_k|) <= gamma_{F+3} * g (|x'| + |s|)^2
    (Cauchy-Schwarz; x', s centred). With D = |x' - s| we have |x'| + |s| <= 2|s| + D, so
    K * g (|x'|+|s|)^2 <= 8 g |s|^2 + 2 g D^2 exp(-g D^2) <= 8 g S^2 + 2/e with S = max_j |s_j|: each kernel
    value is off by at most gamma_{F+3} (8 g S^2 + 1) + 5u (exp <= 4u, coefficient rounding u). Summing
    n_sv terms in float32 adds gamma_{n_sv+1} * sum |coef|. The bound is twice the total (second-order terms),
    plus 1e-30 for the clamped tail of exp.
    """
    F = np.maximum(svm.n_features, _kernels.FPAD).astype(np.float64)
    per_k = _gamma_n(F + 3) * (8.0 * svm.gamma * svm.sv_sq_max + 1.0) + 5 * _U32
    return 2.0 * (svm.coef_abs_sum * (per_k + _gamma_n(svm.sv_count + 1)) + 1e-30)


# -------------------------------------------------------------------------------------------- SVM paths
def _split_ranges(starts: np.ndarray, counts: np.ndarray, svms: np.ndarray, cap: np.ndarray | int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ranges longer than ``cap`` (per range or one value) cut into consecutive pieces of at most ``cap``."""
    cap = np.broadcast_to(np.asarray(cap, dtype=np.int64), counts.shape)
    pieces = -(-counts // cap)
    if len(counts) == 0 or pieces.max() <= 1:
        return starts, counts, svms
    rep = np.repeat(np.arange(len(counts)), pieces)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    start = starts[rep] + k * cap[rep]
    return start, np.minimum(cap[rep], starts[rep] + counts[rep] - start), svms[rep]


def _numpy_blocks(svm: SvmArrays, dtype: np.dtype) -> _NumpyBlocks:
    """The numpy path's :class:`_NumpyBlocks` in ``dtype`` (built on first use, kept in ``svm.numpy_blocks``)."""
    name = np.dtype(dtype).name
    if name in svm.numpy_blocks:
        return svm.numpy_blocks[name]
    fw, svc, sv0 = svm.width, svm.sv_count, svm.sv_start
    padded = (svc + 7) // 8 * 8
    position = np.zeros(len(svc), dtype=np.int64)
    vectors: dict[int, np.ndarray] = {}
    coef: dict[int, np.ndarray] = {}
    for b in np.unique(padded):
        members = np.flatnonzero(padded == b)
        position[members] = np.arange(len(members))
        js = np.arange(int(b))
        valid = js[None, :] < svc[members, None]
        jdx = np.where(valid, sv0[members, None] + js[None, :], 0)
        rbf = svm.is_rbf[members, None, None]
        block = np.zeros((len(members), int(b), fw + 2))
        block[..., :fw] = svm.sv_prime[jdx]
        block[..., fw + 1] = np.where(rbf[..., 0], svm.sv_bias[jdx], 0.0)
        block[~valid] = 0.0
        block[..., fw] = np.where(rbf[..., 0], 1.0, 0.0)  # padding too: exp(A + 0) <= 1, times a 0 coefficient
        vectors[int(b)] = np.ascontiguousarray(block.transpose(0, 2, 1), dtype=dtype)
        coef[int(b)] = np.where(valid, svm.dual_coef[jdx], 0.0).astype(dtype)
    blocks = svm.numpy_blocks[name] = _NumpyBlocks(padded, position, vectors, coef)
    return blocks


def _svm_numpy(cols: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray, svms: np.ndarray,
               svm: SvmArrays, dtype: np.dtype, out: np.ndarray) -> None:
    """Decision values of SVMs ``svms`` for row ranges [start, start + count) into ``out`` (numpy path).

    Models are grouped by padded support-vector count and padded row count; per chunk of a group one batched
    matmul gives every kernel argument ([x', 0, A, 1] . [s', 1, B] = A + B + x'.s' for RBF; x . s for linear),
    then ``exp`` in place and one batched matrix-vector product with the coefficients."""
    if len(svms) == 0:
        return
    blocks = _numpy_blocks(svm, dtype)
    # a model's rows in pieces small enough that one piece's kernel block fits the chunk budget
    starts, counts, svms = _split_ranges(starts, counts, svms,
                                         np.maximum(16, CHUNK_BYTES // (64 * (svm.sv_count[svms] + 7))))
    sv_pad = blocks.padded_count[svms]
    row_pad = np.where(counts <= 16, counts, (counts + 7) // 8 * 8)
    rbf = svm.is_rbf[svms]
    group = (sv_pad.astype(np.int64) << 32) | (row_pad.astype(np.int64) << 1) | rbf.astype(np.int64)
    item = np.dtype(dtype).itemsize
    with np.errstate(over="ignore", invalid="ignore"):  # |x| beyond float32/64: handled as "no contribution"
        for k in np.unique(group):
            _numpy_group(cols, starts, counts, svms, svm, dtype, out, blocks, np.flatnonzero(group == k), sv_pad,
                         row_pad, rbf, item)


def _numpy_group(cols: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray, svms: np.ndarray,
                 svm: SvmArrays, dtype: np.dtype, out: np.ndarray, blocks: _NumpyBlocks, sel: np.ndarray,
                 sv_pad: np.ndarray, row_pad: np.ndarray, rbf: np.ndarray, item: int) -> None:
    """One group of :func:`_svm_numpy` (same padded support-vector and row counts, same kernel), in chunks."""
    F, fw = len(cols), svm.width
    S, W, is_rbf = int(sv_pad[sel[0]]), int(row_pad[sel[0]]), bool(rbf[sel[0]])
    # temporaries per model: the (W, S) kernel block plus the gathered rows and support vectors
    step = max(1, CHUNK_BYTES // (W * S * item + 8 * (W + S) * (fw + 4)))
    for lo in range(0, len(sel), step):
        m = sel[lo:lo + step]
        qm = svms[m]
        w = np.arange(W)
        valid = w[None, :] < counts[m, None]
        idx = np.where(valid, starts[m, None] + w[None, :], 0)
        X = np.zeros((len(m), W, fw + 2))
        for f, col in enumerate(cols):  # the same operations as StandardScaler.transform, then the centre
            X[..., f] = (col[idx] - svm.scaler_mean[qm, None, f]) / svm.scaler_scale[qm, None, f]
        if is_rbf:
            X[..., :F] -= svm.center[qm, None, :F]
            g = svm.gamma[qm]
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
        T = np.matmul(X, blocks.vectors[S][blocks.position[qm]])  # (M, W, S)
        if is_rbf:
            np.exp(T, out=T)
        coef = blocks.coef[S][blocks.position[qm]]
        dec = np.matmul(T, coef[:, :, None])[:, :, 0].astype(np.float64) + svm.intercept[qm, None]
        out[idx[valid]] = dec[valid]


def _use_numba(backend: str, evals: int) -> bool:
    if backend == "numpy" or not _kernels.HAVE_NUMBA:
        if backend == "numba":
            raise RuntimeError("backend='numba' but numba is not available (or FLEETSCORE_NUMBA=0)")
        return False
    return backend == "numba" or evals >= NUMBA_MIN_EVALS


def _svm_decisions(cols: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray, svms: np.ndarray,
                   svm: SvmArrays, dtype: np.dtype, backend: str, out: np.ndarray) -> int:
    """Decision values (float64 into ``out``) of the SVMs ``svms`` over their row ranges, in ``dtype``. Returns
    the rows the fused float32 kernel rechecked in float64 itself, or -1 when float32 rows still need the
    recheck."""
    F = len(cols)
    rbf = svm.is_rbf[svms]
    lin = ~rbf
    if lin.any():  # linear kernels: no exp, always float64 (cheap; no recheck needed)
        _svm_numpy(cols, starts[lin], counts[lin], svms[lin], svm, np.dtype(np.float64), out)
    if not rbf.any():
        return 0
    starts, counts, svms = starts[rbf], counts[rbf], svms[rbf]
    evals = int((counts * svm.sv_count[svms]).sum())
    if F <= _kernels.FPAD and _use_numba(backend, evals):
        starts, counts, svms = _split_ranges(starts, counts, svms, KERNEL_MAX_ROWS)
        tup = tuple(np.ascontiguousarray(col, dtype=np.float64) for col in cols)
        args = (tup, F, starts.astype(np.int64), counts.astype(np.int64), svms.astype(np.int64), svm.scaler_mean,
                svm.scaler_scale, svm.center, svm.gamma, svm.intercept, svm.sv_start, svm.sv_count)
        if dtype == np.float32:
            return int(_kernels.rbf_f32(*args, *svm.float32, svm.bound32, svm.near, svm.near_strong, svm.sv_prime,
                                        svm.sv_bias, svm.dual_coef, out))
        _kernels.rbf_f64(*args, svm.sv_prime, svm.sv_bias, svm.dual_coef, out)
        return 0
    # the numpy path (also for models with more than FPAD features: the fused kernel is written for FPAD)
    _svm_numpy(cols, starts, counts, svms, svm, dtype, out)
    return -1 if dtype == np.float32 else 0


def _svm_scores(cols: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray, svms: np.ndarray,
                svm: SvmArrays, dtype: str, backend: str, out: np.ndarray) -> int:
    """Fast-path decision values into ``out``; in float32 mode, rows whose value is not clearly away from the
    model's thresholds (beyond :func:`float32_bound` of -threshold and -threshold_strong, NaN included) are
    recomputed in float64. Returns the number rechecked."""
    if dtype == "float64":
        _svm_decisions(cols, starts, counts, svms, svm, np.dtype(np.float64), backend, out)
        return 0
    done = _svm_decisions(cols, starts, counts, svms, svm, np.dtype(np.float32), backend, out)
    if done >= 0:  # the fused kernel rechecked its near-zero rows itself
        return done
    return _recheck_near_zero(cols, starts, counts, svms, svm, backend, out)


def _recheck_near_zero(cols: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray, svms: np.ndarray,
                       svm: SvmArrays, backend: str, out: np.ndarray) -> int:
    """Recompute in float64 the RBF rows of ``out`` whose float32 value is within the model's bound of its
    negated thresholds (or NaN); returns how many."""
    rbf = svm.is_rbf[svms]
    rq, rs, rn = svms[rbf], starts[rbf], counts[rbf]
    if len(rq) == 0:
        return 0
    owner = np.repeat(np.arange(len(rq)), rn)
    first = np.cumsum(rn) - rn
    rows = np.arange(int(rn.sum())) - first[owner] + rs[owner]
    lim, m = svm.bound32[rq][owner], rq[owner]
    flag = ~((np.abs(out[rows] - svm.near[m]) > lim) & (np.abs(out[rows] - svm.near_strong[m]) > lim))
    if not flag.any():
        return 0
    check, who = rows[flag], owner[flag]  # ascending rows, each model's rows contiguous
    run_start = np.concatenate([[0], np.flatnonzero(np.diff(who) != 0) + 1]).astype(np.int64)
    run_len = np.diff(np.concatenate([run_start, [len(check)]])).astype(np.int64)
    dec = np.empty(len(check))
    _svm_decisions([col[check] for col in cols], run_start, run_len, rq[who[run_start]], svm,
                   np.dtype(np.float64), backend, dec)
    out[check] = dec
    return len(check)


# ------------------------------------------------------------------------------------------- the engine
@dataclasses.dataclass(frozen=True)
class ScoreStats:
    """What one :func:`score` call did."""

    rows: int  # feature rows in (= prediction rows out)
    models: int  # (device, sensor) pairs of the input that have a model in the pack
    svm_models: int  # of those, scored on the array fast path
    other_models: int  # scored through their own decision_function
    no_model_windows: int  # rows whose pair has no model (status "no_model")
    failures: dict[Key, str]  # (device, sensor) -> why its model could not score its rows (status "error")
    rechecks: int  # float32 mode: rows recomputed in float64 because their value was near a threshold
    sorted_input: bool  # the rows came sorted by (device, sensor, window_end): none was moved
    change_models: int = 0  # of the models, change-z ones (scored vectorised from the pack's parameters)
    settling_windows: int = 0  # rows not judged: in an announced change of their device (status "settling")


class Scored(NamedTuple):
    """:func:`score`'s result: the prediction rows (columns :data:`contract.PREDICTION_COLUMNS`) and the stats."""

    predictions: pd.DataFrame
    stats: ScoreStats


@dataclasses.dataclass(frozen=True)
class _Runs:
    """The feature rows as output rows: sorted by (device, sensor) string and window_end, in runs of one pair.
    Keys are codes into ``device_names`` / ``sensor_names`` (-1: missing)."""

    order: np.ndarray | None  # (rows,) the input row of each output row; None when the input is in order
    start: np.ndarray  # (runs,) int64: the run's first output row
    count: np.ndarray  # (runs,) int64: its rows
    device: np.ndarray  # (runs,) int64: its device code
    sensor: np.ndarray  # (runs,) int64: its sensor code
    model: np.ndarray  # (runs,) int64: its model's pack-table row, -1 when the pack has none
    device_names: list[str]
    sensor_names: list[str]
    window_end: pd.Series  # (rows,) datetime64[ms, UTC], in input order

    def take(self, values: Any) -> Any:
        """Input-ordered values in output order."""
        return values if self.order is None else values[self.order]

    def rows(self, run: int) -> slice:
        return slice(self.start[run], self.start[run] + self.count[run])

    def key(self, run: int) -> Key:
        return self.device_names[self.device[run]], self.sensor_names[self.sensor[run]]


@dataclasses.dataclass
class _RowStatus:
    """Per output row: the status (an index into WINDOW_STATUSES) and the error reason, filled in step by step."""

    status: np.ndarray  # (rows,) int8
    errors: list[str] = dataclasses.field(default_factory=list)  # distinct reasons, in order of first use
    error_code: np.ndarray | None = None  # (rows,) int32 index into errors, -1 for none; None until an error
    failures: dict[Key, str] = dataclasses.field(default_factory=dict)  # a model's reason for its whole run
    not_ok: int = 0  # rows whose status is not "ok" so far

    def mark_error(self, rows: Any, reason: str) -> None:
        if self.error_code is None:
            self.error_code = np.full(len(self.status), -1, dtype=np.int32)
        if reason not in self.errors:
            self.errors.append(reason)
        self.status[rows] = _ERROR
        self.error_code[rows] = self.errors.index(reason)

    def fail_run(self, runs: _Runs, run: int, reason: str) -> None:
        """Every row of ``run`` an error: its model could not score them."""
        self.failures[runs.key(run)] = reason
        rows = runs.rows(run)
        self.not_ok += int((self.status[rows] == _OK).sum())
        self.mark_error(rows, reason)


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(codes, categories as str) of a key column; code -1 for missing."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy(dtype=object).tolist()
        return np.asarray(col.cat.codes), cats if all(type(v) is str for v in cats) else [str(v) for v in cats]
    pa_arr = getattr(col.array, "_pa_array", None)
    if pa_arr is not None:
        enc = pc.dictionary_encode(pa_arr).combine_chunks() if isinstance(pa_arr, pa.ChunkedArray) else \
            pc.dictionary_encode(pa_arr)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        codes = np.where(np.isnan(codes), -1, codes).astype(np.int64) if codes.dtype.kind == "f" else \
            codes.astype(np.int64)
        return codes, [str(v) for v in enc.dictionary.to_pylist()]
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), [str(v) for v in uniques]


def _rank(cats: list[str]) -> np.ndarray:
    """Each category's rank in string order."""
    r = np.empty(len(cats), dtype=np.int64)
    r[np.argsort(np.asarray(cats, dtype=object), kind="stable")] = np.arange(len(cats))
    return r


@dataclasses.dataclass(frozen=True)
class _PairOrder:
    """Ranks (device, sensor) code pairs by their strings; a pair with a missing key ranks last."""

    device_rank: np.ndarray
    sensor_rank: np.ndarray
    stride: int  # sensor ranks per device rank
    missing: int  # the rank of a pair with a missing key

    @classmethod
    def of(cls, device_names: list[str], sensor_names: list[str]) -> _PairOrder:
        stride = len(sensor_names) + 1
        return cls(_rank(device_names) if device_names else np.zeros(1, dtype=np.int64),
                   _rank(sensor_names) if sensor_names else np.zeros(1, dtype=np.int64),
                   stride, (len(device_names) + 1) * stride)

    def rank(self, device: np.ndarray, sensor: np.ndarray) -> np.ndarray:
        d, s = device.astype(np.int64), sensor.astype(np.int64)
        return np.where((d >= 0) & (s >= 0),
                        self.device_rank[np.maximum(d, 0)] * self.stride + self.sensor_rank[np.maximum(s, 0)],
                        self.missing)


def _window_ms(col: pd.Series) -> pd.Series:
    """window_end as datetime64[ms, UTC]."""
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        col = pd.to_datetime(col, utc=True)
    if str(col.dt.tz) != "UTC":
        col = col.dt.tz_convert("UTC")
    if col.dt.unit != "ms":
        col = col.dt.as_unit("ms")
    return col


def _categorical(codes: np.ndarray, cats: Sequence[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(pd.Index(list(cats), dtype=object)),
                                     validate=False)


def _check_arguments(features: pd.DataFrame, pack: ModelPack, dtype: str, backend: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    missing = [k for k in ("device", "sensor", "window_end", "n", *pack.features) if k not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")


def _sort_into_runs(device: np.ndarray, sensor: np.ndarray, end_ms: np.ndarray, pairs: _PairOrder
                    ) -> tuple[np.ndarray | None, np.ndarray]:
    """(order, run starts): the input is already sorted when its runs of equal (device, sensor) codes have
    strictly increasing pairs and window_end does not decrease inside a run (what the export writes); then no
    row is moved and ``order`` is None."""
    n = len(device)
    if n <= 1:
        return None, np.zeros(n, dtype=np.int64)
    change = (device[1:] != device[:-1]) | (sensor[1:] != sensor[:-1])
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    run_pair = pairs.rank(device[starts], sensor[starts])
    if (np.diff(run_pair) > 0).all() and ((np.diff(end_ms) >= 0) | change).all():
        return None, starts
    row_pair = pairs.rank(device, sensor)
    order = np.lexsort((end_ms, row_pair))
    sorted_pair = row_pair[order]
    return order, np.concatenate([[0], np.flatnonzero(np.diff(sorted_pair) != 0) + 1]).astype(np.int64)


def _model_rows(pack: ModelPack, device: np.ndarray, sensor: np.ndarray, device_names: list[str],
                sensor_names: list[str]) -> np.ndarray:
    """The pack-table row of each (device, sensor) code pair's model, -1 where the pack has none or a key is
    missing (code -1): a lookup per pair (per run: a partition's pairs, not the pack's) in the pack's key index."""
    index = pack.index
    return np.fromiter((index.get((device_names[d], sensor_names[s]), -1) if d >= 0 and s >= 0 else -1
                        for d, s in zip(device.tolist(), sensor.tolist(), strict=True)),
                       dtype=np.int64, count=len(device))


def _group_runs(features: pd.DataFrame, pack: ModelPack) -> _Runs:
    """The rows' output order, their runs of one (device, sensor) and each run's model."""
    device, device_names = _codes(features["device"])
    sensor, sensor_names = _codes(features["sensor"])
    window_end = _window_ms(features["window_end"])
    end_ms = window_end.array.asi8 if len(features) else np.zeros(0, dtype=np.int64)
    order, start = _sort_into_runs(device, sensor, end_ms, _PairOrder.of(device_names, sensor_names))
    count = np.diff(np.concatenate([start, [len(features)]])).astype(np.int64)
    first = start if order is None else order[start]
    run_device, run_sensor = device[first].astype(np.int64), sensor[first].astype(np.int64)
    return _Runs(order=order, start=start, count=count, device=run_device, sensor=run_sensor,
                 model=_model_rows(pack, run_device, run_sensor, device_names, sensor_names),
                 device_names=device_names, sensor_names=sensor_names, window_end=window_end)


def _feature_columns(features: pd.DataFrame, names: Sequence[str], runs: _Runs
                     ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(the feature columns as float64 in output order, each (rows,), the (rows,) mask of rows whose features
    are all finite or None when every row's are). Non-finite values are replaced by 0 so that they cannot
    propagate into other rows' sums; their rows are marked as errors at the end."""
    cols = [runs.take(features[f].to_numpy(dtype=np.float64, copy=False)) for f in names]
    if not len(features) or all(np.isfinite(col.min()) and np.isfinite(col.max()) for col in cols):
        return cols, None
    finite = np.ones(len(features), dtype=bool)
    for col in cols:
        finite &= np.isfinite(col)
    return [np.where(finite, col, 0.0) for col in cols], finite


def _route_runs(runs: _Runs, pack: ModelPack, n_features: int, outcome: _RowStatus
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(runs for the SVM fast path, runs of change-z models, runs for their own decision_function). Runs without a
    model become "no_model"; a model fitted on another feature count fails its run."""
    t = pack.table if len(pack) else {k: np.zeros(1, dtype=np.int64) for k in ("n_features", "is_svm", "is_change",
                                                                                  "index")}
    has = runs.model >= 0
    safe = np.maximum(runs.model, 0)
    for g in np.flatnonzero(~has):
        outcome.status[runs.rows(g)] = _NO_MODEL
        outcome.not_ok += int(runs.count[g])
    nf = np.where(has, t["n_features"][safe], -1)
    wrong = has & (nf >= 0) & (nf != n_features)
    for g in np.flatnonzero(wrong):
        outcome.fail_run(runs, int(g), f"model expects {nf[g]} features, the pack provides {n_features} "
                                       f"({', '.join(pack.features)})")
    ok = has & ~wrong
    is_svm, is_change = t["is_svm"][safe].astype(bool), t["is_change"][safe].astype(bool)
    return (np.flatnonzero(ok & is_svm), np.flatnonzero(ok & is_change),
            np.flatnonzero(ok & ~is_svm & ~is_change))


def _mark_settling(features: pd.DataFrame, runs: _Runs, outcome: _RowStatus) -> int:
    """Rows still "ok" whose ``settling`` column is true become "settling" (not judged); their count."""
    if "settling" not in features.columns:
        return 0
    rows = runs.take(features["settling"].to_numpy(dtype=bool)) & (outcome.status == _OK)
    outcome.status[rows] = _SETTLING
    count = int(rows.sum())
    outcome.not_ok += count
    return count


def _score_change_runs(features: pd.DataFrame, runs: _Runs, change_runs: np.ndarray, pack: ModelPack,
                       decision: np.ndarray, finite: np.ndarray | None) -> None:
    """Decision values (-score) of the change-z runs into ``decision``, in one vectorised pass over their rows
    (:func:`change.change_scores` with each row's model's parameters). Their features are read again unfilled: a
    NaN change (no baseline) is no evidence, not an error."""
    if not len(change_runs):
        return
    chosen = np.zeros(len(runs.start), dtype=bool)
    chosen[change_runs] = True
    run_of_row = np.repeat(np.arange(len(runs.start)), runs.count)  # runs cover the output rows in order
    rows = np.flatnonzero(chosen[run_of_row])
    X = np.column_stack([runs.take(features[f].to_numpy(dtype=np.float64))[rows] for f in pack.features])
    params = pack.change_params[pack.table["index"][runs.model[run_of_row[rows]]]]
    decision[rows] = -change.change_scores(X, params)
    if finite is not None:
        finite[rows] = True


def _score_svm_runs(cols: list[np.ndarray], runs: _Runs, svm_runs: np.ndarray, prepared: PreparedPack, dtype: str,
                    backend: str, decision: np.ndarray, outcome: _RowStatus) -> int:
    """Decision values of the SVM runs into ``decision``, all in one batch; if the batch raises, one model at a
    time so that a bad model fails only its own run. Returns the float32 rows rechecked."""
    if not len(svm_runs):
        return 0
    svms = prepared.svm_row[runs.model[svm_runs]]
    try:
        return _svm_scores(cols, runs.start[svm_runs], runs.count[svm_runs], svms, prepared.svm, dtype, backend,
                           decision)
    except Exception as exc:  # noqa: BLE001 - retried model by model below
        log.warning("batched SVM scoring failed (%s: %s); scoring %d model(s) one at a time", type(exc).__name__,
                    exc, len(svm_runs))
    for g in svm_runs:
        try:
            _svm_scores(cols, runs.start[[g]], runs.count[[g]], prepared.svm_row[runs.model[[g]]], prepared.svm,
                        "float64", "numpy", decision)
        except Exception as exc:  # noqa: BLE001
            outcome.fail_run(runs, int(g), f"{type(exc).__name__}: {exc}")
    return 0


def _score_other_runs(cols: list[np.ndarray], runs: _Runs, other_runs: np.ndarray, pack: ModelPack,
                      decision: np.ndarray, outcome: _RowStatus) -> None:
    """Decision values of the skops detectors' runs into ``decision``, one ``decision_function`` call each."""
    names = list(pack.features)
    for g in other_runs:
        est = pack.others[int(pack.table["index"][runs.model[g]])]
        rows = runs.rows(g)
        X = np.column_stack([col[rows] for col in cols])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                Xin = pd.DataFrame(X, columns=names) if hasattr(est, "feature_names_in_") else X
                d = np.asarray(est.decision_function(Xin), dtype=np.float64).reshape(-1)
            if d.shape != (runs.count[g],):
                raise ValueError(f"decision_function returned {d.shape[0]} values for {runs.count[g]} rows")
            decision[rows] = d
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded, the others are scored
            outcome.fail_run(runs, int(g), f"{type(exc).__name__}: {exc}")


def _scores(decision: np.ndarray, runs: _Runs, pack: ModelPack, finite: np.ndarray | None,
            outcome: _RowStatus) -> np.ndarray:
    """The (rows,) scores: decision values negated in place, NaN for every row whose status is not "ok" (rows
    with non-finite features or decision values are marked here)."""
    if finite is not None:
        bad = ~finite & (outcome.status == _OK)
        outcome.not_ok += int(bad.sum())
        outcome.mark_error(bad, "non-finite feature values")
    zero = np.flatnonzero(decision == 0.0)
    if len(zero):  # libsvm: an exact 0 is an outlier (sum > 0 ? 1 : -1)
        run_of = np.searchsorted(runs.start, zero, side="right") - 1
        algo = pack.table["algorithm"][np.maximum(runs.model[run_of], 0)] if len(pack) else \
            np.zeros(0, dtype=object)
        svm_zero = zero[[str(a).startswith("ocsvm-") for a in algo]]
        decision[svm_zero] = -np.nextafter(0.0, 1.0)
    score = np.negative(decision, out=decision)
    if int(np.count_nonzero(np.isnan(score))) != outcome.not_ok:  # a scored row came out NaN (e.g. a skops model)
        outcome.mark_error((outcome.status == _OK) & np.isnan(score), "non-finite decision value")
    if outcome.not_ok:
        score[outcome.status != _OK] = np.nan
    return score


def _row_thresholds(runs: _Runs, pack: ModelPack, outcome: _RowStatus) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, threshold_strong), each (rows,) float64 in output order: the row's model's values, NaN for
    rows whose status is not "ok" (one gather per run, then one repeat)."""
    out = []
    for name in ("threshold", "threshold_strong"):
        per_run = pack.table[name][np.maximum(runs.model, 0)] if len(pack) else np.zeros(len(runs.model))
        col = np.repeat(per_run, runs.count)
        if outcome.not_ok:
            col[outcome.status != _OK] = np.nan
        out.append(col)
    return out[0], out[1]


def _prediction_frame(features: pd.DataFrame, runs: _Runs, score: np.ndarray, outcome: _RowStatus,
                      pack: ModelPack, run_id: str) -> pd.DataFrame:
    """The prediction rows in output order (columns :data:`contract.PREDICTION_COLUMNS`)."""
    N = len(features)
    threshold, strong = _row_thresholds(runs, pack, outcome)
    error_code = outcome.error_code if outcome.error_code is not None else np.full(N, -1, dtype=np.int8)
    return pd.DataFrame({
        "device": runs.take(features["device"].array),
        "sensor": runs.take(features["sensor"].array),
        "window_end": runs.take(runs.window_end.array),
        "n": runs.take(features["n"].to_numpy(dtype=np.int64)),
        **{k: (runs.take(features[k].to_numpy(dtype=np.float64)) if k in features.columns else np.full(N, np.nan))
           for k in ("mean", "min", "max", "std")},
        "score": score,
        "threshold": threshold,
        "threshold_strong": strong,
        "is_anomaly": score > threshold,
        "model_version": _categorical(np.zeros(N, dtype=np.int8), [pack.version]),
        "run_id": _categorical(np.zeros(N, dtype=np.int8), [str(run_id)]),
        "status": _categorical(outcome.status, WINDOW_STATUSES),
        "error": _categorical(error_code, outcome.errors),
    }, copy=False)


def score(features: pd.DataFrame, pack: ModelPack, run_id: str = "", dtype: str = "float64", *,
          backend: str = "auto") -> Scored:
    """Score feature rows against a model pack; see the module docstring.

    ``features``: columns device, sensor, window_end (UTC), n and the pack's features (``pack.features``;
    default mean, min, max, std). Extra columns are ignored. ``backend``: "auto" (numba when installed and the
    batch is large enough), "numba" or "numpy". Returns the predictions (columns
    :data:`contract.PREDICTION_COLUMNS`; model_version, run_id, status and error are Categoricals of strings)
    and the call's :class:`ScoreStats`.
    """
    _check_arguments(features, pack, dtype, backend)
    prepared = prepare(pack)
    runs = _group_runs(features, pack)
    cols, finite = _feature_columns(features, pack.features, runs)
    outcome = _RowStatus(status=np.zeros(len(features), dtype=np.int8))
    svm_runs, change_runs, other_runs = _route_runs(runs, pack, len(cols), outcome)
    settling = _mark_settling(features, runs, outcome)
    decision = np.full(len(features), -np.nan)  # negated at the end: unscored rows get a plain NaN (no sign bit)
    rechecks = _score_svm_runs(cols, runs, svm_runs, prepared, dtype, backend, decision, outcome)
    _score_change_runs(features, runs, change_runs, pack, decision, finite)
    _score_other_runs(cols, runs, other_runs, pack, decision, outcome)
    scores = _scores(decision, runs, pack, finite, outcome)
    stats = ScoreStats(rows=len(features), models=int((runs.model >= 0).sum()), svm_models=len(svm_runs),
                       other_models=len(other_runs), no_model_windows=int((outcome.status == _NO_MODEL).sum()),
                       failures=outcome.failures, rechecks=rechecks, sorted_input=runs.order is None,
                       change_models=len(change_runs), settling_windows=settling)
    return Scored(_prediction_frame(features, runs, scores, outcome, pack, run_id), stats)
