"""What every scenario of the fleet simulator shares: sensor profiles and names, the simulated (steps × pairs)
grid, the `Simulation` result and the frames built from the grid.

A scenario builds values on a grid of `steps` nominal ticks `interval_ms` apart × `pairs` columns (pair
p = device · sensors + sensor), decides when each reading arrives (jitter after its tick, always less than one
interval) and whether it arrives at all, and returns the present readings in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetscore.clock import DAY_MS, to_ms

DEFAULT_START = "2026-01-05T00:00:00Z"
"""The default first reading time (a Monday, midnight UTC): fixed, so a seed alone reproduces a fleet."""
MINUTE_MS = 60_000
READING_COLUMNS = ("device", "sensor", "ts", "value")
FAULT_COLUMNS = ("device", "sensor", "start", "end", "kind")
CHANGE_COLUMNS = ("device", "sensor", "start", "end", "kind", "setpoint_from", "setpoint_to", "shift")
"""Normal (announced) changes: start = the setpoint's step (nominal tick, epoch ms), end = when the sensor has
settled (start + 5 lag time constants); shift = the settled level change, sensor units."""
OUTLIER_COLUMNS = ("device", "sensor", "start", "end", "kind", "magnitude")
GAP_COLUMNS = ("device", "sensor", "start", "end", "kind")


@dataclass(frozen=True)
class SensorProfile:
    """One sensor type: level, daily amplitude, noise sd, sd of per-device offsets, resolution (decimals),
    hour of the daily peak, and the physical range values are clipped to."""

    name: str
    base: float
    daily: float
    noise: float
    device_sd: float
    decimals: int
    peak_hour: float
    low: float = -math.inf
    high: float = math.inf

    @property
    def spread(self) -> float:
        """The signal's typical sd (daily cycle and noise): the unit fault magnitudes are measured in."""
        return math.sqrt(self.daily**2 / 2 + self.noise**2)


SENSOR_PROFILES = (
    SensorProfile("temp", 21.0, 3.0, 0.25, 1.5, 2, 15.0),
    SensorProfile("humidity", 45.0, 8.0, 1.0, 5.0, 1, 5.0, 0.0, 100.0),
    SensorProfile("pressure", 1013.0, 1.5, 0.3, 4.0, 2, 10.0, 0.0),
    SensorProfile("vibration", 0.8, 0.15, 0.05, 0.1, 4, 14.0, 0.0),
    SensorProfile("current", 12.0, 2.5, 0.3, 1.0, 3, 13.0, 0.0),
    SensorProfile("voltage", 230.0, 1.5, 0.6, 2.0, 2, 19.0, 0.0),
    SensorProfile("rpm", 1450.0, 80.0, 10.0, 30.0, 1, 12.0, 0.0),
    SensorProfile("flow", 32.0, 5.0, 0.8, 2.5, 2, 11.0, 0.0),
    SensorProfile("co2", 600.0, 150.0, 15.0, 50.0, 0, 16.0, 0.0),
    SensorProfile("power", 2.7, 0.6, 0.08, 0.3, 3, 13.0, 0.0),
)


def sensor_names(count: int) -> list[str]:
    """`count` sensor names: the profiles' names, cycled with `-2`, `-3`, … suffixes beyond the list."""
    n = len(SENSOR_PROFILES)
    return [SENSOR_PROFILES[i % n].name + (f"-{i // n + 1}" if i >= n else "") for i in range(count)]


def device_names(count: int) -> list[str]:
    return [f"d-{i:04d}" for i in range(1, count + 1)]


def profiles_for(sensors: int) -> list[SensorProfile]:
    """The profile of each of `sensors` sensors (cycled like `sensor_names`)."""
    return [SENSOR_PROFILES[i % len(SENSOR_PROFILES)] for i in range(sensors)]


