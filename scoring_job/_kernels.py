"""Fused RBF one-class-SVM kernels compiled with numba (optional: the engine has a pure-numpy path).

For each model, its rows are copied (scaled, centred, padded) into a small block that stays in L1 cache, then
for every support vector j and row i::

    t_ij = A_i + B_j + sum_k x'_ik s'_jk        (= -gamma * |x_i - s_j|^2, expanded)
    acc_i += coef_j * exp(t_ij)                  (sequential over j, the order libsvm sums in)

with ``x' = x - c``, ``A = -gamma |x'|^2``, ``s' = 2 gamma (s - c)``, ``B = -gamma |s - c|^2`` and ``c`` a
per-model centre (0 for scaled models, the mean of the support vectors otherwise) so the expansion does not
cancel catastrophically. The inner loop runs over rows, so it vectorises (8 float64 or 16 float32 lanes on
AVX-512) without reordering any floating-point sum. ``exp`` is inlined: Cody-Waite range reduction and a
degree-10 (float64, <= 3 ulp measured) or degree-6 (float32, <= 1.5 ulp) polynomial, scaled by 2**n built in
the exponent bits. Arguments below -708 (float64) / -87 (float32) are clamped: exp there is < 3e-308 / 2e-38,
far below any decision value's resolution.

Compiled with ``fastmath={"contract"}`` only: multiply-adds may fuse into FMA (one rounding instead of two,
never less accurate); no reassociation, no NaN/Inf assumptions, so the Cody-Waite split and the summation
order stay exactly as written.

Set ``FLEETSCORE_NUMBA=0`` to force the numpy path. On AVX-512 CPUs LLVM prefers 256-bit vectors by default;
unless ``NUMBA_CPU_FEATURES`` is set, this module asks for 512-bit ones (``FLEETSCORE_NUMBA_AVX512=0`` keeps
LLVM's choice). That is a process-wide numba setting and applies only if numba has not compiled anything yet.
"""

from __future__ import annotations

import os
import time

import numpy as np

HAVE_NUMBA = False
if os.environ.get("FLEETSCORE_NUMBA", "1") != "0":
    try:
        import numba
        from llvmlite import ir
        from numba import types
        from numba.extending import intrinsic, overload

        HAVE_NUMBA = True
    except ImportError:  # pragma: no cover - exercised when numba is not installed
        HAVE_NUMBA = False

#: Features per fused kernel (models with fewer features are zero-padded, exactly: 0 * 0 adds 0).
FPAD = 4

# float64 exp: Chebyshev interpolant of exp on [-ln2/2, ln2/2], degree 10 (max rel. error 3.3e-16 before rounding)
_P = (1.0, 1.0000000000000067, 0.5000000000000006, 0.16666666666554406, 0.04166666666657314,
      0.008333333385667782, 0.0013888888932488599, 0.00019841170270440067, 2.4801504346997686e-05,
      2.764018079620985e-06, 2.7626357241447223e-07)
# float32 exp: degree 6 on [-1.01 ln2/2, 1.01 ln2/2] (2.7e-9 before rounding)
_Q = (1.0, 1.00000004003887, 0.5000000050018797, 0.16666405302634305, 0.041666340142225575,
      0.008375968226311425, 0.0013942159833661436)


def _configure_vector_width() -> None:
    if os.environ.get("FLEETSCORE_NUMBA_AVX512", "1") == "0" or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    try:
        import llvmlite.binding as llb

        features = llb.get_host_cpu_features()
        if features.get("avx512f") and not numba.config.CPU_FEATURES:
            numba.config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


