"""The varied scenario's signals: each pair's drawn mix of behaviours and its fault-free values.

Every measured pair gets, from the seed: a level (per-sensor base plus a device offset); a daily cycle and a
weekly cycle, each with its own amplitude (sometimes none) and phase; a slow linear trend (for some pairs); a
slow wander (a random walk of knots 20–120 minutes apart, linearly interpolated); and heavy-tailed noise
(Student-t, 3–30 degrees of freedom, scaled to the pair's noise sd). The pair's σ — the unit of fault and
outlier magnitudes — is the sd of its readings around their normal course (level, cycles, trend, setpoint):
√(noise sd² + wander sd²).

Normal level shifts are setpoint changes announced in the data: every device also sends a `setpoint` sensor
(an operating point in %, whole numbers) that steps now and then, training days included. About half of a
device's sensors are controlled by it: each has a gain (sensor units per setpoint %, either sign, 0.3–0.8 σ
per %, less near a physical limit) and a lag τ (2–15 minutes); after a step of Δ at tick k0, the sensor's level moves by
gain · Δ · (1 − exp(−(t − t0) / τ)) and stays at the new level until the next step. These changes are
returned in their own frame (`CHANGE_COLUMNS`), never as faults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetscore.clock import DAY_MS
from fleetscore.sim.fleet import CHANGE_COLUMNS, Grid, SensorProfile, device_names, empty_frame

SETPOINT_SENSOR = "setpoint"
"""The name of every device's setpoint sensor in the varied scenario (the last sensor of each device)."""
SETPOINT_LEVELS = (40.0, 120.0)
SETPOINT_REACH = 30.0
"""A setpoint (%) starts at 60–100 and steps by ±10, 20 or 30, staying within 40–120 and within ±30 of its
start; a controlled sensor's gain is capped so that ±30 moves it at most half-way to its physical limits."""
SETPOINT_CHANGES_PER_DAY = 0.3
"""Expected setpoint changes per device per day."""
SETTLE_TAUS = 5
"""A controlled sensor has settled 5 lag time constants after a step (within 1 % of the new level)."""
MODES = ("regular", "sparse", "on_change")
"""How a pair reports: every tick of its device; on a random share of ticks; or only when its (coarsely
quantised) value changes, plus a heartbeat."""
PAIR_COLUMNS = ("device", "sensor", "setpoint", "level", "sigma", "noise_sd", "df", "wander_sd", "daily_amp",
                "daily_peak_hour", "weekly_amp", "weekly_peak_hour", "trend_per_day", "gain", "lag_minutes",
                "resolution", "low", "high", "mode", "report_share", "heartbeat_minutes", "cadence_seconds",
                "jitter_seconds")
WEEK_HOURS = 168.0
MONDAY_MS = 4 * DAY_MS
"""1970-01-05T00:00Z, a Monday: weekly peaks are hours after Monday 00:00 UTC."""


@dataclass(frozen=True)
class PairMix:
    """Each pair's drawn behaviour, arrays of shape (pairs,) (sensor units unless stated); pair p =
    device · grid.sensors + sensor, the last sensor of each device its setpoint (`is_setpoint`)."""

    is_setpoint: np.ndarray
    level: np.ndarray
    noise_sd: np.ndarray
    df: np.ndarray
    wander_sd: np.ndarray
    wander_minutes: np.ndarray
    daily_amp: np.ndarray
    daily_peak: np.ndarray
    weekly_amp: np.ndarray
    weekly_peak: np.ndarray
    trend: np.ndarray
    gain: np.ndarray
    lag_minutes: np.ndarray
    resolution: np.ndarray
    mode: np.ndarray
    report_share: np.ndarray
    heartbeat: np.ndarray  # ticks between an on-change pair's heartbeat readings
    low: np.ndarray
    high: np.ndarray

    @property
    def sigma(self) -> np.ndarray:
        """(pairs,) the sd of readings around their normal course: the unit of fault magnitudes."""
        return np.sqrt(self.noise_sd**2 + self.wander_sd**2)


def _measured(grid: Grid, per_sensor: list[float], fill: float) -> np.ndarray:
    """(pairs,) a per-sensor constant for each measured pair and `fill` for each setpoint pair."""
    return np.tile(np.append(np.asarray(per_sensor, dtype=np.float64), fill), grid.devices)


def nice_step(x: np.ndarray) -> np.ndarray:
    """The largest of 1, 2, 5 × 10^k not above each positive x (a sensor's resolution)."""
    exponent = np.floor(np.log10(x))
    mantissa = x / 10.0**exponent
    return np.where(mantissa >= 5, 5.0, np.where(mantissa >= 2, 2.0, 1.0)) * 10.0**exponent


