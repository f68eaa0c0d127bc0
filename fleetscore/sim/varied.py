"""The `varied` scenario: a harder fleet, so detection defaults are not tuned to one easy signal.

Per pair, a mix drawn from the seed (`signals`): daily and weekly cycles of their own amplitude and phase,
slow trends and wander, heavy-tailed noise, and normal level shifts announced by each device's `setpoint`
sensor (returned in `Simulation.changes`, never as faults); per device and pair (`sampling`): irregular
cadence and timing, lost readings, outages and dropouts of minutes to hours (`Simulation.gaps`), coarse
quantisation, sparse and on-change reporting; after the clean days, faults from subtle (2–3 σ) to gross of
six kinds, and a few unlabelled outliers in the clean days (`faults`).

Six independent random streams of one seed draw, in turn, the pair mix, the signal, the setpoint changes, the
sampling, the faults and the outliers: `fault_rate=0` gives the same fleet without its faults (same values
outside them, same timestamps; only an on-change pair's readings inside a fault may differ).
"""

from __future__ import annotations

import numpy as np

from fleetscore.sim.faults import fault_frames, inject_faults, inject_outliers, outlier_frame
from fleetscore.sim.fleet import Grid, Simulation, profiles_for, readings_frame, sensor_names, time_order
from fleetscore.sim.sampling import arrivals, finish, on_change
from fleetscore.sim.signals import SETPOINT_SENSOR, apply_setpoints, clean_signal, draw_mix, pair_frame

DAYS = 7.0
CLEAN_DAYS = 4.0
"""Defaults: 4 clean (training) days, then 3 faulty days."""
FAULT_RATE = 0.1
"""Expected faults per measured pair per faulty day."""
MISSING_RATE = 0.002
OUTAGES_PER_DAY = 0.3
"""Expected device outages per device per day."""


def simulate_varied(grid: Grid, seed: int, fault_rate: float, missing_rate: float,
                    outages_per_day: float, normal_course: bool = True) -> Simulation:
    """The varied fleet on `grid` (its `sensors` count the measured sensors plus the setpoint, the last one).
    `normal_course=False`: the same fleet with each measured pair's normal course taken out (daily and weekly
    cycles, trend, wander and its response to setpoint changes): its level, noise, sampling, faults and
    outliers stay those of the seed, fault sizes included (σ still counts the wander). An ablation: what a
    detector loses to the normal course."""
    mix_ss, signal_ss, setpoint_ss, sampling_ss, fault_ss, outlier_ss = np.random.SeedSequence(seed).spawn(6)
    sensors = sensor_names(grid.sensors - 1) + [SETPOINT_SENSOR]
    mix = draw_mix(np.random.default_rng(mix_ss), grid, profiles_for(grid.sensors - 1))
    values = clean_signal(np.random.default_rng(signal_ss), grid, mix, normal_course)
    changes = apply_setpoints(np.random.default_rng(setpoint_ss), grid, mix, values, sensors, normal_course)
    jitter, present, gaps, cadence_ms, jitter_ms = arrivals(np.random.default_rng(sampling_ss), grid, mix,
                                                            missing_rate, outages_per_day, sensors)
    days = (grid.steps - grid.clean_steps) * grid.interval_ms / 86_400_000
    injected = inject_faults(np.random.default_rng(fault_ss), grid, mix, values, fault_rate * max(days, 0.0))
    outliers = inject_outliers(np.random.default_rng(outlier_ss), grid, mix, values)
    finish(values, mix)
    on_change(values, mix, present)
    ts = grid.nominal[:, None] + jitter
    faults, details = fault_frames(injected, grid, mix, values, present, ts, sensors)
    outlier_rows = outlier_frame(outliers, grid, present, ts, sensors)
    del ts
    order, ts, values, present = time_order(grid, jitter, values, present)
    return Simulation(readings=readings_frame(grid, order, ts, values, present, sensors), faults=faults,
                      start_ms=grid.start_ms, clean_until_ms=grid.clean_until_ms, end_ms=grid.end_ms,
                      interval_ms=grid.interval_ms, scenario="varied", changes=changes, outliers=outlier_rows,
                      gaps=gaps, fault_details=details, pairs=pair_frame(grid, mix, sensors, cadence_ms, jitter_ms))
