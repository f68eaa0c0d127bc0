"""The entry script's output folder: a killed writer's temp file is removed before a retried run writes again."""

from __future__ import annotations

import pyarrow as pa

from scoring_job import score


def test_stale_temp_files_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    score.write_atomic(pa.table({"x": [1]}), tmp_path / "part-00000.parquet")
    (tmp_path / ".part-00001.parquet.xnlok92q.tmp").write_bytes(b"half a file")  # what SIGKILL leaves
    (tmp_path / "notes.tmp").write_bytes(b"not the writer's")  # not a hidden temp of the writer
    assert score.remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "part-00000.parquet"]