if HAVE_NUMBA:
    _configure_vector_width()

    def _njit(f):
        try:
            return numba.njit(cache=True, fastmath={"contract"}, nogil=True)(f)
        except Exception:  # noqa: BLE001 - e.g. no writable cache location: compile per process instead
            return numba.njit(cache=False, fastmath={"contract"}, nogil=True)(f)

    _inline = numba.njit(inline="always", fastmath={"contract"})

    @intrinsic
    def _f64_bits(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(64))

        return types.int64(types.float64), codegen

    @intrinsic
    def _bits_f64(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(types.int64), codegen

    @intrinsic
    def _f32_bits(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _bits_f32(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10 = _P
    _LOG2E = 1.4426950408889634
    _L2HI = 0.6931471803691238  # ln 2 split for Cody-Waite: high part has trailing zero bits
    _L2LO = 1.9082149292705877e-10
    _MAGIC = 6755399441055744.0  # 1.5 * 2**52: adding it rounds to an integer kept in the low mantissa bits
    _BIAS = np.int64(1023 << 52)
    _LO = -708.0

    Q0, Q1, Q2, Q3, Q4, Q5, Q6 = (np.float32(q) for q in _Q)
    _LOG2E32 = np.float32(1.4426950408889634)
    _L2HI32 = np.float32(0.693359375)
    _L2LO32 = np.float32(-2.12194440e-4)
    _MAGIC32 = np.float32(12582912.0)  # 1.5 * 2**23
    _BIAS32 = np.int32(127 << 23)
    _SH32 = np.int32(23)
    _LO32 = np.float32(-87.0)

    @_inline
    def exp64(t):
        t = max(t, _LO)
        kf = t * _LOG2E + _MAGIC
        nf = kf - _MAGIC
        r = t - nf * _L2HI
        r = r - nf * _L2LO
        p = P10
        p = p * r + P9
        p = p * r + P8
        p = p * r + P7
        p = p * r + P6
        p = p * r + P5
        p = p * r + P4
        p = p * r + P3
        p = p * r + P2
        p = p * r + P1
        p = p * r + P0
        return p * _bits_f64((_f64_bits(kf) << 52) + _BIAS)

    @_inline
    def exp32(t):
        t = max(t, _LO32)
        kf = t * _LOG2E32 + _MAGIC32
        nf = kf - _MAGIC32
        r = t - nf * _L2HI32
        r = r - nf * _L2LO32
        p = Q6
        p = p * r + Q5
        p = p * r + Q4
        p = p * r + Q3
        p = p * r + Q2
        p = p * r + Q1
        p = p * r + Q0
        return p * _bits_f32((_f32_bits(kf) << _SH32) + _BIAS32)

    def _exp(t):
        """exp64 or exp32, by the argument's type (resolved at compile time, inlined)."""
        raise NotImplementedError  # only callable from compiled code

    @overload(_exp, inline="always", fastmath={"contract"})
    def _exp_for(t):
        if isinstance(t, types.Float) and t.bitwidth == 32:
            return lambda t: exp32(t)
        return lambda t: exp64(t)

    @_njit
    def vexp64(x, out):
        """out[i] = exp(x[i]) for x <= 0 (the kernel's exp; for tests and the exp-rate benchmark)."""
        for i in range(x.shape[0]):
            out[i] = exp64(x[i])

    @_njit
    def vexp32(x, out):
        for i in range(x.shape[0]):
            out[i] = exp32(x[i])

    @_inline
    def _stride(npad, lanes, itemsize):
        """A segment stride >= npad whose multiples avoid 4 KiB aliasing between the block's segments."""
        st = npad
        for _ in range(8):
            ok = True
            for d in range(1, 6):
                w = (d * st * itemsize) % 4096
                if w < 256 or w > 3840:
                    ok = False
            if ok:
                break
            st += lanes
        return st

    @_inline
    def _fill_block(blk, a64, st, cols, sel, nfeat, r0, n, npad, mean, scale, center, g):
        """One model's rows into blk (float64 or float32): x'_k at [k*st, k*st+npad), A at [4st, ...), acc at
        [5st, ...) = 0; rows n..npad-1 are zero padding. Rows r0..r0+n-1 of ``cols``, or ``sel[0:n]`` when
        ``sel`` is non-empty. x' is computed in float64 with the same operations as StandardScaler.transform
        ((x - mean) / scale), then centred; A = -g |x'|^2 in float64; both are stored in the block's dtype."""
        for i in range(npad):
            a64[i] = 0.0
            blk[5 * st + i] = 0.0
        gathered = sel.shape[0] > 0
        for k in range(FPAD):
            base = k * st
            if k < nfeat and g != 0.0:
                col = cols[k]
                mk = mean[k]
                sk = scale[k]
                ck = center[k]
                if gathered:
                    for i in range(n):
                        x = (col[sel[i]] - mk) / sk - ck
                        blk[base + i] = x
                        a64[i] += x * x
                else:
                    for i in range(n):
                        x = (col[r0 + i] - mk) / sk - ck
                        blk[base + i] = x
                        a64[i] += x * x
                for i in range(n, npad):
                    blk[base + i] = 0.0
            else:  # a padded feature, or gamma == 0 (every kernel value is exactly 1)
                for i in range(npad):
                    blk[base + i] = 0.0
        bad = 0.0
        for i in range(npad):
            blk[4 * st + i] = -g * a64[i]
            t = blk[4 * st + i] + blk[i] * 0.0 + blk[st + i] * 0.0 + blk[2 * st + i] * 0.0 + blk[3 * st + i] * 0.0
            bad += t - t  # NaN iff a value of this row overflowed the block's dtype
        if bad != 0.0:  # rare: |x| beyond the dtype's range; every kernel value of the row is 0 (exp clamps)
            for i in range(n):
                t = blk[4 * st + i] + blk[i] * 0.0 + blk[st + i] * 0.0 + blk[2 * st + i] * 0.0 + blk[3 * st + i] * 0.0
                if t != t:
                    for k in range(FPAD):
                        blk[k * st + i] = 0.0
                    blk[4 * st + i] = -np.inf

    @_inline
    def _acc(blk, st, npad, j, j1, svp, bsv, coef):
        """acc_i += coef_j * exp(A_i + B_j + x'_i . s'_j) for j in [j, j1), in order (two per pass over rows);
        float64 or float32 throughout, as the block and the support-vector arrays are."""
        x0 = blk[0:npad]
        x1 = blk[st:st + npad]
        x2 = blk[2 * st:2 * st + npad]
        x3 = blk[3 * st:3 * st + npad]
        a = blk[4 * st:4 * st + npad]
        acc = blk[5 * st:5 * st + npad]
        while j + 1 < j1:
            s0 = svp[j, 0]
            s1 = svp[j, 1]
            s2 = svp[j, 2]
            s3 = svp[j, 3]
            b0 = bsv[j]
            c0 = coef[j]
            u0 = svp[j + 1, 0]
            u1 = svp[j + 1, 1]
            u2 = svp[j + 1, 2]
            u3 = svp[j + 1, 3]
            b1 = bsv[j + 1]
            c1 = coef[j + 1]
            for i in range(npad):
                xa = x0[i]
                xb = x1[i]
                xc = x2[i]
                xd = x3[i]
                ai = a[i]
                t = ai + b0
                t += xa * s0
                t += xb * s1
                t += xc * s2
                t += xd * s3
                v = ai + b1
                v += xa * u0
                v += xb * u1
                v += xc * u2
                v += xd * u3
                acc[i] = (acc[i] + c0 * _exp(t)) + c1 * _exp(v)
            j += 2
        if j < j1:
            s0 = svp[j, 0]
            s1 = svp[j, 1]
            s2 = svp[j, 2]
            s3 = svp[j, 3]
            b0 = bsv[j]
            c0 = coef[j]
            for i in range(npad):
                t = a[i] + b0
                t += x0[i] * s0
                t += x1[i] * s1
                t += x2[i] * s2
                t += x3[i] * s3
                acc[i] += c0 * _exp(t)

    @_njit
    def rbf_f64(cols, nfeat, r0s, ns, rows, mean4, scale4, center4, gamma, intercept, sv0, svc, svp, bsv, coef,
                out):
        """float64 decision values of RBF SVMs ``rows`` (rows of the SVM arrays) over row ranges
        [r0s[m], r0s[m] + ns[m]) of ``cols`` (a tuple of nfeat <= FPAD float64 columns) into ``out``."""
        nmax = 0
        for m in range(r0s.shape[0]):
            nmax = max(nmax, ns[m])
        npad_max = (nmax + 7) // 8 * 8
        blk = np.empty(6 * (npad_max + 64), dtype=np.float64)
        a64 = np.empty(npad_max, dtype=np.float64)
        nosel = np.empty(0, dtype=np.int64)
        for m in range(r0s.shape[0]):
            q = rows[m]
            n = ns[m]
            r0 = r0s[m]
            npad = (n + 7) // 8 * 8
            st = _stride(npad, 8, 8)
            _fill_block(blk, a64, st, cols, nosel, nfeat, r0, n, npad, mean4[q], scale4[q], center4[q], gamma[q])
            _acc(blk, st, npad, sv0[q], sv0[q] + svc[q], svp, bsv, coef)
            b = intercept[q]
            for i in range(n):
                out[r0 + i] = blk[5 * st + i] + b

    @_njit
    def rbf_f32(cols, nfeat, r0s, ns, rows, mean4, scale4, center4, gamma, intercept, sv0, svc, svp32, bsv32,
                coef32, bound, near, near2, svp, bsv, coef, out):
        """float32 bulk of :func:`rbf_f64` (svp32/bsv32/coef32); every row whose float32 value is not beyond the
        model's ``bound`` of its decision values ``near`` or ``near2`` (the negated alert thresholds; NaN values
        included) is recomputed in float64 (svp/bsv/coef). Returns the rows rechecked."""
        nmax = 0
        for m in range(r0s.shape[0]):
            nmax = max(nmax, ns[m])
        npad_max = (nmax + 15) // 16 * 16
        blk = np.empty(6 * (npad_max + 128), dtype=np.float32)
        blk64 = np.empty(6 * (npad_max + 64), dtype=np.float64)
        a64 = np.empty(npad_max, dtype=np.float64)
        sel = np.empty(npad_max, dtype=np.int64)
        nosel = np.empty(0, dtype=np.int64)
        rechecked = 0
        for m in range(r0s.shape[0]):
            q = rows[m]
            n = ns[m]
            r0 = r0s[m]
            npad = (n + 15) // 16 * 16
            st = _stride(npad, 16, 4)
            _fill_block(blk, a64, st, cols, nosel, nfeat, r0, n, npad, mean4[q], scale4[q], center4[q], gamma[q])
            _acc(blk, st, npad, sv0[q], sv0[q] + svc[q], svp32, bsv32, coef32)
            b = intercept[q]
            lim = bound[q]
            c1 = near[q]
            c2 = near2[q]
            k = 0
            for i in range(n):
                d = np.float64(blk[5 * st + i]) + b
                out[r0 + i] = d
                if not (abs(d - c1) > lim and abs(d - c2) > lim):
                    sel[k] = r0 + i
                    k += 1
            if k > 0:  # near a threshold: recompute these rows in float64 so the labels are the float64 path's
                kpad = (k + 7) // 8 * 8
                st64 = _stride(kpad, 8, 8)
                _fill_block(blk64, a64, st64, cols, sel[:k], nfeat, r0, k, kpad, mean4[q], scale4[q], center4[q],
                            gamma[q])
                _acc(blk64, st64, kpad, sv0[q], sv0[q] + svc[q], svp, bsv, coef)
                for i in range(k):
                    out[sel[i]] = blk64[5 * st64 + i] + b
                rechecked += k
        return rechecked


if HAVE_NUMBA:

    @_inline
    def _exchange(buf, a, b):
        """Put the smaller of buf[a], buf[b] (never NaN) at a, the larger at b."""
        x, y = buf[a], buf[b]
        buf[a], buf[b] = min(x, y), max(x, y)

    @_njit
    def baseline_change(mean, pair, end, rows, context, reach_ms, out):
        """change.baseline_change's numbers for ``rows`` into ``out`` (rows sorted by (pair, end)): per row, its
        mean minus the median of the non-NaN means of the up to ``context`` rows before it of the same pair that
        end at most ``reach_ms`` earlier (NaN when there is none): the middle value, or half the sum of the two
        middle ones, as numpy's nanmedian. Six values (a full baseline of the default context) are sorted by a
        sorting network (branch-free: 12 exchanges), others by insertion."""
        buf = np.empty(max(context, 1))
        for t in range(rows.shape[0]):
            i = rows[t]
            k = 0
            for j in range(1, context + 1):
                b = i - j
                if b < 0 or pair[b] != pair[i] or end[b] < end[i] - reach_ms:
                    break  # sorted rows: every row further back is of another pair or further back in time
                v = mean[b]
                if v == v:  # not NaN
                    buf[k] = v
                    k += 1
            if k == 6:  # written out: a loop over the pairs ran 2.6x slower (it does not become straight-line code)
                _exchange(buf, 0, 5)
                _exchange(buf, 1, 3)
                _exchange(buf, 2, 4)
                _exchange(buf, 1, 2)
                _exchange(buf, 3, 4)
                _exchange(buf, 0, 3)
                _exchange(buf, 2, 5)
                _exchange(buf, 0, 1)
                _exchange(buf, 2, 3)
                _exchange(buf, 4, 5)
                _exchange(buf, 1, 2)
                _exchange(buf, 3, 4)
            else:
                for a in range(1, k):
                    v = buf[a]
                    m = a
                    while m > 0 and buf[m - 1] > v:
                        buf[m] = buf[m - 1]
                        m -= 1
                    buf[m] = v
            if k == 0:
                out[i] = np.nan
            elif k % 2 == 1:
                out[i] = mean[i] - buf[k // 2]
            else:
                out[i] = mean[i] - (buf[k // 2 - 1] + buf[k // 2]) / 2.0


if HAVE_NUMBA:

    @_njit
    def unchanged_windows(low, high, pair, end, context, reach_ms, out):
        """change.unchanged_windows' counts into ``out`` (rows sorted by (pair, end)): per row, 0 unless its
        readings held one value (low == high, finite), else 1 plus each of the up to ``context`` rows before it of
        the same pair, ending at most ``reach_ms`` earlier, that held that same value, back to the first that did
        not."""
        for i in range(low.shape[0]):
            v = low[i]
            if not (v == high[i] and np.isfinite(v)):
                out[i] = 0.0
                continue
            count = 1.0
            for j in range(1, context + 1):
                b = i - j
                if b < 0 or pair[b] != pair[i] or end[b] < end[i] - reach_ms or low[b] != v or high[b] != v:
                    break  # out of reach, or a window that did not hold this value
                count += 1.0
            out[i] = count


def warm() -> None:
    """Compile (or load from numba's cache) the kernels change-z scoring calls, with the argument types it passes
    (``change.baseline_change``, ``change.unchanged_windows``): about 0.3 s on a first call. A process that forks
    scoring workers calls this once first so that each worker does not pay it for itself. Nothing without numba."""
    if HAVE_NUMBA:
        rows = np.arange(2, dtype=np.int64)
        baseline_change(np.zeros(2), np.zeros(2, dtype=np.int64), rows, rows, 6, 6, np.empty(2))
        unchanged_windows(np.zeros(2), np.zeros(2), np.zeros(2, dtype=np.int64), rows, 6, 6, np.empty(2))


def numpy_exp_rate(n: int = 1 << 20, repeats: int = 20, seed: int = 0) -> float:
    """This machine's numpy float64 ``exp`` rate (evaluations/s, best of ``repeats``) on kernel-like arguments."""
    x = -np.random.default_rng(seed).random(n) * 20.0
    out = np.empty_like(x)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.exp(x, out=out)
        best = min(best, time.perf_counter() - t)
    return n / best
