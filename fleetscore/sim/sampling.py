"""The varied scenario's sampling: when each reading arrives, whether it arrives, and the resolution it has.

Each device has its own cadence (a reading every 1, 2 or 3 ticks), its own timing jitter (every message 1 ms
up to 5–95 % of an interval after its tick: intervals between readings vary), and misses up to 8 % of its
ticks. A device's sensors report together (one message). On top: random lost readings, device outages and
single-sensor dropouts of minutes to hours (`GAP_COLUMNS`), and intermittent pairs (`signals.MODES`): sparse
ones report on 20–50 % of ticks, on-change ones only when their quantised value changes, plus a heartbeat
every 10–30 ticks. Values are clipped to the sensor's physical range and rounded to the pair's resolution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fleetscore.clock import DAY_MS
from fleetscore.sim.fleet import GAP_COLUMNS, Grid, device_names, empty_frame
from fleetscore.sim.signals import PairMix

OUTAGE_MINUTES = (5.0, 360.0)
"""Device outages last 5 minutes to 6 hours (log-uniform)."""
DROPOUT_MINUTES = (10.0, 180.0)
"""A single sensor drops out for 10 minutes to 3 hours (log-uniform)."""
DROPOUTS_PER_DAY = 0.1
"""Expected dropouts per measured pair per day."""


def arrivals(rng: np.random.Generator, grid: Grid, mix: PairMix, missing_rate: float, outages_per_day: float,
             sensors: list[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """(jitter, present, gaps, cadence_ms, jitter_ms): the arrival delay after each tick (steps × pairs int64
    ms, the same for a device's sensors, in [1, interval)), whether the reading arrives (steps × pairs bool,
    before on-change reporting), the gaps (`GAP_COLUMNS`), and each device's cadence and largest jitter (ms)."""
    cadence = rng.choice([1, 2, 3], grid.devices, p=[0.6, 0.25, 0.15])
    offset = rng.integers(0, 3, grid.devices) % cadence
    top = np.maximum(1, (rng.uniform(0.05, 0.95, grid.devices) * grid.interval_ms).astype(np.int64) - 1)
    skip = rng.uniform(0.0, 0.08, grid.devices)
    k = np.arange(grid.steps)[:, None]
    per_device = (((k + offset) % cadence) == 0) & (rng.random((grid.steps, grid.devices)) >= skip)
    jitter = 1 + (rng.random((grid.steps, grid.devices)) * top).astype(np.int64)
    present = np.repeat(per_device, grid.sensors, axis=1)
    present &= rng.random((grid.steps, grid.pairs)) >= missing_rate
    present &= rng.random((grid.steps, grid.pairs)) < mix.report_share
    days = grid.steps * grid.interval_ms / DAY_MS
    gaps = _gaps(rng, grid, mix, present, outages_per_day * days, DROPOUTS_PER_DAY * days, sensors)
    return (np.repeat(jitter, grid.sensors, axis=1), present, gaps, cadence * grid.interval_ms, top)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size))


def _gaps(rng: np.random.Generator, grid: Grid, mix: PairMix, present: np.ndarray, outages: float,
          dropouts: float, sensors: list[str]) -> pd.DataFrame:
    """Blank device outages (all its sensors) and measured-sensor dropouts in `present`, in place; returns
    them, one row per pair (start inclusive, end exclusive, epoch ms of ticks; kind outage or dropout)."""
    spans: list[tuple[int, int, int, str]] = []  # (first column, last column + 1, first tick, kind)
    ticks: list[int] = []
    n_out = rng.poisson(outages, grid.devices)
    for device in np.flatnonzero(n_out):
        for minutes in _log_uniform(rng, OUTAGE_MINUTES, n_out[device]):
            ticks.append(max(1, int(round(grid.steps_of(minutes)))))
            first = int(rng.integers(0, max(1, grid.steps - ticks[-1])))
            spans.append((device * grid.sensors, (device + 1) * grid.sensors, first, "outage"))
    n_drop = rng.poisson(dropouts, grid.pairs) * ~mix.is_setpoint
    for pair in np.flatnonzero(n_drop):
        for minutes in _log_uniform(rng, DROPOUT_MINUTES, n_drop[pair]):
            ticks.append(max(1, int(round(grid.steps_of(minutes)))))
            first = int(rng.integers(0, max(1, grid.steps - ticks[-1])))
            spans.append((pair, pair + 1, first, "dropout"))
    names = device_names(grid.devices)
    rows = []
    for (lo, hi, first, kind), length in zip(spans, ticks, strict=True):
        present[first:first + length, lo:hi] = False
        stop = min(first + length, grid.steps)
        rows += [(names[c // grid.sensors], sensors[c % grid.sensors], int(grid.nominal[first]),
                  grid.start_ms + stop * grid.interval_ms, kind) for c in range(lo, hi)]
    if not rows:
        return empty_frame(GAP_COLUMNS)
    frame = pd.DataFrame(rows, columns=list(GAP_COLUMNS)).astype({"start": "int64", "end": "int64"})
    return frame.sort_values(["start", "device", "sensor"], ignore_index=True)


def finish(values: np.ndarray, mix: PairMix, columns: slice | np.ndarray = slice(None)) -> np.ndarray:
    """Clip `values` (steps × the pairs in `columns`) to the physical range and round them to the pairs'
    resolution, in place; returns them. Values land exactly on the grid k · resolution (as decimals allow)."""
    np.clip(values, mix.low[columns], mix.high[columns], out=values)
    res = mix.resolution[columns]
    np.divide(values, res, out=values)
    np.round(values, out=values)
    np.multiply(values, res, out=values)
    decimals = np.maximum(0, -np.floor(np.log10(res)).astype(int))
    for d in np.unique(decimals):  # the shortest decimal form (0.30000000000000004 → 0.3)
        cols = np.flatnonzero(decimals == d)
        values[:, cols] = np.round(values[:, cols], d)
    return values


def on_change(values: np.ndarray, mix: PairMix, present: np.ndarray) -> None:
    """Keep an on-change pair's readings only where its value differs from the tick before, or on its
    heartbeat, in place in `present` (steps × pairs)."""
    cols = np.flatnonzero(mix.mode == 2)
    if cols.size == 0:
        return
    v = values[:, cols]
    changed = np.ones(v.shape, dtype=bool)
    changed[1:] = v[1:] != v[:-1]
    changed |= (np.arange(values.shape[0])[:, None] % mix.heartbeat[cols]) == 0
    present[:, cols] &= changed
