"""The fleet simulator: determinism, shapes, clean training days, visible faults, event bodies, batches, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fleetscore.clock import to_ms
from fleetscore.evaluation.metrics import fault_windows
from fleetscore.ingest.readings import RawEvent, decode_events
from fleetscore.sim.fleet import SENSOR_PROFILES
from fleetscore.sim.simulate import (
    DAY_MS,
    FAULT_KINDS,
    OversizeEventError,
    faults_path,
    fill_batches,
    read_faults,
    read_readings,
    send_to_eventhub,
    sensor_names,
    simulate_fleet,
    to_event_bodies,
    write_simulation,
)

SMALL = dict(devices=6, sensors=4, days=3, interval_seconds=60, clean_days=1)


@pytest.fixture(scope="module")
def faulty():
    """A small fleet with many faults, and the same fleet without them."""
    return simulate_fleet(seed=7, fault_rate=1.5, **SMALL), simulate_fleet(seed=7, fault_rate=0, **SMALL)


def test_same_seed_same_fleet_other_seed_other_fleet():
    a, b = simulate_fleet(seed=3, **SMALL), simulate_fleet(seed=3, **SMALL)
    pd.testing.assert_frame_equal(a.readings, b.readings)
    pd.testing.assert_frame_equal(a.faults, b.faults)
    c = simulate_fleet(seed=4, **SMALL)
    assert not np.array_equal(a.readings["value"].to_numpy()[:100], c.readings["value"].to_numpy()[:100])


def test_shapes_dtypes_and_timing_of_readings():
    sim = simulate_fleet(seed=1, **SMALL)
    r = sim.readings
    assert list(r.columns) == ["device", "sensor", "ts", "value"]
    assert pd.api.types.is_string_dtype(r["device"]) and pd.api.types.is_string_dtype(r["sensor"])
    assert r["ts"].dtype == np.int64 and r["value"].dtype == np.float64
    steps = 3 * 24 * 60
    full = 6 * 4 * steps
    assert 0.97 * full < len(r) < full  # occasional missing readings, never extra ones
    assert sorted(r["device"].unique()) == [f"d-{i:04d}" for i in range(1, 7)]
    assert sorted(r["sensor"].unique()) == sorted(["temp", "humidity", "pressure", "vibration"])
    assert not r.duplicated(["device", "sensor", "ts"]).any()
    ts = r["ts"].to_numpy()
    assert (np.diff(ts) >= 0).all()  # time order, as a fleet sends
    assert sim.start_ms == to_ms("2026-01-05T00:00:00Z") and sim.end_ms == sim.start_ms + 3 * DAY_MS
    assert sim.clean_until_ms == sim.start_ms + DAY_MS
    jitter = (ts - sim.start_ms) % 60_000
    assert jitter.min() >= 1 and jitter.max() <= 5_000 and jitter.std() > 1_000  # a few seconds after each tick
    assert np.isfinite(r["value"]).all()
    # one reading per pair per interval at most
    per_step = r.assign(step=(ts - sim.start_ms) // 60_000).groupby(["device", "sensor", "step"]).size()
    assert per_step.max() == 1


def test_signals_are_realistic():
    sim = simulate_fleet(devices=8, sensors=3, days=2, seed=2, fault_rate=0)
    r = sim.readings
    for profile in SENSOR_PROFILES[:3]:
        v = r.loc[r["sensor"] == profile.name, "value"]
        assert abs(v.mean() - profile.base) < 3 * profile.device_sd + profile.daily
        assert v.std() > profile.noise
    # a daily cycle: temp is warmer in the afternoon than before dawn
    temp = r[r["sensor"] == "temp"]
    hour = (temp["ts"] // 3_600_000) % 24
    assert temp.loc[hour.between(13, 16), "value"].mean() > temp.loc[hour.between(1, 4), "value"].mean() + 3
    # devices differ a little
    assert temp.groupby("device")["value"].mean().std() > 0.2


def test_many_sensors_cycle_names_with_suffixes():
    names = sensor_names(len(SENSOR_PROFILES) + 2)
    assert names[: len(SENSOR_PROFILES)] == [p.name for p in SENSOR_PROFILES]
    assert names[-2:] == ["temp-2", "humidity-2"]
    assert len(set(names)) == len(names)


def test_start_accepts_datetimes_and_ms():
    a = simulate_fleet(devices=1, sensors=1, days=1, clean_days=1, start="2026-03-01T00:00:00+01:00")
    b = simulate_fleet(devices=1, sensors=1, days=1, clean_days=1, start=to_ms("2026-02-28T23:00Z"))
    assert a.start_ms == b.start_ms
    pd.testing.assert_frame_equal(a.readings, b.readings)


def test_faults_are_after_the_clean_days_and_inside_the_data(faulty):
    sim, _ = faulty
    f = sim.faults
    assert len(f) > 10
    assert list(f.columns) == ["device", "sensor", "start", "end", "kind"]
    assert f["start"].dtype == np.int64 and f["end"].dtype == np.int64
    assert set(f["kind"]) == set(FAULT_KINDS)
    assert (f["start"] > sim.clean_until_ms).all() and (f["end"] < sim.end_ms).all()
    assert (fault_windows(f, 300_000)["window_end"] > sim.clean_until_ms).all()  # training windows are clean
    assert ((f["end"] - f["start"]) >= 14 * 60_000).all()  # each spans several 5-minute windows
    assert ((f["end"] - f["start"]) <= 180 * 60_000).all()
    # faults of one pair never overlap
    for _, g in f.sort_values("start").groupby(["device", "sensor"]):
        assert (g["start"].to_numpy()[1:] > g["end"].to_numpy()[:-1]).all()
    # start/end are timestamps of real readings of that pair
    keys = set(zip(sim.readings["device"], sim.readings["sensor"], sim.readings["ts"], strict=True))
    for row in f.itertuples():
        assert (row.device, row.sensor, row.start) in keys and (row.device, row.sensor, row.end) in keys


def test_clean_days_are_identical_to_the_fault_free_fleet(faulty):
    sim, clean = faulty
    pd.testing.assert_frame_equal(sim.readings[["device", "sensor", "ts"]], clean.readings[["device", "sensor", "ts"]])
    before = sim.readings["ts"] < sim.clean_until_ms
    np.testing.assert_array_equal(sim.readings.loc[before, "value"], clean.readings.loc[before, "value"])
    assert clean.faults.empty


def test_every_fault_is_visible_and_nothing_else_changes(faulty):
    sim, clean = faulty
    diff = sim.readings.assign(base=clean.readings["value"])
    inside = np.zeros(len(diff), dtype=bool)
    spreads = {p.name: p.spread for p in SENSOR_PROFILES}
    for row in sim.faults.itertuples():
        mask = ((diff["device"] == row.device) & (diff["sensor"] == row.sensor)
                & diff["ts"].between(row.start, row.end)).to_numpy()
        inside |= mask
        span = diff[mask]
        delta = (span["value"] - span["base"]).abs()
        spread = spreads[row.sensor]
        assert len(span) >= 10, row
        if row.kind == "spike":
            assert delta.min() > 2 * spread, row
        elif row.kind == "drift":
            assert delta.iloc[-1] > 2 * spread and delta.iloc[0] < delta.iloc[-1], row
        elif row.kind == "stuck":
            assert span["value"].nunique() == 1 and span["base"].nunique() > 1, row
        else:
            assert (span["value"] - span["base"]).std() > 2 * span["base"].diff().std(), row
    np.testing.assert_array_equal(diff.loc[~inside, "value"], diff.loc[~inside, "base"])


def test_default_fault_rate_hits_ten_to_twenty_percent_of_pairs():
    sim = simulate_fleet()  # 100 × 5 pairs, 4 days, 2 clean
    assert 2_800_000 < len(sim.readings) < 2_880_000
    share = sim.faults.groupby(["device", "sensor"]).ngroups / 500
    assert 0.08 <= share <= 0.22


def test_event_bodies_follow_the_reading_contract_and_round_trip():
    readings = simulate_fleet(devices=2, sensors=3, days=1, clean_days=1, seed=5).readings.head(10)
    single = to_event_bodies(readings)
    assert len(single) == 10
    first = json.loads(single[0])
    assert set(first) == {"device", "sensor", "ts", "value"}
    assert first["ts"].endswith("Z") and len(first["ts"]) == 24
    packed = to_event_bodies(readings, per_event=4)
    docs = [json.loads(b) for b in packed]
    assert [len(d) for d in docs] == [4, 4, 2]
    assert [item for d in docs for item in d] == [json.loads(b) for b in single]
    for bodies in (single, packed):
        frame = decode_events([RawEvent(body=b) for b in bodies]).frame()
        assert not decode_events([RawEvent(body=b) for b in bodies]).dead
        pd.testing.assert_frame_equal(frame[["device", "sensor", "ts", "value"]].astype({"device": "str",
                                                                                         "sensor": "str"}),
                                      readings.reset_index(drop=True))
    assert to_event_bodies(readings.head(0)) == []
    with pytest.raises(ValueError):
        to_event_bodies(readings, per_event=0)


def test_event_bodies_escape_ids_and_accept_datetime_ts():
    frame = pd.DataFrame({"device": ['d"1'], "sensor": ["t"],
                          "ts": pd.to_datetime(["2026-01-05T00:00:01.5Z"], utc=True), "value": [1.25]})
    doc = json.loads(to_event_bodies(frame)[0])
    assert doc == {"device": 'd"1', "sensor": "t", "ts": "2026-01-05T00:00:01.500Z", "value": 1.25}


def _bodies(n: int, size: int = 100) -> list[bytes]:
    return [json.dumps({"i": i, "pad": "x" * size}).encode() for i in range(n)]


def test_fill_batches_packs_real_event_data_batches_in_order():
    from azure.eventhub import EventDataBatch

    bodies = _bodies(50)
    batches = list(fill_batches(bodies, lambda: EventDataBatch(max_size_in_bytes=1024)))
    assert len(batches) > 5
    assert sum(len(b) for b in batches) == 50
    assert all(0 < b.size_in_bytes <= 1024 and len(b) > 0 for b in batches)
    # order is kept: the bodies come back in sequence across batches
    seen = [json.loads(b"".join(e.body))["i"] for batch in batches for e in batch._internal_events]
    assert seen == list(range(50))
    assert list(fill_batches([], lambda: EventDataBatch(max_size_in_bytes=1024))) == []


def test_fill_batches_refuses_an_oversize_body_clearly():
    from azure.eventhub import EventDataBatch

    def new():
        return EventDataBatch(max_size_in_bytes=1024)

    with pytest.raises(OversizeEventError, match=r"#0 \(2\d\d\d bytes\).*1024"):
        list(fill_batches(_bodies(1, 2000), new))
    bodies = _bodies(3) + _bodies(1, 2000)  # the big one arrives after a partly filled batch
    gen = fill_batches(bodies, new)
    with pytest.raises(OversizeEventError, match="#3"):
        list(gen)
    assert issubclass(OversizeEventError, ValueError)


def test_send_to_eventhub_sends_every_batch(monkeypatch):
    import azure.eventhub as eh

    sent: list[int] = []

    class FakeProducer:
        @classmethod
        def from_connection_string(cls, conn, eventhub_name):
            assert conn == "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=s" and eventhub_name == "hub"
            return cls()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def create_batch(self):
            return eh.EventDataBatch(max_size_in_bytes=2048)

        def send_batch(self, batch):
            sent.append(len(batch))

    monkeypatch.setattr(eh, "EventHubProducerClient", FakeProducer)
    progress: list[int] = []
    n = send_to_eventhub("Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=s", "hub", _bodies(40),
                         progress=progress.append)
    assert n == 40 and sum(sent) == 40 and len(sent) > 1 and progress == sent


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_write_and_read_round_trip(tmp_path, faulty, ext):
    sim, _ = faulty
    readings_path, fault_file = write_simulation(sim, tmp_path / "sub" / f"fleet.{ext}")
    assert readings_path == tmp_path / "sub" / f"fleet.{ext}"
    assert fault_file == tmp_path / "sub" / "fleet.faults.csv" == faults_path(readings_path)
    pd.testing.assert_frame_equal(read_readings(readings_path), sim.readings)
    pd.testing.assert_frame_equal(read_faults(fault_file), sim.faults)
    pd.testing.assert_frame_equal(read_faults(readings_path), sim.faults)
    if ext == "csv":
        lines = readings_path.read_text().splitlines()
        assert lines[0] == "device,sensor,ts,value"
        device, sensor, ts, value = lines[1].split(",")
        assert ts.endswith("Z") and "T" in ts and float(value) == sim.readings["value"].iloc[0]
    if ext == "jsonl":
        with readings_path.open() as fh:
            doc = json.loads(fh.readline())
        assert doc["device"] == sim.readings["device"].iloc[0] and doc["ts"].endswith("Z")
    assert "Z" in fault_file.read_text().splitlines()[1]


def test_files_feed_the_bulk_importer(tmp_path):
    from fleetscore.ingest.files import read_chunks
    from fleetscore.ingest.readings import decode_records

    sim = simulate_fleet(devices=2, sensors=2, days=1, clean_days=1, seed=9)
    for ext in ("csv", "jsonl", "parquet"):
        path, _ = write_simulation(sim, tmp_path / f"f.{ext}")
        decoded = decode_records([r for chunk in read_chunks(path) for r in chunk])
        assert not decoded.dead
        assert decoded.ts == sim.readings["ts"].tolist() and decoded.value == sim.readings["value"].tolist()


def test_write_refuses_unknown_formats_and_faults_survive_empty(tmp_path):
    sim = simulate_fleet(devices=1, sensors=1, days=1, clean_days=1)
    with pytest.raises(ValueError, match="parquet"):
        write_simulation(sim, tmp_path / "fleet.xlsx")
    _, fault_file = write_simulation(sim, tmp_path / "fleet.parquet")
    back = read_faults(fault_file)
    assert back.empty and list(back.columns) == ["device", "sensor", "start", "end", "kind"]
