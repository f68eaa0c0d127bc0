"""The varied scenario's faults (labelled) and training outliers (unlabelled).

Faults come after the clean days, at least `FAULT_GAP_MINUTES` apart per pair, never on a setpoint sensor.
Their size is in units of the pair's σ (`signals.PairMix.sigma`, the sd around its normal course), drawn
from three classes: subtle 2–3 σ (40 %), moderate 3–6 σ (30 %), gross 6–15 σ (30 %):

- `spike` (15–45 min) and `level_shift` (1–6 h): an unannounced step of ± m σ for the whole fault;
- `drift` (1–4 h): a ramp from 0 to ± m σ;
- `stuck` (30 min–3 h): the sensor repeats its last good value (no magnitude);
- `noise` (15–90 min): extra normal noise of sd m σ;
- `oscillation` (1–4 h): a sine of period 4–30 min whose amplitude grows linearly from 0 to m σ.

A fault is labelled only if it changes at least `MIN_VISIBLE` of the readings that arrive (a fault hidden
by an outage or a coarse resolution is not in the ground truth). The clean days hold a few unlabelled
outliers (1–10 ticks of ± 4–12 σ), returned apart from the faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetscore.sim.fleet import FAULT_COLUMNS, OUTLIER_COLUMNS, Grid, device_names, empty_frame, typed_faults
from fleetscore.sim.sampling import finish
from fleetscore.sim.signals import PairMix

KINDS = ("spike", "drift", "stuck", "noise", "level_shift", "oscillation")
MINUTES = {"spike": (15, 45), "drift": (60, 240), "stuck": (30, 180), "noise": (15, 90),
           "level_shift": (60, 360), "oscillation": (60, 240)}
"""Fault duration range per kind (minutes, uniform): every fault spans several 5-minute windows."""
MAGNITUDES = ((2.0, 3.0), (3.0, 6.0), (6.0, 15.0))
MAGNITUDE_SHARES = (0.4, 0.3, 0.3)
"""Fault size classes (σ units, uniform within a class): subtle, moderate, gross, and how often each comes."""
FAULT_GAP_MINUTES = 30
MIN_VISIBLE = 3
OUTLIERS_PER_DAY = 0.1
"""Expected unlabelled outliers per measured pair per clean day."""
OUTLIER_SIGMAS = (4.0, 12.0)
OUTLIER_TICKS = (1, 10)


@dataclass(frozen=True)
class Injected:
    """One injected fault: pair column, first and last tick (inclusive), kind, magnitude (σ units, NaN for
    stuck) and the pair's fault-free values over it (before clipping and rounding)."""

    pair: int
    first: int
    last: int
    kind: str
    magnitude: float
    clean: np.ndarray


def _magnitude(rng: np.random.Generator) -> float:
    low, high = MAGNITUDES[int(rng.choice(len(MAGNITUDES), p=MAGNITUDE_SHARES))]
    return float(rng.uniform(low, high))


def inject_faults(rng: np.random.Generator, grid: Grid, mix: PairMix, values: np.ndarray,
                  expected: float) -> list[Injected]:
    """Add faults to `values` (steps × pairs) in place, `expected` per measured pair (module doc)."""
    gap = int(math.ceil(grid.steps_of(FAULT_GAP_MINUTES)))
    counts = rng.poisson(expected, grid.pairs) * ~mix.is_setpoint if expected > 0 else np.zeros(grid.pairs, int)
    out: list[Injected] = []
    for p in np.flatnonzero(counts):
        taken: list[tuple[int, int]] = []
        for _ in range(counts[p]):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            length = max(1, int(round(grid.steps_of(rng.uniform(*MINUTES[kind])))))
            first = int(rng.integers(grid.clean_steps, max(grid.clean_steps, grid.steps - length) + 1))
            last = min(first + length, grid.steps) - 1
            sign, magnitude = (1.0 if rng.random() < 0.5 else -1.0), _magnitude(rng)
            if first >= grid.steps or any(first <= b + gap and last >= a - gap for a, b in taken):
                continue
            taken.append((first, last))
            clean = values[first:last + 1, p].copy()
            _apply(rng, kind, values[first:last + 1, p], values[max(first - 1, 0), p],
                   sign * magnitude * mix.sigma[p], grid.interval_ms / 60_000.0)
            out.append(Injected(int(p), first, last, kind, math.nan if kind == "stuck" else magnitude, clean))
    return out