def empty_frame(columns: tuple[str, ...]) -> pd.DataFrame:
    """An empty frame: device, sensor, kind as str, start/end as int64, anything else float64."""
    dtypes = {"device": "str", "sensor": "str", "kind": "str", "start": "int64", "end": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


@dataclass(frozen=True)
class Simulation:
    """Readings (device, sensor: str; ts: int64 epoch ms UTC; value: float64), in time order, and the
    ground-truth faults (device, sensor, start, end: int64 epoch ms of the first/last affected reading; kind).

    `start_ms` is the first nominal reading time, `clean_until_ms` the end of the fault-free training
    period (no labelled fault touches a reading at or before it, so none touches a window ending at or before
    it; faults start after it), `end_ms` the end of the simulated span (exclusive). Readings come after each
    nominal tick `start_ms + k · interval_ms`, less than one interval after it (classic: 1 ms to 5 s).

    The `varied` scenario fills the rest (empty frames otherwise): `changes` the normal setpoint changes
    (`CHANGE_COLUMNS`), `outliers` the unlabelled outliers of the clean days (`OUTLIER_COLUMNS`, never in
    `faults`), `gaps` the outages and sensor dropouts (`GAP_COLUMNS`, start inclusive, end exclusive),
    `fault_details` the faults row for row with `magnitude` (σ units) and `sigma` (sensor units), and `pairs`
    each pair's drawn properties (`fleetscore.sim.signals.PAIR_COLUMNS`).
    """

    readings: pd.DataFrame
    faults: pd.DataFrame
    start_ms: int
    clean_until_ms: int
    end_ms: int
    interval_ms: int
    scenario: str = "classic"
    changes: pd.DataFrame = field(default_factory=lambda: empty_frame(CHANGE_COLUMNS))
    outliers: pd.DataFrame = field(default_factory=lambda: empty_frame(OUTLIER_COLUMNS))
    gaps: pd.DataFrame = field(default_factory=lambda: empty_frame(GAP_COLUMNS))
    fault_details: pd.DataFrame = field(default_factory=lambda: empty_frame(FAULT_COLUMNS + ("magnitude", "sigma")))
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)


def str_series(codes: np.ndarray, names: list[str]) -> pd.Series:
    """A pandas `str` column from integer codes into `names` (via Arrow: ~10x faster than object arrays)."""
    arr = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names, pa.string()))
    return arr.cast(pa.string()).to_pandas(types_mapper={pa.string(): pd.StringDtype(na_value=np.nan)}.get)


@dataclass(frozen=True)
class Grid:
    """The simulated (steps × pairs) grid: `steps` nominal ticks `interval_ms` apart from `start_ms` (epoch ms),
    the first `clean_steps` of them fault-free, for pair p = device · sensors + sensor."""

    devices: int
    sensors: int
    start_ms: int
    interval_ms: int
    steps: int
    clean_steps: int

    @classmethod
    def of(cls, devices: int, sensors: int, days: float, interval_seconds: float, clean_days: float,
           start: datetime | pd.Timestamp | str | int) -> Grid:
        interval_ms = int(round(interval_seconds * 1000))
        return cls(devices=devices, sensors=sensors, start_ms=to_ms(start), interval_ms=interval_ms,
                   steps=int(round(days * DAY_MS / interval_ms)),
                   clean_steps=int(math.ceil(clean_days * DAY_MS / interval_ms)))

    @property
    def pairs(self) -> int:
        return self.devices * self.sensors

    @property
    def nominal(self) -> np.ndarray:
        """(steps,) int64: the nominal tick times, epoch ms."""
        return self.start_ms + np.arange(self.steps, dtype=np.int64) * self.interval_ms

    @property
    def clean_until_ms(self) -> int:
        return self.start_ms + self.clean_steps * self.interval_ms

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.steps * self.interval_ms

    def steps_of(self, minutes: float) -> float:
        """A duration in minutes as a (fractional) number of ticks."""
        return minutes * MINUTE_MS / self.interval_ms


def time_order(grid: Grid, jitter: np.ndarray, values: np.ndarray,
               present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each step's pairs in arrival order: (order, ts, values, present), all steps × pairs, `order[k, i]` the pair
    of column i at step k and `ts` the arrival time (epoch ms). A step's jitter is < interval, so sorting within
    each step sorts the whole fleet."""
    order = np.argsort(jitter, axis=1, kind="stable")
    ts = grid.nominal[:, None] + np.take_along_axis(jitter, order, axis=1)
    return order, ts, np.take_along_axis(values, order, axis=1), np.take_along_axis(present, order, axis=1)


def readings_frame(grid: Grid, order: np.ndarray, ts: np.ndarray, values: np.ndarray, present: np.ndarray,
                   sensors: list[str]) -> pd.DataFrame:
    """The present readings, in time order: device, sensor (str, named from `sensors`), ts (int64 epoch ms),
    value (float64)."""
    keep = present.ravel()
    pair_kept = order.ravel()[keep]
    return pd.DataFrame({
        "device": str_series(pair_kept // grid.sensors, device_names(grid.devices)),
        "sensor": str_series(pair_kept % grid.sensors, sensors),
        "ts": ts.ravel()[keep],
        "value": values.ravel()[keep],
    })


def typed_faults(frame: pd.DataFrame) -> pd.DataFrame:
    """The fault columns with their dtypes: device, sensor, kind (str), start, end (int64 epoch ms)."""
    return pd.DataFrame({
        "device": frame["device"].astype("str"),
        "sensor": frame["sensor"].astype("str"),
        "start": frame["start"].astype(np.int64),
        "end": frame["end"].astype(np.int64),
        "kind": frame["kind"].astype("str"),
    })
