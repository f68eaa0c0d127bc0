"""The simulator in time chunks: the same seed gives the same fleet as before chunking existed, whole or in
chunks of any size, for the classic and the varied scenario; the classic one is built one chunk at a time."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from fleetscore.sim.simulate import simulate_fleet, stream_fleet

CASES = [
    (dict(devices=6, sensors=4, days=3, clean_days=1, seed=7, fault_rate=1.5),
     "a92dade295f1ea209e8bb33ef54d84a5a774ce438e1090ad06fb2c2dcd3714f8"),
    (dict(devices=9, sensors=3, days=2.5, clean_days=1, seed=4, fault_rate=2.0, interval_seconds=45, outage_rate=3.0),
     "7c571fd88e9162b1209931766a4d641f34985302bd583297c9f24b2ecf084711"),
    (dict(devices=5, sensors=3, days=5, clean_days=2, seed=11, fault_rate=1.0, scenario="varied"),
     "a2a8ac79391c0c67ac5fa0e50be7f03b0cb811d82b3e763a5b85c3e5120c6803"),
    (dict(devices=7, sensors=2, days=3, clean_days=1.5, seed=3, fault_rate=2.0, interval_seconds=90,
          scenario="varied"),
     "ac1f873fd039239a6acbe4bda4275bc13b1deb6d81d59956ccbe0433f0c0450f"),
]
"""Digests of whole fleets computed with the simulator before chunking (commit 35af1c2)."""
FRAMES = ("faults", "changes", "outliers", "gaps", "fault_details", "pairs")


def _digest(sim, readings: pd.DataFrame | None = None) -> str:
    m = hashlib.sha256()
    r = sim.readings if readings is None else readings
    for column in ("device", "sensor"):
        m.update("\n".join(r[column].astype(str)).encode())
    m.update(r["ts"].to_numpy(np.int64).tobytes())
    m.update(r["value"].to_numpy(np.float64).tobytes())
    for name in FRAMES:
        m.update(getattr(sim, name).to_csv(index=False).encode())
    m.update(repr((sim.start_ms, sim.clean_until_ms, sim.end_ms, sim.interval_ms, sim.scenario)).encode())
    return m.hexdigest()


@pytest.mark.parametrize(("kwargs", "digest"), CASES)
def test_a_seed_gives_the_fleet_it_gave_before_chunking(kwargs, digest):
    assert _digest(simulate_fleet(**kwargs)) == digest


@pytest.mark.parametrize(("kwargs", "digest"), CASES)
@pytest.mark.parametrize("chunk_steps", [1, 7, 333, 10_000])
def test_chunks_concatenate_to_the_same_fleet(kwargs, digest, chunk_steps):
    stream = stream_fleet(**kwargs, chunk_steps=chunk_steps)
    chunks = list(stream.chunks())
    assert len(chunks) == -(-stream.steps // chunk_steps)
    readings = pd.concat(chunks, ignore_index=True)
    assert _digest(stream.result(), readings) == digest
    whole = simulate_fleet(**kwargs).readings
    pd.testing.assert_frame_equal(readings, whole)
    for chunk in chunks[1:]:  # each chunk holds whole ticks, in time order
        assert chunk.empty or chunk["ts"].iloc[0] >= chunks[0]["ts"].iloc[-1]


def test_classic_faults_are_known_only_after_every_chunk():
    stream = stream_fleet(devices=2, sensors=2, days=2, clean_days=1, chunk_steps=100)
    with pytest.raises(RuntimeError):
        stream.result()


def test_classic_chunks_are_built_one_at_a_time():
    """Peak memory of a chunked classic fleet is a chunk's, not the fleet's: 10x fewer ticks per chunk, far
    less traced memory (the whole-grid build held several steps × pairs arrays at once)."""
    kwargs = dict(devices=200, sensors=5, days=2, clean_days=1, seed=1)

    def peak(chunk_steps):
        tracemalloc.start()
        try:
            rows = sum(len(c) for c in stream_fleet(**kwargs, chunk_steps=chunk_steps).chunks())
            return tracemalloc.get_traced_memory()[1], rows
        finally:
            tracemalloc.stop()

    whole, rows = peak(None)
    chunked, rows_chunked = peak(144)
    assert rows == rows_chunked
    assert chunked < whole / 5, (chunked, whole)
