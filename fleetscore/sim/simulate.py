"""A fleet simulator: realistic sensor readings with labelled, injected faults (we generate data, never download it).

`simulate_fleet` has two scenarios. `classic` (the default, this module) builds every (device, sensor) pair's
signal at once with numpy: a per-sensor baseline and scale, a daily cycle, noise, small per-device offsets, a
few seconds of timestamp jitter and occasional missing readings. After the first `clean_days` (the training
period, always clean) it injects faults — `spike`, `drift`, `stuck`, `noise` — each long enough to span several
5-minute windows, and returns their ground truth next to the readings. `varied` (`fleetscore.sim.varied`) is
the harder fleet: weekly and daily cycles, trends, normal level shifts announced by a `setpoint` sensor,
heavy-tailed noise, quantised, intermittent and irregularly sampled sensors, gaps of minutes to hours, faults of
six kinds from 2 σ up, and unlabelled outliers in the training days.

The signal and the faults draw from independent random streams of the same seed, so
`simulate_fleet(seed=s, fault_rate=0)` is exactly the fault-free version of `simulate_fleet(seed=s)`: same
timestamps, same missing readings, same values outside the faults.

The rest turns a simulation into what devices send: files (`write_simulation`), Event Hubs message bodies in
the DESIGN.md reading contract (`to_event_bodies`) and the sending itself (`send_to_eventhub`, which imports
`azure.eventhub` only when called).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from fleetscore.clock import DAY_MS, iso_array
from fleetscore.sim import varied
from fleetscore.sim.fleet import (
    DEFAULT_START,
    FAULT_COLUMNS,
    READING_COLUMNS,
    Grid,
    SensorProfile,
    Simulation,
    device_names,
    profiles_for,
    readings_frame,
    sensor_names,
    time_order,
    typed_faults,
)

FAULT_KINDS = ("spike", "drift", "stuck", "noise")
FAULT_MINUTES = {"spike": (15, 30), "drift": (60, 180), "stuck": (30, 120), "noise": (15, 60)}
"""Fault duration range per kind (minutes, uniform): every fault spans several 5-minute windows."""
FAULT_GAP_MINUTES = 30
"""Two faults of one pair are at least this far apart (a later overlapping draw is dropped)."""
DEFAULT_FAULT_RATE = 0.075
"""Expected faults per pair per faulty day: with the default 2 faulty days ≈ 14 % of pairs get a fault."""


SCENARIOS = {
    "classic": {"days": 4.0, "clean_days": 2.0, "fault_rate": DEFAULT_FAULT_RATE, "missing_rate": 0.002,
                "outage_rate": 0.25},
    "varied": {"days": varied.DAYS, "clean_days": varied.CLEAN_DAYS, "fault_rate": varied.FAULT_RATE,
               "missing_rate": varied.MISSING_RATE, "outage_rate": varied.OUTAGES_PER_DAY},
}
"""Each scenario's defaults for the options left unset (None). `classic` is the default scenario."""


