"""The classic scenario, generated in time chunks: the same fleet for a seed whatever the chunk size.

Every (device, sensor) pair gets a per-sensor baseline and scale, a daily cycle, noise, small per-device offsets,
a few seconds of timestamp jitter and occasional missing readings; after the first `clean_days` (the training
period, always clean) faults — `spike`, `drift`, `stuck`, `noise` — each long enough to span several 5-minute
windows, with their ground truth.

The fleet is a (steps × pairs) grid whose big random draws (noise, jitter, losses) come row by row from one
stream. :class:`ClassicStream` first walks each draw once in chunks of `chunk_steps` rows and keeps only the
generator's state at each chunk's first row (a few hundred bytes); it then builds one chunk at a time from those
states, so memory is bounded by a chunk (steps × pairs cells of it), not the fleet. numpy's generators give the
same numbers for one draw of n rows as for draws of its row chunks in turn, so the readings are identical to
the whole-grid simulation of the same seed (tests/unit/sim/test_stream.py pins digests of the fleets before
chunking). Faults and outages are small lists drawn up front and applied to the rows of each chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.clock import DAY_MS
from fleetscore.sim.fleet import (
    FAULT_COLUMNS,
    Grid,
    SensorProfile,
    device_names,
    profiles_for,
    readings_frame,
    sensor_names,
    typed_faults,
)

FAULT_KINDS = ("spike", "drift", "stuck", "noise")
FAULT_MINUTES = {"spike": (15, 30), "drift": (60, 180), "stuck": (30, 120), "noise": (15, 60)}
"""Fault duration range per kind (minutes, uniform): every fault spans several 5-minute windows."""
FAULT_GAP_MINUTES = 30
"""Two faults of one pair are at least this far apart (a later overlapping draw is dropped)."""

Draw = Callable[[np.random.Generator, int], np.ndarray]


class _Segment:
    """One (steps × pairs) draw of a stream, replayable chunk by chunk from the generator state at each chunk's
    first row. With a single chunk the draw is kept (as the whole-grid simulation did) instead of drawn twice."""

    def __init__(self, rng: np.random.Generator, draw: Draw, bounds: list[tuple[int, int]]) -> None:
        self._draw = draw
        self._states: list[dict[str, Any]] = []
        self._kept: np.ndarray | None = None
        for k0, k1 in bounds:
            self._states.append(rng.bit_generator.state)
            block = draw(rng, k1 - k0)
        if len(bounds) == 1:
            self._kept = block

    def rows(self, chunk: int, n: int) -> np.ndarray:
        """The draw's rows of chunk number `chunk` (n rows)."""
        if self._kept is not None:
            block, self._kept = self._kept, None
            return block
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = self._states[chunk]
        return self._draw(rng, n)


@dataclass
class _Fault:
    """A planned fault: pair column, first and last step (inclusive), kind, direction and size in [0, 1), its
    noise draws (kind noise); `before` (the pair's clean value just before it) is filled in chunk by chunk."""

    pair: int
    first: int
    last: int
    kind: str
    sign: float
    magnitude: float
    noise: np.ndarray | None = None
    before: float | None = None
    first_seen: int | None = None
    last_seen: int | None = None


def chunk_bounds(steps: int, chunk_steps: int | None) -> list[tuple[int, int]]:
    """[(first step, end step)) of each chunk of at most `chunk_steps` steps (None: one chunk)."""
    size = steps if not chunk_steps else max(1, int(chunk_steps))
    return [(k0, min(k0 + size, steps)) for k0 in range(0, max(steps, 1), size)]