def _apply(rng: np.random.Generator, kind: str, span: np.ndarray, before: float, amount: float,
           tick_minutes: float) -> None:
    """Change `span` (one pair's values over the fault, a view) in place as a fault of `kind` does; `before`
    is the value just before it, `amount` its signed size (sensor units), `tick_minutes` the tick length."""
    ramp = np.arange(1, len(span) + 1) / len(span)
    if kind in ("spike", "level_shift"):
        span += amount
    elif kind == "drift":
        span += amount * ramp
    elif kind == "stuck":
        span[:] = before
    elif kind == "noise":
        span += abs(amount) * rng.standard_normal(len(span))
    else:  # oscillation
        period = rng.uniform(4.0, 30.0)
        phase = rng.uniform(0.0, 2 * np.pi)
        span += amount * ramp * np.sin(2 * np.pi * tick_minutes * np.arange(len(span)) / period + phase)


def fault_frames(injected: list[Injected], grid: Grid, mix: PairMix, values: np.ndarray, present: np.ndarray,
                 ts: np.ndarray, sensors: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(faults, details): the visible faults with the timestamps of their first and last present reading
    (`FAULT_COLUMNS`), and the same rows with magnitude (σ units) and sigma (sensor units). `values` are the
    finished (clipped, rounded) readings, `present` and `ts` (arrival, epoch ms) steps × pairs."""
    names = device_names(grid.devices)
    rows = []
    for f in injected:
        cols = np.array([f.pair])
        clean = finish(f.clean[:, None].copy(), mix, cols)[:, 0]
        seen = present[f.first:f.last + 1, f.pair]
        changed = seen & (values[f.first:f.last + 1, f.pair] != clean)
        if changed.sum() < MIN_VISIBLE:
            continue
        stamps = ts[f.first:f.last + 1, f.pair][seen]
        rows.append((names[f.pair // grid.sensors], sensors[f.pair % grid.sensors], int(stamps[0]),
                     int(stamps[-1]), f.kind, f.magnitude, float(mix.sigma[f.pair])))
    if not rows:
        return empty_frame(FAULT_COLUMNS), empty_frame(FAULT_COLUMNS + ("magnitude", "sigma"))
    details = pd.DataFrame(rows, columns=[*FAULT_COLUMNS, "magnitude", "sigma"])
    details = details.sort_values(["start", "device", "sensor"], ignore_index=True)
    typed = typed_faults(details)
    return typed, pd.concat([typed, details[["magnitude", "sigma"]]], axis=1)


def inject_outliers(rng: np.random.Generator, grid: Grid, mix: PairMix,
                    values: np.ndarray) -> list[tuple[int, int, int, float]]:
    """Add a few unlabelled outliers to the clean days of `values` in place (module doc); returns (pair, first
    tick, last tick, signed magnitude in σ units)."""
    days = grid.clean_steps * grid.interval_ms / 86_400_000
    counts = rng.poisson(OUTLIERS_PER_DAY * days, grid.pairs) * ~mix.is_setpoint
    out = []
    for p in np.flatnonzero(counts):
        for _ in range(counts[p]):
            length = int(rng.integers(OUTLIER_TICKS[0], OUTLIER_TICKS[1] + 1))
            first = int(rng.integers(0, max(1, grid.clean_steps - length)))
            last = min(first + length, grid.clean_steps) - 1
            magnitude = float(rng.uniform(*OUTLIER_SIGMAS) * rng.choice([-1.0, 1.0]))
            values[first:last + 1, p] += magnitude * mix.sigma[p]
            out.append((int(p), first, last, magnitude))
    return out


def outlier_frame(outliers: list[tuple[int, int, int, float]], grid: Grid, present: np.ndarray, ts: np.ndarray,
                  sensors: list[str]) -> pd.DataFrame:
    """The outliers with at least one present reading: `OUTLIER_COLUMNS`, start/end the timestamps of the
    first and last present reading, magnitude signed σ units."""
    names = device_names(grid.devices)
    rows = []
    for p, first, last, magnitude in outliers:
        seen = present[first:last + 1, p]
        if seen.any():
            stamps = ts[first:last + 1, p][seen]
            rows.append((names[p // grid.sensors], sensors[p % grid.sensors], int(stamps[0]), int(stamps[-1]),
                         "outlier", magnitude))
    if not rows:
        return empty_frame(OUTLIER_COLUMNS)
    frame = pd.DataFrame(rows, columns=list(OUTLIER_COLUMNS)).astype({"start": "int64", "end": "int64"})
    return frame.sort_values(["start", "device", "sensor"], ignore_index=True)