def simulate_fleet(devices: int = 100, sensors: int = 5, days: float | None = None, interval_seconds: float = 60,
                   seed: int = 0, fault_rate: float | None = None,
                   start: datetime | pd.Timestamp | str | int | None = None, clean_days: float | None = None,
                   missing_rate: float | None = None, outage_rate: float | None = None,
                   scenario: str = "classic") -> Simulation:
    """Simulate `devices` × `sensors` pairs reporting every `interval_seconds` for `days` days.

    scenario: `classic` (this module: one daily cycle, normal noise, four fault kinds) or `varied`
    (`fleetscore.sim.varied`: weekly and daily cycles, setpoint changes, heavy tails, irregular and
    intermittent sampling, six fault kinds from 2 σ up; each device also sends a `setpoint` sensor).
    Unset options take the scenario's defaults (`SCENARIOS`; classic: 4 days, 2 clean; varied: 7 days, 4
    clean, and clean_days at most `days`).
    start: first nominal reading time (default `DEFAULT_START`, 2026-01-05T00:00Z; an int is epoch ms).
    fault_rate: expected faults per pair per faulty day (the days after `clean_days`); 0 gives no faults.
    missing_rate: chance that any one reading is lost; outage_rate: expected outages per device per day
    (classic: 5–30 minutes, varied: 5 minutes to 6 hours with no readings from any of its sensors).
    Deterministic for a seed.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    preset = SCENARIOS[scenario]
    days = preset["days"] if days is None else days
    clean_days = min(preset["clean_days"], days) if clean_days is None else clean_days
    fault_rate = preset["fault_rate"] if fault_rate is None else fault_rate
    missing_rate = preset["missing_rate"] if missing_rate is None else missing_rate
    outage_rate = preset["outage_rate"] if outage_rate is None else outage_rate
    _check_arguments(devices, sensors, days, interval_seconds, clean_days, fault_rate, missing_rate, outage_rate)
    start = DEFAULT_START if start is None else start
    if scenario == "varied":
        return varied.simulate_varied(Grid.of(devices, sensors + 1, days, interval_seconds, clean_days, start),
                                      seed, fault_rate, missing_rate, outage_rate)
    return _simulate_classic(Grid.of(devices, sensors, days, interval_seconds, clean_days, start), seed,
                             fault_rate, missing_rate, outage_rate)


def _simulate_classic(grid: Grid, seed: int, fault_rate: float, missing_rate: float,
                      outage_rate: float) -> Simulation:
    """The classic fleet (module doc) on `grid`."""
    days = grid.steps * grid.interval_ms / DAY_MS
    clean_days = grid.clean_steps * grid.interval_ms / DAY_MS
    profiles = profiles_for(grid.sensors)
    signal_ss, fault_ss = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(signal_ss)  # draws in this order: signal, arrivals, outages
    values, noise_sd = _clean_signal(rng, grid, profiles)
    jitter, present = _arrivals(rng, grid, missing_rate, outage_rate * days)
    faults = _inject_faults(np.random.default_rng(fault_ss), values, grid,
                            fault_rate * max(days - clean_days, 0.0), profiles, noise_sd)
    _physical_range(values, profiles)
    order, ts, values, present = time_order(grid, jitter, values, present)
    return Simulation(readings=readings_frame(grid, order, ts, values, present, sensor_names(grid.sensors)),
                      faults=_fault_frame(faults, ts, present, order, grid), start_ms=grid.start_ms,
                      clean_until_ms=grid.clean_until_ms, end_ms=grid.end_ms, interval_ms=grid.interval_ms)


def _check_arguments(devices: int, sensors: int, days: float, interval_seconds: float, clean_days: float,
                     fault_rate: float, missing_rate: float, outage_rate: float) -> None:
    if devices < 1 or sensors < 1:
        raise ValueError("devices and sensors must be at least 1")
    if interval_seconds <= 0 or days <= 0:
        raise ValueError("interval_seconds and days must be positive")
    if not 0 <= clean_days <= days:
        raise ValueError(f"clean_days must be between 0 and days ({days}), got {clean_days}")
    if fault_rate < 0 or not 0 <= missing_rate < 1 or outage_rate < 0:
        raise ValueError("fault_rate and outage_rate must be ≥ 0 and missing_rate in [0, 1)")


def _clean_signal(rng: np.random.Generator, grid: Grid,
                  profiles: list[SensorProfile]) -> tuple[np.ndarray, np.ndarray]:
    """Fault-free values (steps × pairs, sensor unit): per-pair level, daily cycle and noise; and each pair's
    noise sd (pairs,)."""
    shape = (grid.devices, grid.sensors)
    level = (np.array([p.base for p in profiles])
             + np.array([p.device_sd for p in profiles]) * rng.standard_normal(shape)).ravel()
    amp = (np.array([p.daily for p in profiles]) * rng.uniform(0.8, 1.2, shape)).ravel()
    noise_sd = (np.array([p.noise for p in profiles]) * rng.uniform(0.8, 1.25, shape)).ravel()
    phase_h = (np.array([p.peak_hour for p in profiles]) + rng.normal(0.0, 1.0, shape)).ravel()
    hour = ((grid.nominal % DAY_MS) / 3_600_000.0)[:, None]
    values = (level + amp * np.cos((2 * np.pi / 24.0) * (hour - phase_h))
              + noise_sd * rng.standard_normal((grid.steps, grid.pairs)))
    return values, noise_sd


def _arrivals(rng: np.random.Generator, grid: Grid, missing_rate: float,
              expected_outages: float) -> tuple[np.ndarray, np.ndarray]:
    """When each reading arrives after its tick (jitter, ms) and whether it arrives at all (present), both
    steps × pairs.

    The jitter is 1 ms … a few seconds: never on a tick, so a (end − W, end] window aligned to the ticks holds
    exactly its ticks' readings and every window ending ≤ clean_until_ms is from the clean period."""
    jitter_ms = max(1, min(5_000, grid.interval_ms // 10))
    jitter = rng.integers(1, jitter_ms + 1, (grid.steps, grid.pairs), dtype=np.int64)
    present = rng.random((grid.steps, grid.pairs)) >= missing_rate
    _outages(rng, present, grid, expected_outages)
    return jitter, present


def _outages(rng: np.random.Generator, present: np.ndarray, grid: Grid, expected: float) -> None:
    """Blank out a few 5–30 minute spans of a whole device (all its sensors), in place; `expected` outages
    per device."""
    counts = rng.poisson(expected, grid.devices)
    for device in np.flatnonzero(counts):
        for _ in range(counts[device]):
            length = max(1, int(grid.steps_of(rng.uniform(5, 30))))
            first = int(rng.integers(0, max(1, grid.steps - length)))
            present[first:first + length, device * grid.sensors:(device + 1) * grid.sensors] = False


def _inject_faults(rng: np.random.Generator, values: np.ndarray, grid: Grid, expected: float,
                   profiles: list[SensorProfile], noise_sd: np.ndarray) -> list[tuple[int, int, int, str]]:
    """Add faults to `values` (steps × pairs) in place, `expected` per pair, after the clean steps and at least
    FAULT_GAP_MINUTES apart; returns (pair, first step, last step, kind)."""
    gap = int(math.ceil(grid.steps_of(FAULT_GAP_MINUTES)))
    counts = rng.poisson(expected, grid.pairs) if expected > 0 else np.zeros(grid.pairs, dtype=np.int64)
    out: list[tuple[int, int, int, str]] = []
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
            _apply_fault(rng, kind, values[first:last + 1, p], values[max(first - 1, 0), p], sign, magnitude,
                         profiles[p % grid.sensors].spread, noise_sd[p])
            out.append((int(p), first, last, kind))
    return out


def _apply_fault(rng: np.random.Generator, kind: str, span: np.ndarray, before: float, sign: float,
                 magnitude: float, spread: float, noise_sd: float) -> None:
    """Change `span` (one pair's values over the fault, a view) in place as a fault of `kind` does: `before` is
    the value just before it, `sign` ±1 its direction, `magnitude` in [0, 1) its size, `spread` (the signal's
    typical sd) and `noise_sd` (the pair's noise sd) its units."""
    length = len(span)
    if kind == "spike":  # a sudden large offset
        span += sign * (5.0 + 5.0 * magnitude) * spread
    elif kind == "drift":  # a gradual ramp away from normal
        span += sign * (3.0 + 3.0 * magnitude) * spread * (np.arange(1, length + 1) / length)
    elif kind == "stuck":  # the sensor repeats its last good value
        span[:] = before
    else:  # noise: a variance burst
        span += noise_sd * (4.0 + 4.0 * magnitude) * rng.standard_normal(length)


def _physical_range(values: np.ndarray, profiles: list[SensorProfile]) -> None:
    """Clip to each sensor's physical range and round to its resolution, in place (after the faults)."""
    sensors = len(profiles)
    for j, profile in enumerate(profiles):
        cols = values[:, j::sensors]  # a view
        if math.isfinite(profile.low) or math.isfinite(profile.high):
            np.clip(cols, profile.low, profile.high, out=cols)
        np.round(cols, profile.decimals, out=cols)


def _fault_frame(faults: list[tuple[int, int, int, str]], ts: np.ndarray, present: np.ndarray,
                 order: np.ndarray, grid: Grid) -> pd.DataFrame:
    """Faults with the timestamps of their first and last *present* reading (invisible faults dropped)."""
    # position of each pair within a step, after the time-order shuffle: column of pair p at step k
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
    rows = []
    names_d, names_s = device_names(grid.devices), sensor_names(grid.sensors)
    for p, first, last, kind in faults:
        k = np.arange(first, last + 1)
        cols = position[k, p]
        seen = present[k, cols]
        if not seen.any():
            continue
        stamps = ts[k, cols][seen]
        rows.append((names_d[p // grid.sensors], names_s[p % grid.sensors], int(stamps[0]), int(stamps[-1]), kind))
    frame = pd.DataFrame(rows, columns=list(FAULT_COLUMNS))
    return typed_faults(frame).sort_values(["start", "device", "sensor"], ignore_index=True)


# ── timestamps and reading objects ────────────────────────────────────────────────────────────────────────


def _ts_ms(column: pd.Series) -> np.ndarray:
    """A `ts` column as int64 epoch ms (int64 ms already, or datetimes)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        if getattr(column.dt, "tz", None) is None:
            column = column.dt.tz_localize("UTC")
        return ((column - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).to_numpy(dtype=np.int64)
    return column.to_numpy(dtype=np.int64)


def _json_ids(column: pd.Series) -> list[str]:
    """Each id as a JSON string literal (encoded once per distinct id)."""
    codes, uniques = pd.factorize(column.astype(str))
    encoded = np.array([json.dumps(u) for u in uniques], dtype=object)
    return encoded[codes].tolist()


def _json_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else json.dumps(value)  # non-finite: NaN/Infinity, dead-lettered


def reading_objects(readings: pd.DataFrame) -> list[str]:
    """Each reading as a compact JSON object in the reading contract, ts as ISO-8601 'Z' (ms)."""
    if len(readings) == 0:
        return []
    stamps = iso_array(_ts_ms(readings["ts"])).astype("U24").tolist()
    values = readings["value"].to_numpy(dtype=np.float64)
    numbers = [repr(v) for v in values.tolist()] if np.isfinite(values).all() else [
        _json_number(v) for v in values.tolist()]
    return [f'{{"device":{d},"sensor":{s},"ts":"{t}","value":{v}}}' for d, s, t, v in zip(
        _json_ids(readings["device"]), _json_ids(readings["sensor"]), stamps, numbers, strict=True)]


def to_event_bodies(readings: pd.DataFrame, per_event: int = 1) -> list[bytes]:
    """Event Hubs message bodies, in row order: one JSON object per event (`per_event=1`), or JSON arrays of
    up to `per_event` readings (the last may be shorter)."""
    if per_event < 1:
        raise ValueError(f"per_event must be at least 1, got {per_event}")
    objects = reading_objects(readings)
    if per_event == 1:
        return [o.encode() for o in objects]
    return [("[" + ",".join(objects[i:i + per_event]) + "]").encode() for i in range(0, len(objects), per_event)]


# ── files ─────────────────────────────────────────────────────────────────────────────────────────────────


def faults_path(path: Path) -> Path:
    """`<dir>/<stem>.faults.csv` for a readings file `<dir>/<stem>.<ext>` (a faults path is returned as is)."""
    path = Path(path)
    if path.name.endswith(".faults.csv"):
        return path
    return path.with_name(path.name[: -len(path.suffix)] + ".faults.csv" if path.suffix else path.name + ".faults.csv")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suffix not in formats:
        raise ValueError(f"{path}: readings go to .parquet, .csv or .jsonl, not {suffix or 'no extension'!r}")
    return formats[suffix]


def write_simulation(sim: Simulation, out: Path) -> tuple[Path, Path]:
    """Write the readings to `out` and the faults to `<stem>.faults.csv` beside it; returns both paths.

    `.parquet`: ts as timestamp[ms, UTC]. `.csv` / `.jsonl`: ts as ISO-8601 UTC 'Z' with milliseconds
    (CSV columns device, sensor, ts, value; JSON lines in the reading contract). Faults: CSV with start/end
    as ISO-8601 'Z' (`read_faults` turns them back into epoch ms). A varied simulation also writes its normal
    setpoint changes and training outliers, when it has any, to `<stem>.changes.csv` / `<stem>.outliers.csv`.
    """
    out = Path(out)
    fmt = _format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    readings = sim.readings
    ts = _ts_ms(readings["ts"])
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as fh:
            for i in range(0, len(readings), 200_000):
                chunk = reading_objects(readings.iloc[i:i + 200_000])
                fh.write("\n".join(chunk) + "\n")
    else:
        ts_array = (pa.array(ts, pa.timestamp("ms", tz="UTC")) if fmt == "parquet"
                    else pa.array(iso_array(ts)).cast(pa.string()))
        table = pa.table({
            "device": pa.array(readings["device"].astype(str), pa.string()),
            "sensor": pa.array(readings["sensor"].astype(str), pa.string()),
            "ts": ts_array,
            "value": pa.array(readings["value"].to_numpy(dtype=np.float64)),
        })
        if fmt == "parquet":
            pq.write_table(table, out, compression="zstd")
        else:
            _write_csv(table, out)
    target = faults_path(out)
    _iso_times(sim.faults[list(FAULT_COLUMNS)]).to_csv(target, index=False)
    for suffix, frame in (("changes", sim.changes), ("outliers", sim.outliers)):
        if len(frame):
            _iso_times(frame).to_csv(faults_path(out).with_name(target.name.replace(".faults.", f".{suffix}.")),
                                     index=False)
    return out, target


def _iso_times(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with device, sensor, kind as str and start, end (epoch ms) as ISO-8601 'Z' strings."""
    out = frame.copy()
    for column in ("device", "sensor", "kind"):
        out[column] = frame[column].astype(str)
    for column in ("start", "end"):
        out[column] = iso_array(frame[column].to_numpy(np.int64)).astype("U24")
    return out


def _write_csv(table: pa.Table, out: Path) -> None:
    """Plain CSV: a bare header; ids and ISO timestamps never need quotes (quoted only if some value does)."""
    header = (",".join(table.column_names) + "\n").encode()
    for style in ("none", "needed"):
        try:
            with out.open("wb") as fh:
                fh.write(header)
                pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style=style))
            return
        except pa.ArrowInvalid:
            continue


def _parse_ms(column: pd.Series) -> np.ndarray:
    """Epoch ms from ISO strings or numbers (epoch ms) in a text column."""
    text = column.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype=np.int64)
    stamps = pd.to_datetime(text, utc=True, format="ISO8601")
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).to_numpy(dtype=np.int64)


def read_faults(path: Path) -> pd.DataFrame:
    """The faults written by `write_simulation` (give the faults CSV or the readings file beside it):
    device, sensor, start, end (int64 epoch ms), kind."""
    frame = pd.read_csv(faults_path(Path(path)), dtype=str, keep_default_na=False)
    missing = set(FAULT_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing fault column(s) {sorted(missing)}")
    frame["start"] = _parse_ms(frame["start"]) if len(frame) else frame["start"]
    frame["end"] = _parse_ms(frame["end"]) if len(frame) else frame["end"]
    return typed_faults(frame)


def read_readings(path: Path) -> pd.DataFrame:
    """Readings written by `write_simulation` back as device, sensor (str), ts (int64 epoch ms), value (float64).

    Read with Arrow (fast, and strict: it expects the columns `write_simulation` writes). A convenience for
    tests and tools on trusted files; the ingest path validates files with `fleetscore.ingest.files` instead.
    """
    path = Path(path)
    fmt = _format(path)
    schema = pa.schema([("device", pa.string()), ("sensor", pa.string()), ("ts", pa.timestamp("ms", tz="UTC")),
                        ("value", pa.float64())])
    if fmt == "parquet":
        table = pq.read_table(path, columns=list(READING_COLUMNS))
    elif fmt == "csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=schema,
                                                                          include_columns=list(READING_COLUMNS)))
    else:
        table = pajson.read_json(path, parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                          unexpected_field_behavior="ignore"))
    table = table.select(list(READING_COLUMNS)).cast(schema)
    strings = {pa.string(): pd.StringDtype(na_value=np.nan)}.get
    return pd.DataFrame({
        "device": table["device"].to_pandas(types_mapper=strings),
        "sensor": table["sensor"].to_pandas(types_mapper=strings),
        "ts": table["ts"].cast(pa.int64()).to_numpy(),
        "value": table["value"].to_numpy(),
    })


