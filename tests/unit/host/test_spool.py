"""The durable event spool: order, checkpoints, torn appends, segments, waiting."""

from __future__ import annotations

import threading

import pytest

from fleetscore.host.spool import Spool


def test_spool_appends_reads_in_order_and_checkpoints_across_restarts(tmp_path):
    spool = Spool(tmp_path / "s", ["ingest"])
    records = [spool.append(f'{{"n": {i}}}'.encode(), enqueued_ms=1_000 + i) for i in range(5)]
    assert [r.sequence_number for r in records] == [1, 2, 3, 4, 5]
    assert [r.offset for r in records] == sorted({r.offset for r in records}) and records[0].offset == 0
    assert spool.backlog("ingest") == 5
    got = spool.read(0, 3)
    assert [(r.sequence_number, r.body, r.enqueued_ms) for r in got] == [
        (1, b'{"n": 0}', 1000), (2, b'{"n": 1}', 1001), (3, b'{"n": 2}', 1002)]
    assert [r.offset for r in got] == [r.offset for r in records[:3]]
    assert [r.sequence_number for r in spool.read(3, 10)] == [4, 5]
    spool.checkpoint("ingest", 3)
    assert spool.backlog("ingest") == 2
    spool.close()

    again = Spool(tmp_path / "s", ["ingest"])  # a restart: the checkpoint holds, undelivered records remain
    assert again.checkpointed("ingest") == 3 and again.last_sequence_number == 5
    assert [r.body for r in again.read(again.checkpointed("ingest"), 10)] == [b'{"n": 3}', b'{"n": 4}']
    assert again.append(b"next").sequence_number == 6
    with pytest.raises(ValueError, match="past the end"):
        again.checkpoint("ingest", 7)
    again.close()


def test_spool_cuts_a_torn_append_and_keeps_acknowledged_records(tmp_path):
    spool = Spool(tmp_path / "s", ["c"])
    spool.append(b"one")
    spool.append(b"two")
    spool.close()
    segment = next((tmp_path / "s").glob("segment-*.log"))
    size = segment.stat().st_size
    with open(segment, "ab") as fh:  # a crash in the middle of the third append
        fh.write(b"3 123 10 0000abcd\nhalf")
    again = Spool(tmp_path / "s", ["c"])
    assert segment.stat().st_size == size
    assert [r.body for r in again.read(0, 10)] == [b"one", b"two"]
    assert again.append(b"three").sequence_number == 3
    assert [r.body for r in again.read(2, 10)] == [b"three"]
    again.close()


def test_spool_rotates_segments_and_drops_those_every_consumer_has_passed(tmp_path):
    spool = Spool(tmp_path / "s", ["a", "b"], segment_bytes=64)
    for i in range(10):
        spool.append(b"x" * 40 + str(i).encode())
    segments = sorted((tmp_path / "s").glob("segment-*.log"))
    assert len(segments) == 10  # every record passes 64 bytes: one segment each
    assert [r.sequence_number for r in spool.read(0, 100)] == list(range(1, 11))
    assert [r.sequence_number for r in spool.read(4, 3)] == [5, 6, 7]
    spool.checkpoint("a", 8)
    assert len(list((tmp_path / "s").glob("segment-*.log"))) == 10  # consumer b still needs them
    spool.checkpoint("b", 6)
    assert len(list((tmp_path / "s").glob("segment-*.log"))) == 4  # 7..10 remain
    assert spool.backlog("a") == 2 and spool.backlog("b") == 4
    assert [r.body[-1:] for r in spool.read(6, 10)] == [b"6", b"7", b"8", b"9"]
    offsets = [r.offset for r in spool.read(6, 10)]
    spool.close()
    again = Spool(tmp_path / "s", ["a", "b", "new"], segment_bytes=64)
    assert [r.offset for r in again.read(6, 10)] == offsets
    assert again.checkpointed("new") == 6  # a new consumer starts at the oldest record kept
    assert again.append(b"y").sequence_number == 11
    again.close()


def test_spool_wait_wakes_on_append(tmp_path):
    spool = Spool(tmp_path / "s", ["c"])
    assert spool.wait(0, 0.01) is False
    threading.Timer(0.05, lambda: spool.append(b"z")).start()
    assert spool.wait(0, 5.0) is True
    spool.close()