def draw_mix(rng: np.random.Generator, grid: Grid, profiles: list[SensorProfile]) -> PairMix:
    """Draw every pair's behaviour (see the module doc); setpoint pairs get a constant level and no noise."""
    n = grid.pairs
    sp = _measured(grid, [0.0] * len(profiles), 1.0).astype(bool)
    m = ~sp
    noise_sd = _measured(grid, [p.noise for p in profiles], 0.0) * rng.uniform(0.8, 1.25, n)
    wander_sd = noise_sd * rng.uniform(0.0, 0.6, n)
    sigma = np.sqrt(noise_sd**2 + wander_sd**2)
    daily = _measured(grid, [p.daily for p in profiles], 0.0)
    with_daily = rng.random(n) < 0.85
    with_weekly = rng.random(n) < 0.7
    with_trend = rng.random(n) < 0.4
    mode = np.where(m, rng.choice(len(MODES), n, p=[0.76, 0.12, 0.12]), 0)
    coarse = rng.random(n) < 0.3
    fine = 10.0 ** -_measured(grid, [p.decimals for p in profiles], 0.0)
    controlled = m & (rng.random(n) < 0.5)
    unit = np.where(m, sigma, 1.0)  # setpoint pairs have no noise: resolution 1 (%), set below
    resolution = np.where(mode == 2, nice_step(unit * rng.uniform(2.0, 4.0, n)),
                          np.where(coarse, nice_step(unit * rng.uniform(0.5, 2.0, n)), fine))
    level = (_measured(grid, [p.base for p in profiles], 0.0)
             + _measured(grid, [p.device_sd for p in profiles], 0.0) * rng.standard_normal(n)
             + sp * rng.choice([60.0, 70.0, 80.0, 90.0, 100.0], n))
    low = _measured(grid, [p.low for p in profiles], -np.inf)
    high = _measured(grid, [p.high for p in profiles], np.inf)
    room = np.minimum(level - low, high - level) / (2 * SETPOINT_REACH)  # keep half the way to a limit
    gain = controlled * np.minimum(sigma * rng.uniform(0.3, 0.8, n), room) * rng.choice([-1.0, 1.0], n)
    return PairMix(
        is_setpoint=sp, level=level,
        noise_sd=noise_sd, df=np.exp(rng.uniform(np.log(3.0), np.log(30.0), n)), wander_sd=wander_sd,
        wander_minutes=rng.uniform(20.0, 120.0, n),
        daily_amp=daily * with_daily * rng.uniform(0.3, 1.5, n),
        daily_peak=(_measured(grid, [p.peak_hour for p in profiles], 0.0) + rng.normal(0.0, 2.0, n)) % 24.0,
        weekly_amp=daily * with_weekly * rng.uniform(0.2, 1.0, n),
        weekly_peak=rng.uniform(0.0, WEEK_HOURS, n),
        trend=with_trend * m * sigma * rng.uniform(0.1, 0.5, n) * rng.choice([-1.0, 1.0], n),
        gain=np.where(gain == 0, 0.0, gain),
        lag_minutes=rng.uniform(2.0, 15.0, n),
        resolution=np.where(sp, 1.0, resolution), mode=mode,
        report_share=np.where(mode == 1, rng.uniform(0.2, 0.5, n), 1.0),
        heartbeat=rng.integers(10, 31, n),
        low=low, high=high)


def clean_signal(rng: np.random.Generator, grid: Grid, mix: PairMix, course: bool = True) -> np.ndarray:
    """(steps × pairs) float64 fault-free values before setpoint responses: level, daily and weekly cycles,
    trend, wander and heavy-tailed noise (setpoint pairs: their starting level only). ``course=False``: the
    level and the same noise only (the wander is drawn all the same, so the noise is the seed's)."""
    values = np.empty((grid.steps, grid.pairs))
    values[:] = mix.level
    wander = mix.wander_sd * _wander(rng, grid, mix.wander_minutes)
    if course:
        t_ms = grid.nominal - grid.start_ms
        hour = ((grid.nominal % DAY_MS) / 3_600_000.0)[:, None]
        week_hour = (((grid.nominal - MONDAY_MS) % (7 * DAY_MS)) / 3_600_000.0)[:, None]
        values += mix.daily_amp * np.cos((2 * np.pi / 24.0) * (hour - mix.daily_peak))
        values += mix.weekly_amp * np.cos((2 * np.pi / WEEK_HOURS) * (week_hour - mix.weekly_peak))
        values += mix.trend * (t_ms / DAY_MS)[:, None]
        values += wander
    del wander
    scale = mix.noise_sd / np.sqrt(mix.df / (mix.df - 2.0))
    values += scale * rng.standard_t(mix.df, (grid.steps, grid.pairs))
    return values