# ── Event Hubs ────────────────────────────────────────────────────────────────────────────────────────────


class OversizeEventError(ValueError):
    """One event body is larger than an empty Event Hubs batch can hold."""


def fill_batches(bodies: Iterable[bytes], new_batch: Callable[[], Any],
                 make_event: Callable[[bytes], Any] | None = None) -> Iterator[Any]:
    """Pack `bodies` in order into batches from `new_batch()` (e.g. `producer.create_batch`), yielding each
    batch when the next body does not fit (`batch.add` raises ValueError) and the last one at the end.

    `make_event` wraps a body (default: `azure.eventhub.EventData`, imported here). A body that does not fit
    even into an empty batch raises `OversizeEventError`.
    """
    if make_event is None:
        from azure.eventhub import EventData  # an optional SDK (fleetscore[eventhub]): loaded only when used

        make_event = EventData
    batch = new_batch()
    for index, body in enumerate(bodies):
        try:
            batch.add(make_event(body))
            continue
        except ValueError:
            if len(batch) == 0:
                raise _oversize(index, body, batch) from None
        yield batch
        batch = new_batch()
        try:
            batch.add(make_event(body))  # a fresh event: a failed add may have touched the old one
        except ValueError:
            raise _oversize(index, body, batch) from None
    if len(batch):
        yield batch


