"""Calibrated alert thresholds per model, from its training windows alone (pure numpy / scikit-learn).

A model's raw score (the negated decision function) means different things for different models: a one-class
SVM's margin support vectors sit within numeric noise of 0, so ``score > 0`` flags a few percent of normal
windows. Instead each model gets a threshold learned from *out-of-fold* scores of its own training windows:

1. :func:`time_blocks` cuts the pair's training windows (in time order) into ``folds`` contiguous blocks;
2. :func:`out_of_fold_margins` fits a clone of the detector on the other blocks and scores the held-out block,
   so no window's score comes from a model that saw it (neighbouring windows of the same block are held out
   with it, which keeps the autocorrelated neighbours from leaking too);
3. :func:`calibrate` takes the conformal quantile at 1 - ``false_rate`` of those scores, as *margins*.

A one-class SVM's score is bounded and its scale grows with the training size: score = rho (1 - d) with
d = sum(alpha K) / rho > 0 (dual coefficients are non-negative), so no window scores above rho, and a fold's model
(fitted on fewer windows) has a smaller rho than the final one. Its scores are therefore compared as the margin
m = -ln(d) = -ln(1 - score / rho), which is free of the scale, unbounded (about gamma times the squared
distance to the support vectors for a far window: a light, exponential-like tail) and maps back below rho:
threshold = rho (1 - exp(-m)) with the final model's rho. Other detectors' margins are their scores. When the rate is
   finer than the sample resolves (``(n + 1)(1 - rate) > n``: e.g. 1e-3 with 576 windows) the tail is
   extrapolated as an exponential tail through two upper quantiles: with q_a, q_b the quantiles at 1 - TAIL_FROM
   and 1 - TAIL_TO, Q(1 - rate) = q_b + (q_b - q_a) ln(TAIL_TO / rate) / ln(TAIL_FROM / TAIL_TO): the spread
   per decade of the upper quantiles, carried on past q_b (when q_a = q_b, a score with an atom over its upper
   decile, the spread from the median to q_b instead). Not the sample maximum, nor a mean excess: a single
   unlabelled outlier in the training data would set either, while it moves q_a and q_b by one rank. (Measured
   on the simulator: a median-excess scale under-reads the tail, whose upper decile is heavier than
   exponential, and put the 1e-3 threshold below the empirical 1e-2 quantile.) The ``strong`` threshold is the
   same construction at ``false_rate * STRONG_FACTOR``, and never below the second-highest training margin: one
   window above it may be an unlabelled outlier, two or more are something the pair does (a sensor that reports
   only changes has rare but normal windows that an exponential tail through its upper quantiles puts far out).

Nothing here looks at the windows being scored: the thresholds are fixed when the pack is written.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

#: Default target false-alarm rate per window (ALERT_FALSE_RATE). Measured on the simulator (statistics + time of
#: day; tuning seeds 101-106, 2 clean then 2 faulty days): 1e-2 flags 0.50-0.53 % of normal windows and catches
#: 0.97-0.99 of the faults with at least one window; 1e-3 flags 0.23-0.24 % and catches only 0.88-0.90 (a recall no
#: alert rule can win back), and at 576 training windows it needs the tail extrapolation, which the heavier than
#: exponential tail of normal windows under-reads. 1e-2 is resolved by any pair with 99 training windows or more.
FALSE_RATE = 1e-2
#: Default number of contiguous time blocks for the out-of-fold scores.
FOLDS = 5
#: The strong threshold's rate is the threshold's times this (the exponential tail carried that far out). Measured
#: with change-z on the varied simulator (tuning seeds 103-105, rate 1e-2, ALERT_PERSISTENCE 3/4): 1e-6 adds 9
#: false alerts per 1,000 pair-days (13.9 against 4.6) and catches no fault that persistence does not, 1e-9 none;
#: a strong window is one far out in the tail of everything the pair did in training.
STRONG_FACTOR = 1e-9
#: The exponential tail runs through the quantiles at 1 - TAIL_FROM and 1 - TAIL_TO of the scores.
TAIL_FROM, TAIL_TO = 0.1, 0.01


def time_blocks(n: int, folds: int) -> list[np.ndarray]:
    """``folds`` contiguous index blocks covering range(n) in order (sizes differ by at most one)."""
    if folds < 2 or n < folds:
        raise ValueError(f"need folds >= 2 and at least one window per fold (n={n}, folds={folds})")
    return [b for b in np.array_split(np.arange(n), folds)]


def svm_rho(est: Any) -> float | None:
    """rho = -intercept of a fitted OneClassSVM (bare or the last step of a Pipeline) when positive: the
    supremum of its scores; None for any other detector."""
    det = est.steps[-1][1] if hasattr(est, "steps") else est
    if type(det).__name__ != "OneClassSVM":
        return None
    rho = -float(np.asarray(det.intercept_).reshape(-1)[0])
    return rho if rho > 0 and math.isfinite(rho) else None


def to_margin(scores: np.ndarray, rho: float | None) -> np.ndarray:
    """Scores (n,) as margins: -ln(1 - score / rho) for a one-class SVM (+inf at score >= rho), else the scores."""
    s = np.asarray(scores, dtype=np.float64)
    if rho is None:
        return s
    with np.errstate(divide="ignore"):
        return -np.log(np.maximum(1.0 - s / rho, 0.0))


def from_margin(margin: float, rho: float | None) -> float:
    """A margin back as a score: rho (1 - exp(-margin)) for a one-class SVM (always <= rho), else itself."""
    return margin if rho is None or math.isnan(margin) else rho * -math.expm1(-margin)


def out_of_fold_margins(template: Any, X: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """(n,) margin (:func:`to_margin` of the score, -decision_function) of each row of X (n, features; rows in
    time order) by a clone of ``template`` fitted on the other :func:`time_blocks` only."""
    from sklearn.base import clone  # scikit-learn loads only to train

    out = np.empty(len(X), dtype=np.float64)
    for block in time_blocks(len(X), folds):
        keep = np.ones(len(X), dtype=bool)
        keep[block] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. convergence warnings on flat sensors
            est = clone(template).fit(X[keep])
            out[block] = to_margin(-np.asarray(est.decision_function(X[block]), dtype=np.float64), svm_rho(est))
    return out


def tail_quantile(scores: np.ndarray, rate: float) -> float:
    """The score exceeded with probability ``rate``: the conformal quantile (the ceil((n+1)(1-rate))-th
    smallest score) when the sample resolves it, else the exponential tail through the upper quantiles extended
    to ``rate`` (see the module docstring). NaN for no finite score."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(s)
    if n == 0 or not 0 < rate < 1:
        return math.nan
    k = math.ceil((n + 1) * (1.0 - rate))
    if k <= n:
        return float(s[k - 1])
    q_mid, q_a, q_b = (float(v) for v in np.quantile(s, [0.5, 1.0 - TAIL_FROM, 1.0 - TAIL_TO]))
    scale = (q_b - q_a) / math.log(TAIL_FROM / TAIL_TO)
    if scale <= 0:  # an atom spans the upper decile (a quantised score): the spread above the median instead
        scale = (q_b - q_mid) / math.log(0.5 / TAIL_TO)
    return q_b + scale * math.log(TAIL_TO / rate)


def calibrate(margins: np.ndarray, final: Any = None, false_rate: float = FALSE_RATE) -> dict[str, float]:
    """{"threshold", "threshold_strong"} on the score of the ``final`` fitted model (its rho, for a one-class
    SVM) from out-of-fold training margins (n,) (:func:`out_of_fold_margins`; see the module docstring)."""
    if not 0 < false_rate < 1:
        raise ValueError(f"false_rate must be in (0, 1), got {false_rate}")
    rho = None if final is None else svm_rho(final)
    t = tail_quantile(margins, false_rate)
    finite = np.sort(np.asarray(margins, dtype=np.float64)[np.isfinite(margins)])
    seen_twice = float(finite[-2]) if len(finite) >= 2 else -math.inf
    strong = max(tail_quantile(margins, false_rate * STRONG_FACTOR), t, seen_twice)
    return {"threshold": from_margin(t, rho), "threshold_strong": from_margin(strong, rho)}
