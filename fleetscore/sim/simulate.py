"""A fleet simulator: realistic sensor readings with labelled, injected faults (we generate data, never download it).

`simulate_fleet` has two scenarios. `classic` (the default, `fleetscore.sim.classic`) builds every (device,
sensor) pair's signal with numpy: a per-sensor baseline and scale, a daily cycle, noise, small per-device offsets, a
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

`stream_fleet` gives the same fleet as time-ordered chunks of readings (`FleetStream`), for fleets too large to
hold: the classic scenario is generated chunk by chunk (memory bounded by a chunk of `chunk_steps` ticks); the
varied scenario is still generated whole and only handed out in chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
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
from fleetscore.sim.classic import FAULT_GAP_MINUTES, FAULT_KINDS, FAULT_MINUTES, ClassicStream
from fleetscore.sim.fleet import (
    DEFAULT_START,
    FAULT_COLUMNS,
    READING_COLUMNS,
    Grid,
    Simulation,
    empty_frame,
    sensor_names,
    typed_faults,
)

__all__ = ["DAY_MS", "FAULT_GAP_MINUTES", "FAULT_KINDS", "FAULT_MINUTES", "FleetStream", "sensor_names",
           "simulate_fleet", "stream_fleet"]

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
                   scenario: str = "classic", normal_course: bool = True) -> Simulation:
    """Simulate `devices` × `sensors` pairs reporting every `interval_seconds` for `days` days.

    scenario: `classic` (`fleetscore.sim.classic`: one daily cycle, normal noise, four fault kinds) or `varied`
    (`fleetscore.sim.varied`: weekly and daily cycles, setpoint changes, heavy tails, irregular and
    intermittent sampling, six fault kinds from 2 σ up; each device also sends a `setpoint` sensor).
    Unset options take the scenario's defaults (`SCENARIOS`; classic: 4 days, 2 clean; varied: 7 days, 4
    clean, and clean_days at most `days`).
    start: first nominal reading time (default `DEFAULT_START`, 2026-01-05T00:00Z; an int is epoch ms).
    fault_rate: expected faults per pair per faulty day (the days after `clean_days`); 0 gives no faults.
    missing_rate: chance that any one reading is lost; outage_rate: expected outages per device per day
    (classic: 5–30 minutes, varied: 5 minutes to 6 hours with no readings from any of its sensors).
    normal_course: varied only; False takes each measured sensor's normal course out (cycles, trend, wander,
    setpoint responses) and keeps everything else of the seed (`varied.simulate_varied`): an ablation.
    Deterministic for a seed.
    """
    stream = stream_fleet(devices, sensors, days, interval_seconds, seed, fault_rate, start, clean_days,
                          missing_rate, outage_rate, scenario, normal_course=normal_course)
    if stream.whole is not None:
        return stream.whole
    readings = list(stream.chunks())
    return replace(stream.result(), readings=readings[0] if len(readings) == 1 else
                   pd.concat(readings, ignore_index=True))


def stream_fleet(devices: int = 100, sensors: int = 5, days: float | None = None, interval_seconds: float = 60,
                 seed: int = 0, fault_rate: float | None = None,
                 start: datetime | pd.Timestamp | str | int | None = None, clean_days: float | None = None,
                 missing_rate: float | None = None, outage_rate: float | None = None,
                 scenario: str = "classic", chunk_steps: int | None = None,
                 normal_course: bool = True) -> FleetStream:
    """The fleet of `simulate_fleet` (same arguments, same readings for a seed) as chunks of `chunk_steps`
    ticks (None: one chunk); see `FleetStream`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if not normal_course and scenario != "varied":
        raise ValueError("normal_course=False is an option of the varied scenario")
    preset = SCENARIOS[scenario]
    days = preset["days"] if days is None else days
    clean_days = min(preset["clean_days"], days) if clean_days is None else clean_days
    fault_rate = preset["fault_rate"] if fault_rate is None else fault_rate
    missing_rate = preset["missing_rate"] if missing_rate is None else missing_rate
    outage_rate = preset["outage_rate"] if outage_rate is None else outage_rate
    _check_arguments(devices, sensors, days, interval_seconds, clean_days, fault_rate, missing_rate, outage_rate)
    start = DEFAULT_START if start is None else start
    if scenario == "varied":
        grid = Grid.of(devices, sensors + 1, days, interval_seconds, clean_days, start)
        whole = varied.simulate_varied(grid, seed, fault_rate, missing_rate, outage_rate, normal_course)
        return FleetStream(grid, chunk_steps, whole=whole)
    grid = Grid.of(devices, sensors, days, interval_seconds, clean_days, start)
    return FleetStream(grid, chunk_steps, classic=ClassicStream(grid, seed, fault_rate, missing_rate, outage_rate,
                                                                chunk_steps))


@dataclass
class FleetStream:
    """A simulated fleet handed out as time-ordered chunks of readings: `chunks()` yields each chunk's readings
    (the columns of `Simulation.readings`; concatenated, exactly `simulate_fleet`'s), `result()` then gives the
    Simulation without its readings (faults, spans; the classic faults are known once every chunk is built).
    `whole`: the varied scenario's Simulation, generated whole and sliced by tick."""

    grid: Grid
    chunk_steps: int | None
    classic: ClassicStream | None = None
    whole: Simulation | None = None

    @property
    def steps(self) -> int:
        return self.grid.steps

    @property
    def clean_until_ms(self) -> int:
        return self.grid.clean_until_ms

    @property
    def end_ms(self) -> int:
        return self.grid.end_ms

    def chunks(self) -> Iterator[pd.DataFrame]:
        if self.classic is not None:
            yield from self.classic.chunks()
            return
        readings = self.whole.readings
        ts = readings["ts"].to_numpy(np.int64)
        size = self.chunk_steps or max(self.grid.steps, 1)
        cuts = self.grid.start_ms + np.arange(size, self.grid.steps, size, dtype=np.int64) * self.grid.interval_ms
        edges = [0, *np.searchsorted(ts, cuts, side="left").tolist(), len(readings)]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            yield readings.iloc[lo:hi].reset_index(drop=True)

    def result(self) -> Simulation:
        """The Simulation with an empty `readings` frame (call after `chunks()` is exhausted)."""
        if self.whole is not None:
            return replace(self.whole, readings=self.whole.readings.iloc[:0])
        grid = self.grid
        return Simulation(readings=empty_frame(READING_COLUMNS).astype({"ts": "int64", "value": "float64"}),
                          faults=self.classic.faults(), start_ms=grid.start_ms, clean_until_ms=grid.clean_until_ms,
                          end_ms=grid.end_ms, interval_ms=grid.interval_ms)


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
