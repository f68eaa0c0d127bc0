"""The demo ingests its fleet chunk by chunk through real Event Hub events: every reading of the fleet exactly
once, chunk after chunk and window after window in time order, device by device within a window, with event
sequence numbers that keep counting across chunks."""

from __future__ import annotations

import json

import pandas as pd

from fleetscore.cli.demo import ingest_stream
from fleetscore.sim.simulate import simulate_fleet, stream_fleet

FLEET = dict(devices=5, sensors=3, days=1.5, clean_days=1, seed=4, fault_rate=2.0)


def test_demo_ingests_every_reading_of_the_chunked_fleet_once():
    received, sequence = [], []

    def ingest_fn(events, context):
        for event in events:
            sequence.append(event.sequence_number)
            received.extend(json.loads(event.get_body()))

    sim = ingest_stream(ingest_fn, stream_fleet(**FLEET, chunk_steps=97), per_event=50,
                        tick=lambda *a: None)
    whole = simulate_fleet(**FLEET)
    got = pd.DataFrame(received)
    assert len(got) == len(whole.readings)
    keys = ["device", "sensor", "ts"]
    expected = whole.readings.assign(ts=pd.to_datetime(whole.readings["ts"], unit="ms", utc=True))
    got_sorted = got.assign(ts=pd.to_datetime(got["ts"], utc=True)).sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(got_sorted[[*keys, "value"]],
                                  expected.sort_values(keys, ignore_index=True)[[*keys, "value"]])
    step = 97 * 60_000  # the chunks' length: every reading of a chunk comes before the next chunk's
    chunk = (got_sorted["ts"].dt.as_unit("ms").astype("int64") - whole.start_ms) // step
    order = got.assign(ts=pd.to_datetime(got["ts"], utc=True)).merge(got_sorted.assign(chunk=chunk), on=keys)
    assert order["chunk"].is_monotonic_increasing
    window = (order["ts"].dt.as_unit("ms").astype("int64") - 1) // 300_000  # (end - 5 min, end]
    assert window.is_monotonic_increasing
    for _, part in order.groupby([order["chunk"], window]):  # a window cut by a chunk boundary: in each
        assert part["device"].is_monotonic_increasing  # device by device within a window
        assert all(g["ts"].is_monotonic_increasing for _, g in part.groupby("device"))
    assert sequence == list(range(len(sequence)))
    pd.testing.assert_frame_equal(sim.faults, whole.faults)
    assert sim.clean_until_ms == whole.clean_until_ms and sim.end_ms == whole.end_ms