def _wander(rng: np.random.Generator, grid: Grid, minutes: np.ndarray) -> np.ndarray:
    """(steps × pairs) a slow random wander of unit sd on average: iid normal knots `minutes` apart per pair,
    linearly interpolated (scaled by √(3/2), the mean variance of the interpolation being 2/3)."""
    spacing = np.maximum(minutes * 60_000.0 / grid.interval_ms, 1.0)
    knots = rng.standard_normal((int(np.ceil(grid.steps / spacing.min())) + 2, grid.pairs))
    pos = np.arange(grid.steps, dtype=np.float64)[:, None] / spacing
    first = pos.astype(np.int64)
    pos -= first
    out = np.take_along_axis(knots, first, axis=0) * (1.0 - pos)
    out += np.take_along_axis(knots, first + 1, axis=0) * pos
    out *= np.sqrt(1.5)
    return out


def apply_setpoints(rng: np.random.Generator, grid: Grid, mix: PairMix, values: np.ndarray,
                    sensors: list[str], respond: bool = True) -> pd.DataFrame:
    """Step each device's setpoint now and then and move its controlled sensors after it, in place (module
    doc); returns the changes, one row per affected pair (`CHANGE_COLUMNS`), the setpoint pair's own included.
    ``respond=False``: the setpoints step (the same steps) but no sensor follows them, and only the setpoint
    pairs' own rows are returned."""
    counts = rng.poisson(SETPOINT_CHANGES_PER_DAY * grid.steps * grid.interval_ms / DAY_MS, grid.devices)
    t_min = np.arange(grid.steps, dtype=np.float64) * grid.interval_ms / 60_000.0
    names = device_names(grid.devices)
    rows: list[tuple] = []
    for device in np.flatnonzero(counts):
        sp_col = (device + 1) * grid.sensors - 1
        first_col = sp_col - grid.sensors + 1
        cols = first_col + np.flatnonzero(mix.gain[first_col:sp_col]) if respond else np.empty(0, dtype=np.int64)
        ticks = np.sort(rng.choice(np.arange(1, grid.steps), size=min(counts[device], grid.steps - 1),
                                   replace=False))
        current = start_level = mix.level[sp_col]
        low, high = max(SETPOINT_LEVELS[0], start_level - SETPOINT_REACH), min(SETPOINT_LEVELS[1],
                                                                                start_level + SETPOINT_REACH)
        for k0 in ticks:
            step = float(rng.choice([-30.0, -20.0, -10.0, 10.0, 20.0, 30.0]))
            new = float(np.clip(current + step, low, high))
            if new == current:
                continue
            delta, start = new - current, int(grid.nominal[k0])
            values[k0:, sp_col] += delta
            rows.append((names[device], sensors[-1], start, start, "setpoint", current, new, delta))
            for c in cols:
                lag = mix.lag_minutes[c]
                values[k0:, c] += mix.gain[c] * delta * -np.expm1(-(t_min[k0:] - t_min[k0]) / lag)
                rows.append((names[device], sensors[c % grid.sensors], start,
                             start + int(round(SETTLE_TAUS * lag * 60_000)), "setpoint", current, new,
                             float(mix.gain[c] * delta)))
            current = new
    if not rows:
        return empty_frame(CHANGE_COLUMNS)
    frame = pd.DataFrame(rows, columns=list(CHANGE_COLUMNS))
    return frame.astype({"device": "str", "sensor": "str", "kind": "str", "start": "int64", "end": "int64"})


def pair_frame(grid: Grid, mix: PairMix, sensors: list[str], cadence_ms: np.ndarray,
               jitter_ms: np.ndarray) -> pd.DataFrame:
    """Each pair's drawn properties (`PAIR_COLUMNS`), for analysis and tests; per-device sampling from
    `cadence_ms`/`jitter_ms` (devices,)."""
    device = np.arange(grid.pairs) // grid.sensors
    return pd.DataFrame({
        "device": pd.Series(np.asarray(device_names(grid.devices), dtype=object)[device], dtype="str"),
        "sensor": pd.Series([sensors[p % grid.sensors] for p in range(grid.pairs)], dtype="str"),
        "setpoint": mix.is_setpoint, "level": mix.level, "sigma": mix.sigma, "noise_sd": mix.noise_sd,
        "df": mix.df, "wander_sd": mix.wander_sd, "daily_amp": mix.daily_amp, "daily_peak_hour": mix.daily_peak,
        "weekly_amp": mix.weekly_amp, "weekly_peak_hour": mix.weekly_peak, "trend_per_day": mix.trend,
        "gain": mix.gain, "lag_minutes": mix.lag_minutes, "resolution": mix.resolution, "low": mix.low,
        "high": mix.high,
        "mode": pd.Series(np.asarray(MODES, dtype=object)[mix.mode], dtype="str"),
        "report_share": mix.report_share, "heartbeat_minutes": mix.heartbeat * grid.interval_ms / 60_000.0,
        "cadence_seconds": cadence_ms[device] / 1000.0, "jitter_seconds": jitter_ms[device] / 1000.0,
    }, columns=list(PAIR_COLUMNS))