def _oversize(index: int, body: bytes, batch: Any) -> OversizeEventError:
    limit = getattr(batch, "max_size_in_bytes", None)
    return OversizeEventError(f"event body #{index} ({len(body)} bytes) does not fit into an empty Event Hubs batch"
                              + (f" of at most {limit} bytes" if limit else "")
                              + "; send fewer readings per event (per_event)")


def send_to_eventhub(connection_string: str, eventhub_name: str, bodies: Iterable[bytes],
                     progress: Callable[[int], None] | None = None) -> int:
    """Send the bodies to an Event Hub in as few batches as fit; returns the number of events sent.

    `progress(n)` is called after each batch with its event count. Needs `azure-eventhub`
    (`pip install fleetscore[eventhub]`); imported only here.
    """
    try:  # an optional SDK (fleetscore[eventhub]): loaded only when sending
        from azure.eventhub import EventData, EventHubProducerClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("sending to Event Hubs needs azure-eventhub: pip install 'fleetscore[eventhub]'") from exc
    producer = EventHubProducerClient.from_connection_string(connection_string, eventhub_name=eventhub_name)
    sent = 0
    with producer:
        for batch in fill_batches(bodies, producer.create_batch, EventData):
            producer.send_batch(batch)
            sent += len(batch)
            if progress is not None:
                progress(len(batch))
    return sent