class ClassicStream:
    """The classic fleet on `grid`, built chunk by chunk (module doc): `chunks()` yields each chunk's readings
    in time order; after it is exhausted `faults()` gives the ground truth (first and last *present* reading)."""

    def __init__(self, grid: Grid, seed: int, fault_rate: float, missing_rate: float, outage_rate: float,
                 chunk_steps: int | None = None) -> None:
        self.grid = grid
        days = grid.steps * grid.interval_ms / DAY_MS
        clean_days = grid.clean_steps * grid.interval_ms / DAY_MS
        self.profiles = profiles_for(grid.sensors)
        self.bounds = chunk_bounds(grid.steps, chunk_steps)
        signal_ss, fault_ss = np.random.SeedSequence(seed).spawn(2)
        rng = np.random.default_rng(signal_ss)  # draws in this order: signal, arrivals, outages
        self._pair_signal(rng)
        pairs, missing = grid.pairs, missing_rate
        self._normals = _Segment(rng, lambda r, n: r.standard_normal((n, pairs)), self.bounds)
        jitter_ms = max(1, min(5_000, grid.interval_ms // 10))
        self._jitter = _Segment(rng, lambda r, n: r.integers(1, jitter_ms + 1, (n, pairs), dtype=np.int64),
                                self.bounds)
        self._present = _Segment(rng, lambda r, n: r.random((n, pairs)) >= missing, self.bounds)
        self._outages = _plan_outages(rng, grid, outage_rate * days)
        self._faults = _plan_faults(np.random.default_rng(fault_ss), grid,
                                    fault_rate * max(days - clean_days, 0.0), self.noise_sd)
        self._done = False

    def _pair_signal(self, rng: np.random.Generator) -> None:
        """Per pair: level, daily amplitude, noise sd and peak hour, (pairs,) each."""
        grid, profiles = self.grid, self.profiles
        shape = (grid.devices, grid.sensors)
        self.level = (np.array([p.base for p in profiles])
                      + np.array([p.device_sd for p in profiles]) * rng.standard_normal(shape)).ravel()
        self.amp = (np.array([p.daily for p in profiles]) * rng.uniform(0.8, 1.2, shape)).ravel()
        self.noise_sd = (np.array([p.noise for p in profiles]) * rng.uniform(0.8, 1.25, shape)).ravel()
        self.phase_h = (np.array([p.peak_hour for p in profiles]) + rng.normal(0.0, 1.0, shape)).ravel()

    def chunks(self) -> Iterator[pd.DataFrame]:
        """Each chunk's present readings in time order (device, sensor: str; ts: int64 epoch ms; value)."""
        names = sensor_names(self.grid.sensors)
        for number, (k0, k1) in enumerate(self.bounds):
            yield self._chunk(number, k0, k1, names)
        self._done = True

    def _chunk(self, number: int, k0: int, k1: int, names: list[str]) -> pd.DataFrame:
        grid = self.grid
        nominal = grid.start_ms + np.arange(k0, k1, dtype=np.int64) * grid.interval_ms
        hour = ((nominal % DAY_MS) / 3_600_000.0)[:, None]
        values = (self.level + self.amp * np.cos((2 * np.pi / 24.0) * (hour - self.phase_h))
                  + self.noise_sd * self._normals.rows(number, k1 - k0))
        jitter = self._jitter.rows(number, k1 - k0)
        present = self._present.rows(number, k1 - k0)
        for first, length, device in self._outages:
            lo, hi = max(first, k0), min(first + length, k1)
            if lo < hi:
                present[lo - k0:hi - k0, device * grid.sensors:(device + 1) * grid.sensors] = False
        self._apply_faults(values, k0, k1)
        _physical_range(values, self.profiles)
        self._note_fault_readings(nominal, jitter, present, k0, k1)
        order = np.argsort(jitter, axis=1, kind="stable")
        ts = nominal[:, None] + np.take_along_axis(jitter, order, axis=1)
        return readings_frame(grid, order, ts, np.take_along_axis(values, order, axis=1),
                              np.take_along_axis(present, order, axis=1), names)

    def _apply_faults(self, values: np.ndarray, k0: int, k1: int) -> None:
        """Add the faults' parts in rows [k0, k1) to `values` (clean, unclipped) in place."""
        for f in self._faults:
            at = max(f.first - 1, 0)
            if f.before is None and k0 <= at < k1:
                f.before = float(values[at - k0, f.pair])
        for f in self._faults:
            lo, hi = max(f.first, k0), min(f.last + 1, k1)
            if lo < hi:
                _apply_fault(f, values[lo - k0:hi - k0, f.pair], lo - f.first, hi - f.first,
                             self.profiles[f.pair % self.grid.sensors].spread, self.noise_sd[f.pair])

    def _note_fault_readings(self, nominal: np.ndarray, jitter: np.ndarray, present: np.ndarray, k0: int,
                             k1: int) -> None:
        """Each fault's first and last present reading time (epoch ms) so far."""
        for f in self._faults:
            lo, hi = max(f.first, k0), min(f.last + 1, k1)
            if lo >= hi:
                continue
            seen = present[lo - k0:hi - k0, f.pair]
            if seen.any():
                stamps = (nominal[lo - k0:hi - k0] + jitter[lo - k0:hi - k0, f.pair])[seen]
                f.first_seen = int(stamps[0]) if f.first_seen is None else f.first_seen
                f.last_seen = int(stamps[-1])

    def faults(self) -> pd.DataFrame:
        """The visible faults (device, sensor, start, end: first and last present reading, kind), by start."""
        if not self._done:
            raise RuntimeError("the faults are known once every chunk has been generated")
        names_d, names_s = device_names(self.grid.devices), sensor_names(self.grid.sensors)
        rows = [(names_d[f.pair // self.grid.sensors], names_s[f.pair % self.grid.sensors], f.first_seen,
                 f.last_seen, f.kind) for f in self._faults if f.first_seen is not None]
        frame = pd.DataFrame(rows, columns=list(FAULT_COLUMNS))
        return typed_faults(frame).sort_values(["start", "device", "sensor"], ignore_index=True)


def _plan_outages(rng: np.random.Generator, grid: Grid, expected: float) -> list[tuple[int, int, int]]:
    """A few 5–30 minute spans of a whole device (all its sensors): (first step, steps, device); `expected`
    outages per device."""
    counts = rng.poisson(expected, grid.devices)
    out = []
    for device in np.flatnonzero(counts):
        for _ in range(counts[device]):
            length = max(1, int(grid.steps_of(rng.uniform(5, 30))))
            first = int(rng.integers(0, max(1, grid.steps - length)))
            out.append((first, length, int(device)))
    return out


def _plan_faults(rng: np.random.Generator, grid: Grid, expected: float, noise_sd: np.ndarray) -> list[_Fault]:
    """Faults, `expected` per pair, after the clean steps and at least FAULT_GAP_MINUTES apart (a later
    overlapping draw is dropped), in the order drawn."""
    gap = int(math.ceil(grid.steps_of(FAULT_GAP_MINUTES)))
    counts = rng.poisson(expected, grid.pairs) if expected > 0 else np.zeros(grid.pairs, dtype=np.int64)
    out: list[_Fault] = []
    for p in np.flatnonzero(counts):
        taken: list[tuple[int, int]] = []
        for _ in range(counts[p]):
            kind = FAULT_KINDS[int(rng.integers(len(FAULT_KINDS)))]
            length = max(1, int(round(grid.steps_of(rng.uniform(*FAULT_MINUTES[kind])))))
            latest = grid.steps - length
            if latest < grid.clean_steps:
                continue
            first = int(rng.integers(grid.clean_steps, latest + 1))
            last = first + length - 1
            sign = 1.0 if rng.random() < 0.5 else -1.0
            magnitude = rng.uniform(0.0, 1.0)  # drawn always, so later draws don't depend on the kind
            if any(first <= b + gap and last >= a - gap for a, b in taken):
                continue
            taken.append((first, last))
            noise = rng.standard_normal(length) if kind == "noise" else None
            out.append(_Fault(int(p), first, last, kind, sign, magnitude, noise))
    return out


def _apply_fault(f: _Fault, span: np.ndarray, a: int, b: int, spread: float, noise_sd: float) -> None:
    """Change `span` (the fault's steps a..b-1 counted from its first, one pair's values, a view) in place as a
    fault of its kind does; `spread` (the signal's typical sd) and `noise_sd` (the pair's) are its units."""
    length = f.last - f.first + 1
    if f.kind == "spike":  # a sudden large offset
        span += f.sign * (5.0 + 5.0 * f.magnitude) * spread
    elif f.kind == "drift":  # a gradual ramp away from normal
        span += (f.sign * (3.0 + 3.0 * f.magnitude) * spread * (np.arange(1, length + 1) / length))[a:b]
    elif f.kind == "stuck":  # the sensor repeats its last good value
        span[:] = f.before
    else:  # noise: a variance burst
        span += (noise_sd * (4.0 + 4.0 * f.magnitude) * f.noise)[a:b]


def _physical_range(values: np.ndarray, profiles: list[SensorProfile]) -> None:
    """Clip to each sensor's physical range and round to its resolution, in place (after the faults)."""
    sensors = len(profiles)
    for j, profile in enumerate(profiles):
        cols = values[:, j::sensors]  # a view
        if math.isfinite(profile.low) or math.isfinite(profile.high):
            np.clip(cols, profile.low, profile.high, out=cols)
        np.round(cols, profile.decimals, out=cols)
