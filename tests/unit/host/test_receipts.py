"""Blob receipts: outcomes per blob version kept across restarts."""

from __future__ import annotations

from fleetscore.host.receipts import DONE, FAILED, POISON, BlobReceipts


def test_receipts_survive_a_restart_and_ignore_a_torn_line(tmp_path):
    receipts = BlobReceipts(tmp_path, "index")
    receipts.record("predictions/r/a.parquet", '"e1"', DONE, attempts=1)
    receipts.record("predictions/r/b.parquet", '"e1"', FAILED, attempts=1, error="boom")
    receipts.record("predictions/r/b.parquet", '"e1"', FAILED, attempts=2, error="boom")
    receipts.record("predictions/r/c.parquet", '"e9"', POISON, attempts=5, error="bad file")
    receipts.close()
    with open(tmp_path / "index.jsonl", "ab") as fh:
        fh.write(b'{"blob": "predictions/r/d.parq')  # crash mid-append
    again = BlobReceipts(tmp_path, "index")
    assert again.get("predictions/r/a.parquet", '"e1"').final
    assert again.get("predictions/r/a.parquet", '"e2"') is None  # a new version is a new blob to fire for
    b = again.get("predictions/r/b.parquet", '"e1"')
    assert (b.status, b.attempts, b.final) == (FAILED, 2, False)
    assert again.get("predictions/r/c.parquet", '"e9"').status == POISON
    assert again.counts() == {DONE: 1, FAILED: 1, POISON: 1}
    assert len((tmp_path / "index.jsonl").read_text().splitlines()) == 3  # compacted at open
    again.close()
